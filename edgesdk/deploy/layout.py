"""A deployment root on disk: its pointers, lock, slots and history (docs/DEPLOY.md).

ROOT/slots/<version>-<sha12>/   one installed package: package.json + .minisig, bundle/, golden/,
                                engines/ (as packed), health.json
ROOT/current -> slots/...       the model the device runs (relative symlink, replaced atomically)
ROOT/previous -> slots/...      where `rollback` goes
ROOT/history.jsonl              append-only log of installs, failed health checks and rollbacks
ROOT/edgesdk.pub                the public key the last install verified with (rollback/status default)
Standard library + the package format; no torch."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgesdk.deploy import health, keys
from edgesdk.deploy.archive import check_name
from edgesdk.deploy.errors import InstallError
from edgesdk.deploy.manifest import META, SIG, PackageManifest
from edgesdk.errors import EdgesdkError
from edgesdk.spec import sha256_file

SLOTS, CURRENT, PREVIOUS, HISTORY, PUBKEY = "slots", "current", "previous", "history.jsonl", "edgesdk.pub"
LEFTOVER = (".incoming-", ".trash-")


def link_target(root: Path, name: str) -> Path | None:
    """The slot ROOT/NAME points at (it may be gone), None when there is no link; refuses a NAME that
    is not our symlink (never replaced: we did not create it)."""
    link = root / name
    if not link.is_symlink():
        if link.exists():
            raise InstallError(f"{link}: exists and is not a symlink; not an edgesdk root, or damaged (move it away)")
        return None
    target = os.readlink(link)
    parts = target.split("/")
    if len(parts) != 2 or parts[0] != SLOTS:
        raise InstallError(f"{link}: points at {target!r}, not at slots/<name>")
    check_name(parts[1], str(link))
    return root / SLOTS / parts[1]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def point(root: Path, name: str, slot: Path) -> None:
    """ROOT/NAME -> slots/SLOT, atomically: a new symlink beside it, renamed over it, ROOT fsynced."""
    tmp = root / f".{name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"{SLOTS}/{slot.name}", tmp)
    os.replace(tmp, root / name)
    fsync_dir(root)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """An exclusive flock on the ROOT folder itself (no lock file: nothing left behind); waits."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clean_leftovers(root: Path) -> list[str]:
    """Remove what interrupted runs left: slots/.incoming-*, slots/.trash-*, ROOT/.NAME.tmp-* links."""
    gone = []
    for p in sorted((root / SLOTS).glob(".*")) if (root / SLOTS).is_dir() else []:
        if p.name.startswith(LEFTOVER) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            gone.append(f"{SLOTS}/{p.name}")
    for p in sorted(root.glob(".*.tmp-*")):
        if p.is_symlink():
            p.unlink()
            gone.append(p.name)
    for p in sorted(root.glob(f".{PUBKEY}.*.tmp")):  # an atomic write of the key, interrupted
        p.unlink()
        gone.append(p.name)
    return gone


def slot_manifest(slot: Path) -> PackageManifest:
    return PackageManifest.from_json((slot / META).read_bytes(), str(slot / META))


def verify_slot(slot: Path, pub: keys.PublicKey | None) -> str:
    """ "" when SLOT is complete and intact (signature over package.json with PUB, when given; every
    member's size and sha256; the bundle opens), else the reason."""
    try:
        if not slot.is_dir():
            return f"{slot}: not found"
        meta = (slot / META).read_bytes()
        if pub is not None:
            keys.verify(meta, (slot / SIG).read_text(), pub, str(slot / SIG))
        m = PackageManifest.from_json(meta, str(slot / META))
        for name, e in m.members.items():
            f = slot / name
            if f.is_symlink() or not f.is_file():
                return f"{f}: missing (or not a regular file)"
            if f.stat().st_size != e.bytes or sha256_file(f) != e.sha256:
                return f"{f}: size or sha256 differs from {META} (changed after install)"
        from edgesdk.bundle import Bundle

        Bundle.open(slot / "bundle", verify=False)  # its files were just hashed as members
    except (OSError, UnicodeDecodeError) as e:
        return f"{slot}: {e}"
    except EdgesdkError as e:
        return str(e)
    return ""


def slot_state(slot: Path) -> tuple[str, dict | None]:
    """("good" | "failed" | "pending", health report): pending = no health check recorded yet."""
    try:
        rep = json.loads((slot / health.HEALTH).read_text())
    except (OSError, ValueError):
        return "pending", None
    return ("good" if rep.get("passed") else "failed"), rep


def age(slot: Path) -> int:
    h = slot / health.HEALTH
    return (h if h.is_file() else slot).stat().st_mtime_ns


def gc(root: Path, keep: int, protect: tuple[Path, ...] = ()) -> list[str]:
    """Remove the oldest slots beyond KEEP; current, previous and PROTECT always stay. Each goes by a
    rename to slots/.trash-* first, so a crash never leaves half a slot under a slot's name."""
    slots = [p for p in (root / SLOTS).iterdir() if p.is_dir() and not p.name.startswith(".")]
    kept = {p for p in (link_target(root, CURRENT), link_target(root, PREVIOUS), *protect) if p is not None}
    others = sorted((p for p in slots if p not in kept), key=age, reverse=True)
    room = max(keep - len(kept & set(slots)), 0)
    removed = []
    for p in others[room:]:
        trash = Path(tempfile.mkdtemp(dir=root / SLOTS, prefix=f".trash-{p.name}-"))
        os.replace(p, trash / p.name)
        shutil.rmtree(trash)
        removed.append(p.name)
    return removed


def append_history(root: Path, entry: dict) -> None:
    """One JSON line, appended and fsynced (O_APPEND: concurrent writers never interleave a line)."""
    line = json.dumps({"utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **entry}) + "\n"
    fd = os.open(root / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(root: Path) -> list[dict]:
    """Entries of history.jsonl; a torn last line (a crash mid-append) is skipped."""
    try:
        lines = (root / HISTORY).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
