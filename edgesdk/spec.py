"""Frozen dataclasses for what crosses a file boundary (the bundle manifest), with loaders that say
which file is wrong and how. Standard library only: the device runtime imports this."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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
        """Every field type- and range-checked; SpecError `WHERE: field X ...` on the first bad one."""
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or type(version) is not int:
            raise SpecError(f"{where}: schema_version {version!r} is not supported "
                            f"(this edgesdk reads schema_version {SCHEMA_VERSION}); "
                            "re-export the bundle with this edgesdk version")
        try:
            no_nonfinite(d, where)
        except EdgesdkError as e:
            raise SpecError(str(e)) from None
        for key in ("model", "input", "outputs", "threshold", "normalization", "precision", "files"):
            if key not in d:
                raise SpecError(f"{where}: missing field {key!r}")
        precision = d["precision"]
        if precision not in PRECISIONS:
            raise SpecError(f"{where}: field precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        outputs = _field(d, "outputs", list, where)
        files = _field(d, "files", dict, where)
        calibration = d.get("calibration")
        if calibration is not None and not isinstance(calibration, dict):
            raise SpecError(f"{where}: field calibration must be an object or null, got {_kind(calibration)}")
        return cls(
            model=_field(d, "model", dict, where),
            input=_input_spec(_field(d, "input", dict, where), where),
            outputs=tuple(_output_spec(_field(outputs, i, dict, where, "outputs"), where, f"outputs[{i}]")
                          for i in range(len(outputs))),
            threshold=_threshold(_field(d, "threshold", dict, where), where),
            normalization=_field(d, "normalization", dict, where),
            precision=precision,
            files={check_file_name(k, where): _file_entry(v, where, f"files[{k!r}]") for k, v in files.items()},
            metrics=_field(d, "metrics", dict, where, default={}),
            calibration=calibration,
            graph=_field(d, "graph", dict, where, default={}),
            provenance=_field(d, "provenance", dict, where, default={}),
            edgesdk_version=_field(d, "edgesdk_version", str, where, default=""),
            created_utc=_field(d, "created_utc", str, where, default=""),
            schema_version=version,
        )

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


# -- manifest field checks: each names the field (`input.height`, `files['x'].sha256`) --------------
_HEX = frozenset("0123456789abcdef")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


def _field(d: Any, key: Any, tp: type, where: str, prefix: str = "", default: Any = dataclasses.MISSING) -> Any:
    """D[KEY] when it is a TP (int: not a bool; float: any number), else SpecError naming the field."""
    name = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
    if isinstance(d, dict) and key not in d:
        if default is dataclasses.MISSING:
            raise SpecError(f"{where}: missing field {name!r}")
        return default
    value = d[key]
    want = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}[tp]
    ok = (isinstance(value, (int, float)) if tp is float else isinstance(value, tp)) and not isinstance(value, bool)
    if not ok:
        raise SpecError(f"{where}: field {name} must be {want}, got {_kind(value)} {value!r}"[:300])
    return float(value) if tp is float else value


def _no_unknown(d: dict, known: tuple[str, ...], where: str, prefix: str) -> None:
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise SpecError(f"{where}: unknown field {prefix}.{unknown[0]} (known: {', '.join(known)})")


def _input_spec(d: dict, where: str) -> InputSpec:
    _no_unknown(d, ("name", "height", "width", "dtype", "layout", "color"), where, "input")
    size = {}
    for key in ("height", "width"):
        size[key] = _field(d, key, int, where, "input")
        if size[key] <= 0:
            raise SpecError(f"{where}: field input.{key} must be a positive integer, got {size[key]}")
    return InputSpec(name=_field(d, "name", str, where, "input"), **size,
                     **{k: _field(d, k, str, where, "input") for k in ("dtype", "layout", "color") if k in d})


def _output_spec(d: dict, where: str, name: str) -> OutputSpec:
    _no_unknown(d, ("name", "shape", "dtype", "meaning"), where, name)
    shape = _field(d, "shape", list, where, name)
    for i, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, (int, str)) or (isinstance(dim, int) and dim <= 0):
            raise SpecError(f"{where}: field {name}.shape[{i}] must be a positive integer or a name, got {dim!r}")
    return OutputSpec(name=_field(d, "name", str, where, name), shape=tuple(shape),
                      **{k: _field(d, k, str, where, name) for k in ("dtype", "meaning") if k in d})


def _threshold(d: dict, where: str) -> Threshold:
    _no_unknown(d, ("value", "source", "detail"), where, "threshold")
    return Threshold(value=_field(d, "value", float, where, "threshold"),
                     source=_field(d, "source", str, where, "threshold"),
                     detail=_field(d, "detail", dict, where, "threshold", default={}))


def _file_entry(d: Any, where: str, name: str) -> FileEntry:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: field {name} must be an object, got {_kind(d)}")
    _no_unknown(d, ("sha256", "bytes"), where, name)
    digest, size = _field(d, "sha256", str, where, name), _field(d, "bytes", int, where, name)
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise SpecError(f"{where}: field {name}.sha256 must be 64 lowercase hex digits, got {digest[:80]!r}")
    if size < 0:
        raise SpecError(f"{where}: field {name}.bytes must be a non-negative integer, got {size}")
    return FileEntry(sha256=digest, bytes=size)


def check_file_name(name: Any, where: str) -> str:
    """NAME if it is a safe relative POSIX path inside a bundle (`model.onnx`, `engines/x.plan`):
    not absolute, no `..`, `.` or empty parts, no backslash or NUL. SpecError naming it otherwise:
    a name from a file never leads outside its folder."""
    if not isinstance(name, str):
        raise SpecError(f"{where}: field files has a key that is not a string: {name!r}")
    why = ("is empty" if not name else "contains a NUL byte" if "\0" in name
           else "contains a backslash" if "\\" in name else "is absolute" if name.startswith("/")
           else "has a '..', '.' or empty part" if any(p in ("", ".", "..") for p in name.split("/")) else "")
    if why:
        raise SpecError(f"{where}: field files[{name!r}]: the file name {why}; only relative paths inside the "
                        "bundle folder are accepted")
    return name


# -- typed TOML/JSON configs ---------------------------------------------------------------------
T = TypeVar("T")


def _check_type(value: Any, tp: Any, key: str, where: str) -> Any:
    """`value` converted to the dataclass field type `tp`, or SpecError naming the key and file."""
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
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise SpecError(f"{where}: {key} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_mapping(cls: type[T], d: Any, where: str) -> T:
    """Build a frozen dataclass from a dict: unknown keys, missing keys and wrong types are errors
    that name the key and `where` (the file)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a table/object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{where}: missing key {name!r}")
            continue
        kwargs[name] = _check_type(d[name], hints[name], name, where)
    return cls(**kwargs)


