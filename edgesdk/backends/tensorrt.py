"""TensorRT runner (device path, no torch): a raw plan built by `edgesdk build`, run with the
named-tensor API (set_input_shape, set_tensor_address, execute_async_v3) on one CUDA stream, device
buffers from cuda-python (`cuda.bindings`), pinned host buffers, GPU time from CUDA events.

The parts that need no GPU are plain functions and unit-tested: buffer planning here; finding the
engine of a bundle and refusing a plan whose sidecar does not match are edgesdk/engines.py.
Works with JetPack's `tensorrt` (8.5+: the named-tensor API) and TensorRT for RTX (`tensorrt_rtx`)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgesdk.backends.base import Runner, TensorMeta
from edgesdk.bundle import Bundle
from edgesdk.devices import cuda_device, current_gpu
from edgesdk.engines import (
    EngineError,
    TensorRTUnavailable,
    batch_problem,
    find_engine,
    import_tensorrt,
    installed_tensorrt,
    load_plan_sidecar,
    read_plan,
)

if TYPE_CHECKING:  # types come from tensorrt-stubs; at run time the sidecar names the flavour
    import tensorrt as trt


class NoGPU(RuntimeError):
    """TensorRT engines run on an NVIDIA GPU; this machine has none (or no CUDA driver)."""


@dataclass(frozen=True)
class Binding:
    """One I/O tensor of an engine, sized for the largest shape of the optimization profile."""

    name: str
    is_input: bool
    dtype: np.dtype
    max_shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.max_shape, dtype=np.int64)) * self.dtype.itemsize


def plan_bindings(io: list[tuple[str, bool, np.dtype, tuple[int, ...]]], max_batch: int) -> list[Binding]:
    """Buffers for each (name, is_input, dtype, shape with -1 for dynamic dims): the batch (dim 0) is
    the only dynamic axis our graphs have, so -1 there becomes MAX_BATCH; any other -1 is an error."""
    out = []
    for name, is_input, dtype, shape in io:
        dims = list(shape)
        if dims and dims[0] == -1:
            dims[0] = max_batch
        if any(d < 0 for d in dims):
            raise EngineError(
                f"tensor {name!r} has dynamic dims {tuple(shape)} beyond the batch; "
                "edgesdk graphs only have a dynamic batch"
            )
        out.append(Binding(name, is_input, np.dtype(dtype), tuple(dims)))
    return out


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (err, *values); raise on an error, return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else tuple(rest)


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, plan: str | Path, bundle: Bundle | None = None, max_batch: int | None = None):
        super().__init__()
        self.plan = Path(plan)
        self.bundle = bundle
        self.sidecar = load_plan_sidecar(self.plan)
        self.max_batch = max_batch or int(self.sidecar.profile["max"][0])
        self.gpu_ms: float | None = None  # GPU time of the last infer(), from CUDA events
        self._bindings: list[Binding] = []
        self._dev: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._host_ptrs: list[int] = []
        self.engine: trt.ICudaEngine | None = None
        self.context: trt.IExecutionContext | None = None

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, engine: str | Path | None = None, batch: int = 1, **_: Any
    ) -> "TensorRTRunner":
        """The runner of ENGINE, else of the plan find_engine picks; either must take BATCH frames a call
        (a run of BATCH cameras), checked before anything is loaded."""
        if engine is None:
            trt_mod = installed_tensorrt(bundle)
            engine = find_engine(
                bundle, module=trt_mod.__name__, version=trt_mod.__version__, gpu=_gpu_or_none(), batch=batch
            )
        elif why := batch_problem(load_plan_sidecar(engine), batch):
            raise EngineError(f"{engine}: {why}")
        return cls(engine, bundle)

    def load(self) -> "TensorRTRunner":
        side = self.sidecar
        try:
            trt_mod: Any = import_tensorrt(side.tensorrt_module)
        except TensorRTUnavailable as e:
            raise EngineError(f"{self.plan}: built with {side.tensorrt_module} {side.tensorrt_version}: {e}") from None
        if not nvidia_gpu_present():
            raise NoGPU(
                f"{self.plan}: no NVIDIA GPU here (no /dev/nvidia*, no Jetson GPU); TensorRT engines "
                "run on the device they were built for: run this there"
            )
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise EngineError(
                "--backend tensorrt needs cuda-python's cuda.bindings for device memory: "
                "pip install 'cuda-python>=12,<13' (CUDA 12: JetPack 6, RTX), "
                "'cuda-python>=13,<14' (CUDA 13: Thor)"
            ) from None
        self._cudart = cudart
        if not _gpu_count(cudart):
            raise NoGPU(f"{self.plan}: no CUDA GPU here; TensorRT engines run on the device they were built for")
        gpu = cuda_device(cudart)
        diff = side.mismatches(
            self.bundle.onnx_sha256 if self.bundle else None, trt_mod.__name__, trt_mod.__version__, gpu
        )
        if diff:
            raise EngineError(f"{self.plan}: refused: " + "; ".join(diff))
        # Typed against tensorrt-stubs (mypy in the tests): the engine/context API is the same in
        # JetPack's tensorrt and tensorrt_rtx.
        self._logger: trt.ILogger = trt_mod.Logger(trt_mod.Logger.WARNING)
        self._runtime: trt.Runtime = trt_mod.Runtime(self._logger)
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(read_plan(self.plan, side))
        if engine is None:
            raise EngineError(f"{self.plan}: TensorRT could not deserialize the plan (see its log above)")
        self.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"{self.plan}: TensorRT could not create an execution context (GPU memory?)")
        self.context = context
        io: list[tuple[str, bool, np.dtype, tuple[int, ...]]] = []
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            is_in = engine.get_tensor_mode(tname) == trt_mod.TensorIOMode.INPUT
            # the sidecar's profile sizes the buffers and picks the plan for a run of N cameras; a sidecar
            # edited to claim more than the plan's own profile (min, opt, max shapes) would overrun it
            if is_in and (real := int(engine.get_tensor_profile_shape(tname, 0)[2][0])) < self.max_batch:
                raise EngineError(
                    f"{self.plan}: refused: its sidecar claims batches up to {self.max_batch}, the plan's own "
                    f"profile takes {real} for input {tname!r}: rebuild with `edgesdk build --force`"
                )
            io.append(
                (
                    tname,
                    is_in,
                    np.dtype(trt_mod.nptype(engine.get_tensor_dtype(tname))),
                    _dims(engine.get_tensor_shape(tname)),
                )
            )
        self._bindings = plan_bindings(io, self.max_batch)
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._events = (
            _check(cudart.cudaEventCreate(), "cudaEventCreate"),
            _check(cudart.cudaEventCreate(), "cudaEventCreate"),
        )
        for b in self._bindings:
            self._dev[b.name] = int(_check(cudart.cudaMalloc(b.nbytes), "cudaMalloc"))
            hptr = int(_check(cudart.cudaMallocHost(b.nbytes), "cudaMallocHost"))  # pinned: async copies
            self._host_ptrs.append(hptr)
            raw = (ctypes.c_uint8 * b.nbytes).from_address(hptr)
            self._host[b.name] = np.ctypeslib.as_array(raw).view(b.dtype).reshape(b.max_shape)
            context.set_tensor_address(b.name, self._dev[b.name])
        self.loaded = True
        return self

    def _meta(self, inputs: bool) -> list[TensorMeta]:
        return [
            TensorMeta(b.name, ("batch", *b.max_shape[1:]), b.dtype.name)
            for b in self._bindings
            if b.is_input == inputs
        ]

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._meta(True)

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._meta(False)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.context is not None, "call load() first"
        cudart, stream = self._cudart, self._stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaEventRecord(self._events[0], stream), "cudaEventRecord")
        for b in self._bindings:
            if not b.is_input:
                continue
            x = np.ascontiguousarray(feeds[b.name], dtype=b.dtype)
            if x.shape[0] > self.max_batch or x.shape[1:] != b.max_shape[1:]:
                raise ValueError(
                    f"input {b.name!r}: shape {x.shape} outside the engine's profile "
                    f"(batch <= {self.max_batch}, {b.max_shape[1:]})"
                )
            host = self._host[b.name][: x.shape[0]]
            host[...] = x
            self.context.set_input_shape(b.name, x.shape)
            _check(cudart.cudaMemcpyAsync(self._dev[b.name], host.ctypes.data, x.nbytes, h2d, stream), "H2D copy")
        if not self.context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.plan}: execute_async_v3 failed")
        out = {}
        for b in self._bindings:
            if b.is_input:
                continue
            shape = _dims(self.context.get_tensor_shape(b.name))
            host = self._host[b.name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._dev[b.name], host.nbytes, d2h, stream), "D2H copy")
            out[b.name] = host
        _check(cudart.cudaEventRecord(self._events[1], stream), "cudaEventRecord")
        _check(cudart.cudaEventSynchronize(self._events[1]), "cudaEventSynchronize")
        self.gpu_ms = float(_check(cudart.cudaEventElapsedTime(*self._events), "cudaEventElapsedTime"))
        return {k: v.copy() for k, v in out.items()}  # host buffers are reused by the next call

    def close(self) -> None:
        if self.loaded:
            cudart = self._cudart
            for ptr in self._dev.values():
                cudart.cudaFree(ptr)
            for hptr in self._host_ptrs:
                cudart.cudaFreeHost(hptr)
            for ev in self._events:
                cudart.cudaEventDestroy(ev)
            cudart.cudaStreamDestroy(self._stream)
        self._dev, self._host, self._host_ptrs = {}, {}, []
        self.context = self.engine = None
        super().close()


def _dims(d: "trt.Dims") -> tuple[int, ...]:
    """TensorRT Dims -> a tuple of ints (Dims is indexable, not declared iterable)."""
    return tuple(int(d[i]) for i in range(len(d)))


def nvidia_gpu_present(root: Path = Path("/")) -> bool:
    """A CUDA-capable NVIDIA GPU is visible: a desktop driver's /dev/nvidia0 or a Jetson's GPU node."""
    return any((root / p).exists() for p in ("dev/nvidia0", "dev/nvgpu/igpu0", "dev/nvhost-gpu"))


def _gpu_count(cudart: Any) -> int:
    err, n = cudart.cudaGetDeviceCount()
    return int(n) if int(err) == 0 else 0


def _gpu_or_none() -> dict | None:
    return current_gpu() or None
