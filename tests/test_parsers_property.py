"""Property tests (Hypothesis) of every parser of user input: URIs and their query options, the bundle
manifest, engine sidecars, recipes and device profiles. Each input either parses into a valid object
(checked: numbers finite and in range, paths inside their folder) or is refused with the project's
own error, an EdgesdkError whose message names the file or URI; any other exception fails the test.

Inputs are (a) a known-good example mutated - a key dropped, a value swapped for inf/nan/-1/huge/
empty/unicode/`..`/an absolute path/NUL, nesting too deep, a number token in the file's text made
1e999 or 5000 digits long - and (b) arbitrary text and bytes. The deterministic profile (fixed
seed, 200 examples a property) runs in CI; HYPOTHESIS_PROFILE=edgesdk-deep explores more locally.
Constructors that would open a device, a socket or a broker connection are replaced by stubs that
record what the parser resolved; file sinks and sources are also opened for real inside a temp dir."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgesdk.backends.tensorrt import EngineError, load_plan_sidecar
from edgesdk.bundle import Bundle
from edgesdk.devices import load_profile
from edgesdk.errors import EdgesdkError
from edgesdk.recipe import load_recipe
from edgesdk.resources import data_dir
from edgesdk.spec import (
    DEVICE_KINDS,
    NAME,
    PRECISIONS,
    TENSORRT_MODULES,
    DeviceProfile,
    EngineSidecar,
    Manifest,
    from_mapping,
)
from edgesdk.video import open_sink, open_source
from edgesdk.video.options import Opt, host_port, parse_query, scheme_of, split_file_uri
from edgesdk.video.sources import SYNTH_SPEC, FileOptions, SourceOptions

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "edgesdk-ci", max_examples=200, derandomize=True, deadline=None, database=None, suppress_health_check=_QUIET
)
settings.register_profile("edgesdk-deep", max_examples=5000, deadline=None, database=None, suppress_health_check=_QUIET)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "edgesdk-ci"))


def parsed_or_refused(call, names, also=()):
    """CALL()'s result, or None where it raised an EdgesdkError (or one of ALSO) whose message is
    non-empty and names one of NAMES. Any other exception propagates and fails the test."""
    try:
        return call()
    except (EdgesdkError, *also) as e:
        msg = str(e)
        assert msg.strip(), f"{type(e).__name__} with an empty message"
        assert any(n in msg for n in names), f"{type(e).__name__} {msg!r} names none of {names!r}"
        return None


def finite_tree(obj, where=""):
    """Every float inside OBJ (dicts, lists, tuples, dataclass dicts) is finite."""
    if isinstance(obj, float):
        assert math.isfinite(obj), f"{where} is {obj!r}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            finite_tree(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            finite_tree(v, f"{where}[{i}]")


# -- shared pools of hostile values ------------------------------------------------------------------
def deep(n: int, leaf=1, kind=list):
    for _ in range(n):
        leaf = [leaf] if kind is list else {"a": leaf}
    return leaf


TEXTS = [
    "",
    " ",
    "x" * 300,
    "é€😀",
    "\x00",
    "a\x00b",
    "\ud800",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    ".",
    "sub/../..",
    "C:\\x",
    "a\nb",
    "fp16",
    "tensorrt",
    "os",
    "8.7",
    "10.3",
    "0" * 64,
]
NUMBERS = [
    0,
    -1,
    1,
    2,
    2**31,
    2**63,
    10**30,
    -(10**30),
    0.5,
    -0.5,
    1e308,
    -1e308,
    5e-324,
    math.inf,
    -math.inf,
    math.nan,
]
NASTY = [None, True, False, *NUMBERS, *TEXTS, [], {}, [1, "a"], {"": 1}, deep(70), deep(70, kind=dict)]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
VALUES = st.sampled_from(NASTY) | JSON
KEYS = st.sampled_from(["", "x", "__class__", "name", "value", "path", "..", "a\x00"]) | st.text(max_size=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _like(v):
    """Values of V's own type (a number for a number, text for text): edits that still type-check."""
    if isinstance(v, bool):
        return st.booleans()
    if isinstance(v, int):
        return st.sampled_from(NUMBERS[:7]) | st.integers()
    if isinstance(v, float):
        return st.sampled_from(NUMBERS) | st.floats()
    if isinstance(v, str):
        return st.sampled_from(TEXTS) | st.text(max_size=12)
    return st.just(v)


