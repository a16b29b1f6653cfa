"""Device profiles (devices/NAME.toml) and build configurations: what a target supports and how an
engine is built for it, every field checked. Standard library only."""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgesdk.spec.typed import (
    COMPUTE_CAPABILITY,
    DEVICE_KINDS,
    NAME,
    PRECISIONS,
    RUNTIME_PLATFORM,
    RUNTIME_PYTHON,
    TENSORRT_MODULES,
    VERSION,
    SpecError,
    _int,
    _num,
    _text,
    from_mapping,
    load_toml,
)


@dataclass(frozen=True)
class DeviceProfile:
    """One target device (devices/NAME.toml): which TensorRT builds for it and what it supports."""

    name: str
    description: str
    kind: str  # "jetson", "rtx" (x86 + RTX GPU) or "cpu" (ONNX Runtime only)
    tensorrt_module: str  # Python module that builds for it: "tensorrt", "tensorrt_rtx", ""
    tensorrt_version: str = ""  # major.minor shipped for it, e.g. "10.3"
    jetpack: str = ""
    l4t: str = ""
    cuda: str = ""
    compute_capability: str = ""  # e.g. "8.7"; "" = the builder's default (TensorRT for RTX)
    gpu_precisions: tuple[str, ...] = ("fp32",)
    dla_cores: int = 0
    dla_precisions: tuple[str, ...] = ()
    memory_gb: float = 0.0
    max_onnx_opset: int = 0  # highest ONNX opset its TensorRT parser reads (0: no TensorRT)
    camera: str = ""  # default camera source URI
    power_modes: tuple[str, ...] = ()
    match_models: tuple[str, ...] = ()  # substrings of /proc/device-tree/model that identify it
    notes: str = ""
    runtime_python: str = ""  # the OS's Python (major.minor) a packed runtime targets (pack --runtime)
    runtime_platforms: tuple[str, ...] = ()  # wheel platform tags it runs, e.g. manylinux_2_35_aarch64

    def __post_init__(self) -> None:
        _text(self.name, "name", NAME, "a plain name (letters, digits, . _ + -; no / or leading .)")
        if self.kind not in DEVICE_KINDS:
            raise SpecError(f"kind must be jetson, rtx or cpu, got {self.kind!r}")
        if self.tensorrt_module not in TENSORRT_MODULES + ("",):
            raise SpecError(
                f"tensorrt_module must be {', '.join(TENSORRT_MODULES)} or empty, got {self.tensorrt_module!r}"
            )
        if self.tensorrt_version:
            _text(self.tensorrt_version, "tensorrt_version", VERSION, 'a version like "10.3", or ""')
        if self.compute_capability:
            _text(self.compute_capability, "compute_capability", COMPUTE_CAPABILITY, 'like "8.7", or ""')
        bad = [p for p in self.gpu_precisions + self.dla_precisions if p not in PRECISIONS + ("fp8", "fp4")]
        if bad:
            raise SpecError(f"unknown precision {bad[0]!r} (known: {', '.join(PRECISIONS)}, fp8, fp4)")
        _int(self.dla_cores, "dla_cores", lo=0)
        _num(self.memory_gb, "memory_gb")
        _int(self.max_onnx_opset, "max_onnx_opset", lo=0)
        if any(not m.strip() for m in self.match_models):  # "" is a substring of every model
            raise SpecError(f"match_models must not hold an empty string, got {list(self.match_models)}")
        if bool(self.runtime_python) != bool(self.runtime_platforms):
            raise SpecError("runtime_python and runtime_platforms go together (both or neither)")
        if self.runtime_python:
            _text(self.runtime_python, "runtime_python", RUNTIME_PYTHON, 'major.minor like "3.10"')
        for p in self.runtime_platforms:
            _text(p, "runtime_platforms", RUNTIME_PLATFORM, "a Linux wheel platform tag like manylinux_2_35_aarch64")

    @property
    def strongly_typed(self) -> bool:
        """TensorRT >= 10 (and every TensorRT for RTX) takes precision from the graph; 8.5 needs flags."""
        if self.tensorrt_module == "tensorrt_rtx":
            return True
        return bool(self.tensorrt_version) and int(self.tensorrt_version.split(".")[0]) >= 10

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DeviceProfile":
        return from_mapping(cls, load_toml(path), str(path))


MAX_WORKSPACE_MB = 1 << 20  # 1 TiB: more is a typo, and TensorRT takes the pool size in bytes as size_t


@dataclass(frozen=True)
class BuildConfig:
    """How `edgesdk build` turns a bundle into an engine for one device."""

    batch: tuple[int, int, int] = (1, 1, 4)  # optimization profile over the dynamic batch: min, opt, max
    workspace_mb: int = 1024
    dla_core: int = -1  # -1: GPU only
    gpu_fallback: bool = True  # layers DLA cannot run go to the GPU
    optimization_level: int = 3  # TensorRT's builder_optimization_level (0-5)
    timing_cache: bool = True

    def __post_init__(self) -> None:
        if (
            not isinstance(self.batch, tuple)
            or len(self.batch) != 3
            or any(not isinstance(b, int) or isinstance(b, bool) for b in self.batch)
        ):
            raise SpecError(f"batch {self.batch!r}: need three ints MIN, OPT, MAX")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise SpecError(f"batch {lo}:{opt}:{hi}: need 1 <= min <= opt <= max")
        _int(self.workspace_mb, "workspace_mb")
        if not 0 < self.workspace_mb <= MAX_WORKSPACE_MB:
            raise SpecError(f"workspace {self.workspace_mb} MB: must be positive (and at most {MAX_WORKSPACE_MB})")
        _int(self.dla_core, "dla_core", lo=-1)
        _int(self.optimization_level, "optimization_level", lo=0, hi=5)
        for key in ("gpu_fallback", "timing_cache"):
            if not isinstance(getattr(self, key), bool):
                raise SpecError(f"{key} must be bool, got {getattr(self, key)!r}")
