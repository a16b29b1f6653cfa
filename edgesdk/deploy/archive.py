"""Reading a package archive (tar in gzip) without trusting it: every member is checked from its
header before one byte of it is read or written.

Accepted: regular files and folders, named by relative paths of plain components (letters, digits,
`._+-`, not starting with a dot: no absolute paths, no `..`), each name once, within the size and
count limits. Refused: links (symbolic or hard), device files, FIFOs, sparse files, names that are
not plain, oversize members, too many members, oversize tar meta-headers (pax / GNU long names,
which tarfile would read into memory), anything after the end-of-archive blocks but zero padding,
and a gzip stream whose CRC or length does not match (gzip checks both once the stream is drained)."""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from edgesdk.errors import EdgesdkError

COMPONENT = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")
TRAILER_MAX = 1 << 20  # zero padding after the end-of-archive blocks (a record is 10 KiB)


class ArchiveError(EdgesdkError):
    """The package archive is malformed, unsafe, or over a limit; the message names the member."""


@dataclass(frozen=True)
class Limits:
    """Bounds a package must keep; checked from headers and the signed manifest, before writing."""

    member_bytes: int = 2 << 30  # one member (an engine plan or an ONNX graph)
    total_bytes: int = 4 << 30  # all members together
    members: int = 10_000  # member count (golden images are many small files)
    meta_bytes: int = 1 << 20  # package.json and its signature
    header_bytes: int = 1 << 16  # one pax / GNU long-name header


def check_name(name: str, where: str) -> str:
    """NAME if it is a plain relative path (see the module doc), else ArchiveError naming WHERE."""
    parts = name.split("/")
    if name.startswith("/") or not name:
        raise ArchiveError(f"{where}: {name!r} is an absolute path; members must be relative")
    if ".." in parts:
        raise ArchiveError(f"{where}: {name!r} climbs out of the package ('..'); refused")
    if len(name) > 1024 or not all(COMPONENT.fullmatch(p) for p in parts):
        raise ArchiveError(
            f"{where}: {name!r} is not a plain relative name (letters, digits, '._+-'; "
            "no empty, hidden or '.' components)"
        )
    return name


def _kind(ti: tarfile.TarInfo) -> str:
    if ti.issym():
        return f"a symbolic link to {ti.linkname!r}"
    if ti.islnk():
        return f"a hard link to {ti.linkname!r}"
    if ti.ischr() or ti.isblk():
        return "a device file"
    if ti.isfifo():
        return "a FIFO"
    if ti.issparse():
        return "a sparse file"
    return f"of tar type {ti.type!r}"


def _bounded_info(limit: int) -> type[tarfile.TarInfo]:
    class BoundedTarInfo(tarfile.TarInfo):
        # tarfile reads a pax or GNU long-name header whole into memory: bound it first.
        def _proc_member(self, tf):
            meta = (
                tarfile.XHDTYPE,
                tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE,
                tarfile.GNUTYPE_LONGNAME,
                tarfile.GNUTYPE_LONGLINK,
            )
            if self.type in meta and self.size > limit:
                raise ArchiveError(f"a tar meta-header of {self.size} bytes (limit {limit})")
            return super()._proc_member(tf)

    return BoundedTarInfo


def members(path: str | os.PathLike, limits: Limits = Limits()) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """(header, reader) for each regular file of the archive at PATH, in archive order, after its
    header passed every check. Read the reader before asking for the next member."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ArchiveError(f"{path}: cannot read the package ({e.strerror})") from None
    if size > limits.total_bytes + limits.total_bytes // 64 + (1 << 20):
        raise ArchiveError(f"{path}: {size} bytes, over the package limit of {limits.total_bytes} bytes")
    seen: set[str] = set()
    total = 0
    try:
        with (
            open(path, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as gz,
            tarfile.open(fileobj=gz, mode="r|", tarinfo=_bounded_info(limits.header_bytes)) as tar,
        ):
            for ti in tar:
                where = f"{path}: member {ti.name!r}"
                if len(seen) >= limits.members:
                    raise ArchiveError(f"{path}: more than {limits.members} members")
                if not (ti.isreg() or ti.isdir()) or ti.issparse():
                    raise ArchiveError(f"{where} is {_kind(ti)}; packages hold regular files and folders only")
                name = check_name(ti.name.rstrip("/") if ti.isdir() else ti.name, where)
                if name in seen:
                    raise ArchiveError(f"{where} appears twice")
                seen.add(name)
                if ti.isdir():
                    continue
                if ti.size > limits.member_bytes:
                    raise ArchiveError(f"{where} is {ti.size} bytes, over the member limit of {limits.member_bytes}")
                total += ti.size
                if total > limits.total_bytes:
                    raise ArchiveError(f"{path}: members add up to more than the limit of {limits.total_bytes} bytes")
                f = tar.extractfile(ti)
                assert f is not None  # a regular file always has a reader
                yield ti, f
            # After the end-of-archive blocks only zero padding may follow; reading to the end also
            # makes gzip check the stream's CRC and length.
            rest = 0
            while block := tar.fileobj.read(1 << 16):
                rest += len(block)
                if block.count(0) != len(block) or rest > TRAILER_MAX:
                    raise ArchiveError(
                        f"{path}: data after the end of the archive (a damaged member header, or bytes appended)"
                    )
    except ArchiveError:
        raise
    except READ_ERRORS as e:
        raise ArchiveError(f"{path}: not a readable package archive (tar in gzip): {e}") from None


READ_ERRORS = (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error)


def copy_member(f: IO[bytes], size: int, out: IO[bytes] | None, hasher, where: str) -> int:
    """Copy exactly SIZE bytes of F into OUT (None: only hash), updating HASHER; bytes read. A damaged
    stream is an ArchiveError naming WHERE."""
    n = 0
    try:
        while n < size:
            block = f.read(min(1 << 20, size - n))
            if not block:
                break
            hasher.update(block)
            if out is not None:
                out.write(block)
            n += len(block)
    except READ_ERRORS as e:
        raise ArchiveError(f"{where}: damaged archive data ({e})") from None
    return n
