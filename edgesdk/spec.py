"""Frozen dataclasses for what crosses a file boundary (the bundle manifest), with loaders that say
which file is wrong and how. Standard library only: the device runtime imports this."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgesdk.errors import EdgesdkError, no_nonfinite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class SpecError(EdgesdkError):
    """A file the user gave us is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    height: int
    width: int
    dtype: str = "uint8"
    layout: str = "NHWC"   # raw frames as OpenCV returns them
    color: str = "BGR"


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple  # e.g. ("batch",) or ("batch", 256, 256)
    dtype: str = "float32"
    meaning: str = ""


@dataclass(frozen=True)
class Threshold:
    """One threshold decides both the image verdict (score > value) and the defect pixels
    (anomaly_map > value): the graph outputs the image score as the max of the map."""
    value: float
    source: str            # "good_holdout_k_sigma" or "val_f1"
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    model: dict            # name, backbone and the model's own hyper-parameters
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    threshold: Threshold
    normalization: dict    # how raw distances became scores (done inside the graph)
    precision: str
    files: dict[str, FileEntry]
    metrics: dict = field(default_factory=dict)       # measured at export (parity, holdout)
    calibration: dict | None = None
    graph: dict = field(default_factory=dict)         # opset, op counts, dtypes: device checks need no onnx
    provenance: dict = field(default_factory=dict)
    edgesdk_version: str = ""
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(f"{where}: schema_version {version!r} is not supported "
                            f"(this edgesdk reads schema_version {SCHEMA_VERSION}); "
                            "re-export the bundle with this edgesdk version")
        try:
            return cls(
                model=dict(d["model"]),
                input=InputSpec(**d["input"]),
                outputs=tuple(OutputSpec(**{**o, "shape": tuple(o["shape"])}) for o in d["outputs"]),
                threshold=Threshold(**d["threshold"]),
                normalization=dict(d["normalization"]),
                precision=str(d["precision"]),
                files={k: FileEntry(**v) for k, v in d["files"].items()},
                metrics=dict(d.get("metrics", {})),
                calibration=d.get("calibration"),
                graph=dict(d.get("graph", {})),
                provenance=dict(d.get("provenance", {})),
                edgesdk_version=str(d.get("edgesdk_version", "")),
                created_utc=str(d.get("created_utc", "")),
                schema_version=version,
            )
        except KeyError as e:
            raise SpecError(f"{where}: missing field {e.args[0]!r}") from None
        except TypeError as e:
            raise SpecError(f"{where}: malformed field ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        path = Path(path)
        data = load_json(path, f"manifest not found (a bundle is a folder with {MANIFEST} and the files it lists)")
        return cls.from_dict(data, where=str(path))


def load_json(path: Path, missing: str) -> Any:
    """Parsed JSON of PATH; SpecError naming the file when it is missing (MISSING says what it is)
    or not JSON."""
    if not path.is_file():
        raise SpecError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=os.path.getsize(path))


# -- typed TOML/JSON configs ---------------------------------------------------------------------
T = TypeVar("T")


def _finite_tree(value: Any, key: str, where: str) -> None:
    """SpecError naming KEY (e.g. `profile.max[0]`) where VALUE holds an inf or nan anywhere."""
    try:
        no_nonfinite(value, where, key)
    except EdgesdkError as e:
        raise SpecError(str(e)) from None


def _check_type(value: Any, tp: Any, key: str, where: str) -> Any:
    """`value` converted to the dataclass field type `tp`, or SpecError naming the key and file.
    Floats must be finite, inside tables and lists too: inf/nan would pass every range check."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: {key} must be a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return tuple(_check_type(v, item, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: {key} must be a table, got {type(value).__name__}")
        _finite_tree(value, key, where)
        return dict(value)
    if tp is Any:
        _finite_tree(value, key, where)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise SpecError(f"{where}: {key} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is float and not math.isfinite(value):
        raise SpecError(f"{where}: {key} is {value!r}; only finite numbers are accepted")
    return value


def from_mapping(cls: type[T], d: Any, where: str) -> T:
    """Build a frozen dataclass from a dict: unknown keys, missing keys, wrong types, non-finite
    numbers and the class's own range checks (its __post_init__) are errors that name the key and
    `where` (the file)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a table/object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(fields), key=str)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{where}: missing key {name!r}")
            continue
        kwargs[name] = _check_type(d[name], hints[name], name, where)
    try:
        return cls(**kwargs)
    except SpecError as e:          # a range check of the class itself: say which file
        raise SpecError(f"{where}: {e}") from None


