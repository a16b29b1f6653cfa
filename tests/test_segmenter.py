"""The supervised segmenter (--model segmenter --labels DIR): trained from a labelled folder, exported
with its kinds through the parity gate, its regions named on the torch-free runtime."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SEG_CONFIG
from edgesdk.bundle import Bundle
from edgesdk.data import mvtec
from edgesdk.data.synth import DEFECTS
from edgesdk.errors import OptionError
from edgesdk.spec import Manifest, SpecError

KINDS = sorted(DEFECTS)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)


def test_labels_only_for_the_segmenter_and_always_for_it(tiny_data, tmp_path):
    from edgesdk.train import train

    cat = tiny_data / "brick"
    with pytest.raises(OptionError, match=r"--labels .*labels: --model padim learns from good images only"):
        train(cat, tmp_path / "a", "padim", labels=cat / "labels", quiet=True)
    with pytest.raises(OptionError, match=r"--model segmenter learns from labelled defects: pass --labels DIR"):
        train(cat, tmp_path / "b", "segmenter", quiet=True)
    r = cli("train", "--model", "stfpm", "--data", cat, "--labels", cat / "labels", "--out", tmp_path / "c")
    assert r.returncode == 2 and "edgesdk train: error: --labels" in r.stderr and "stfpm" in r.stderr
    r = cli("train", "--model", "segmenter", "--data", cat, "--out", tmp_path / "d")
    assert r.returncode == 2 and "pass --labels DIR" in r.stderr
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_run_records_labels_kinds_and_a_probability_threshold(seg, tiny_data):
    meta = json.loads((seg[0] / "run.json").read_text())
    assert meta["model"] == "segmenter" and meta["config"]["kinds"] == KINDS
    assert meta["labels"]["kinds"] == KINDS and meta["labels"]["counts"]["masks"] == 5 * len(KINDS)
    assert meta["fit"]["steps"] == SEG_CONFIG["steps"] and meta["fit"]["stopped_by"] == "steps"
    assert meta["threshold"]["value"] == 0.5 and meta["threshold"]["source"] == "probability"
    assert meta["normalization"]["kind"] == "probability"


def test_training_is_deterministic_for_a_seed(tiny_data, tmp_path):
    from edgesdk.train import train

    cat = tiny_data / "brick"
    cfg = {**SEG_CONFIG, "steps": 4}
    states = [
        torch.load(
            train(cat, tmp_path / f"r{i}", "segmenter", config=cfg, quiet=True, labels=cat / "labels") / "model.pt",
            weights_only=True,
        )
        for i in range(2)
    ]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = train(cat, tmp_path / "r2", "segmenter", config={**cfg, "seed": 1}, quiet=True, labels=cat / "labels")
    assert not torch.equal(
        torch.load(other / "model.pt", weights_only=True)["pixel_head.weight"], states[0]["pixel_head.weight"]
    )


def test_bundle_has_kinds_kind_map_and_passes_parity(seg):
    b = Bundle.open(seg[1])
    assert b.manifest.kinds == tuple(KINDS)
    assert [o.name for o in b.manifest.outputs] == ["score", "anomaly_map", "kind_map"]
    par = json.loads((seg[1] / "parity.json").read_text())
    assert par["passed"] and par["kind_map_mismatch_share"] <= 1e-3 and par["map_max_rel_err"] <= 1e-4
    from edgesdk.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(b.model_path, providers="CPUExecutionProvider") as r:
        out = r.infer({"image": b.parity_frames()[:2]})
    assert out["kind_map"].shape == (2, 128, 128) and out["kind_map"].dtype == np.int64
    assert 0 <= out["kind_map"].min() and out["kind_map"].max() < len(KINDS)
    assert np.all((out["anomaly_map"] >= 0) & (out["anomaly_map"] <= 1))
    np.testing.assert_allclose(out["score"], out["anomaly_map"].reshape(2, -1).max(1), rtol=1e-6)


def test_regions_name_their_kind_without_torch(seg, tiny_data):
    """The device runtime (torch blocked) scores the test set: every region names a kind of the bundle."""
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from edgesdk.stream.detector import predict_files\n"
        "r = predict_files(sys.argv[1], sys.argv[2:]); print(json.dumps(r['results']))"
    )
    items = [it for it in mvtec.test_items(tiny_data / "brick") if it.label]
    r = subprocess.run(
        [sys.executable, "-c", code, str(seg[1]), *(str(it.path) for it in items)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    regions = [reg for row in rows for reg in row["regions"]]
    assert regions and all(reg["kind"] in KINDS for reg in regions)


def test_majority_kind_of_a_region(seg):
    from edgesdk.stream.detector import Detector

    with Detector(seg[1]) as det:
        amap = np.zeros((128, 128), np.float32)
        amap[10:20, 10:20] = 0.9  # one region, 100 pixels
        amap[60:64, 60:64] = 0.8  # another, 16 pixels
        kind_map = np.zeros((128, 128), np.int64)
        kind_map[10:20, 10:14] = 1  # 40 pixels say kind 1, 60 say kind 2
        kind_map[10:20, 14:20] = 2
        kind_map[60:64, 60:64] = 3
        regs = det.regions(amap, (256, 256), kind_map=kind_map)
        assert [(r.kind, r.area) for r in regs] == [(KINDS[2], 100), (KINDS[3], 16)]
        assert regs[0].to_dict()["kind"] == KINDS[2] and "kind" not in det.regions(amap, (128, 128))[0].to_dict()
        kind_map[10:20, 10:20] = 99  # an index no kind has
        assert det.regions(amap, (128, 128), kind_map=kind_map)[0].kind == "unknown"


@pytest.mark.parametrize(
    "kinds, message",
    [
        (["hole", "hole"], r"kinds\[1\] 'hole' is listed twice"),
        (["hole", "../x"], r"kinds\[1\] must be letters"),
        (["unknown"], r"kinds\[0\] 'unknown' is reserved"),
        ("hole", r"field kinds must be a list"),
        ([3], r"kinds\[0\] must be letters"),
    ],
)
def test_manifest_kinds_are_checked(seg, kinds, message):
    d = json.loads((seg[1] / "manifest.json").read_text())
    assert Manifest.from_dict(d).kinds == tuple(KINDS)
    with pytest.raises(SpecError, match=message):
        Manifest.from_dict({**d, "kinds": kinds}, "m.json")
    old = {k: v for k, v in d.items() if k != "kinds"}  # bundles from before kinds load, with none
    assert Manifest.from_dict(old).kinds == ()


def test_stream_records_carry_the_kind(seg, tiny_data, tmp_path):
    from edgesdk.stream.pipeline import run_stream

    folder = tmp_path / "frames"
    folder.mkdir()
    for it in mvtec.test_items(tiny_data / "brick"):
        if it.label:
            shutil.copy(it.path, folder / f"{it.kind}_{it.path.name}")
    out = tmp_path / "records.jsonl"
    run_stream(seg[1], str(folder), [f"jsonl://{out}"])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {reg["kind"] for r in recs for reg in r["regions"]}
    assert recs and kinds and kinds <= set(KINDS)


def test_int8_cpu_goes_through_the_gate_which_checks_pixel_f1(seg, tmp_path, monkeypatch):
    from edgesdk.compile import gate
    from edgesdk.compile.onnx import ExportOptions, export_onnx

    opts = ExportOptions(precision="int8", target="cpu", n_calib=16, max_drop=0.05)
    b = Bundle.open(export_onnx(seg[0], tmp_path / "int8", opts))
    rep = b.manifest.metrics["vs_float"]
    assert b.manifest.kinds == tuple(KINDS) and [o.name for o in b.manifest.outputs][-1] == "kind_map"
    assert rep["passed"] and 0 <= rep["pixel_f1"] <= 1 and rep["pixel_f1_drop"] <= gate.PIXEL_F1_DROP
    assert rep["pixel_f1_float"] == rep["reference"]["pixel_f1"] and "pixel_f1" in b.manifest.calibration["attempts"][0]
    # A pixel-F1 loss the image AUROC does not show still fails the gate, and nothing is written.
    monkeypatch.setattr(gate, "PIXEL_F1_DROP", -1.0)
    with pytest.raises(gate.GateError, match=r"pixel_f1_drop <= -1\.0"):
        export_onnx(seg[0], tmp_path / "never", opts)
    assert not (tmp_path / "never").exists()


def test_tensorrt_engines_build_from_every_precision(seg, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
    from edgesdk.compile.onnx import ExportOptions, export_onnx
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile
    from edgesdk.spec import BuildConfig

    for precision in ("fp32", "fp16", "int8"):
        b = Bundle.open(
            seg[1]
            if precision == "fp32"
            else export_onnx(
                seg[0],
                tmp_path / precision,
                ExportOptions(precision=precision, target="tensorrt", n_calib=8, max_drop=0.2),
            )
        )
        r = build_engine(b, load_profile("rtx"), BuildConfig(batch=(1, 1, 2)), out=tmp_path / f"e_{precision}")
        assert r.sidecar.model == "segmenter" and r.sidecar.strongly_typed and r.sidecar.precision == precision
        assert r.plan.stat().st_size > 100_000 and r.sidecar.tensorrt_version == trt.__version__


def test_eval_reports_localization_and_kind_accuracy(seg, tiny_data, bundle):
    from edgesdk.measure.evaluate import evaluate

    r = evaluate(seg[1], tiny_data / "brick")
    assert 0 <= r["kind_accuracy"] <= 1 and r["aupro"] is not None and 0 <= r["pixel_f1"] <= 1
    assert "kind_accuracy" not in evaluate(bundle, tiny_data / "brick")  # no kinds, no such number
