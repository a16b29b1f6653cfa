"""The rooms' rules (docs/ARCHITECTURE.md), read from the source: every edgesdk module is parsed with
`ast` and its imports of edgesdk modules resolved (absolute, relative, and the ones inside functions),
so a rule is broken the moment someone writes the import, not when a test happens to run that line.

Module-level imports form the graph checked for cycles; lazy (function-level) imports join it for
the device-side rule, since a device runs those functions too. Importing a.b.c also runs a/__init__
and a/b/__init__: that counts for the device-side rule, not as a cycle. `if TYPE_CHECKING:` imports
never run and are left out."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400

# The device side: these never import torch or the host-only rooms below, directly or transitively.
DEVICE_PACKAGES = (
    "edgesdk.backends",
    "edgesdk.video",
    "edgesdk.stream",
    "edgesdk.measure",
    "edgesdk.deploy",
    "edgesdk.fleet",
    "edgesdk.scale",
)
DEVICE_MODULES = (
    "edgesdk.engines",
    "edgesdk.images",
    "edgesdk.bundle",
    "edgesdk.spec",
    "edgesdk.devices",
    "edgesdk.compile.trt",
)
HOST_ONLY = (
    "edgesdk.zoo",
    "edgesdk.train",
    "edgesdk.data.synth",
    "edgesdk.compile.onnx",
    "edgesdk.compile.quant",
    "edgesdk.compile.gate",
    "edgesdk.compile.adaptable",
)
TORCH = ("torch", "torchvision")

# The torch eager baseline runner is host-only by design: it is the reference bundles are timed and
# compared against, and imports torch (and the run's model) inside load(). Only these modules may
# reach it, each from inside a function (never at import), and the walk does not enter it.
TORCH_BASELINE = "edgesdk.backends.torch"
TORCH_BASELINE_USERS = {
    "edgesdk.measure.benchmark": "the bench's torch row, opened only when --backends names torch",
    "edgesdk.demo": "the demo's torch-vs-ONNX Runtime latency table (host)",
}
# Edges the device-side rule allows into a host-only module, each lazy and named with its reason.
ALLOWED_LAZY = {
    (
        "edgesdk.video.sources",
        "edgesdk.data.synth",
    ): "synth://conveyor draws its frames with the sample-data generator (scikit-image, the train "
    "extra; a clear error without it). data.synth itself is checked below to stay torch-free.",
}
ENTRY_POINTS = {"edgesdk.__main__"}  # `python -m edgesdk` runs the CLI; nothing else may import it
CLI = "edgesdk.cli"
# What a CLI module may import at module level (the rest only inside its command functions, so that
# `edgesdk --help` loads no numpy and a device without torch runs its commands): the CLI's own
# modules and the standard-library-only table printer.
CLI_EAGER_OK = ("edgesdk.table",)


@dataclass(frozen=True)
class Edge:
    target: str  # an edgesdk module, or the top-level name of another distribution ("torch")
    lazy: bool  # inside a function: runs when called, not at import
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted((ROOT / "edgesdk").rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (
        isinstance(t, ast.Name)
        and t.id == "TYPE_CHECKING"
        or isinstance(t, ast.Attribute)
        and t.attr == "TYPE_CHECKING"
    )


@lru_cache(maxsize=None)
def edges(name: str) -> tuple[Edge, ...]:
    """Every import of module NAME, resolved to edgesdk modules (or the outside name's top level)."""
    out: list[Edge] = []

    def add(target: str, lazy: bool, line: int) -> None:
        if target == "edgesdk" or target.startswith("edgesdk."):
            while target not in MODULES and "." in target:  # `from edgesdk.x import name`: the module x
                target = target.rsplit(".", 1)[0]
            out.append(Edge(target, lazy, line))
        elif target:
            out.append(Edge(target.split(".")[0], lazy, line))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    add(a.name, lazy, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(name, child)
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    add(sub if sub in MODULES else base, lazy, child.lineno)
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(MODULES[name].read_text(), str(MODULES[name])), False)
    return tuple(out)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_device(name: str) -> bool:
    return name != TORCH_BASELINE and (
        name in DEVICE_MODULES or any(name == p or name.startswith(p + ".") for p in DEVICE_PACKAGES)
    )


def _is_host_only(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HOST_ONLY)


def _walk(start: str) -> dict[str, list[str]]:
    """Every module START runs when imported and when its functions run: {module: one path to it}.
    A module imported by name may have its functions called (its lazy imports count); a package
    run only as the parent of an imported module runs its module-level code alone. Outside names
    (torch) are included; the torch baseline and the allowed lazy edges are not entered."""
    seen: dict[str, list[str]] = {start: [start]}
    done: set[tuple[str, bool]] = set()
    todo = [(start, True)]
    while todo:
        mod, called = todo.pop()
        if (mod, called) in done:
            continue
        done.add((mod, called))
        nexts = [(p, False) for p in _parents(mod)]
        for e in edges(mod):
            if called or not e.lazy:
                nexts += [(e.target, True)] + [(p, False) for p in _parents(e.target) if e.target in MODULES]
        for t, t_called in nexts:
            if t == TORCH_BASELINE or (mod, t) in ALLOWED_LAZY:
                continue
            seen.setdefault(t, seen[mod] + [t])
            if t in MODULES:
                todo.append((t, t_called))
    return seen


DEVICE = sorted(m for m in MODULES if _is_device(m))


def test_the_walk_sees_what_python_imports():
    """The resolver on this project's own shapes: relative, `from pkg import module`, lazy, type-only."""
    rel = lambda name, src: _resolve(name, ast.parse(src).body[0])  # noqa: E731
    assert rel("edgesdk.video.sources", "from .base import Frame") == "edgesdk.video.base"
    assert rel("edgesdk.video.sources", "from ..images import resize") == "edgesdk.images"
    assert rel("edgesdk.video", "from . import sinks") == "edgesdk.video"
    assert any(e.target == "edgesdk.compile.quant" and not e.lazy for e in edges("edgesdk.compile.gate"))
    assert any(e.target == "torch" and e.lazy for e in edges(TORCH_BASELINE))
    assert any(e.target == "edgesdk.video.live" and e.lazy for e in edges("edgesdk.video.sources"))
    assert not any(e.target == "tensorrt" for e in edges("edgesdk.backends.tensorrt"))  # TYPE_CHECKING only
    assert "edgesdk.stream.detector" in _walk("edgesdk")  # the public API's lazy names
    assert {"edgesdk.measure.benchmark", "edgesdk.stream.pipeline", "edgesdk.engines"} <= set(DEVICE)
    assert TORCH_BASELINE not in DEVICE


def _cycles(lazy_too: bool) -> list[list[str]]:
    graph = {
        m: sorted({e.target for e in edges(m) if (lazy_too or not e.lazy) and e.target in MODULES and e.target != m})
        for m in MODULES
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            dfs(m)
    return cycles


def test_no_import_cycles():
    cycles = _cycles(lazy_too=False)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_cycles_through_lazy_imports_either():
    """A factory that imports its plugins lazily, whose plugins import the base classes back from the
    factory's module (video/ had two), is a cycle in all but name: shared types go in a module of
    their own (video/base.py)."""
    cycles = _cycles(lazy_too=True)
    assert not cycles, "import cycles through function-level imports:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", DEVICE)
def test_device_side_never_reaches_torch_or_host_only_code(module):
    bad = {t: path for t, path in _walk(module).items() if t in TORCH or _is_host_only(t)}
    assert not bad, "\n".join(f"{module} reaches {t}: " + " -> ".join(p) for t, p in bad.items())


def test_the_exceptions_stay_narrow():
    users = {m: e for m in MODULES for e in edges(m) if e.target == TORCH_BASELINE}
    assert set(users) == set(TORCH_BASELINE_USERS), f"{TORCH_BASELINE} is imported by {sorted(users)}"
    assert all(e.lazy for m, e in users.items() if _is_device(m)), users
    for src, dst in ALLOWED_LAZY:
        found = [e for e in edges(src) if e.target == dst]
        assert found and all(e.lazy for e in found), f"{src} -> {dst} must stay inside a function"
        reach = _walk(dst)
        assert not [t for t in reach if t in TORCH or t in ("edgesdk.zoo", "edgesdk.train")], reach


def _in_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def test_nothing_imports_the_cli():
    """Only the entry point and the CLI's own modules (its command groups, their shared argparse types)."""
    assert {"edgesdk.cli.__main__", "edgesdk.cli._common"} <= set(MODULES), "the CLI is the package edgesdk/cli/"
    bad = [
        f"{m}:{e.line}"
        for m in MODULES
        if m not in ENTRY_POINTS and not _in_cli(m)
        for e in edges(m)
        if _in_cli(e.target)
    ]
    assert not bad, f"the CLI is the outermost layer; imported by {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in_cli(m)))
def test_the_cli_imports_the_rooms_only_inside_its_commands(module):
    eager = [
        f"{e.target} (line {e.line})"
        for e in edges(module)
        if not e.lazy
        and e.target.startswith("edgesdk")
        and not _in_cli(e.target)
        and e.target not in CLI_EAGER_OK + ("edgesdk",)
    ]
    assert not eager, f"{module} imports at module level: {eager}; import inside the command function"


def test_help_loads_no_heavy_module():
    """`edgesdk --help` and every command's parser: no numpy, OpenCV, ONNX Runtime or torch loaded."""
    code = (
        "import sys, contextlib, io\n"
        "from edgesdk.cli import build_parser, main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['--help'], ['run', '--help'], ['device', 'check', '--help'], ['pack', '--help']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print([m for m in ('numpy', 'cv2', 'onnxruntime', 'torch') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("module", list(MODULES))
def test_every_module_fits_in_your_head(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)}: {n} lines (> {MAX_LINES}): split it"


def test_import_edgesdk_is_cheap_and_the_public_names_load_on_use():
    code = (
        "import sys, edgesdk\n"
        "heavy = [m for m in ('numpy', 'cv2', 'onnxruntime', 'torch') if m in sys.modules]\n"
        "from edgesdk import Bundle, Detector, DetectorOptions\n"
        "from edgesdk.bundle import Bundle as B\n"
        "from edgesdk.stream.detector import Detector as D, DetectorOptions as O\n"
        "print(heavy, Bundle is B and Detector is D and DetectorOptions is O, 'torch' in sys.modules)\n"
        "edgesdk.Nope\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split("\n")[0] == "[] True False", r.stdout + r.stderr
    assert "AttributeError: module 'edgesdk' has no attribute 'Nope'" in r.stderr


def test_the_architecture_page_names_every_module():
    text = (ROOT / "docs/ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in MODULES.values() if f"`{p.relative_to(ROOT)}`" not in text]
    assert not missing, f"docs/ARCHITECTURE.md has no line for {missing}"