@st.composite
def mutated(draw, good, values=VALUES):
    """GOOD (a JSON/TOML tree) with 0-3 edits: a value replaced (by one of its own type, or any), a
    key dropped or added, a value wrapped in a list or a table. Drawn values are copied: the pools'
    lists and tables are shared."""
    doc = copy.deepcopy(good)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["tweak", "tweak", "set", "drop", "add", "wrap"]))
        if not path:
            if op == "set":
                doc = copy.deepcopy(draw(values))
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        if op == "tweak":
            parent[key] = draw(_like(parent[key]))
        elif op == "set":
            parent[key] = copy.deepcopy(draw(values))
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = copy.deepcopy(draw(values))
        else:
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
    return doc


NUMBER_TOKEN = re.compile(r"(?<![\w.\"])-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?(?![\w\"])")
LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "9" * 5000,
    "1" * 4300,
    "-0",
    "0.0",
    "1e-999",
    "true",
    "null",
    '"\\ud800"',
    "nan",
    "inf",
    "+inf",
    "-nan",
]


@st.composite
def text_edits(draw, text: str, deep_open: str, deep_close: str):
    """TEXT with one text-level edit: a number token swapped for a hostile literal (NaN, 1e999,
    5000 digits), truncation, a splice, nesting thousands deep, or a line dropped or doubled."""
    op = draw(st.sampled_from(["none", "number", "truncate", "splice", "deep", "lines"]))
    if op == "number" and (tokens := list(NUMBER_TOKEN.finditer(text))):
        m = draw(st.sampled_from(tokens))
        return text[: m.start()] + draw(st.sampled_from(LITERALS)) + text[m.end() :]
    if op == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if op == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(LITERALS) | st.text(max_size=8)) + text[at:]
    if op == "deep":
        n = draw(st.sampled_from([60, 200, 900, 5000, 100_000]))
        at = draw(st.integers(0, len(text)))
        return text[:at] + deep_open * n + "1" + deep_close * n + text[at:]
    if op == "lines":
        lines = text.splitlines()
        if lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = draw(st.sampled_from([[], [lines[i]] * 2]))
        return "\n".join(lines)
    return text


@st.composite
def encoded(draw, text: str) -> bytes:
    """TEXT as the bytes of a file: UTF-8, or with a BOM, a stray invalid byte, in UTF-16."""
    op = draw(st.sampled_from(["utf8", "utf8", "utf8", "bom", "invalid", "utf16"]))
    if op == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if op == "utf16":
        return text.encode("utf-16", "surrogatepass")
    data = text.encode("utf-8", "surrogatepass")
    if op == "invalid":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + data[at:]
    return data


