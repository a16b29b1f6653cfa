"""Drift alarms (stream/drift.py): a real calibrated bundle on a real drifting synth://conveyor raises
each kind's event once, within a bound, and a stable stream raises none; 20,000 stable frames through
the detector alone (real frames and real scores, replayed) raise none; the reference file's errors
name the file and the field."""

from __future__ import annotations

import json
import logging
import urllib.request

import numpy as np
import pytest

from edgesdk.bundle import Bundle
from edgesdk.errors import OptionError
from edgesdk.spec import SpecError
from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.detector import Detector
from edgesdk.stream.drift import DriftMonitor, DriftOptions
from edgesdk.stream.drift_ref import DRIFT_FILE, Reference, ReferenceBuilder, load_reference
from edgesdk.stream.pipeline import run_stream
from edgesdk.video import open_source

LINE = "synth://conveyor?defects=0&rails=1"  # good parts, guide rails fixed in view
ONSET = 150
# frames from onset to the event, at most (docs/LINE.md); the ramp reaches its full -40 % at 300
BOUND = {"ramp": 240, "shift": 90, "blur": 60, "texture": 60}
EXPECT = {"ramp": "brightness", "shift": "view_shift", "blur": "sharpness", "texture": "score_shift"}


@pytest.fixture(scope="module")
def line_bundle(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("drift") / "line"
    calibrate(bundle, f"{LINE}&seed=1", out, frames=200, progress=False)
    return out


def test_calibrate_writes_a_verified_drift_reference(line_bundle):
    b = Bundle.open(line_bundle)  # drift.json is listed with its sha256 and verified
    assert DRIFT_FILE in b.manifest.files
    ref = load_reference(b)
    assert ref is not None and ref.frames == 200 and ref.score is not None
    assert ref.score["std"] > 0 and ref.view.shape == (64, 64)
    assert ref.view_noise < DriftOptions().view_shift / 2  # the rails are fixed structure: the view is checked


@pytest.mark.parametrize("kind", ["none", "ramp", "shift", "blur", "texture"])
def test_each_drift_kind_raises_its_event_once_within_its_bound(line_bundle, tmp_path, kind):
    bound = BOUND.get(kind, 250)
    out = tmp_path / "v.jsonl"
    s = run_stream(
        line_bundle, f"{LINE}&seed=2&drift={kind}&drift_at={ONSET}", [f"jsonl://{out}"], max_frames=ONSET + bound + 60
    )
    events = [e for line in out.read_text().splitlines() for e in json.loads(line).get("drift", [])]
    assert all(e["frame_id"] >= ONSET for e in events), events  # nothing before the line moved
    if kind == "none":
        assert events == [] and not any(s["drift"]["events"].values())
        return
    mine = [e for e in events if e["kind"] == EXPECT[kind]]
    assert len(mine) == 1, events  # one event per episode, however long the drift lasts
    assert mine[0]["frame_id"] - ONSET <= bound, mine
    assert s["drift"]["events"][EXPECT[kind]] == 1
    e = mine[0]
    assert set(e) == {"kind", "frame_id", "statistic", "value", "reference", "deviation", "level"}
    assert abs(e["deviation"]) >= e["level"]


@pytest.fixture(scope="module")
def replay(line_bundle):
    """240 real good frames (4 conveyor passes) and 500 real scores of good frames from the bundle."""
    with open_source(f"{LINE}&seed=3") as src:
        frames = [src.read().image for _ in range(500)]
    with Detector(line_bundle) as det:
        scores = np.array([det.predict(f).score for f in frames])
    return frames[:240], scores, det.threshold


def test_twenty_thousand_stable_frames_raise_no_drift_event(line_bundle, replay):
    """The detector alone (the model would take minutes here): real frames replayed in order, real
    scores bootstrapped; benchmarks/drift_false_alarms.py streams 20,000 frames through the model."""
    frames, scores, threshold = replay
    ref = load_reference(Bundle.open(line_bundle))
    mon = DriftMonitor(DriftOptions(), ref)
    rng = np.random.default_rng(0)
    draws = rng.choice(scores, 20_000)
    events = [e for i in range(20_000) for e in mon.update(i, frames[i % len(frames)], draws[i], draws[i] <= threshold)]
    assert events == []
    assert set(mon.stats()["statistics"]) >= {"score_cusum", "brightness", "sharpness", "view_shift"}


def test_score_shift_raises_once_and_rearms_after_the_episode(line_bundle, replay):
    frames, scores, threshold = replay
    mon = DriftMonitor(DriftOptions(), load_reference(Bundle.open(line_bundle)))
    std = load_reference(Bundle.open(line_bundle)).score["std"]  # type: ignore[index]
    rng = np.random.default_rng(1)
    kinds = []
    for i in range(1500):
        z = rng.choice(scores) + (2.5 * std if 300 <= i < 600 or 1000 <= i < 1300 else 0.0)
        kinds += [(e["kind"], e["frame_id"]) for e in mon.update(i, frames[i % len(frames)], z, z <= threshold)]
    assert [k for k, _ in kinds] == ["score_shift", "score_shift"], kinds  # one per episode, re-armed between
    assert 300 <= kinds[0][1] < 340 and 1000 <= kinds[1][1] < 1040


def test_without_a_reference_the_image_reference_is_the_first_frames(bundle, caplog):
    """A bundle without drift.json: no score check, and the log says the image reference is the first
    frames of the run; a blur after that still raises its event."""
    caplog.set_level(logging.INFO, "edgesdk.stream.drift")
    assert load_reference(Bundle.open(bundle)) is None
    mon = DriftMonitor(DriftOptions(warmup=60), None)
    with open_source(f"{LINE}&drift=blur&drift_at=150") as src:
        events = [e for i in range(260) for e in mon.update(i, src.read().image, 0.0, True)]
    assert "first 60 frames" in caplog.text and "score drift is not checked" in caplog.text
    assert [e["kind"] for e in events].count("sharpness") == 1 and events[0]["kind"] == "sharpness"
    assert events[0]["frame_id"] >= 150 and mon.stats()["score_checked"] is False


def _ref_dict() -> dict:
    b = ReferenceBuilder()
    with open_source(LINE) as src:
        for _ in range(70):
            b.add_image(src.read().image)
    return b.reference(np.linspace(-1, 1, 70), "test").to_dict()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["score"].pop("p50"), "score.p50"),
        (lambda d: d["score"].update(std=0.0), "score.std"),
        (lambda d: d["image"]["sharpness"].update(mean="x"), "image.sharpness.mean"),
        (lambda d: d["view"].pop(), "view"),
        (lambda d: d.update(view_noise=-1), "view_noise"),
        (lambda d: d.update(schema=9), "schema"),
    ],
)
def test_a_bad_drift_reference_is_refused_naming_file_and_field(tmp_path, edit, field):
    d = _ref_dict()
    assert Reference.from_dict(json.loads(json.dumps(d)), "x").frames == 70  # the written form reads back
    edit(d)
    path = tmp_path / DRIFT_FILE
    path.write_text(json.dumps(d))
    with pytest.raises(SpecError, match=rf"{DRIFT_FILE}: field {field}"):
        Reference.from_dict(json.loads(path.read_text()), str(path))
    path.write_text(json.dumps(_ref_dict()).replace('"view_noise": ', '"view_noise": NaN, "x": '))
    with pytest.raises(SpecError, match="view_noise"):
        from edgesdk.spec.typed import load_json

        load_json(path, "missing")


