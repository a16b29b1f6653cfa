"""URI options, parsed one way for every source and sink: `?key=value&...` against a spec.

A spec maps each key to an Opt (its default, its type, its range) or to a bare default whose type
is the option's type. An unknown key is an OptionError naming the URI and the known keys; a bad
value is one naming the URI and the option: numbers must be finite and in range, integers whole,
booleans 1/0, true/false or yes/no. A key given twice, or without a value, is refused too: the
query is what the user typed, and guessing which of two values they meant is how a line runs with
the wrong one.

File-like URIs (file://, jsonl://, dir://, video://, plain paths) are split here, not by urllib:
urllib cuts a path at `#` (a fragment) and drops tabs and newlines, which would open or write
another file than the one named. Their query starts at the first `?`; everything before it is the
path, `#` included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import ParseResult, parse_qsl, unquote_plus, urlparse, urlsplit

from edgesdk.errors import OptionError, finite

TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")


@dataclass(frozen=True)
class Opt:
    """One option: default, kind (float, int, bool, str, roi, size, tile; default: the default's type) and
    range: lo <= value (gt: lo < value), value <= hi, or one of `choices`."""

    default: Any
    kind: str = ""
    lo: float | None = None
    hi: float | None = None
    gt: bool = False
    choices: tuple = ()

    @property
    def type(self) -> str:
        if self.kind:
            return self.kind
        return {bool: "bool", int: "int", float: "float", str: "str"}[type(self.default)]


def _opt(spec_value: Any) -> Opt:
    return spec_value if isinstance(spec_value, Opt) else Opt(spec_value)


def _ints(uri: str, key: str, raw: str, sep: str, n: int, form: str) -> tuple[int, ...]:
    parts = raw.lower().split(sep)
    if len(parts) != n or not all(_INT.fullmatch(p.strip()) for p in parts):
        raise OptionError(f"{uri}: {key} {form}: {n} integers, got {raw!r}")
    return tuple(int(p) for p in parts)


def value(uri: str, key: str, raw: str, opt: Opt) -> Any:
    """RAW (the query's text) as the option's type, range-checked; OptionError names URI and KEY."""
    kind = opt.type
    if kind == "str":
        return raw
    if kind == "bool":
        word = raw.strip().lower()
        if word not in TRUE + FALSE:
            raise OptionError(f"{uri}: {key} is a yes/no option (1/0, true/false, yes/no), got {raw!r}")
        return word in TRUE
    if kind == "roi":
        x, y, w, h = _ints(uri, key, raw, ",", 4, "x,y,w,h")
        if min(x, y) < 0 or min(w, h) <= 0:
            raise OptionError(f"{uri}: {key} x,y,w,h needs x,y >= 0 and w,h > 0, got {raw!r}")
        return x, y, w, h
    if kind == "size":
        w, h = _ints(uri, key, raw, "x", 2, "WxH")
        if not (0 < w <= 65535 and 0 < h <= 65535):
            raise OptionError(f"{uri}: {key} WxH needs 0 < W, H <= 65535, got {raw!r}")
        return w, h
    if kind == "tile":  # a tile's side in pixels, or "auto" (the model's input size)
        if raw.strip().lower() == "auto":
            return "auto"
        if not _INT.fullmatch(raw.strip()) or not 0 < int(raw) <= 65535:
            raise OptionError(f"{uri}: {key} must be auto or a whole number of pixels from 1 to 65535, got {raw!r}")
        return int(raw)
    if kind == "int":
        if not _INT.fullmatch(raw.strip()):
            raise OptionError(f"{uri}: {key} must be an integer, got {raw!r}")
        v: float = int(raw)
    else:
        v = finite(raw, key, uri)
    if opt.choices and v not in opt.choices:
        raise OptionError(f"{uri}: {key} must be one of {', '.join(map(str, opt.choices))}, got {raw!r}")
    low_ok = opt.lo is None or (v > opt.lo if opt.gt else v >= opt.lo)
    if not low_ok or opt.hi is not None and v > opt.hi:
        lo = "" if opt.lo is None else f"{'>' if opt.gt else '>='} {opt.lo:g}"
        hi = "" if opt.hi is None else f"<= {opt.hi:g}"
        raise OptionError(f"{uri}: {key} must be {' and '.join(x for x in (lo, hi) if x)}, got {raw!r}")
    return v


def parse_query(uri: str, query: str, spec: Mapping[str, Any], strict: bool = True, what: str = "option") -> dict:
    """{key: value} for every key of SPEC (its default where absent). With strict=False, keys not in
    SPEC are someone else's (a network camera's own parameters) and are left alone."""
    pairs = parse_qsl(query, keep_blank_values=True)
    given: dict[str, str] = {}
    for k, v in pairs:
        if k not in spec:
            continue
        if k in given:
            raise OptionError(f"{uri}: {what} {k} is given twice")
        given[k] = v
    unknown = sorted({k for k, _ in pairs} - set(spec))
    if strict and unknown:
        raise OptionError(f"{uri}: unknown {what}(s) {unknown}; known: {', '.join(spec)}")
    return {k: value(uri, k, given[k], _opt(d)) if k in given else _opt(d).default for k, d in spec.items()}


def foreign_query(query: str, keys) -> str:
    """QUERY without the parameters named in KEYS (compared decoded, as parse_query sees them)."""
    return "&".join(p for p in query.split("&") if p and unquote_plus(p.split("=")[0]) not in keys)


def public_uri(uri: str) -> str:
    """The URI with any token= value and its user's password (rtsp://user:PASS@host) hidden: summaries,
    logs, /metrics labels and a calibrated manifest name sources and sinks by it."""
    uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]*@", r"\1:***@", uri)
    return re.sub(r"([?&]token=)[^&#]*", r"\1***", uri)


def scheme_of(uri: str) -> str:
    """The URI's scheme, lower case, or "" for a plain path (a Windows drive "C:" is a path)."""
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


def split_file_uri(uri: str) -> tuple[str, str]:
    """(path, query) of a file-like URI or plain path: the path is everything after `scheme://` up
    to the first `?`, `#` included; a plain path without `?` is all path."""
    rest = uri[len(m.group(0)) :] if (m := _SCHEME.match(uri)) else uri
    path, _, query = rest.partition("?")
    if not path:
        raise OptionError(f"{uri}: no path given")
    return path, query


def parse_url(uri: str) -> ParseResult:
    """urlparse(URI); what urllib refuses itself (an unclosed `[`, a bracketed host that is no IPv6
    address) is an OptionError naming the URI, not urllib's bare ValueError."""
    try:
        return urlparse(uri)
    except ValueError as e:
        raise OptionError(f"{uri}: not a valid URL ({e})") from None


def host_port(uri: str, default_port: int) -> tuple[str | None, int]:
    """Host and port of a network URI; a port that is not 1-65535 is an OptionError naming the URI."""
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise OptionError(f"{uri}: not a valid URL ({e})") from None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        return parts.hostname, default_port
    if not 1 <= port <= 65535:
        raise OptionError(f"{uri}: the port must be a number from 1 to 65535")
    return parts.hostname, port
