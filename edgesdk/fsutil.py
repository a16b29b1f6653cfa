"""Atomic writes of files and whole folders: build beside the target, then rename over it.

A crash or an error mid-way leaves the previous file/folder untouched and nothing half-written.
An output folder is only ever replaced when it is missing, empty, or recognisably ours of the same
kind (a bundle, a run folder, a synth category, a demo folder), and never when it holds or lies inside an input of
the command writing it. Standard library only (the device runtime uses it)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from edgesdk.errors import EdgesdkError

SYNTH_MARKER = "edgesdk-synth.json"  # written into each category folder `edgesdk data synth` makes
DEMO_MARKER = "edgesdk-demo.json"  # written into `edgesdk demo --out` before anything else


class OutputError(EdgesdkError):
    """An output folder that this command may not replace: the message names it and why."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _not_bundle(path: Path) -> str | None:
    from edgesdk.spec import MANIFEST, Manifest

    if not (path / MANIFEST).is_file():
        return f"it has no {MANIFEST}, so it is not an edgesdk bundle"
    try:
        Manifest.load(path / MANIFEST)
    except EdgesdkError as e:
        return f"its {MANIFEST} is not an edgesdk bundle manifest ({e})"
    return None


def _not_run(path: Path) -> str | None:
    try:
        meta = json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        return "it has no run.json, so it is not a run folder made by `edgesdk train`"
    except (OSError, ValueError) as e:
        return f"its run.json is not readable JSON ({e})"
    keys = ("model", "config", "threshold", "normalization")
    missing = [k for k in keys if not isinstance(meta, dict) or k not in meta]
    return f"its run.json is not one `edgesdk train` wrote (no {missing[0]!r})" if missing else None


def _not_synth(path: Path) -> str | None:
    if not (path / SYNTH_MARKER).is_file():
        return f"it has no {SYNTH_MARKER}, so it is not a category folder made by `edgesdk data synth`"
    return None


def _not_demo(path: Path) -> str | None:
    if (path / DEMO_MARKER).is_file():
        return None
    try:  # a demo folder without the marker still has the summary only the demo writes
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        return f"it has no {DEMO_MARKER}, so it is not a folder made by `edgesdk demo`"
    except (OSError, ValueError) as e:
        return f"its summary.json is not readable JSON ({e})"
    keys = ("config", "categories", "stream")  # what every demo's summary has had ("int8" came later)
    ours = isinstance(summary, dict) and all(k in summary for k in keys)
    return None if ours else "its summary.json is not one `edgesdk demo` wrote"


# kind -> why FOLDER (non-empty) is not ours of that kind, or None when it is.
KINDS: dict[str, Callable[[Path], str | None]] = {
    "bundle": _not_bundle,
    "run": _not_run,
    "synth": _not_synth,
    "demo": _not_demo,
}


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or os.name == "nt":  # 0/negative address process groups; Windows' kill terminates
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale(target: Path, tag: str) -> list[Path]:
    """`.NAME.TAG.PID.XXXX` folders beside TARGET whose owner process PID is gone. Folders without a
    PID in the name (older edgesdk) have no known owner and are left alone."""
    prefix = f".{target.name}.{tag}."
    out = []
    with contextlib.suppress(FileNotFoundError):
        for p in target.parent.iterdir():
            pid = p.name[len(prefix) :].split(".", 1)[0] if p.name.startswith(prefix) else ""
            if pid.isdigit() and not p.is_symlink() and p.is_dir() and not _pid_alive(int(pid)):
                out.append(p)
    return out


def sweep_dead(target: Path, tag: str) -> list[Path]:
    """Remove the `.NAME.TAG.PID.*` work folders beside TARGET whose process is gone (a killed or
    interrupted command's): the names are this module's, the PID says no one uses them."""
    done = []
    for p in _stale(target, tag):
        shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


def sweep_stale(target: str | Path) -> list[Path]:
    """Remove what a killed atomic_dir left beside TARGET: staging folders, and replaced folders it
    had not yet deleted; a replaced folder whose successor never arrived (killed between the two
    renames) is put back as TARGET instead. Only folders of processes that are gone. Returns them."""
    target = Path(target)
    done = []
    for p in _stale(target, "staging"):
        shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    old = sorted(_stale(target, "old"), key=lambda p: p.stat().st_mtime)
    if old and not target.exists() and not target.is_symlink():
        old.pop().rename(target)
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