def load_toml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None


PRECISIONS = ("fp32", "fp16", "int8")


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

    @property
    def strongly_typed(self) -> bool:
        """TensorRT >= 10 (and every TensorRT for RTX) takes precision from the graph; 8.5 needs flags."""
        if self.tensorrt_module == "tensorrt_rtx":
            return True
        return bool(self.tensorrt_version) and int(self.tensorrt_version.split(".")[0]) >= 10

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DeviceProfile":
        prof = from_mapping(cls, load_toml(path), str(path))
        if prof.kind not in ("jetson", "rtx", "cpu"):
            raise SpecError(f"{path}: kind must be jetson, rtx or cpu, got {prof.kind!r}")
        if prof.tensorrt_module not in ("tensorrt", "tensorrt_rtx", ""):
            raise SpecError(f"{path}: tensorrt_module must be tensorrt, tensorrt_rtx or empty, "
                            f"got {prof.tensorrt_module!r}")
        bad = [p for p in prof.gpu_precisions + prof.dla_precisions if p not in PRECISIONS + ("fp8", "fp4")]
        if bad:
            raise SpecError(f"{path}: unknown precision {bad[0]!r} (known: {', '.join(PRECISIONS)}, fp8, fp4)")
        return prof


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
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise SpecError(f"batch {lo}:{opt}:{hi}: need 1 <= min <= opt <= max")
        if self.workspace_mb <= 0:
            raise SpecError(f"workspace {self.workspace_mb} MB: must be positive")


ENGINE_SCHEMA = 1


@dataclass(frozen=True)
class EngineSidecar:
    """What a raw TensorRT plan was built from and for (written as PLAN.json beside it).

    A plan is only valid for the TensorRT version and GPU that built it; the runtime refuses a plan
    whose sidecar does not match what is running, and says what differs."""
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def path_for(plan: str | os.PathLike) -> Path:
        """NAME.plan's sidecar is NAME.json beside it."""
        return Path(plan).with_suffix(".json")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EngineSidecar":
        path = Path(path)
        d = load_json(path, "engine sidecar not found (every plan has PLAN.json beside it; rebuild with "
                            "`edgesdk build`)")
        if isinstance(d, dict) and d.get("schema_version") != ENGINE_SCHEMA:
            raise SpecError(f"{path}: engine sidecar schema_version {d.get('schema_version')!r} is not "
                            f"supported (this edgesdk reads {ENGINE_SCHEMA})")
        return from_mapping(cls, d, str(path))

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
