"""Many cameras, one model: `run --source A --source B` scores every source, frames batched into one
inference call; records name their source; a slow source does not stall a fast one; counters,
/metrics and thresholds are per source; batched scores equal single-source scores."""

import json
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest

from edgesdk.errors import OptionError
from edgesdk.stream.pipeline import run_stream
from mqtt_broker import free_port


def test_cli_two_sources_score_both_and_records_name_them(bundle, tiny_data, tmp_path):
    # Before: argparse kept the last --source and the run scored B alone, exit 0.
    good, video = tiny_data / "brick" / "test" / "good", tiny_data / "conveyor_brick.mkv"
    out = tmp_path / "r.jsonl"
    argv = ["run", bundle, "--json", "--source", f"{good}?name=cam-a", "--source", video, "--sink", f"jsonl://{out}"]
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s, recs = json.loads(r.stdout), [json.loads(x) for x in out.read_text().splitlines()]
    n_good = len(list(good.iterdir()))
    assert s["sources"]["cam-a"]["frames"] == n_good and s["sources"][str(video)]["frames"] == 60
    assert s["frames"] == len(recs) == n_good + 60 and s["mean_batch"] > 1
    for name, n in (("cam-a", n_good), (str(video), 60)):
        assert [x["frame_id"] for x in recs if x["source"] == name] == list(range(n))  # capture order


def test_batched_scores_equal_single_source_scores(bundle, tiny_data):
    good, video = str(tiny_data / "brick" / "test" / "good"), str(tiny_data / "conveyor_brick.mkv")
    both: list = []
    s = run_stream(bundle, [video, f"{good}?name=g"], [], on_record=both.append)
    assert s["batches"] < s["frames"] and {r["batch"] for r in both} >= {2}
    for src, name in ((video, video), (good, "g")):
        one: list = []
        run_stream(bundle, src, [], on_record=one.append)
        mine = [r for r in both if r["source"] == name]
        assert [r["frame_id"] for r in mine] == [r["frame_id"] for r in one] and len(one) > 0
        # a batch of 2 runs other GEMM shapes than batch 1: equal up to float rounding
        np.testing.assert_allclose([r["score"] for r in mine], [r["score"] for r in one], rtol=1e-4, atol=1e-4)
        assert [r["is_anomalous"] for r in mine] == [r["is_anomalous"] for r in one]


def test_a_slow_source_does_not_stall_a_fast_one(bundle, tiny_data):
    # The slow camera sends a frame every 5 s; the fast file has 60 frames. Waiting for full batches,
    # the fast source could score only one frame per slow frame; with the deadline it runs ahead.
    video = str(tiny_data / "conveyor_brick.mkv")
    stop, recs = threading.Event(), []

    def seen(rec):
        recs.append(rec)
        if sum(r["source"] == "fast" for r in recs) == 60:
            stop.set()

    s = run_stream(bundle, [f"{video}?name=fast", f"{video}?fps=0.2&name=slow"], [], on_record=seen, stop=stop)
    fast = [r["frame_id"] for r in recs if r["source"] == "fast"]
    last_fast = [i for i, r in enumerate(recs) if r["source"] == "fast"][-1]
    slow_before = sum(r["source"] == "slow" for r in recs[:last_fast])
    assert fast == list(range(60)) and s["sources"]["fast"]["frames"] == 60
    assert slow_before <= 2, slow_before  # counted in frames, not seconds