def check_replaceable(
    target: str | Path, kind: str, inputs: Iterable[str | Path | None] = (), force: bool = False
) -> Path:
    """TARGET resolved, if a command that reads INPUTS may write its output folder of KIND there:
    a missing or empty folder, or one recognisably ours of that KIND; anything else only with FORCE.
    Never (not even with FORCE) a folder that is, holds or lies inside one of INPUTS. OutputError
    naming the folder and why otherwise."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r} (known: {', '.join(KINDS)})")
    real = Path(target).resolve()
    if real.parent == real:
        raise OutputError(f"{target}: the file system root cannot be an output folder")
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        src = Path(inp).resolve()
        if src == real or _inside(src, real):
            what = "is" if src == real else "holds"
            raise OutputError(f"{target}: not replaced: it {what} the input {inp}; write the {kind} to another folder")
        if _inside(real, src):
            raise OutputError(f"{target}: lies inside the input {inp}; write the {kind} outside it")
    if not real.exists() or force:
        return real
    if not real.is_dir():
        raise OutputError(f"{target}: is a file, not a {kind} folder; choose another path (or --force to replace it)")
    if not any(real.iterdir()):
        return real
    why = KINDS[kind](real)
    if why:
        raise OutputError(f"{target}: not replaced: {why}; choose a new or empty folder (or --force to replace it)")
    return real


def prepare_output(
    target: str | Path, kind: str, inputs: Iterable[str | Path | None] = (), force: bool = False
) -> Path:
    """sweep_stale then check_replaceable: what a command calls before its work, to fail early."""
    sweep_stale(Path(target).resolve())
    return check_replaceable(target, kind, inputs, force)


@contextlib.contextmanager
def atomic_dir(
    target: str | Path, *, kind: str, inputs: Iterable[str | Path | None] = (), force: bool = False
) -> Iterator[Path]:
    """Yields an empty staging folder; on success it replaces `target` (old contents removed only
    after the new folder is in place), on error it is deleted and `target` is left as it was.
    `target` must pass check_replaceable(target, kind, inputs, force); what killed runs left beside
    it is swept first. Staging names carry this process's PID so a later run can tell them stale."""
    target = prepare_output(target, kind, inputs, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging.{pid}."))
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like any folder
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if (target.exists() or target.is_symlink()) and exchange(stage, target):
        old = stage  # one atomic step: the new folder is in place, the old one at `stage`
    else:
        old = None
        if target.exists() or target.is_symlink():
            # No atomic exchange here (not Linux, or a filesystem without it): two renames, and a run
            # killed between them is repaired by the next one (sweep_stale puts the old folder back).
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old.{pid}."))
            old.rmdir()
            target.rename(old)
        stage.rename(target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()  # a file replaced with --force


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap the names A and B in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where the
    system or filesystem cannot; then nothing changed."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write via a temporary file in the same folder and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temp_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # else a power cut after the rename can leave the new name empty
        os.replace(tmp, path)


def publish(tmp: Path, path: Path) -> None:
    """Give the finished file TMP (beside PATH) the name PATH unless PATH exists by then: FileExistsError
    (TMP stays, for temp_beside to remove). A hard link makes the check and the naming one step; where
    the filesystem has none (FAT on a USB stick, some network shares), a look, then a rename: only a
    file made under that name in between could be replaced."""
    try:
        os.link(tmp, path)  # unlike a rename, fails instead of replacing what is there
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in NO_LINKS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.rename(tmp, path)
        return
    tmp.unlink()


NO_LINKS = (
    errno.EPERM,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.ENOSYS,
    errno.EMLINK,
)  # os.link's "not here", not "failed"


@contextlib.contextmanager
def temp_beside(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A new empty file .NAME.RANDOM.SUFFIX in PATH's folder, for the body to fill and os.replace onto
    PATH; removed at exit unless the body moved it. Its name is chosen before it exists, so a Ctrl-C
    landing at any point after the file is made (even inside the call that makes it, where
    tempfile.mkstemp's caller could not know the name yet) still removes it."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{suffix}"
    mine = True
    try:
        try:
            # 0o666: the umask applies, as for any new file (mkstemp's 0600 would need a chmod after)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        except FileExistsError:
            mine = False  # another's file of the same random name: never ours to remove
            raise
        yield tmp
    finally:
        if mine:
            tmp.unlink(missing_ok=True)


def publish_new(tmp: Path, path: Path) -> Path:
    """Give the file TMP the name PATH without ever replacing a file there: a name already taken (an
    earlier run's evidence, or anyone's file) gets a suffix, STEM-1.SUFFIX, STEM-2.SUFFIX, ... as
    dir:// does for frames. TMP's name is removed. Returns the name the file now has."""
    k = 0
    while True:
        dest = path if k == 0 else path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
        try:
            publish(tmp, dest)
        except FileExistsError:
            continue
        return dest


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays, without importing numpy here
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
