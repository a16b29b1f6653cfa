"""The engine sidecar (PLAN.json): what a raw TensorRT plan was built from and for, every field
checked before any is acted on. Standard library only."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgesdk.spec.device import MAX_WORKSPACE_MB
from edgesdk.spec.typed import (
    COMPUTE_CAPABILITY,
    NAME,
    PRECISIONS,
    RELEASE,
    SHA256,
    TENSORRT_MODULES,
    SpecError,
    _int,
    _num,
    _one_of,
    _text,
    from_mapping,
    load_json,
)

ENGINE_SCHEMA = 1
BUILDER_FLAGS = ("FP16", "INT8", "GPU_FALLBACK")
GPU_KEYS = ("name", "compute_capability")


@dataclass(frozen=True)
class EngineSidecar:
    """What a raw TensorRT plan was built from and for (written as PLAN.json beside it).

    A plan is only valid for the TensorRT version and GPU that built it; the runtime refuses a plan
    whose sidecar does not match what is running, and says what differs. Every field is checked
    when the sidecar is made or loaded, before anything acts on one: tensorrt_module is imported,
    plan names a file, profile sizes buffers."""

    plan: str  # plan file name, beside this sidecar
    plan_sha256: str
    plan_bytes: int
    key: str  # hash of everything below that changes the engine
    onnx_sha256: str  # the bundle's model.onnx
    model: str
    precision: str  # the graph's own precision (strongly typed) or the flags set from it
    tensorrt_module: str  # "tensorrt" (JetPack, datacenter) or "tensorrt_rtx"
    tensorrt_version: str  # full version that built it
    device: str  # device profile name
    gpu: dict  # {"name", "compute_capability"} where the builder saw a GPU, else {}
    strongly_typed: bool
    flags: tuple[str, ...]  # builder flags set (TensorRT 8.5: FP16/INT8 from the graph)
    profile: dict  # {"input": name, "min": [...], "opt": [...], "max": [...]}
    dla_core: int
    workspace_mb: int
    build_seconds: float
    bundle: str = ""
    created_utc: str = ""
    edgesdk_version: str = ""
    schema_version: int = ENGINE_SCHEMA

    def __post_init__(self) -> None:
        # The import allow-list first: nothing below may be reached with a module the file chose.
        if self.tensorrt_module not in TENSORRT_MODULES:
            raise SpecError(
                f"tensorrt_module must be one of {', '.join(TENSORRT_MODULES)}, got {self.tensorrt_module!r}"
            )
        _int(self.schema_version, "schema_version", lo=ENGINE_SCHEMA, hi=ENGINE_SCHEMA)
        if not (isinstance(self.plan, str) and NAME.fullmatch(self.plan) and self.plan.endswith(".plan")):
            raise SpecError(f"plan must be a plain file name ending in .plan (no folders), got {self.plan!r}")
        _text(self.plan_sha256, "plan_sha256", SHA256, "64 lowercase hex digits")
        _text(self.onnx_sha256, "onnx_sha256", SHA256, "64 lowercase hex digits")
        _int(self.plan_bytes, "plan_bytes", lo=0)
        _text(self.key, "key", re.compile(r"[0-9a-f]{1,64}"), "hex digits")
        _text(self.model, "model", NAME, "a plain name")
        _one_of(self.precision, "precision", PRECISIONS)
        _text(self.tensorrt_version, "tensorrt_version", RELEASE, 'a version like "10.3.0.30"')
        _text(self.device, "device", NAME, "a device profile name")
        if not isinstance(self.gpu, dict) or set(self.gpu) - set(GPU_KEYS):
            raise SpecError(f"gpu must be {{}} or a table of {', '.join(GPU_KEYS)}, got {self.gpu!r}")
        if not isinstance(self.gpu.get("name", ""), str):
            raise SpecError(f"gpu.name must be str, got {self.gpu['name']!r}")
        if "compute_capability" in self.gpu:
            _text(self.gpu["compute_capability"], "gpu.compute_capability", COMPUTE_CAPABILITY, 'like "8.7"')
        if not isinstance(self.strongly_typed, bool):
            raise SpecError(f"strongly_typed must be bool, got {self.strongly_typed!r}")
        for i, f in enumerate(self.flags):
            _one_of(f, f"flags[{i}]", BUILDER_FLAGS)
        self._check_profile()
        _int(self.dla_core, "dla_core", lo=-1)
        _int(self.workspace_mb, "workspace_mb", lo=1, hi=MAX_WORKSPACE_MB)
        _num(self.build_seconds, "build_seconds")
        for key in ("bundle", "created_utc", "edgesdk_version"):
            if not isinstance(getattr(self, key), str):
                raise SpecError(f"{key} must be str, got {getattr(self, key)!r}")

    def _check_profile(self) -> None:
        """{"input": name, "min"/"opt"/"max": [B, H, W, C]}: positive ints, min <= opt <= max."""
        p = self.profile
        if not isinstance(p, dict) or set(p) != {"input", "min", "opt", "max"}:
            raise SpecError(f"profile must be a table of input, min, opt, max, got {p!r}")
        if not isinstance(p["input"], str) or not p["input"]:
            raise SpecError(f"profile.input must be a tensor name, got {p['input']!r}")
        shapes = [p[k] for k in ("min", "opt", "max")]
        for k, shape in zip(("min", "opt", "max"), shapes):
            if not isinstance(shape, (list, tuple)) or not shape:
                raise SpecError(f"profile.{k} must be a list of dims, got {shape!r}")
            for i, d in enumerate(shape):
                _int(d, f"profile.{k}[{i}]", lo=1)
        lo, opt, hi = shapes
        if not len(lo) == len(opt) == len(hi) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise SpecError(f"profile shapes need min <= opt <= max in every dim, got {lo}, {opt}, {hi}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def path_for(plan: str | os.PathLike) -> Path:
        """NAME.plan's sidecar is NAME.json beside it."""
        return Path(plan).with_suffix(".json")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EngineSidecar":
        """The sidecar at PATH, every field checked; its plan must be the NAME.plan beside it."""
        path = Path(path)
        d = load_json(
            path, "engine sidecar not found (every plan has PLAN.json beside it; rebuild with `edgesdk build`)"
        )
        if isinstance(d, dict) and d.get("schema_version") != ENGINE_SCHEMA:
            raise SpecError(
                f"{path}: engine sidecar schema_version {d.get('schema_version')!r} is not "
                f"supported (this edgesdk reads {ENGINE_SCHEMA})"
            )
        side = from_mapping(cls, d, str(path))
        if side.plan != path.with_suffix(".plan").name:
            raise SpecError(
                f"{path}: plan {side.plan!r} is not the plan beside this sidecar ({path.with_suffix('.plan').name})"
            )
        return side

    @staticmethod
    def inside_folder(path: str | os.PathLike) -> Path:
        """PATH (a plan or sidecar) when it, links followed, stays in its own folder; a link that
        leads elsewhere is refused: the sidecar vouches for the file beside it, nothing else."""
        path = Path(path)
        real, folder = path.resolve(), path.parent.resolve()
        if real.parent != folder:
            raise SpecError(
                f"{path}: a link to {real}, outside {path.parent}; engines and sidecars must "
                "be plain files in their folder"
            )
        return path

    def mismatches(
        self,
        onnx_sha256: str | None = None,
        tensorrt_module: str | None = None,
        tensorrt_version: str | None = None,
        gpu: dict | None = None,
    ) -> list[str]:
        """Human-readable differences between this engine and what it is about to run with."""
        out = []
        if onnx_sha256 is not None and onnx_sha256 != self.onnx_sha256:
            out.append(
                f"built from model.onnx sha256 {self.onnx_sha256[:12]}…, this bundle's is "
                f"{onnx_sha256[:12]}… (another bundle, or re-exported)"
            )
        if tensorrt_module is not None and tensorrt_module != self.tensorrt_module:
            out.append(f"built with {self.tensorrt_module}, running {tensorrt_module}")
        if tensorrt_version is not None and tensorrt_version != self.tensorrt_version:
            out.append(
                f"built with TensorRT {self.tensorrt_version}, running {tensorrt_version} "
                "(plans are not portable across TensorRT versions)"
            )
        built_cc = self.gpu.get("compute_capability")
        run_cc = (gpu or {}).get("compute_capability")
        if built_cc and run_cc and built_cc != run_cc:
            out.append(
                f"built on a GPU of compute capability {built_cc} ({self.gpu.get('name', '?')}), "
                f"running on {run_cc} ({(gpu or {}).get('name', '?')})"
            )
        return out