def test_per_source_threshold_counters_and_metrics(bundle, tiny_data):
    video = str(tiny_data / "conveyor_brick.mkv")
    port, got, seen = free_port(), {}, []

    def scrape(rec):
        seen.append(rec)
        if len(seen) == 100:  # read /metrics while the preview still serves it
            got["m"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    s = run_stream(
        bundle,
        [f"{video}?name=line", f"{video}?name=lax&threshold=1e9"],
        [f"http://127.0.0.1:{port}"],
        on_record=scrape,
    )
    line = [r for r in seen if r["source"] == "line"]
    lax = [r for r in seen if r["source"] == "lax"]
    assert any(r["is_anomalous"] for r in line) and not any(r["is_anomalous"] or r["regions"] for r in lax)
    assert {r["threshold"] for r in lax} == {1e9} and s["sources"]["lax"]["threshold"] == 1e9
    assert s["sources"]["line"]["anomalous_frames"] == sum(r["is_anomalous"] for r in line) > 0
    assert s["sources"]["line"]["latency_ms"]["n"] == 60
    m = got["m"]
    assert 'edgesdk_source_frames_total{source="line"}' in m and 'edgesdk_source_frames_total{source="lax"}' in m
    assert 'edgesdk_source_latency_ms{source="lax",quantile="0.99"}' in m


def test_multi_source_options_are_checked(bundle, tiny_data):
    video = str(tiny_data / "conveyor_brick.mkv")
    with pytest.raises(OptionError, match=r"\?threshold=nan: threshold must be a finite number"):
        run_stream(bundle, [video, f"{video}?threshold=nan"], [])
    with pytest.raises(OptionError, match="two sources are named 'a'"):
        run_stream(bundle, [f"{video}?name=a", f"{video}?name=a"], [])
    with pytest.raises(OptionError, match="two sources are named"):
        run_stream(bundle, [video, video], [])
    with pytest.raises(OptionError, match="source option name is given twice"):
        run_stream(bundle, [video, f"{video}?name=a&name=b"], [])
    with pytest.raises(OptionError, match="batch deadline"):
        run_stream(bundle, [video, f"{video}?name=b"], [], batch_deadline_ms=float("inf"))
    with pytest.raises(OptionError, match=r"\?tile=auto: \?tile= scores one source tile by tile"):
        run_stream(bundle, [video, f"{video}?tile=auto"], [])
    with pytest.raises(OptionError, match="no source given"):
        run_stream(bundle, [], [])
    with pytest.raises(OptionError, match="batched into one inference call"):
        run_stream(bundle, [video, f"{video}?name=b"], [], streams=2)


def test_multicam_benchmark_runs_batched_and_separate(bundle, tiny_data, tmp_path):
    from pathlib import Path

    root, out = Path(__file__).resolve().parents[1], tmp_path / "mc.json"
    argv = [root / "benchmarks/multicam.py", bundle, "--video", tiny_data / "conveyor_brick.mkv"]
    argv += ["--frames", "8", "--cameras", "1,2", "--json", out]
    r = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["mode"], x["cameras"], x["frames"]) for x in rows] == [
        ("batched, 1 process", 1, 8),
        ("1 process", 1, 8),
        ("batched, 1 process", 2, 16),
        ("2 processes", 2, 16),
    ]
    assert all(x["cpu_s"] > 0 and x["peak_rss_mb"] > 0 and x["p99_ms"] >= x["p50_ms"] > 0 for x in rows)
    assert rows[2]["mean_batch"] > 1 and rows[3]["peak_rss_mb"] > rows[2]["peak_rss_mb"] / 2


def test_multi_source_run_tells_systemd_ready_alive_and_stopping(bundle, tmp_path, monkeypatch):
    # A unit is Type=notify (deploy/service.py): without READY systemd would kill a multi-camera run.
    from notify_util import NotifySocket

    ns = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    stop, n = threading.Event(), []
    cam = "synth://conveyor?category=brick&fps=15"
    try:
        run_stream(
            bundle,
            [f"{cam}&name=a", f"{cam}&seed=1&name=b"],
            [],
            on_record=lambda r: (n.append(r), len(n) >= 40 and stop.set()),
            stop=stop,
        )
        ns.wait("STOPPING", 1, timeout=10)
    finally:
        ns.close()
    assert len(ns.keys("READY")) == 1 and len(ns.keys("WATCHDOG")) >= 1
    assert "sources batched" in ns.keys("READY")[0][1]["STATUS"]
