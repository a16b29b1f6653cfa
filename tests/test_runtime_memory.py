"""The device process stays lean (issue 23): scoring with ONNX Runtime loads no TensorRT-side module,
and a session's load-time transients go back to the system instead of staying resident.

Each check runs in a fresh interpreter: what a process has imported, and its resident memory, are
properties of the whole process, which this one (pytest, the other tests' sessions) would blur."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Modules only a TensorRT engine, a device profile or a TOML file needs.
NOT_ON_ORT_PATH = (
    "edgesdk.backends.tensorrt",
    "edgesdk.engines",
    "edgesdk.devices",
    "edgesdk.spec.device",
    "edgesdk.spec.engine",
    "tomllib",
    "subprocess",
)


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def _python(code: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **(env or {})}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_scoring_with_onnxruntime_imports_no_tensorrt_side_module(bundle):
    code = f"""
import json, sys
import numpy as np
from edgesdk.stream.detector import Detector
from edgesdk.stream.pipeline import run_stream
with Detector({str(bundle)!r}) as d:
    d.predict(np.zeros((96, 128, 3), np.uint8))
print(json.dumps(sorted(m for m in {list(NOT_ON_ORT_PATH)!r} if m in sys.modules)))
"""
    assert json.loads(_python(code)) == []
    # ... and every name stays where callers import it from, loaded on first use.
    code = """
from edgesdk.backends import TensorRTRunner
from edgesdk.spec import DeviceProfile, EngineSidecar, GPU_KEYS, MAX_WORKSPACE_MB
from edgesdk.spec.typed import load_toml
print(TensorRTRunner.__module__, DeviceProfile.__module__, EngineSidecar.__module__)
"""
    assert _python(code) == "edgesdk.backends.tensorrt edgesdk.spec.device edgesdk.spec.engine"


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory) -> Path:
    """12 Conv layers of 256 -> 256 channels, 3 x 3: 28 MB of weights in many blocks of 2.4 MB, the
    shape of a CNN's (the segmenter's, a backbone's) that glibc's dynamic threshold leaves resident."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    n, c = 12, 256
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.02).astype(np.float32), f"w{i}")
        for i in range(n)
    ]
    names = ["x"] + [f"a{i}" for i in range(n - 1)] + ["y"]
    nodes = [helper.make_node("Conv", [names[i], f"w{i}"], [names[i + 1]], pads=[1, 1, 1, 1]) for i in range(n)]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("conv") / "model.onnx"
    onnx.save(model, path)
    return path


def _load_memory(model: Path, env: dict[str, str]) -> dict:
    code = f"""
import json, numpy as np
from edgesdk.backends.onnxruntime import OnnxRuntimeRunner
def status(key): return [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key)][0]
r = OnnxRuntimeRunner({str(model)!r}, threads=1).load()
loaded = status("VmRSS")
for _ in range(3):
    r.infer({{"x": np.ones((1, 256, 8, 8), np.float32)}})
print(json.dumps({{"loaded": loaded, "peak": status("VmHWM"), "after": status("VmRSS")}}))
"""
    return json.loads(_python(code, env))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_session_load_gives_its_transients_back(conv_model):
    if not _glibc():
        pytest.skip("malloc_trim is glibc's; other C libraries keep their own policy")
    m = _load_memory(conv_model, {})
    # The load's copies of the 28 MB of weights (parsed protobuf, weights before prepacking) lie freed
    # in the middle of the heap once the session holds its own; glibc alone would keep them resident.
    assert m["peak"] - m["loaded"] > 16, m
    assert m["peak"] - m["after"] > 16, m  # and running the session does not take them back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_runtime_memory_benchmark_runs(bundle):
    script = str(ROOT / "benchmarks/runtime_memory.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, script, "imports", "--rounds", "1"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("detector import: "), out.stderr
    if _glibc():
        cmd = [sys.executable, script, "latency", str(bundle), "--rounds", "2", "--frame", "320x240"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert out.returncode == 0 and f"{bundle}: ratio " in out.stdout, out.stderr