# -- URIs and query options ------------------------------------------------------------------------------
OPTION_KEYS = [
    "fps",
    "loop",
    "roi",
    "size",
    "seed",
    "category",
    "max_mb",
    "keep",
    "all",
    "qos",
    "outbox",
    "health",
    "client_id",
    "drain",
    "token",
    "FPS",
    "fps ",
    "",
    "user",
]
OPTION_VALUES = [
    "0",
    "-1",
    "1",
    "3",
    "1.5",
    "1e999",
    "-1e999",
    "inf",
    "-Infinity",
    "nan",
    "NaN",
    "1e308",
    "9" * 25,
    "9" * 5000,
    "0x10",
    "1_000",
    " 5",
    "5 ",
    "+3",
    "\u0665",
    "1,2,3,4",
    "0,0,10,10",
    "-1,0,5,5",
    "0,0,1000000000000000000,9",
    "640x480",
    "0x0",
    "65536x1",
    "1X1",
    "true",
    "yes",
    "maybe",
    "",
    "%00",
    "a%2Fb",
    "..%2F..",
    "/tmp/x.db",
    "brick",
    "?",
    "#",
    "&",
]
PAIR = st.tuples(
    st.sampled_from(OPTION_KEYS) | st.text(max_size=5),
    st.none() | st.sampled_from(OPTION_VALUES) | st.text(max_size=10),
)
QUERY = st.lists(PAIR, max_size=5).map(lambda ps: "&".join(k if v is None else f"{k}={v}" for k, v in ps)) | st.text(
    max_size=30
)
SCHEMES = [
    "file",
    "jsonl",
    "dir",
    "video",
    "http",
    "https",
    "mqtt",
    "synth",
    "rtsp",
    "rtsps",
    "v4l2",
    "csi",
    "FILE",
    "Jsonl",
    "MQTT",
    "x-unknown",
    "1bad",
    "",
]
NETLOCS = [
    "",
    "127.0.0.1",
    "127.0.0.1:1883",
    "[::1]:80",
    "[::1",
    "[x]",
    "]",
    "host:0",
    "host:70000",
    "host:http",
    "h:-1",
    "h:",
    "conveyor",
    "0",
    "999",
    "1000",
    "user:pw@host:1",
    "%00",
    "a%2Fb",
    "localhost:65535",
]
PATHS = [
    "",
    "/",
    "/t",
    "/line/#",
    "/a+b",
    "/a/../../b",
    "/x.jsonl",
    "x#y",
    "/dev/video0",
    "/\x00",
    "/" + "t" * 300,
    "/é",
]


def well_formed(schemes: list[str]):
    """SCHEME://NETLOC/PATH?QUERY from the pools: more of these get past the scheme and the layout
    to the options, and parse, so the invariants of what parsed are checked too."""
    pairs = st.tuples(st.sampled_from(OPTION_KEYS[:15]), st.sampled_from(OPTION_VALUES))
    return st.builds(
        lambda s, n, p, q: f"{s}://{n}{p}" + ("" if q is None else f"?{q}"),
        st.sampled_from(schemes),
        st.sampled_from(NETLOCS),
        st.sampled_from(PATHS),
        st.none() | st.lists(pairs, max_size=2).map(lambda ps: "&".join(f"{k}={v}" for k, v in ps)),
    )


URI = well_formed(SCHEMES[:12]) | (
    st.builds(
        lambda s, sep, n, p, q: f"{s}{sep}{n}{p}" + ("" if q is None else f"?{q}"),
        st.sampled_from(SCHEMES) | st.text(max_size=6),
        st.sampled_from(["://", ":", ":/", "", ":///"]),
        st.sampled_from(NETLOCS) | st.text(max_size=12),
        st.sampled_from(PATHS) | st.text(max_size=12),
        st.none() | QUERY,
    )
    | st.text(max_size=40)
)

# Every kind of option, as the sources' and sinks' specs use them.
ALL_KINDS = {
    "f": Opt(1.0, lo=0.001, hi=1000.0),
    "g": Opt(0.0, lo=0, gt=True),
    "i": Opt(5, lo=1, hi=1000),
    "c": Opt(1, choices=(0, 1, 2)),
    "b": False,
    "s": "",
    "roi": Opt(None, "roi"),
    "size": Opt(None, "size"),
}


def check_options(spec: dict, got: dict) -> None:
    assert set(got) == set(spec)
    for k, d in spec.items():
        opt, v = d if isinstance(d, Opt) else Opt(d), got[k]
        if v == opt.default and type(v) is type(opt.default):
            continue
        kind = opt.type
        if kind in ("roi", "size"):
            assert isinstance(v, tuple) and all(type(x) is int for x in v)
            assert (min(v[:2]) >= 0 and min(v[2:]) > 0) if kind == "roi" else all(0 < x <= 65535 for x in v)
            continue
        assert type(v) is {"float": float, "int": int, "bool": bool, "str": str}[kind], (k, v)
        if kind in ("float", "int"):
            assert math.isfinite(v)
            assert opt.lo is None or (v > opt.lo if opt.gt else v >= opt.lo)
            assert opt.hi is None or v <= opt.hi
            assert not opt.choices or v in opt.choices


