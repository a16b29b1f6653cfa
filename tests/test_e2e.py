"""The user's path through the CLI, on the tiny data set: train -> export -> eval/predict/run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgesdk.bundle import Bundle
from edgesdk.compile.onnx import ExportError, ExportOptions, export_onnx
from edgesdk.data import mvtec
from edgesdk.stream.detector import Detector
from edgesdk.train import load_run


def cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"edgesdk {args} failed:\n{r.stdout}\n{r.stderr}")
    return r


def test_onnx_agrees_with_torch_on_test_images(bundle, run_dir, tiny_data):
    net, _ = load_run(run_dir)
    items = mvtec.test_items(tiny_data / "brick")
    frames = mvtec.read_batch([i.path for i in items], (128, 128))
    with torch.no_grad():
        t_score, t_map = (t.numpy() for t in net(torch.from_numpy(frames)))
    with Detector(bundle) as det:
        o_score, o_map = det.infer(frames)
    assert np.max(np.abs(o_score - t_score) / np.maximum(np.abs(t_score), 1.0)) < 1e-4
    assert np.max(np.abs(o_map - t_map)) / max(np.abs(t_map).max(), 1.0) < 1e-4
    assert json.loads((bundle / "parity.json").read_text())["passed"] is True


def test_eval_json_has_the_contract_keys(bundle, tiny_data):
    r = json.loads(cli("eval", bundle, "--data", tiny_data / "brick", "--json").stdout)
    for key in ("image_auroc", "pixel_auroc", "f1", "threshold", "n_images", "latency_ms"):
        assert key in r, key
    assert {"p50", "p90", "p99"} <= set(r["latency_ms"])
    assert r["n_images"] == 18 and r["image_auroc"] > 0.9 and r["pixel_auroc"] > 0.9


def test_predict_flags_a_defect_and_saves_an_overlay(bundle, tiny_data, tmp_path):
    good = tiny_data / "brick/test/good/000.png"
    bad = tiny_data / "brick/test/hole/000.png"
    r = json.loads(cli("predict", bundle, good, bad, "--json", "--save", tmp_path).stdout)
    g, b = r["results"]
    assert not g["is_anomalous"] and b["is_anomalous"] and b["score"] > g["score"]
    # The hole's box must cover the true defect's centre.
    m = mvtec.read_item(mvtec.Item(bad, 1, "hole", tiny_data / "brick/ground_truth/hole/000_mask.png"), (128, 128))[1]
    ys, xs = np.nonzero(m)
    x0, y0, x1, y1 = b["regions"][0]["bbox"]
    assert x0 <= xs.mean() < x1 and y0 <= ys.mean() < y1
    import cv2

    assert cv2.imread(b["overlay"]).shape == (128, 128, 3)


def test_predict_files_is_the_detector_on_each_file(bundle, tiny_data, tmp_path):
    """The loop `edgesdk predict` and samples/score_folder.py share: one row per file, in order, each
    the Detector's verdict; overlays of the anomalous ones only when asked."""
    from edgesdk.stream.detector import DetectorOptions, predict_files

    paths = mvtec.list_images(tiny_data / "brick/test/good")[:2] + mvtec.list_images(tiny_data / "brick/test/hole")
    r = predict_files(bundle, paths, save=tmp_path, only_anomalous=True)
    with Detector(bundle) as det:
        want = [det.predict(cv2.imread(str(p))) for p in paths]
    assert [x["image"] for x in r["results"]] == [str(p) for p in paths]
    assert [x["score"] for x in r["results"]] == pytest.approx([w.score for w in want], rel=1e-5)
    assert [x["is_anomalous"] for x in r["results"]] == [w.is_anomalous for w in want]
    assert sorted(tmp_path.glob("*_overlay.png")) == sorted(
        tmp_path / f"{p.stem}_overlay.png" for p, w in zip(paths, want) if w.is_anomalous
    )
    assert r["threshold"] == Bundle.open(bundle).threshold and r["threshold_source"] == "good_holdout_k_sigma"
    r = predict_files(bundle, paths[:1], DetectorOptions(threshold=-100.0))
    assert r["results"][0]["is_anomalous"] and r["threshold_source"] == "option" and "overlay" not in r["results"][0]


def test_run_scores_every_frame_of_the_video(bundle, tiny_data, tmp_path):
    out = tmp_path / "frames.jsonl"
    out.write_text('{"earlier": "run"}\n')  # appended to, never truncated
    cli("run", bundle, "--source", f"file://{tiny_data / 'conveyor_brick.mkv'}", "--sink", f"jsonl://{out}")
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "run"}
    recs = [json.loads(x) for x in lines[1:]]
    truth = json.loads((tiny_data / "conveyor_brick.json").read_text())["frames"]
    assert [r["frame_id"] for r in recs] == list(range(len(truth)))
    for r in recs:
        assert {"frame_id", "timestamp", "score", "is_anomalous", "regions", "latency_ms"} <= set(r)
        assert {"read", "preprocess", "infer", "postprocess", "total"} <= set(r["latency_ms"])
    flagged = {r["frame_id"] for r in recs if r["is_anomalous"]}
    defect = {t["frame_id"] for t in truth if t["is_anomalous"]}
    assert len(flagged & defect) >= len(defect) // 2  # most defect frames are caught
    assert len(flagged - defect) <= 3  # and few good frames are flagged


