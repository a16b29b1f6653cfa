"""One runner per framework: load(), infer(feeds) -> outputs, close(); frameworks import in load()."""
from __future__ import annotations

from edgesdk.backends.base import Runner, TensorMeta
from edgesdk.backends.onnxruntime import OnnxRuntimeRunner

BACKENDS = {"onnxruntime": OnnxRuntimeRunner}

__all__ = ["BACKENDS", "OnnxRuntimeRunner", "Runner", "TensorMeta"]