def check_source_options(o: SourceOptions) -> None:
    check_options(SourceOptions.SPEC, {k: getattr(o, k) for k in SourceOptions.KEYS})


@PROFILE
@given(uri=URI, query=QUERY)
def test_uri_helpers_and_query_options(uri, query):
    s = scheme_of(uri)
    assert s == "" or (uri.lower().startswith(s + "://") and s.isascii())
    split = parsed_or_refused(lambda: split_file_uri(uri), [uri])
    if split is not None:
        path, q = split
        assert path and "?" not in path and uri.endswith(path + ("?" if "?" in uri else "") + q)
    hp = parsed_or_refused(lambda: host_port(uri, 8080), [uri])
    if hp is not None:
        assert hp[0] is None or isinstance(hp[0], str)
        assert type(hp[1]) is int and 1 <= hp[1] <= 65535
    for spec in (SourceOptions.SPEC, SYNTH_SPEC, ALL_KINDS):
        for strict in (True, False):
            got = parsed_or_refused(lambda: parse_query(uri, query, spec, strict), [uri])
            if got is not None:
                check_options(spec, got)


class Stub:
    """Stands in for a class whose constructor opens a device, a socket, a broker connection or a
    file: it records what the parser resolved, with no side effect."""

    stats: dict = {}
    live = ended = True

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def read(self, timeout=None):
        return None

    def close(self) -> None:
        pass


@contextlib.contextmanager
def stubbed():
    import edgesdk.video.live as live
    import edgesdk.video.mqtt as mqtt
    import edgesdk.video.preview as preview
    import edgesdk.video.sinks as sinks
    import edgesdk.video.sources as sources

    with (
        mock.patch.multiple(sinks, JsonlSink=Stub, DirSink=Stub, VideoSink=Stub),
        mock.patch.object(preview, "PreviewSink", Stub),
        mock.patch.object(mqtt, "MqttSink", Stub),
        mock.patch.object(live, "LiveSource", Stub),
        mock.patch.object(live, "has_gstreamer", lambda: True),
        mock.patch.object(sources, "SynthSource", Stub),
        mock.patch.object(sources, "_file_source", lambda path, errors="raise": Stub(path)),
    ):
        yield


def _in_range(x, lo, hi=math.inf) -> bool:
    return type(x) in (int, float) and math.isfinite(x) and lo <= x <= hi


@PROFILE
@example(uri="rtsp://[::1/x")  # urllib: "Invalid IPv6 URL", a ValueError of its own
@example(uri="synth://[conveyor]")
@given(uri=well_formed(["file", "synth", "rtsp", "http", "v4l2", "csi"]) | URI)
def test_open_source_parses_any_uri(uri):
    with stubbed():
        src = parsed_or_refused(lambda: open_source(uri), [uri])
    if src is None:
        return
    if isinstance(src, FileOptions):
        check_source_options(src.opts)
        src = src.inner
    assert isinstance(src, Stub)
    if len(src.args) == 5:  # LiveSource(uri, target, backend, opts, name)
        check_source_options(src.args[3])
    elif len(src.args) == 2:  # SynthSource(category, seed)
        assert isinstance(src.args[0], str) and type(src.args[1]) is int and src.args[1] >= 0
    else:  # a file: the path before the first "?"
        assert str(src.args[0]) and "?" not in str(src.args[0])


