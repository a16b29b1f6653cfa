"""The project's error types and the checks every parser shares. Standard library only.

Every refusal of user input (a file, a URI, an option, a flag) is an EdgesdkError whose message names
where the input came from and the field; the CLI prints it on one line and exits non-zero."""

from __future__ import annotations

import math
from typing import Any


class EdgesdkError(ValueError):
    """Bad input from the user; the message names the file, URI or option and the field."""


class OptionError(EdgesdkError):
    """A URI's query option or a command-line value is malformed or out of range."""


class DataError(EdgesdkError):
    """A data folder or file is missing, empty, unreadable or inconsistent."""


def finite(value: Any, name: str, where: str = "") -> float:
    """VALUE as a finite float, or OptionError naming NAME (and WHERE: a URI, a file)."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool):
        raise OptionError(f"{prefix}{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{prefix}{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise OptionError(f"{prefix}{name} must be a finite number, got {value!r}")
    return x


def no_nonfinite(obj: Any, where: str, path: str = "") -> None:
    """Refuse inf/nan anywhere inside a parsed JSON/TOML value (dicts, lists, floats), naming the
    field by its path, e.g. `threshold.value`."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise EdgesdkError(f"{where}: {path or 'value'} is {obj!r}; only finite numbers are accepted")
    if isinstance(obj, dict):
        for k, v in obj.items():
            no_nonfinite(v, where, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            no_nonfinite(v, where, f"{path}[{i}]")
