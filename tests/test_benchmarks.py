"""Benchmark scripts run end to end on the tiny data set (their numbers are for the README, not here)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_line_calibration_benchmark_reports_before_and_after(bundle, tiny_data, tmp_path):
    out = tmp_path / "line.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/line_calibration.py"), str(bundle),
                        "--data", str(tiny_data / "brick"), "--frames", "30", "--json", str(out),
                        "--throughput-frames", "30", "--rounds", "3"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["line_frames"] == 18 and row["defect_frames"] == 12 and "recall after" in r.stdout
    # The threshold is the good clip's mean + 3 std, and a higher threshold can only flag fewer frames.
    assert row["threshold_after"] == pytest.approx(row["good_clip_mean_z"] + 3 * row["good_clip_std_z"], rel=1e-6)
    up = row["threshold_after"] >= row["threshold_before"]
    assert (row["false_alarms_after"] <= row["false_alarms_before"]) if up else (row["recall_after"] >= row["recall_before"])
    # Throughput: one model-only and one stream measurement per sink set per round, shares from them.
    assert len(row["rounds_model_only_fps"]) == len(row["rounds_stream_fps_with_dir"]) == 3
    m, s = row["rounds_model_only_fps"], row["rounds_stream_fps_every_frame"]
    assert row["share_every_frame"] == pytest.approx(sorted(b / a for a, b in zip(m, s))[1])
    assert 0 < row["share_with_dir"] < 2 and "share every frame" in r.stdout


def test_soak_reports_flat_memory_fields(bundle, tiny_data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgesdk", "soak", str(bundle), "--source",
                        f"{tiny_data / 'conveyor_brick.mkv'}?loop=1", "--frames", "400", "--out-json",
                        str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 400 and len(s["samples"]) == 2 and (tmp_path / "s.png").stat().st_size > 1000
    assert 20 < s["rss_mb_end"] < 2000