@PROFILE
@example(uri="mqtt://127.0.0.1:1/")  # no topic: was a plain ValueError from MqttSink
@example(uri="mqtt://127.0.0.1:1/a+b")  # a wildcard topic: paho refuses it at the first write
@example(uri="mqtt://[::1/t")
@example(uri="http://[::1")
@example(uri="mqtt:///t?qso=1")  # named as geturl() rewrote it, mqtt:/t?qso=1
@given(uri=well_formed(["jsonl", "dir", "video", "http", "mqtt"]) | URI)
def test_open_sink_parses_any_uri(uri):
    with stubbed():
        sink = parsed_or_refused(lambda: open_sink(uri), [uri])
    if sink is None:
        return
    assert isinstance(sink, Stub)
    a, kw = sink.args, sink.kwargs
    scheme = scheme_of(uri)
    if scheme in ("jsonl", "dir", "video"):
        assert str(a[0]) and "?" not in str(a[0])
    if scheme == "jsonl":
        assert _in_range(kw["max_mb"], 0) and type(kw["keep"]) is int and 1 <= kw["keep"] <= 1000
    elif scheme == "video":
        assert _in_range(kw["fps"], 0.001, 1000)
    elif scheme == "dir":
        assert type(a[1]) is bool
    elif scheme == "http":
        assert isinstance(a[0], str) and type(a[1]) is int and 1 <= a[1] <= 65535
        assert _in_range(kw["max_fps"], 0.001, 1000) and isinstance(kw["token"], str)
    elif scheme == "mqtt":
        host, port, topic = a
        assert isinstance(host, str) and type(port) is int and 1 <= port <= 65535
        assert topic and not set(topic) & set("+#\x00")
        assert kw["qos"] in (0, 1, 2) and _in_range(kw["health_s"], 0) and _in_range(kw["drain_s"], 0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "imgs").mkdir()
    for name in ("a.png", "imgs/1.png", "imgs/2.png"):
        cv2.imwrite(str(root / name), np.full((24, 32, 3), 90, np.uint8))
    return root


@PROFILE
@example(kind="jsonl", query="max_mb=1e308")  # int(1e308 * 1e6): OverflowError in the sink
@given(kind=st.sampled_from(["jsonl", "dir", "video", "image", "folder"]), query=QUERY)
def test_file_sinks_and_sources_open_for_real_with_any_query(media, kind, query):
    with tempfile.TemporaryDirectory(dir=media) as out:
        target = {
            "jsonl": f"jsonl://{out}/r.jsonl",
            "dir": f"dir://{out}/ng",
            "video": f"video://{out}/v.mp4",
            "image": str(media / "a.png"),
            "folder": f"file://{media / 'imgs'}",
        }[kind]
        uri = f"{target}?{query}"
        if kind in ("image", "folder"):
            src = parsed_or_refused(lambda: open_source(uri), [uri])
            if src is not None:
                with src:
                    frame = parsed_or_refused(lambda: src.read(timeout=0.0), [uri, "roi"])
                    assert frame is None or frame.image.ndim == 3
            return
        sink = parsed_or_refused(lambda: open_sink(uri), [uri])
        if sink is not None:
            with sink:
                if kind == "jsonl":
                    sink.write({"frame_id": 0}, None, None)
                    sink.write({"frame_id": 1}, None, None)


# -- bundle manifest ---------------------------------------------------------------------------------------
MODEL, PARITY, SECRET = b"onnx-model-bytes", b'{"passed": true}', b"outside the bundle"


def entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


