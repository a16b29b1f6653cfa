"""The package named by a release, onto this device's disk: from file:// (a share), http(s):// (a
file server; urllib, with a timeout) or chunks over MQTT (plants with no file server). Whatever the
source, at most the release's `bytes` are read, and the file is kept only when its size and sha256
are the release's (signed) values; install then verifies the package's own signature and members."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Callable, Iterator
from urllib.parse import unquote, urlsplit

from edgesdk.errors import EdgesdkError
from edgesdk.fsutil import temp_beside

BLOCK = 1 << 20


class FetchError(EdgesdkError):
    """The package could not be fetched, or what came is not the package the release names."""


def _copy(src: IO[bytes], out: IO[bytes], limit: int, where: str) -> None:
    n = 0
    while True:
        buf = src.read(min(BLOCK, limit + 1 - n))
        if not buf:
            return
        n += len(buf)
        if n > limit:
            raise FetchError(f"{where}: more than the release's {limit} bytes; refused")
        out.write(buf)


def _check(path: Path, size: int, sha256: str, where: str) -> None:
    got = path.stat().st_size
    if got != size:
        raise FetchError(f"{where}: {got} bytes, the release says {size} (truncated or another file)")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(BLOCK), b""):
            h.update(buf)
    if h.hexdigest() != sha256:
        raise FetchError(
            f"{where}: sha256 {h.hexdigest()[:12]}… is not the release's {sha256[:12]}… "
            "(the file was changed or replaced)"
        )


def fetch(
    pkg: dict, dest: Path, timeout: float = 60.0, chunks: Callable[[], Iterator[tuple[int, bytes]]] | None = None
) -> Path:
    """Write the release's package PKG (messages.check_release's `package`) to DEST, checked; a
    partial file is removed. CHUNKS yields (index, bytes) for url mqtt:chunks."""
    url, size, sha = pkg["url"], pkg["bytes"], pkg["sha256"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temp_beside(dest, ".part") as tmp:
        with open(tmp, "wb") as out:
            if url.startswith("file://"):
                parts = urlsplit(url)
                if parts.netloc not in ("", "localhost"):
                    raise FetchError(f"{url}: a file:// URL names a path on this device (file:///PATH)")
                path = unquote(parts.path)
                try:
                    with open(path, "rb") as src:
                        _copy(src, out, size, url)
                except OSError as e:
                    raise FetchError(f"{url}: cannot read {path} ({e.strerror})") from None
            elif url.startswith(("http://", "https://")):
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as r:
                        _copy(r, out, size, url)
                except (urllib.error.URLError, OSError) as e:
                    raise FetchError(f"{url}: cannot download ({getattr(e, 'reason', None) or e})") from None
            elif url == "mqtt:chunks" and chunks is not None:
                _chunks(pkg, chunks, out)
            else:
                raise FetchError(f"{url}: no way to fetch it here")
            out.flush()
            os.fsync(out.fileno())
        _check(tmp, size, sha, url)
        os.replace(tmp, dest)
    return dest


def _chunks(pkg: dict, chunks: Callable[[], Iterator[tuple[int, bytes]]], out: IO[bytes]) -> None:
    """Chunk I goes at I * size once its sha256 is the release's I-th; each index is written once."""
    spec = pkg["chunks"]
    size, hashes = spec["size"], spec["sha256"]
    have: set[int] = set()
    for i, data in chunks():
        if i in have or not 0 <= i < len(hashes):
            continue
        if hashlib.sha256(data).hexdigest() != hashes[i]:
            raise FetchError(f"mqtt:chunks: chunk {i}'s sha256 is not the release's (changed on the broker)")
        out.seek(i * size)
        out.write(data)
        have.add(i)
        if len(have) == len(hashes):
            return
    raise FetchError(
        f"mqtt:chunks: {len(hashes) - len(have)} of {len(hashes)} chunks never came "
        "(the rollout tool publishes them retained; is the release still current?)"
    )


def verify_url(pkg: dict, timeout: float = 60.0) -> None:
    """What a device would fetch from PKG's url is this package (the rollout tool checks before it
    publishes: a wrong URL fails here, not on every device)."""
    tmp = Path(tempfile.mkdtemp(prefix="edgesdk-url-check-"))
    try:
        fetch(pkg, tmp / "package.tgz", timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
