"""ONNX Runtime runner: CPU by default; TensorRT / CUDA execution providers first when installed."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.backends.base import Runner, TensorMeta
from edgesdk.errors import OptionError

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {
    "tensor(uint8)": "uint8",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
}

# glibc raises its mmap threshold to the size of each mapped block freed (up to 32 MiB). Once a
# session's load frees a large block, the load's transients (parsed protobuf, weights before
# prepacking) come from the heap, whose freed middle the allocator keeps: resident for the process's
# life. A fixed threshold (EDGESDK_MMAP_THRESHOLD=131072) maps them and unmaps them on free, and costs
# every later block over it (a camera frame, a full-size temporary) an mmap and fresh pages per frame:
# opt-in, for a device short of memory rather than of time (docs/BENCHMARKS.md).
MMAP_THRESHOLD_ENV = "EDGESDK_MMAP_THRESHOLD"  # bytes; unset or 0 leaves glibc's dynamic threshold
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
_mmap_threshold: int | None = None  # what this process set, once


def fix_mmap_threshold(env: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """Fix glibc's mmap threshold at EDGESDK_MMAP_THRESHOLD bytes before the first session loads
    (process-wide, once); the bytes set, or 0 where nothing was set: the variable unset or 0, not glibc
    (musl, macOS), or glibc's own MALLOC_MMAP_THRESHOLD_ given (glibc applied it at start)."""
    global _mmap_threshold
    if _mmap_threshold is not None:
        return _mmap_threshold
    raw = env.get(MMAP_THRESHOLD_ENV, "0").strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 32 << 20:
        raise OptionError(f"{MMAP_THRESHOLD_ENV}={raw!r}: bytes from 0 (off) to {32 << 20} (glibc's maximum)")
    want = int(raw)
    try:
        glibc = bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        glibc = False
    if want and glibc and "MALLOC_MMAP_THRESHOLD_" not in env:
        ok = ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, want) == 1
        _mmap_threshold = want if ok else 0
    else:
        _mmap_threshold = 0
    return _mmap_threshold


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

        fix_mmap_threshold()  # before any session allocates (see MMAP_THRESHOLD_ENV)
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
