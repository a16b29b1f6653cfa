"""ONNX Runtime runner: CPU by default; TensorRT / CUDA execution providers first when installed."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.backends.base import Runner, TensorMeta

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {
    "tensor(uint8)": "uint8",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
}


def _is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


_loaded_once = False  # trim after the process's first session only (see load)


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim). A session's load frees its
    transients (the parsed protobuf, weights before prepacking) in the middle of the heap, and glibc
    keeps freed heap pages resident for the process's life; trimming after the first load returns them
    at no cost per frame (docs/BENCHMARKS.md). False where nothing was trimmed: not glibc (musl and
    macOS keep their allocator's policy), or no free page."""
    return _is_glibc() and ctypes.CDLL(None).malloc_trim(0) == 1


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        model: str | Path,
        providers: list[str] | str = "auto",
        threads: int = 0,
        spin: bool = True,
        mem_pattern: bool = False,
    ):
        super().__init__()
        self.model = Path(model)
        self.requested = providers
        self.threads = threads  # 0: let ONNX Runtime use every core
        # Spinning pool threads win when inference has the CPU to itself (benchmarks); when capture
        # and sinks share it (the stream loop), they steal its cores: measured on 2 cores, PatchCore
        # in the pipeline 69% -> 78% of model-only FPS with spinning off.
        self.spin = spin
        self.mem_pattern = mem_pattern  # False: half the resident activations, see load()
        self.session: Any = None  # an onnxruntime.InferenceSession once loaded (the package ships no types)
        self.output_names: list[str] = []

    def load(self) -> "OnnxRuntimeRunner":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.requested == "auto":
            providers = [p for p in PREFERRED if p in available]
        else:
            providers = [self.requested] if isinstance(self.requested, str) else list(self.requested)
            missing = [p for p in providers if p not in available]
            if missing:
                raise RuntimeError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        # With memory patterns ONNX Runtime plans one block for every intermediate tensor of a run and
        # keeps it beside the arena chunks the first run already took: the activations twice, resident
        # for the session's life. Without, the arena's chunks are reused (docs/BENCHMARKS.md, issue 23).
        opts.enable_mem_pattern = self.mem_pattern
        if not self.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.model), opts, providers=providers)
        except Exception as e:
            raise RuntimeError(f"{self.model}: ONNX Runtime could not load the model: {e}") from e
        # Once, at the process's start: a trim locks each malloc arena while it walks it, and a later load
        # (a model switched while the stream runs) would stall the inference threads' allocations.
        global _loaded_once
        if not _loaded_once:
            _loaded_once = True
            trim_heap()
        self.output_names = [o.name for o in self.session.get_outputs()]  # asked once, not per frame
        self.loaded = True
        return self

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers() if self.session else []

    def _live(self) -> Any:
        if self.session is None:
            raise self.not_loaded()
        return self.session

    def _meta(self, items) -> list[TensorMeta]:
        return [TensorMeta(i.name, tuple(i.shape), _DTYPES.get(i.type, i.type)) for i in items]

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._meta(self._live().get_inputs())

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._meta(self._live().get_outputs())

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._live().run(self.output_names, feeds)))

    def close(self) -> None:
        self.session = None
        super().close()
