"""Benchmark scripts run end to end on the tiny data set (their numbers are for the README, not here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_line_calibration_benchmark_reports_before_and_after(bundle, tiny_data, tmp_path):
    out = tmp_path / "line.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/line_calibration.py"),
            str(bundle),
            "--data",
            str(tiny_data / "brick"),
            "--frames",
            "30",
            "--json",
            str(out),
            "--throughput-frames",
            "30",
            "--rounds",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["line_frames"] == 18 and row["defect_frames"] == 12 and "recall after" in r.stdout
    # The threshold is the good clip's mean + 3 std, and a higher threshold can only flag fewer frames.
    assert row["threshold_after"] == pytest.approx(row["good_clip_mean_z"] + 3 * row["good_clip_std_z"], rel=1e-6)
    up = row["threshold_after"] >= row["threshold_before"]
    assert (
        (row["false_alarms_after"] <= row["false_alarms_before"])
        if up
        else (row["recall_after"] >= row["recall_before"])
    )
    # Throughput: per round, model-only in both modes and the loop in each; a loop's share is its
    # median ratio to the faster model-only mode of the same round.
    m1, m2 = row["rounds_model_only_fps_s1"], row["rounds_model_only_fps_s2"]
    assert len(m1) == len(m2) == len(row["rounds_loop_fps_s2_with_dir"]) == 3
    assert row["rounds_best_model_only_fps"] == [max(a, b) for a, b in zip(m1, m2)]
    s2 = row["rounds_loop_fps_s2"]
    assert row["share_s2"] == pytest.approx(sorted(s / b for s, b in zip(s2, row["rounds_best_model_only_fps"]))[1])
    assert row["share_s2_vs_own_mode"] == pytest.approx(sorted(s / m for s, m in zip(s2, m2))[1])
    # The other loops' shares by the same arithmetic; how large they are is the machine's, not a test's.
    for name in ("s1", "s2_with_dir"):
        ratios = sorted(s / b for s, b in zip(row[f"rounds_loop_fps_{name}"], row["rounds_best_model_only_fps"]))
        assert row[f"share_{name}"] == pytest.approx(ratios[1]) and row[f"share_{name}"] > 0
    assert "share s2" in r.stdout


def test_soak_reports_flat_memory_fields(bundle, tiny_data, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "soak",
            str(bundle),
            "--source",
            f"{tiny_data / 'conveyor_brick.mkv'}?loop=1",
            "--frames",
            "400",
            "--out-json",
            str(tmp_path / "s.json"),
            "--plot",
            str(tmp_path / "s.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 400 and len(s["samples"]) == 2 and (tmp_path / "s.png").stat().st_size > 1000
    assert 20 < s["rss_mb_end"] < 2000


def test_tiling_benchmark_reports_latency_against_tile_count(bundle, tmp_path):
    out = tmp_path / "tiling.json"
    cmd = [sys.executable, str(ROOT / "benchmarks/tiling_latency.py"), str(bundle), "--grids", "1x1,3x2"]
    r = subprocess.run([*cmd, "--overlap", "32", "--rounds", "2", "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    # 128 px input: 128x128 is one tile; 384x256 with overlap 32 (step 96) has 4 columns and 3 rows
    assert [(x["frame"], x["tiles"]) for x in rows] == [("128x128", 1), ("384x256", 12)]
    assert all(x["p90_ms"] >= x["p50_ms"] > 0 and x["untiled_p50_ms"] > 0 for x in rows) and "tiles" in r.stdout


def test_drift_benchmark_reports_false_alarms_and_delays(bundle, tmp_path):
    out = tmp_path / "drift.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/drift_false_alarms.py"),
            str(bundle),
            "--frames",
            "200",
            "--onset",
            "100",
            "--after",
            "150",
            "--runs",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["stable"]["frames"] == 200 and res["stable"]["false_alarms"] == 0
    assert set(res["kinds"]) == {"ramp", "shift", "blur", "texture"} and "frames to event" in r.stdout
    assert res["kinds"]["blur"]["frames_to_event"][0] is not None


def test_patchcore_scores_benchmark_reads_both_scores_from_one_bank(tiny_data, tmp_path):
    out = tmp_path / "scores.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/patchcore_scores.py"), str(tiny_data / "brick"), "--size", "128"]
        + ["--coreset-ratio", "0.02", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["score"], x["num_neighbors"], x["sigma"]) for x in rows] == [
        (s, k, sigma) for k, sigma in ((9, 4.0), (1, 4.0), (9, 2.0)) for s in ("smoothed", "peak")
    ]
    assert all(0 <= x["image_auroc"] <= 1 and set(x["by_kind"]) == {"hole", "scratch", "smudge", "stain"} for x in rows)


def test_trt_int8_matrix_reads_a_bundle_it_did_not_make_and_resumes(tmp_path):
    """A bundle already there that the matrix has no record of is read from its manifest, never
    exported over (not even with --force); a cell in the JSON is skipped. (The export itself runs in
    docs/QUANTIZATION.md's measurement: minutes per cell, too slow here.)"""
    runs, bundles = tmp_path / "runs", tmp_path / "bundles"
    (runs / "brick-padim").mkdir(parents=True)  # present: never trained over
    theirs = bundles / "t-brick-padim-trt8"
    theirs.mkdir(parents=True)
    report = {"reference": {"image_auroc": 0.95}, "image_auroc": 0.948, "image_auroc_drop": 0.002}
    report["conv_counts"] = {"int8": 30, "fp16": 3, "fp32": 0}
    attempts = [{"passed": False}, {"passed": True}]
    cal = {"attempts": attempts, "decisions": {"sensitivity_sqnr_db": [["conv_1", 9.5]]}}
    (theirs / "manifest.json").write_text(json.dumps({"metrics": {"vs_float": report}, "calibration": cal}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cmd = [sys.executable, str(ROOT / "benchmarks/trt_int8_matrix.py"), "--data", str(tmp_path / "data")]
    cmd += ["--runs", str(runs), "--bundles", str(bundles), "--models", "padim", "--categories", "brick"]
    cmd += ["--prefix", "t-", "--markdown", "--force"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads((bundles / "t-trt-int8-matrix.json").read_text())["cells"]["brick padim"]
    assert not row["exported_here"] and row["passed"] and (row["int8"], row["fp16"], row["fp32"]) == (30, 3, 0)
    assert row["attempt"] == 2 and row["float_image_auroc"] == 0.95 and "load_before" in row
    assert "30/3/0" in r.stdout and "91%" in r.stdout and "2 of 6" in r.stdout
    assert "| brick padim | 0.950 → 0.948 | 30 / 3 / 0 | 91 % | 2 of 6 | pass |" in r.stdout
    # nothing but the JSON was added; the bundle is untouched
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(before + ["t-trt-int8-matrix.json"])
    again = subprocess.run(cmd[:-1], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "brick padim: done before, skipped" in again.stdout


def test_trt_int8_matrix_reads_a_failed_exports_attempts():
    import importlib.util

    from edgesdk.table import table

    spec = importlib.util.spec_from_file_location("trt_int8_matrix", ROOT / "benchmarks/trt_int8_matrix.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    attempts = [
        {"int8_convs": 33, "fp16_convs": 0, "fp32_convs": 0, "image_auroc": 0.928, "image_auroc_drop": 0.02},
        {"int8_convs": 17, "fp16_convs": 16, "fp32_convs": 0, "image_auroc": 0.94, "image_auroc_drop": 0.008},
    ]
    out = "edgesdk export: error: ... no bundle written.\n" + table(attempts, title="attempts") + "\nTry --calib"
    row = mod.from_failure(out)
    assert not row["passed"] and row["attempt"] == 2 and (row["int8"], row["fp16"], row["fp32"]) == (17, 16, 0)
    assert row["float_image_auroc"] == pytest.approx(0.948) and row["drop"] == pytest.approx(0.008)
    assert mod.from_failure("edgesdk export: error: run.json: not found")["error"].endswith("not found")
    # a segmenter fails on its outlines: among equal AUROC drops the attempt with the best pixel F1
    seg = [
        {"int8_convs": 52 - k, "fp16_convs": k, "image_auroc": 1.0, "image_auroc_drop": 0.0, "pixel_f1": f}
        for k, f in ((0, 0.69), (26, 0.71))
    ]
    row = mod.from_failure(table(seg, title="attempts"))
    assert row["fp16"] == 26 and row["pixel_f1"] == pytest.approx(0.71) and row["attempt"] == 2
