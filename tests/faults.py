"""Fault injection for the CLI: run a real `edgesdk` process and SIGKILL it mid-way, then check what
it left on disk. Two ways to pick the moment:

  time     kill after a delay (seeded draws across the command's measured duration), or a short
           delay after the process printed a marker (a progress line), to land in the write phase;
  step     run this file as the program (`python tests/faults.py ARGS...` = `edgesdk ARGS...`): an
           audit hook SIGKILLs it just before its Nth change to the output (a rename that moves OUT
           away, onto OUT or into it; a file of OUT written or deleted in place). Time kills almost
           never land in the microseconds between two renames; this does. A run that finishes
           reports the changes it saw.

Standard library only on the child's side (the hook runs before edgesdk is imported)."""

from __future__ import annotations

import atexit
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "edgesdk.cli"]
HOOKED = [sys.executable, str(Path(__file__).resolve())]
KILL_OUT, KILL_BEFORE, CHANGES = "EDGESDK_FAULT_OUT", "EDGESDK_FAULT_KILL_BEFORE", "edgesdk-fault-hook: changes"


def snapshot(root: Path) -> dict[str, str]:
    """{path relative to ROOT (posix): sha256} of every regular file under ROOT."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def read_tree(path: Path) -> dict[str, bytes]:
    """{relative path: bytes} of a file or of every file under a folder ({} when absent)."""
    if path.is_file():
        return {"": path.read_bytes()}
    if not path.is_dir():
        return {}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def may_change(rel: str, outs: list[str]) -> bool:
    """A command may write only its outputs, and beside each: .NAME.staging.*, .NAME.old.* (atomic
    folders) and .*.tmp (atomic files)."""
    p = PurePosixPath(rel)
    for o in map(PurePosixPath, outs):
        if p == o or o in p.parents:
            return True
        try:
            head = p.relative_to(o.parent).parts[0]
        except ValueError:
            continue
        if head.startswith((f".{o.name}.staging.", f".{o.name}.old.")):
            return True
        if head == p.name and head.startswith(".") and head.endswith(".tmp"):
            return True
    return False


def changed_elsewhere(before: dict[str, str], after: dict[str, str], outs: list[str]) -> list[str]:
    """Files added, removed or changed that are neither an output nor its staging siblings."""
    diff = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return sorted(k for k in diff if not may_change(k, outs))


def kill_fractions(seed: int, n: int, lo: float = 0.05, hi: float = 0.99) -> list[float]:
    """N seeded draws, one in each of N equal bins of [LO, HI): spread over the whole run."""
    rng = random.Random(seed)
    w = (hi - lo) / n
    return [rng.uniform(lo + i * w, lo + (i + 1) * w) for i in range(n)]


@dataclass
class Outcome:
    rc: int
    killed: bool
    output: str
    wall_s: float


def _group_kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the whole group: no helper keeps writing afterwards
    except ProcessLookupError:
        pass


def launch(
    argv: list[str],
    cwd: Path,
    delay_s: float | None = None,
    marker: str | None = None,
    after_marker_s: float = 0.0,
    env: dict | None = None,
    timeout_s: float = 300.0,
) -> Outcome:
    """Run ARGV in CWD; SIGKILL it DELAY_S seconds after the start, or AFTER_MARKER_S seconds after
    MARKER (a regex) first appears in its stdout/stderr; None for both: let it finish."""
    t0 = time.perf_counter()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # this checkout's edgesdk
    p = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        start_new_session=True,
    )
    chunks: list[bytes] = []
    seen = threading.Event()
    pattern = re.compile(marker.encode()) if marker else None

    def pump() -> None:  # tqdm redraws with \r, so search the text so far, not whole lines
        assert p.stdout is not None
        while data := os.read(p.stdout.fileno(), 65536):
            chunks.append(data)
            if pattern is not None and not seen.is_set() and pattern.search(b"".join(chunks)):
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    killed = False
    try:
        if marker is not None:
            while not seen.wait(0.005):
                if p.poll() is not None or time.perf_counter() - t0 > timeout_s:
                    break
            delay_s = (time.perf_counter() - t0) + after_marker_s if seen.is_set() else None
        if delay_s is not None:
            try:
                p.wait(timeout=max(0.0, delay_s - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                _group_kill(p)
                killed = True
        p.wait(timeout=timeout_s)
    finally:
        if p.poll() is None:
            _group_kill(p)
            p.wait()
        _group_kill(p)
        reader.join(10)
    killed = killed or p.returncode == -signal.SIGKILL
    return Outcome(p.returncode, killed, b"".join(chunks).decode(errors="replace"), time.perf_counter() - t0)


def hooked(args: list[str], cwd: Path, out: str, kill_before: int, timeout_s: float = 300.0) -> Outcome:
    """`edgesdk ARGS` in CWD, SIGKILLed by itself just before its KILL_BEFORE-th change to OUT (so
    kill_before=2 leaves what the 1st change made). A run that finishes prints how many it made last."""
    return launch(
        HOOKED + args,
        cwd,
        env={KILL_OUT: str((cwd / out).absolute()), KILL_BEFORE: str(kill_before)},
        timeout_s=timeout_s,
    )


def changes_seen(output: str) -> int | None:
    """The number of changes to OUT a hooked run that finished reported, or None."""
    found = re.findall(rf"^{CHANGES} (\d+)$", output, re.M)
    return int(found[-1]) if found else None


def _install_hook() -> None:
    """Count the changes to OUT and SIGKILL the process just before the chosen one. A change: a rename
    that moves OUT away, moves something onto OUT or into it (os.rename and os.replace, so Path.rename
    and shutil.move; libc's rename* through ctypes, e.g. renameat2 RENAME_EXCHANGE), or a file of
    OUT opened for writing or deleted under its final name (what an atomic writer never does)."""
    import ctypes

    out, kill_before = Path(os.environ[KILL_OUT]), int(os.environ[KILL_BEFORE])
    lock, count = threading.Lock(), [0]

    def count_one() -> None:
        with lock:
            count[0] += 1
            if count[0] == kill_before:
                os.kill(os.getpid(), signal.SIGKILL)

    def in_out(p: Path) -> bool:  # OUT or a file in it under its final name (not .NAME.tmp)
        return p == out or out in p.parents and not any(x.startswith(".") for x in p.relative_to(out).parts)

    def note(paths) -> None:  # a rename: OUT moved away, something moved onto OUT or into it
        ps = [Path(os.fsdecode(p)).absolute() for p in paths]
        if out in ps or ps[-1].parent == out:
            count_one()

    def audit(event: str, args: tuple) -> None:
        if event == "os.rename" and args[2] == args[3] == -1:  # (src, dst, src_dir_fd, dst_dir_fd)
            note(args[:2])
        elif event in ("open", "os.remove", "shutil.rmtree") and isinstance(args[0], (str, bytes, os.PathLike)):
            writes = event != "open" or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR)  # open: (path, mode, flags)
            if writes and in_out(Path(os.fsdecode(args[0])).absolute()):
                count_one()

    class Counted:
        def __init__(self, fn) -> None:
            object.__setattr__(self, "fn", fn)

        def __getattr__(self, k):
            return getattr(self.fn, k)

        def __setattr__(self, k, v) -> None:  # argtypes, restype, errcheck go to the function
            setattr(self.fn, k, v)

        def __call__(self, *args):
            note([getattr(a, "value", a) for a in args if isinstance(getattr(a, "value", a), (bytes, str))])
            return self.fn(*args)

    getitem = ctypes.CDLL.__getitem__
    ctypes.CDLL.__getitem__ = lambda lib, name: (
        Counted(getitem(lib, name)) if str(name).startswith("rename") else getitem(lib, name)
    )
    sys.addaudithook(audit)
    atexit.register(lambda: print(f"{CHANGES} {count[0]}", file=sys.stderr, flush=True))


if __name__ == "__main__":
    _install_hook()
    from edgesdk.cli import main

    sys.exit(main(sys.argv[1:]))
