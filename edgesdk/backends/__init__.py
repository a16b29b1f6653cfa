"""One runner per framework: load(), infer(feeds) -> outputs, close(); frameworks import in load().

`open_runner(backend, bundle, ...)` makes the runner for a bundle: ONNX Runtime on its model.onnx,
TensorRT on the engine built for it (found in BUNDLE/engines, or given). The TensorRT runner's
module (engine cache, device probes, device profiles) is imported when first asked for: a process
that scores with ONNX Runtime never loads it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesdk.backends.base import Runner, TensorMeta
from edgesdk.backends.onnxruntime import OnnxRuntimeRunner

if TYPE_CHECKING:
    from edgesdk.backends.tensorrt import TensorRTRunner
    from edgesdk.bundle import Bundle


def __getattr__(name: str) -> Any:
    if name == "TensorRTRunner":
        from edgesdk.backends.tensorrt import TensorRTRunner

        return TensorRTRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_runner(
    backend: str,
    bundle: Bundle,
    providers: str | list[str] = "auto",
    threads: int = 0,
    engine: str | Path | None = None,
    spin: bool = True,
    batch: int = 1,
) -> Runner:
    """A loaded runner of BACKEND for BUNDLE (errors name what is missing and where to get it); BATCH:
    the most frames the caller sends in one call (a TensorRT engine's profile must take them)."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(bundle.model_path, providers=providers, threads=threads, spin=spin).load()
    if backend == "tensorrt":
        from edgesdk.backends.tensorrt import TensorRTRunner

        return TensorRTRunner.from_bundle(bundle, engine=engine, batch=batch).load()
    raise ValueError(f"unknown backend {backend!r}; available: onnxruntime, tensorrt")


__all__ = ["OnnxRuntimeRunner", "Runner", "TensorMeta", "TensorRTRunner", "open_runner"]
