"""The device runtime must work where torch is not installed: import and run it with torch
blocked (sys.modules["torch"] = None makes any `import torch` raise ImportError)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = """
import sys
sys.modules["torch"] = None
for name in ("torchvision", "onnx", "onnxscript", "skimage"):
    sys.modules[name] = None          # training/export-only dependencies are not on a device either
"""


def run(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED + code, *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def test_block_really_blocks():
    r = run("import torch")
    assert r.returncode != 0 and "import of torch halted" in r.stderr


def test_runtime_modules_import_and_score_without_torch(bundle, tiny_data):
    code = """
import json, sys
import edgesdk.backends, edgesdk.video, edgesdk.stream.detector, edgesdk.stream.pipeline, edgesdk.measure.metrics
import edgesdk.measure.timing, edgesdk.measure.evaluate, edgesdk.bundle, edgesdk.spec, edgesdk.viz, edgesdk.cli
import edgesdk.backends.tensorrt, edgesdk.compile.trt, edgesdk.engines   # engine build/run on the device
import edgesdk.devices, edgesdk.measure.compare, edgesdk.images, edgesdk.video.base
import edgesdk.stream.calibrate, edgesdk.stream.adapt, edgesdk.stream.heads, edgesdk.stream.soak, edgesdk.video.mqtt, edgesdk.video.live, edgesdk.video.preview
import paho.mqtt.client
from edgesdk import Bundle, Detector, DetectorOptions
from edgesdk.measure.evaluate import evaluate
from edgesdk.stream.pipeline import run_stream
r = evaluate(sys.argv[1], sys.argv[2] + "/brick")
s = run_stream(sys.argv[1], sys.argv[2] + "/conveyor_brick.mkv", [])
print(json.dumps({"auroc": r["image_auroc"], "frames": s["frames"], "torch": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""
    r = run(code, bundle, tiny_data)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["auroc"] > 0.9 and out["frames"] == 60 and out["torch"] is False


def test_device_cli_commands_without_torch(bundle, tiny_data):
    code = "from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run(code, "predict", bundle, tiny_data / "brick/test/hole/000.png", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["is_anomalous"] is True
    r = run(code, "eval", bundle, "--data", tiny_data / "brick")  # table output, progress bar
    assert r.returncode == 0, r.stderr
    assert "image AUROC" in r.stdout and "latency per stage" in r.stdout


def test_engine_build_and_device_check_without_torch(bundle, tmp_path):
    """A Jetson builds its own engine with only the base install (+ TensorRT): no torch, no onnx."""
    import pytest

    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX builds the engine")
    code = "from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run(code, "build", bundle, "--device", "rtx", "--out", tmp_path / "engines", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sidecar"]["tensorrt_module"] == "tensorrt_rtx"
    r = run(code, "device", "check", bundle, "--device", "orin-nx")
    assert r.returncode == 0 and "will run on orin-nx" in r.stdout, r.stderr


def test_bench_runs_on_a_device_and_skips_the_torch_row(bundle, tmp_path):
    code = "from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run(code, "bench", bundle, "--backends", "torch,onnxruntime", "--iters", "10", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert rows[0]["status"] == "skipped" and "torch is not installed" in rows[0]["reason"]
    assert rows[1]["status"] == "ok" and rows[1]["cold_start_ms"] > 0


def test_adapt_runs_on_the_device_without_torch(bundle, tiny_data, tmp_path):
    """`edgesdk adapt` with the base install: features.onnx, numpy and ONNX Runtime, no torch, no onnx."""
    import cv2

    from edgesdk.images import list_images

    good = tmp_path / "good"
    good.mkdir()
    for i, p in enumerate(list_images(tiny_data / "brick/train/good")[:10]):
        cv2.imwrite(str(good / f"frame_{i:06d}.png"), (cv2.imread(str(p)) * 0.7).astype("uint8"))
    code = "from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run(code, "adapt", bundle, "--good", good, "--no-gate", "--out", tmp_path / "a", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["model"] == "padim" and len(rep["fit_frames"]) + len(rep["holdout_frames"]) == 10
    assert rep["n_after"] == rep["n_before"] + len(rep["fit_frames"]) and rep["gate"] == {"checked": False}
    r = run(code, "adapt", bundle, "--good", good, "--val", tiny_data / "brick/test", "--out", tmp_path / "a", "-q")
    assert r.returncode in (0, 2), r.stderr  # the gate decides; a refusal says why, on one line
    assert r.returncode == 0 and "threshold" in r.stdout or "edgesdk adapt: error:" in r.stderr and "recall" in r.stderr
    r = run(code, "adapt", bundle, "--good", good, "--no-gate", "--out", bundle)
    assert r.returncode == 2 and "edgesdk adapt: error: --out" in r.stderr