GOOD_MANIFEST = {
    "model": {"name": "padim", "backbone": "efficientnet_lite0", "config": {"input_size": [128, 128], "sigma": 4.0}},
    "input": {"name": "image", "height": 128, "width": 128, "dtype": "uint8", "layout": "NHWC", "color": "BGR"},
    "outputs": [
        {"name": "score", "shape": ["batch"], "dtype": "float32", "meaning": "max of the map"},
        {"name": "anomaly_map", "shape": ["batch", 128, 128], "dtype": "float32", "meaning": ""},
    ],
    "threshold": {"value": 0.5, "source": "good_holdout_k_sigma", "detail": {"k_sigma": 3.0}},
    "normalization": {"mean": 1.0, "std": 0.25},
    "precision": "fp32",
    "files": {"model.onnx": entry(MODEL), "parity.json": entry(PARITY)},
    "metrics": {"parity_vs_torch": {"max_abs": 1e-6}},
    "calibration": None,
    "graph": {"opset": 18, "ops": {"Cast": 1}},
    "provenance": {"opset": 18},
    "edgesdk_version": "0.1.0",
    "created_utc": "2026-01-01T00:00:00+00:00",
    "schema_version": 1,
}
# Names a manifest may list: each escapes the bundle folder or cannot be a file in it. SECRET (a real
# file beside the bundle, its entry correct) is what an escaping name would read.
ESCAPES = [
    "../secret.bin",
    "@ROOT@/secret.bin",
    "sub/../../secret.bin",
    "./model.onnx",
    "model.onnx/",
    "",
    ".",
    "a\x00b",
    "x" * 300,
    "é" * 200,
    "sub//x",
    "..\\secret.bin",
    "\udc80",
]


@st.composite
def manifests(draw):
    doc = draw(mutated(GOOD_MANIFEST))
    if draw(st.booleans()) and isinstance(doc, dict) and isinstance(doc.get("files"), dict):
        doc["files"][draw(st.sampled_from(ESCAPES))] = entry(SECRET)
    return doc


def check_manifest(m: Manifest, folder: Path | None = None) -> None:
    finite_tree(m.to_dict())
    assert m.schema_version == 1 and type(m.schema_version) is int
    assert m.precision in PRECISIONS
    assert type(m.threshold.value) is float and isinstance(m.threshold.source, str)
    assert all(type(v) is int and v > 0 for v in (m.input.height, m.input.width)) and m.input.name
    for o in m.outputs:
        assert isinstance(o.name, str) and o.name
        assert all(isinstance(d, str) or (type(d) is int and d > 0) for d in o.shape)
    for field in ("model", "normalization", "metrics", "graph", "provenance"):
        assert isinstance(getattr(m, field), dict)
    assert m.calibration is None or isinstance(m.calibration, dict)
    for name, e in m.files.items():
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and type(e.bytes) is int and e.bytes >= 0
        assert not os.path.isabs(name) and ".." not in Path(name).parts
        if folder is not None:
            assert (folder / name).resolve().is_relative_to(folder.resolve()), name


@PROFILE
@example(d={**GOOD_MANIFEST, "threshold": {"value": math.nan, "source": "x"}})
@example(d={**GOOD_MANIFEST, "files": ["model.onnx"]})  # .items() of a list: AttributeError
@example(d={**GOOD_MANIFEST, "model": [["a", 1]]})  # dict() of pairs passed as a model table
@example(d={**GOOD_MANIFEST, "schema_version": True})  # True == 1
@example(d={**GOOD_MANIFEST, "input": {**GOOD_MANIFEST["input"], "name": "", "height": -1}})
@given(d=manifests() | JSON)
def test_manifest_from_dict(d):
    m = parsed_or_refused(lambda: Manifest.from_dict(d, "bundle/manifest.json"), ["bundle/manifest.json"])
    if m is not None:
        check_manifest(m)
        assert all(getattr(m, k) == d[k] for k in ("model", "normalization", "precision"))  # taken as given
        assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    (root / "b").mkdir()
    (root / "b" / "model.onnx").write_bytes(MODEL)
    (root / "b" / "parity.json").write_bytes(PARITY)
    (root / "secret.bin").write_bytes(SECRET)
    return root


def manifest_bytes():
    docs = manifests().map(lambda d: json.dumps(d, ensure_ascii=False))
    texts = docs.flatmap(lambda t: text_edits(t, "[", "]"))
    return texts.flatmap(encoded) | st.binary(max_size=200)


