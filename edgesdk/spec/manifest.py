"""The bundle manifest (manifest.json): frozen dataclasses with a loader that checks every field
and says which file and field is wrong. Standard library only: the device runtime imports this."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesdk.errors import EdgesdkError, no_nonfinite
from edgesdk.spec.adapt import AdaptSpec, adapt_spec
from edgesdk.spec.typed import PRECISIONS, SpecError, load_json, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# A defect kind's name: a folder of a labelled set, a manifest entry, a record's `kind`.
KIND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_KINDS = ("good", "ground_truth", "unknown", "background")  # "unknown": a defect of no known kind


def kind_name_problem(name: object) -> str:
    """Why NAME cannot name a defect kind, or "" when it can."""
    if not isinstance(name, str) or not KIND_NAME.fullmatch(name):
        return f"must be letters, digits, '_', '-' or '.', at most 64, starting with a letter or digit; got {name!r}"[
            :200
        ]
    return f"{name!r} is reserved ({', '.join(RESERVED_KINDS)})" if name in RESERVED_KINDS else ""


@dataclass(frozen=True)
class InputSpec:
    name: str
    height: int
    width: int
    dtype: str = "uint8"
    layout: str = "NHWC"  # raw frames as OpenCV returns them
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
    source: str  # "good_holdout_k_sigma" or "val_f1"
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    model: dict  # name, backbone and the model's own hyper-parameters
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    threshold: Threshold
    normalization: dict  # how raw distances became scores (done inside the graph)
    precision: str
    files: dict[str, FileEntry]
    metrics: dict = field(default_factory=dict)  # measured at export (parity, holdout)
    calibration: dict | None = None
    graph: dict = field(default_factory=dict)  # opset, op counts, dtypes: device checks need no onnx
    provenance: dict = field(default_factory=dict)
    edgesdk_version: str = ""
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION
    adapt: AdaptSpec | None = None  # what `edgesdk adapt` needs (spec/adapt.py); None: it cannot
    kinds: tuple[str, ...] = ()  # defect kind names of a supervised model: kind_map holds indices into it
    # `calibrate --source A --source B`: each camera's own threshold, by the source's name (stream/multi.py)
    thresholds_by_source: dict[str, Threshold] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        """Every field type- and range-checked; SpecError `WHERE: field X ...` on the first bad one."""
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or type(version) is not int:
            raise SpecError(
                f"{where}: schema_version {version!r} is not supported "
                f"(this edgesdk reads schema_version {SCHEMA_VERSION}); "
                "re-export the bundle with this edgesdk version"
            )
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
        adapt = adapt_spec(d.get("adapt"), where)
        for name in adapt.bundle_files() if adapt else ():
            if name not in files:
                raise SpecError(f"{where}: field adapt names {name!r}, which files does not list")
        return cls(
            model=_field(d, "model", dict, where),
            input=_input_spec(_field(d, "input", dict, where), where),
            outputs=tuple(
                _output_spec(_field(outputs, i, dict, where, "outputs"), where, f"outputs[{i}]")
                for i in range(len(outputs))
            ),
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
            adapt=adapt,
            kinds=_kinds(_field(d, "kinds", list, where, default=[]), where),
            thresholds_by_source=_by_source(_field(d, "thresholds_by_source", dict, where, default={}), where),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        path = Path(path)
        data = load_json(path, f"manifest not found (a bundle is a folder with {MANIFEST} and the files it lists)")
        return cls.from_dict(data, where=str(path))


def file_entry(path: str | os.PathLike) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=os.path.getsize(path))


# -- manifest field checks: each names the field (`input.height`, `files['x'].sha256`) --------------
_HEX = frozenset("0123456789abcdef")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


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
    return InputSpec(
        name=_field(d, "name", str, where, "input"),
        **size,
        **{k: _field(d, k, str, where, "input") for k in ("dtype", "layout", "color") if k in d},
    )


def _output_spec(d: dict, where: str, name: str) -> OutputSpec:
    _no_unknown(d, ("name", "shape", "dtype", "meaning"), where, name)
    shape = _field(d, "shape", list, where, name)
    for i, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, (int, str)) or (isinstance(dim, int) and dim <= 0):
            raise SpecError(f"{where}: field {name}.shape[{i}] must be a positive integer or a name, got {dim!r}")
    return OutputSpec(
        name=_field(d, "name", str, where, name),
        shape=tuple(shape),
        **{k: _field(d, k, str, where, name) for k in ("dtype", "meaning") if k in d},
    )


def _threshold(d: dict, where: str, name: str = "threshold") -> Threshold:
    _no_unknown(d, ("value", "source", "detail"), where, name)
    return Threshold(
        value=_field(d, "value", float, where, name),
        source=_field(d, "source", str, where, name),
        detail=_field(d, "detail", dict, where, name, default={}),
    )


def source_name_problem(name: object) -> str:
    """Why NAME cannot name a camera of a multi-source run (its ?name=, or its URI), or "" when it can."""
    if not isinstance(name, str) or not name or len(name) > 256:
        return f"must be a non-empty string of at most 256 characters, got {name!r}"[:200]
    return f"{name[:80]!r} holds a control character" if any(ord(c) < 32 or ord(c) == 127 for c in name) else ""


def _by_source(d: dict, where: str) -> dict[str, Threshold]:
    out = {}
    for name, thr in d.items():
        if why := source_name_problem(name):
            raise SpecError(f"{where}: field thresholds_by_source has a source name that {why}")
        field_name = f"thresholds_by_source[{name!r}]"
        if not isinstance(thr, dict):
            raise SpecError(f"{where}: field {field_name} must be an object, got {_kind(thr)}")
        out[name] = _threshold(thr, where, field_name)
    return out


def _kinds(names: list, where: str) -> tuple[str, ...]:
    for i, name in enumerate(names):
        why = kind_name_problem(name)
        if why:
            raise SpecError(f"{where}: field kinds[{i}] {why}")
        if name in names[:i]:
            raise SpecError(f"{where}: field kinds[{i}] {name!r} is listed twice")
    return tuple(names)


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
    why = (
        "is empty"
        if not name
        else "contains a NUL byte"
        if "\0" in name
        else "contains a backslash"
        if "\\" in name
        else "is absolute"
        if name.startswith("/")
        else "has a '..', '.' or empty part"
        if any(p in ("", ".", "..") for p in name.split("/"))
        else "has a part over 255 bytes, or one no file system can hold"
        if not _storable(name)
        else ""
    )
    if why:
        raise SpecError(
            f"{where}: field files[{name!r}]: the file name {why}; only relative paths inside the "
            "bundle folder are accepted"
        )
    return name


def _storable(name: str) -> bool:
    try:
        return all(len(p.encode()) <= 255 for p in name.split("/"))
    except UnicodeEncodeError:  # a lone surrogate: no file name on disk is that
        return False
