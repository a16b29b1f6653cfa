"""Many cameras, one model, each camera calibrated on its own: `calibrate --source A --source B` writes
one threshold and one drift reference per source name into a new verified bundle; `run` with those
sources scores each with its own threshold (unless ?threshold= overrides it) and raises a drift alarm
on the camera that drifts, not on the others."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from edgesdk.bundle import Bundle
from edgesdk.errors import OptionError
from edgesdk.spec import SpecError
from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.drift_ref import SOURCES_FILE, load_source_references
from edgesdk.stream.pipeline import run_stream
from mqtt_broker import free_port

LINE = "synth://conveyor?defects=0&rails=1"  # good parts, guide rails fixed in view
# Camera B sees the same line under a brighter lamp: its good parts score apart from camera A's.
BRIGHT = "drift=ramp&drift_at=0&drift_len=1&drift_amount=0.5"
ONSET = 150


@pytest.fixture(scope="module")
def per_source(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("percam") / "line"
    st = calibrate(bundle, [f"{LINE}&seed=1&name=a", f"{LINE}&seed=2&{BRIGHT}&name=b"], out, frames=200, progress=False)
    return out, st


def test_each_source_gets_its_own_verified_threshold_and_drift_reference(bundle, per_source):
    out, st = per_source
    b = Bundle.open(out)  # drift_sources.json is listed with its sha256 and verified
    by = b.manifest.thresholds_by_source
    assert set(by) == set(st["sources"]) == {"a", "b"}
    for name in ("a", "b"):
        assert by[name].source == "line_good_k_sigma" and by[name].value == st["sources"][name]["threshold"]
        assert st["sources"][name]["frames"] == 200 and st["sources"][name]["suspect_frames"] == 0
    assert abs(by["a"].value - by["b"].value) > 0.5, by  # the two cameras' lines differ
    assert b.manifest.threshold == Bundle.open(bundle).manifest.threshold  # the bundle's own stays
    refs = load_source_references(b)
    assert set(refs) == {"a", "b"} and all(r.frames == 200 and r.score is not None for r in refs.values())
    assert refs["b"].image["brightness"][0] > refs["a"].image["brightness"][0]


def test_run_scores_each_source_with_its_own_calibrated_threshold(per_source, tmp_path):
    # Before: the manifest had no per-source thresholds; every source used the bundle's one.
    out, st = per_source
    recs = tmp_path / "r.jsonl"
    srcs = [f"{LINE}&seed=3&name=a", f"{LINE}&seed=4&{BRIGHT}&name=b", f"{LINE}&seed=5&name=c&threshold=7.5"]
    s = run_stream(out, srcs, [f"jsonl://{recs}"], max_frames=40)
    want = {"a": st["sources"]["a"]["threshold"], "b": st["sources"]["b"]["threshold"], "c": 7.5}
    assert {n: c["threshold"] for n, c in s["sources"].items()} == want
    assert {n: c["threshold_source"] for n, c in s["sources"].items()} == {
        "a": "calibrated",
        "b": "calibrated",
        "c": "uri",
    }
    rows = [json.loads(x) for x in recs.read_text().splitlines()]
    assert len(rows) == 120
    for r in rows:
        assert r["threshold"] == want[r["source"]] and r["is_anomalous"] == (r["score"] > want[r["source"]])
    # a source named nowhere in the calibration takes the bundle's threshold
    s = run_stream(out, [f"{LINE}&seed=3&name=a", f"{LINE}&seed=6&name=z"], [], max_frames=5)
    assert s["sources"]["z"]["threshold"] == Bundle.open(out).threshold
    assert s["sources"]["z"]["threshold_source"] == "bundle"


def test_drift_alarm_is_raised_on_the_drifting_source_only(per_source, tmp_path):
    # Before: a run of several sources warned and reported drift: null.
    out, _ = per_source
    recs, port, got = tmp_path / "r.jsonl", free_port(), {}

    def scrape(rec):  # /metrics read while the preview serves it, once the event is out
        if rec.get("drift") and "m" not in got:
            got["m"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    srcs = [f"{LINE}&seed=7&drift=blur&drift_at={ONSET}&name=a", f"{LINE}&seed=8&{BRIGHT}&name=b"]
    sinks = [f"jsonl://{recs}", f"http://127.0.0.1:{port}"]
    s = run_stream(out, srcs, sinks, max_frames=ONSET + 120, on_record=scrape)
    events = [e for line in recs.read_text().splitlines() for e in json.loads(line).get("drift", [])]
    sharp = [e for e in events if e["kind"] == "sharpness"]
    assert len(sharp) == 1 and sharp[0]["source"] == "a" and sharp[0]["frame_id"] >= ONSET, events
    assert all(e["source"] == "a" and e["frame_id"] >= ONSET for e in events), events
    assert s["sources"]["a"]["drift"]["events"]["sharpness"] == 1
    assert not any(s["sources"]["b"]["drift"]["events"].values())  # the steady bright camera: its own reference
    assert s["drift"]["events"]["sharpness"] == 1 and s["sources"]["b"]["drift"]["score_checked"]
    m = got["m"]
    assert 'edgesdk_source_drift_events_total{source="a",kind="sharpness"} 1' in m
    assert 'edgesdk_source_drift_events_total{source="b",kind="sharpness"} 0' in m
    assert 'edgesdk_drift_events_total{kind="sharpness"} 1' in m


def test_calibrate_cli_takes_several_sources(bundle, tmp_path):
    a, b = f"{LINE}&seed=1&name=a", f"{LINE}&seed=2&{BRIGHT}&name=b"
    argv = ["calibrate", bundle, "--source", a, "--source", b, "--frames", 30, "--out", tmp_path / "c"]
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "per-source calibration" in r.stdout and "\na " in r.stdout and "\nb " in r.stdout
    assert set(Bundle.open(tmp_path / "c").manifest.thresholds_by_source) == {"a", "b"}
    r = subprocess.run(
        [sys.executable, "-m", "edgesdk", *map(str, argv[:-1]), tmp_path / "d", "--source", a],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "edgesdk calibrate: error:" in r.stderr and "two sources are named 'a'" in r.stderr


def test_calibrate_refuses_duplicate_names_and_a_threshold_option(bundle, tmp_path):
    with pytest.raises(OptionError, match="two sources are named 'cam'"):
        calibrate(bundle, [f"{LINE}&name=cam", f"{LINE}&seed=2&name=cam"], tmp_path / "c", frames=30, progress=False)
    with pytest.raises(OptionError, match="synth://conveyor.*threshold= sets a run's threshold"):
        calibrate(bundle, [f"{LINE}&threshold=3", f"{LINE}&seed=2"], tmp_path / "c", frames=30, progress=False)
    # names derived from the URI (secrets hidden), deterministic: two equal URIs collide
    with pytest.raises(OptionError, match="two sources are named"):
        calibrate(bundle, [LINE, LINE], tmp_path / "c", frames=30, progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m["thresholds_by_source"]["a"].update(value="high"), r"thresholds_by_source\['a'\]\.value"),
        (
            lambda m: m["thresholds_by_source"]["a"].update(colour=1),
            r"unknown field thresholds_by_source\['a'\]\.colour",
        ),
        (lambda m: m["thresholds_by_source"].update({"x\n": m["thresholds_by_source"]["a"]}), "control character"),
        (lambda m: m["thresholds_by_source"].update(b=3.0), r"thresholds_by_source\['b'\] must be an object"),
        (lambda m: m.update(thresholds_by_source=[]), "thresholds_by_source must be an object"),
    ],
)
def test_a_bad_per_source_threshold_is_refused_naming_file_and_field(per_source, tmp_path, edit, field):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(per_source[0], out)
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SpecError, match=rf"manifest\.json: field .*{field}|manifest\.json: .*{field}"):
        Bundle.open(out)


def test_a_tampered_per_source_drift_reference_is_refused(per_source, tmp_path):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(per_source[0], out)
    d = json.loads((out / SOURCES_FILE).read_text())
    d["sources"]["a"]["score"]["mean"] += 1.0
    (out / SOURCES_FILE).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=SOURCES_FILE):
        Bundle.open(out)
