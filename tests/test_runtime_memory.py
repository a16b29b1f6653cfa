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


def _python(code: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "EDGESDK_MMAP"))}
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