def load_toml(path: str | os.PathLike) -> dict:
    """Parsed TOML of PATH; SpecError naming the file when it is missing, not TOML, or holds an
    inf/nan (TOML has literals for both) anywhere, naming the key."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None
    _finite_tree(doc, "", str(path))
    return doc


# Range checks shared by the configs below. Each raises SpecError naming the field; from_mapping
# prefixes the file.
def _int(value: Any, key: str, lo: int | None = None, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{key} must be int, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
        raise SpecError(f"{key} must be {span}, got {value}")


def _num(value: Any, key: str, lo: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{key} must be a finite number, got {value!r}")
    if value < lo:
        raise SpecError(f"{key} must be >= {lo:g}, got {value!r}")


def _text(value: Any, key: str, pattern: re.Pattern, like: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SpecError(f"{key} must be {like}, got {value!r}")


def _one_of(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise SpecError(f"{key} must be one of {names}, got {value!r}")


PRECISIONS = ("fp32", "fp16", "int8")
DEVICE_KINDS = ("jetson", "rtx", "cpu")
# The only Python modules a device profile or an engine sidecar may name: the value is imported,
# so a free string would let a file pick code to run.
TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx")
# Profile and device names become parts of engine and timing-cache file names: one plain component.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
RELEASE = re.compile(r"[0-9]+(\.[0-9A-Za-z+-]+)*")    # a module's __version__, e.g. "10.3.0.30"
COMPUTE_CAPABILITY = re.compile(r"[0-9]+\.[0-9]+")
RUNTIME_PYTHON = re.compile(r"3\.[0-9]{1,2}")
RUNTIME_PLATFORM = re.compile(r"(manylinux_2_[0-9]{1,3}|manylinux2014|manylinux2010|manylinux1|linux)"
                              r"_(x86_64|i686|aarch64|armv7l|ppc64le|s390x|riscv64)")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DeviceProfile:
    """One target device (devices/NAME.toml): which TensorRT builds for it and what it supports."""
    name: str
    description: str
    kind: str                          # "jetson", "rtx" (x86 + RTX GPU) or "cpu" (ONNX Runtime only)
    tensorrt_module: str               # Python module that builds for it: "tensorrt", "tensorrt_rtx", ""
    tensorrt_version: str = ""         # major.minor shipped for it, e.g. "10.3"
    jetpack: str = ""
    l4t: str = ""
    cuda: str = ""
    compute_capability: str = ""       # e.g. "8.7"; "" = the builder's default (TensorRT for RTX)
    gpu_precisions: tuple[str, ...] = ("fp32",)
    dla_cores: int = 0
    dla_precisions: tuple[str, ...] = ()
    memory_gb: float = 0.0
    max_onnx_opset: int = 0            # highest ONNX opset its TensorRT parser reads (0: no TensorRT)
    camera: str = ""                   # default camera source URI
    power_modes: tuple[str, ...] = ()
    match_models: tuple[str, ...] = ()  # substrings of /proc/device-tree/model that identify it
    notes: str = ""
    runtime_python: str = ""           # the OS's Python (major.minor) a packed runtime targets (pack --runtime)
    runtime_platforms: tuple[str, ...] = ()   # wheel platform tags it runs, e.g. manylinux_2_35_aarch64

    def __post_init__(self) -> None:
        _text(self.name, "name", NAME, "a plain name (letters, digits, . _ + -; no / or leading .)")
        if self.kind not in DEVICE_KINDS:
            raise SpecError(f"kind must be jetson, rtx or cpu, got {self.kind!r}")
        if self.tensorrt_module not in TENSORRT_MODULES + ("",):
            raise SpecError(f"tensorrt_module must be {', '.join(TENSORRT_MODULES)} or empty, "
                            f"got {self.tensorrt_module!r}")
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
        if any(not m.strip() for m in self.match_models):    # "" is a substring of every model
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


MAX_WORKSPACE_MB = 1 << 20     # 1 TiB: more is a typo, and TensorRT takes the pool size in bytes as size_t


@dataclass(frozen=True)
class BuildConfig:
    """How `edgesdk build` turns a bundle into an engine for one device."""
    batch: tuple[int, int, int] = (1, 1, 4)   # optimization profile over the dynamic batch: min, opt, max
    workspace_mb: int = 1024
    dla_core: int = -1                        # -1: GPU only
    gpu_fallback: bool = True                 # layers DLA cannot run go to the GPU
    optimization_level: int = 3               # TensorRT's builder_optimization_level (0-5)
    timing_cache: bool = True

    def __post_init__(self) -> None:
        if (not isinstance(self.batch, tuple) or len(self.batch) != 3
                or any(not isinstance(b, int) or isinstance(b, bool) for b in self.batch)):
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
    plan: str                     # plan file name, beside this sidecar
    plan_sha256: str
    plan_bytes: int
    key: str                      # hash of everything below that changes the engine
    onnx_sha256: str              # the bundle's model.onnx
    model: str
    precision: str                # the graph's own precision (strongly typed) or the flags set from it
    tensorrt_module: str          # "tensorrt" (JetPack, datacenter) or "tensorrt_rtx"
    tensorrt_version: str         # full version that built it
    device: str                   # device profile name
    gpu: dict                     # {"name", "compute_capability"} where the builder saw a GPU, else {}
    strongly_typed: bool
    flags: tuple[str, ...]        # builder flags set (TensorRT 8.5: FP16/INT8 from the graph)
    profile: dict                 # {"input": name, "min": [...], "opt": [...], "max": [...]}
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
            raise SpecError(f"tensorrt_module must be one of {', '.join(TENSORRT_MODULES)}, "
                            f"got {self.tensorrt_module!r}")
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
        d = load_json(path, "engine sidecar not found (every plan has PLAN.json beside it; rebuild with "
                            "`edgesdk build`)")
        if isinstance(d, dict) and d.get("schema_version") != ENGINE_SCHEMA:
            raise SpecError(f"{path}: engine sidecar schema_version {d.get('schema_version')!r} is not "
                            f"supported (this edgesdk reads {ENGINE_SCHEMA})")
        side = from_mapping(cls, d, str(path))
        if side.plan != path.with_suffix(".plan").name:
            raise SpecError(f"{path}: plan {side.plan!r} is not the plan beside this sidecar "
                            f"({path.with_suffix('.plan').name})")
        return side

    @staticmethod
    def inside_folder(path: str | os.PathLike) -> Path:
        """PATH (a plan or sidecar) when it, links followed, stays in its own folder; a link that
        leads elsewhere is refused: the sidecar vouches for the file beside it, nothing else."""
        path = Path(path)
        real, folder = path.resolve(), path.parent.resolve()
        if real.parent != folder:
            raise SpecError(f"{path}: a link to {real}, outside {path.parent}; engines and sidecars must "
                            "be plain files in their folder")
        return path

    def mismatches(self, onnx_sha256: str | None = None, tensorrt_module: str | None = None,
                   tensorrt_version: str | None = None, gpu: dict | None = None) -> list[str]:
        """Human-readable differences between this engine and what it is about to run with."""
        out = []
        if onnx_sha256 is not None and onnx_sha256 != self.onnx_sha256:
            out.append(f"built from model.onnx sha256 {self.onnx_sha256[:12]}…, this bundle's is "
                       f"{onnx_sha256[:12]}… (another bundle, or re-exported)")
        if tensorrt_module is not None and tensorrt_module != self.tensorrt_module:
            out.append(f"built with {self.tensorrt_module}, running {tensorrt_module}")
        if tensorrt_version is not None and tensorrt_version != self.tensorrt_version:
            out.append(f"built with TensorRT {self.tensorrt_version}, running {tensorrt_version} "
                       "(plans are not portable across TensorRT versions)")
        built_cc = self.gpu.get("compute_capability")
        run_cc = (gpu or {}).get("compute_capability")
        if built_cc and run_cc and built_cc != run_cc:
            out.append(f"built on a GPU of compute capability {built_cc} ({self.gpu.get('name', '?')}), "
                       f"running on {run_cc} ({(gpu or {}).get('name', '?')})")
        return out