def test_run_over_an_image_folder(bundle, tiny_data, tmp_path):
    r = cli(
        "run",
        bundle,
        "--source",
        tiny_data / "brick/test/hole",
        "--sink",
        f"jsonl://{tmp_path / 'o.jsonl'}",
        "--sink",
        f"dir://{tmp_path / 'ov'}",
        "--json",
    )
    s = json.loads(r.stdout)
    assert s["frames"] == 3 and s["anomalous_frames"] >= 2
    raw, over = sorted((tmp_path / "ov").glob("*.png")), sorted((tmp_path / "ov").glob("*_overlay.jpg"))
    assert len(raw) == len(over) == s["anomalous_frames"]
    assert [p.stem for p in raw] == [p.stem.removesuffix("_overlay") for p in over]
    srcs = sorted((tiny_data / "brick/test/hole").iterdir())  # the raw frame is the frame, losslessly
    assert any((cv2.imread(str(raw[0])) == cv2.imread(str(x))).all() for x in srcs)
    assert cv2.imread(str(over[0])).shape == cv2.imread(str(raw[0])).shape


def test_failed_export_keeps_the_previous_bundle(bundle, run_dir, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="disagrees with torch"):
        export_onnx(run_dir, target, ExportOptions(rtol=0.0))  # no float graph is bit-exact
    assert (target / "manifest.json").read_bytes() == before
    Bundle.open(target)  # still complete and verified
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_cli_errors_name_the_problem(tmp_path, bundle, tiny_data):
    r = cli("eval", tmp_path / "nobundle", "--data", tiny_data / "brick", check=False)
    assert r.returncode == 2 and "nobundle: bundle folder not found" in r.stderr
    r = cli("train", "--data", tmp_path / "nodata", "--out", tmp_path / "run", check=False)
    assert r.returncode == 2 and "nodata: not found" in r.stderr
    r = cli("run", bundle, "--source", "rtsp://cam.invalid/1", "--sink", "jsonl://x.jsonl", check=False)
    assert r.returncode == 2 and "rtsp://cam.invalid/1: cannot open this source" in r.stderr
    r = cli("run", bundle, "--source", "ftp://cam/1", "--sink", "jsonl://x.jsonl", check=False)
    assert r.returncode == 2 and "unsupported source scheme 'ftp'" in r.stderr
    r = cli("export", tmp_path, "--out", tmp_path / "b", check=False)
    assert r.returncode == 2 and "run.json: not found" in r.stderr


def test_val_folder_sets_an_f1_threshold(tiny_data, tmp_path):
    from edgesdk.train import train

    run = train(
        tiny_data / "brick",
        tmp_path / "run",
        val=tiny_data / "brick" / "test",
        config={"input_size": [128, 128], "feature_dim": 32},
        quiet=True,
    )
    th = json.loads((run / "run.json").read_text())["threshold"]
    assert th["source"] == "val_f1" and th["detail"]["val_f1"] > 0.8


def test_demo_quick_runs_end_to_end(tmp_path):
    """README's first command, at smoke size: every stage runs and the summary holds its numbers."""
    r = cli("demo", "--out", tmp_path / "demo", "--quick", "--categories", "brick")
    assert "zoo on the sample set" in r.stdout and "speed-up" in r.stdout and "stream:" in r.stdout
    s = json.loads((tmp_path / "demo/summary.json").read_text())
    for model in ("padim", "patchcore", "stfpm"):
        ev = s["categories"]["brick"][model]["eval"]
        assert ev["image_auroc"] > 0.85 and ev["pixel_auroc"] > 0.9, model
    assert s["categories"]["brick"]["patchcore"]["fit"]["bank_size"] > 0
    # The segmenter, trained on brick's labels/ (5 images per kind): evaluated beside the anomaly
    # models with the pixel metrics, and an overlay per test defect, filed by kind, its regions named.
    seg = s["categories"]["brick"]["segmenter"]
    assert seg["fit"]["steps"] == 60 and seg["fit"]["kinds"] == ["hole", "scratch", "smudge", "stain"]
    for model in ("padim", "patchcore", "stfpm", "segmenter"):
        ev = s["categories"]["brick"][model]["eval"]
        assert 0 <= ev["aupro"] <= 1 and 0 <= ev["pixel_f1"] <= 1, model
    assert ev["image_auroc"] > 0.85 and 0 <= ev["kind_accuracy"] <= 1
    assert "the segmenter (60 steps" in r.stdout and "kind accuracy" in r.stdout
    defects = [it for it in mvtec.test_items(tmp_path / "demo/data/brick") if it.label]
    files = sorted(Path(f) for f in s["segmenter"]["overlays"])
    assert files == sorted(
        tmp_path / "demo/overlays-segmenter" / it.kind / f"{it.path.stem}_overlay.png" for it in defects
    )
    assert all(cv2.imread(str(f)) is not None for f in files)
    assert s["stream"]["frames"] == 60 and s["stream"]["frame_f1"] > 0.5
    # The streamed model, quantized for this CPU: either the gate passed it (a bundle within max-drop
    # and its report printed) or it refused with the attempts (and left no bundle behind).
    q = s["int8"]
    if q["passed"]:
        assert (tmp_path / "demo/bundles/brick-patchcore-int8/model.onnx").is_file() and q["image_auroc_drop"] <= 0.005
        assert q["fp32_convs"] >= 3 and q["speedup_vs_float"] > 0 and "int8 vs float: gated on" in r.stdout
    else:
        assert "no bundle written" in q["why"] and not (tmp_path / "demo/bundles/brick-patchcore-int8").exists()
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx"):  # in the dev extra: the demo builds real engines
        assert "TensorRT engines" in r.stdout and s["engines"][0]["MB"] > 1
