"""The TensorRT runner: its GPU-free parts here; on a GPU it must agree with ONNX Runtime."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgesdk.backends.tensorrt import EngineError, NoGPU, TensorRTRunner, nvidia_gpu_present, plan_bindings
from edgesdk.bundle import Bundle

ROOT = Path(__file__).resolve().parents[1]


def test_buffers_are_planned_for_the_largest_batch():
    b = plan_bindings(
        [
            ("image", True, np.uint8, (-1, 128, 128, 3)),
            ("score", False, np.float32, (-1,)),
            ("anomaly_map", False, np.float32, (-1, 128, 128)),
        ],
        max_batch=4,
    )
    assert [x.max_shape for x in b] == [(4, 128, 128, 3), (4,), (4, 128, 128)]
    assert [x.nbytes for x in b] == [4 * 128 * 128 * 3, 16, 4 * 128 * 128 * 4]
    with pytest.raises(EngineError, match="dynamic dims .* beyond the batch"):
        plan_bindings([("x", True, np.float32, (-1, -1, 3))], max_batch=2)


def test_gpu_presence_is_read_from_device_nodes(tmp_path):
    assert not nvidia_gpu_present(tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvidia0").touch()
    assert nvidia_gpu_present(tmp_path)


@pytest.fixture(scope="module")
def engine(bundle, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX builds the engine")
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile

    b = Bundle.open(shutil.copytree(bundle, tmp_path_factory.mktemp("trt") / "b"))
    return b, build_engine(b, load_profile("rtx")).plan


@pytest.mark.skipif(nvidia_gpu_present(), reason="this machine has a GPU: the GPU test runs instead")
def test_without_a_gpu_the_runner_and_verify_say_so(engine):
    b, plan = engine
    with pytest.raises(NoGPU, match="no NVIDIA GPU here"):
        TensorRTRunner(plan, b).load()
    r = subprocess.run(
        [sys.executable, "-m", "edgesdk", "verify", str(plan), "--bundle", str(b.path)], capture_output=True, text=True
    )
    assert r.returncode != 0 and "no NVIDIA GPU here" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "edgesdk", "predict", str(b.path), str(ROOT / "README.md"), "--backend", "tensorrt"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no NVIDIA GPU here" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not nvidia_gpu_present(), reason="needs an NVIDIA GPU (TensorRT engines run only there)")
def test_engine_agrees_with_onnxruntime_on_the_gpu(engine):
    pytest.importorskip("cuda.bindings", reason="cuda-python provides device memory")
    from edgesdk.backends import OnnxRuntimeRunner
    from edgesdk.measure.compare import compare_runners

    b, plan = engine
    with TensorRTRunner(plan, b) as t, OnnxRuntimeRunner(b.model_path, "CPUExecutionProvider") as o:
        r = compare_runners(o, t, b.parity_frames(), b.threshold)
        batch = t.infer({"image": b.parity_frames()[:2]})
        assert t.gpu_ms is not None and t.gpu_ms > 0
    assert r["verdict_flips"] == 0 and r["score_max_abs_err"] < 0.05
    assert batch["score"].shape == (2,) and batch["anomaly_map"].shape == (2, 128, 128)


def _stub_dir(tmp_path):
    """tensorrt-stubs (installed by `make` into .venv/stubs) copied with two upstream syntax errors
    fixed in tensorrt_bindings/tensorrt.pyi: parameters named `in` (a keyword), and add_scale_nd's
    required `channel_axis` after parameters with defaults."""
    import re

    src = Path(sys.prefix) / "stubs"
    if not (src / "tensorrt_bindings").is_dir():
        pytest.fail(f"{src}: tensorrt-stubs missing; `make test` installs them (see Makefile)")
    dst = tmp_path / "stubs"
    if dst.is_dir():
        return dst
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(src / pkg, dst / pkg)
    f = dst / "tensorrt_bindings/tensorrt.pyi"
    text = re.sub(r"\bin: ", "in_: ", f.read_text())
    f.write_text(
        text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    )
    return dst


def _mypy(tmp_path, target):
    cfg = tmp_path / "mypy.ini"  # errors inside the generated stubs are theirs, not ours
    cfg.write_text(
        "[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"
        "[mypy-tensorrt_bindings.*]\nignore_errors = True\n[mypy-tensorrt.*]\nignore_errors = True\n"
    )
    env = {**os.environ, "MYPYPATH": str(_stub_dir(tmp_path))}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(cfg), "--no-incremental", str(target)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_tensorrt_runner_type_checks_against_tensorrt_stubs(tmp_path):
    r = _mypy(tmp_path, ROOT / "edgesdk/backends/tensorrt.py")
    assert r.returncode == 0, r.stdout + r.stderr
    # The check can fail: a misspelled TensorRT call is caught.
    bad = tmp_path / "bad_runner.py"
    bad.write_text(
        (ROOT / "edgesdk/backends/tensorrt.py")
        .read_text()
        .replace("self.context.set_input_shape(", "self.context.set_input_shapes(")
    )
    r = _mypy(tmp_path, bad)
    assert r.returncode == 1 and "set_input_shapes" in r.stdout