@PROFILE
@example(data=b'{"schema_version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")  # RecursionError
@example(data=b'{"schema_version": ' + b"9" * 5000 + b"}")  # int too long
@example(
    data=json.dumps({**GOOD_MANIFEST, "files": {**GOOD_MANIFEST["files"], "../secret.bin": entry(SECRET)}}).encode()
)
@example(
    data=json.dumps(
        {
            **GOOD_MANIFEST,
            "files": {
                **GOOD_MANIFEST["files"],  # ENAMETOOLONG from is_file()
                "x" * 300: entry(SECRET),
            },
        }
    ).encode()
)
@given(data=manifest_bytes())
def test_bundle_open_on_any_manifest_bytes(bundle_root, data):
    folder = bundle_root / "b"
    (folder / "manifest.json").write_bytes(data.replace(b"@ROOT@", str(bundle_root).encode()))
    b = parsed_or_refused(lambda: Bundle.open(folder), [str(folder)])
    if b is not None:
        check_manifest(b.manifest, folder)
        assert math.isfinite(b.threshold)


# -- engine sidecars ----------------------------------------------------------------------------------------
PLAN = b"a plan TensorRT would deserialize"
GOOD_SIDECAR = {
    "plan": "m.plan",
    "plan_sha256": hashlib.sha256(PLAN).hexdigest(),
    "plan_bytes": len(PLAN),
    "key": "ab12",
    "onnx_sha256": "0" * 64,
    "model": "padim",
    "precision": "fp16",
    "tensorrt_module": "tensorrt_rtx",
    "tensorrt_version": "1.2.0.3",
    "device": "rtx",
    "gpu": {"name": "RTX 4090", "compute_capability": "8.9"},
    "strongly_typed": True,
    "flags": [],
    "dla_core": -1,
    "workspace_mb": 1024,
    "build_seconds": 1.5,
    "profile": {"input": "image", "min": [1, 128, 128, 3], "opt": [1, 128, 128, 3], "max": [4, 128, 128, 3]},
    "bundle": "b",
    "created_utc": "",
    "edgesdk_version": "0.1.0",
    "schema_version": 1,
}


def check_sidecar(s: EngineSidecar) -> None:
    finite_tree(s.to_dict())
    assert s.plan == "m.plan" and s.tensorrt_module in TENSORRT_MODULES and s.precision in PRECISIONS
    assert all(type(d) is int and d >= 1 for k in ("min", "opt", "max") for d in s.profile[k])


@PROFILE
@given(d=mutated(GOOD_SIDECAR) | JSON)
def test_sidecar_from_mapping(d):
    s = parsed_or_refused(lambda: from_mapping(EngineSidecar, d, "e/m.json"), ["e/m.json"])
    if s is not None:
        check_sidecar(s)


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    (folder / "m.plan").write_bytes(PLAN)
    return folder


def sidecar_bytes():
    texts = mutated(GOOD_SIDECAR).map(json.dumps).flatmap(lambda t: text_edits(t, "[", "]"))
    return texts.flatmap(encoded) | st.binary(max_size=200)


@PROFILE
@example(data=b'{"schema_version": 1, "plan": ' + b"[" * 5000 + b"]" * 5000 + b"}")
@example(data=json.dumps(GOOD_SIDECAR).replace(f'"plan_bytes": {len(PLAN)}', '"plan_bytes": ' + "1" * 4301).encode())
@given(data=sidecar_bytes())
def test_sidecar_load_and_plan_check_on_any_bytes(engine_dir, data):
    (engine_dir / "m.json").write_bytes(data)
    s = parsed_or_refused(lambda: EngineSidecar.load(engine_dir / "m.json"), [str(engine_dir / "m.json")])
    if s is not None:
        check_sidecar(s)
    # The runner's own error type for engines is EngineError (a RuntimeError the CLI reports).
    side = parsed_or_refused(
        lambda: load_plan_sidecar(engine_dir / "m.plan"),
        [str(engine_dir / "m.plan"), str(engine_dir / "m.json")],
        also=(EngineError,),
    )
    if side is not None:
        check_sidecar(side)
        assert side.plan_bytes == len(PLAN)


# -- recipes and device profiles (TOML) -------------------------------------------------------------------
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v)  # a TOML basic string takes JSON's escapes (\uXXXX)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    return "null"  # TOML has none: a parse error, also worth feeding