def test_drift_options_and_synth_drift_options_are_checked():
    with pytest.raises(OptionError, match="--drift 'loud'"):
        DriftOptions.preset("loud")
    with pytest.raises(OptionError, match="image_z"):
        DriftOptions(image_z=float("nan"))
    with pytest.raises(OptionError, match="window"):
        DriftOptions(window=0)
    assert DriftOptions.preset("off").enabled is False
    with pytest.raises(OptionError, match=r"synth://conveyor\?drift=wobble: drift 'wobble'"):
        open_source("synth://conveyor?drift=wobble")
    with pytest.raises(OptionError, match="drift_amount"):
        open_source("synth://conveyor?drift=blur&drift_amount=nan")
    with pytest.raises(OptionError, match="drift_amount"):
        open_source("synth://conveyor?drift=texture&drift_amount=2")


def test_a_drift_event_reaches_metrics_and_the_mqtt_health_topic(line_bundle, tmp_path):
    """A blur mid-stream: the preview's /metrics counts the sharpness episode and shows the statistic;
    the MQTT health topic (a real mosquitto) carries the same counts."""
    from mqtt_broker import Broker, Subscriber, free_port, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("needs Debian's mosquitto broker (apt-get install mosquitto; .ci/run does)")
    broker = Broker(tmp_path).start()
    port, seen = free_port(), {}
    try:
        sub = Subscriber(broker.port, "line/v")

        def on_record(rec):
            if rec["frame_id"] == 259:  # the last frame: read /metrics while the sink still serves it
                seen["metrics"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        s = run_stream(
            line_bundle,
            f"{LINE}&seed=4&drift=blur&drift_at=150",
            [
                f"http://127.0.0.1:{port}",
                f"mqtt://127.0.0.1:{broker.port}/line/v?health=0.2&drain=10&outbox={tmp_path / 'o.db'}",
            ],
            max_frames=260,
            on_record=on_record,
        )
        sub.wait_for(set(range(260)))
        sub.close()
    finally:
        broker.stop()
    assert s["drift"]["events"]["sharpness"] == 1
    assert 'edgesdk_drift_events_total{kind="sharpness"} 1' in seen["metrics"]
    assert 'edgesdk_drift_events_total{kind="view_shift"} 0' in seen["metrics"]
    assert 'edgesdk_drift_statistic{statistic="sharpness"} -' in seen["metrics"]  # well below the reference
    assert sub.health[-1]["drift"]["events"]["sharpness"] == 1
    flagged = [m for m in sub.messages if "drift" in m]
    assert any(e["kind"] == "sharpness" for m in flagged for e in m["drift"])


def test_run_cli_takes_the_drift_sensitivity(line_bundle, tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "edgesdk", "run", str(line_bundle), "--sink", f"jsonl://{tmp_path / 'r.jsonl'}"]
    src = ["--source", f"{LINE}&drift=blur&drift_at=100", "--max-frames", "200"]
    r = subprocess.run([*base, *src, "--drift", "high"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("drift events: "))
    assert "sharpness 1" in line and "drift: sharpness at frame" in r.stderr
    r = subprocess.run([*base, *src, "--drift", "off", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["drift"] is None
    r = subprocess.run([*base, *src, "--drift", "loud"], capture_output=True, text=True)
    assert r.returncode == 2 and "--drift" in r.stderr
