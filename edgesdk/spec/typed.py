"""The typed-config machinery every file format shares: SpecError, JSON and TOML loaders that
refuse what Python's parsers let through (NaN, Infinity, 1e999, deep nesting), from_mapping (a frozen
dataclass from a dict, every key typed and named), the small range checks, and the names and
patterns the formats share. Standard library only: the device runtime imports this."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

from edgesdk.errors import EdgesdkError, no_nonfinite


class SpecError(EdgesdkError):
    """A file the user gave us is malformed; the message names the file and the problem."""


def load_json(path: Path, missing: str) -> Any:
    """Parsed JSON of PATH; SpecError naming the file when it is missing (MISSING says what it is)
    or not JSON."""
    return _load(path, json.loads, "JSON", "arrays/objects", missing)


def _load(path: Path, parse: Callable[[str], Any], kind: str, nests: str, missing: str) -> Any:
    """PATH parsed by PARSE, refusing what Python's JSON and TOML parsers let through: NaN, Infinity
    and 1e999 (_finite_tree names the key), nesting deep enough to exhaust the stack."""
    if not path.is_file():
        raise SpecError(f"{path}: {missing}")
    try:
        doc = parse(path.read_text(encoding="utf-8"))
    except ValueError as e:  # not UTF-8, not JSON/TOML, an integer of more than 4300 digits
        raise SpecError(f"{path}: not valid {kind} ({e})") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid {kind} ({nests} nested too deep)") from None
    _finite_tree(doc, "", str(path))
    return doc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- typed TOML/JSON configs ---------------------------------------------------------------------
T = TypeVar("T")


MAX_DEPTH = 64  # tables/arrays inside each other: no config nests so deep, and walks of it recurse


def _finite_tree(value: Any, key: str, where: str) -> None:
    """SpecError naming KEY (e.g. `profile.max[0]`) where VALUE holds an inf or nan anywhere, or
    nests tables/arrays more than MAX_DEPTH deep (checked first, without recursion)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise SpecError(f"{where}: {key or 'the document'} nests more than {MAX_DEPTH} tables/arrays deep")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
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
        if abs(value) > sys.float_info.max:  # float() would raise OverflowError
            raise SpecError(f"{where}: {key} is an integer too large for a number ({value.bit_length()} bits)")
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
    except SpecError as e:  # a range check of the class itself: say which file
        raise SpecError(f"{where}: {e}") from None


def load_toml(path: str | os.PathLike) -> dict:
    """Parsed TOML of PATH; SpecError naming the file when it is missing, not TOML, or holds an
    inf/nan (TOML has literals for both) anywhere, naming the key."""
    # Imported here: the device's detector reads only JSON (a manifest), TOML is for recipes and profiles.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return _load(Path(path), tomllib.loads, "TOML", "arrays/tables", "file not found")


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
RELEASE = re.compile(r"[0-9]+(\.[0-9A-Za-z+-]+)*")  # a module's __version__, e.g. "10.3.0.30"
COMPUTE_CAPABILITY = re.compile(r"[0-9]+\.[0-9]+")
RUNTIME_PYTHON = re.compile(r"3\.[0-9]{1,2}")
RUNTIME_PLATFORM = re.compile(
    r"(manylinux_2_[0-9]{1,3}|manylinux2014|manylinux2010|manylinux1|linux)"
    r"_(x86_64|i686|aarch64|armv7l|ppc64le|s390x|riscv64)"
)
SHA256 = re.compile(r"[0-9a-f]{64}")