def to_toml(doc) -> str:
    if not isinstance(doc, dict):
        return toml_value(doc)
    lines = [f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += [f"[{json.dumps(str(k))}]"] + [f"{json.dumps(str(kk))} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def shipped(folder: str) -> list[tuple[str, dict]]:
    import tomllib

    return [(p.read_text(), tomllib.loads(p.read_text())) for p in sorted(data_dir(folder).glob("*.toml"))]


def toml_bytes(folder: str):
    docs = shipped(folder)
    from_docs = st.sampled_from([d for _, d in docs]).flatmap(mutated).map(to_toml)
    texts = st.sampled_from([t for t, _ in docs]) | from_docs | st.text(max_size=80)
    return texts.flatmap(lambda t: text_edits(t, "[", "]") | text_edits(t, "{a=", "}")).flatmap(encoded)


@pytest.fixture(scope="module")
def toml_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("toml")


@PROFILE
@example(data=b"model = " + b"[" * 5000 + b"]" * 5000)
@example(data=b'model = "padim"\n[config]\nsigma = ' + b"1" * 400)  # float(10**400): OverflowError
@example(data=b'model = "padim"\n[config]\nseed = ' + b"9" * 5000)
@given(data=toml_bytes("export"))
def test_load_recipe_on_any_toml(toml_dir, data):
    from edgesdk.zoo import MODEL_NAMES

    path = toml_dir / "r.toml"
    path.write_bytes(data)
    r = parsed_or_refused(lambda: load_recipe(path), [str(path)])
    if r is not None:
        assert r.model in MODEL_NAMES and r.path == str(path)
        finite_tree(r.to_dict())
        assert all(isinstance(getattr(r, s), dict) for s in ("config", "train", "export"))


def check_profile(p: DeviceProfile) -> None:
    import dataclasses

    finite_tree(dataclasses.asdict(p))
    assert NAME.fullmatch(p.name) and p.kind in DEVICE_KINDS and p.tensorrt_module in TENSORRT_MODULES + ("",)
    assert type(p.dla_cores) is int and p.dla_cores >= 0 and type(p.memory_gb) is float and p.memory_gb >= 0
    assert all(m.strip() for m in p.match_models)


@PROFILE
@example(data=b"name = " + b"{a=" * 3000 + b"1" + b"}" * 3000)
@example(data=b'name = "x"\ndescription = ""\nkind = "cpu"\ntensorrt_module = ""\nmemory_gb = ' + b"9" * 400)
@given(data=toml_bytes("devices"))
def test_device_profile_on_any_toml(toml_dir, data):
    path = toml_dir / "dev.toml"
    path.write_bytes(data)
    for load in (DeviceProfile.load, load_profile):
        p = parsed_or_refused(lambda: load(path), [str(path)])
        if p is not None:
            check_profile(p)


@PROFILE
@given(
    name=st.sampled_from(
        [
            "orin-nx",
            "cpu",
            "../devices/cpu",
            "..",
            ".hidden",
            "cpu.toml",
            "a/b",
            "/etc/passwd",
            "orin-nx\x00",
            "x" * 300,
            "a/" + "x" * 300,
            "",
        ]
    )
    | st.text(max_size=20)
)
def test_load_profile_by_any_name(name):
    # A name that is not a shipped profile, or a path that is not a file, is an OSError naming it
    # (FileNotFoundError, or the OS's "File name too long"), which the CLI reports like an
    # EdgesdkError: looking a name up is a file-system question. Nothing else escapes.
    shown = [repr(name), name] if name else ["''"]
    p = parsed_or_refused(lambda: load_profile(name), shown, also=(OSError,))
    if p is not None:
        check_profile(p)
        assert "/" in name or name.endswith(".toml") or p.name == name
