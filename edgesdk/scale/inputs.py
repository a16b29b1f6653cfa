"""`--images DIR|GLOB|LIST` -> a sorted list of absolute image paths, and its fingerprint.

DIR: every image below the folder (recursively, archives nest by date); GLOB: a pattern with * ? or
[ (`**` recursive); LIST: a text file of paths, one a line (relative ones are relative to the file's
folder; blank lines and lines starting with # are skipped). DIR and `**` follow links to folders (an
archive may link its date folders in), except a link back to a folder they are inside, which would
name the same files again at every depth. Standard library only."""

from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import os
from pathlib import Path
from typing import Iterator

from edgesdk.errors import DataError
from edgesdk.images import IMAGE_EXTS


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def resolve(spec: str | Path) -> list[str]:
    """The images SPEC names, sorted and de-duplicated, as absolute paths; DataError naming SPEC when
    it names nothing (a missing folder, a pattern that matches no image, an empty list)."""
    text = str(spec)
    p = Path(text)
    if not text:
        raise DataError("--images: empty; give a folder, a glob pattern or a text file of paths")
    if p.is_dir():
        found = [q for q in _walk(p) if _is_image(q) and q.is_file()]
        what = f"{text}: no images ({', '.join(IMAGE_EXTS)}) in this folder or below"
    elif p.is_file() and not _is_image(p):
        found = []
        # utf-8-sig: Notepad's BOM is not part of the first path; a non-UTF-8 name is refused below.
        # Lines end at \n only: splitlines() would also cut a name at \x85 or U+2028, legal in file names.
        body = p.read_text(encoding="utf-8-sig", errors="surrogateescape")
        for line in body.split("\n"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            q = Path(line)
            found.append(q if q.is_absolute() else p.parent / q)
        what = f"{text}: no paths in this list (one image path a line)"
    elif p.is_file():
        found = [p]
        what = ""
    elif glob.has_magic(text):
        found = [q for q in _glob(text) if _is_image(q) and q.is_file()]
        what = f"--images {text!r}: the pattern matches no image files"
    else:
        raise DataError(f"--images {text}: no such folder, file or pattern")
    paths = sorted({os.path.abspath(q) for q in found})
    if not paths:
        raise DataError(what)
    # A name that is not UTF-8 (os gives it lone surrogates) crashes cv2.imread (a segfault, the whole run)
    # and cannot be stored in Parquet's UTF-8 path column: refused up front, naming it.
    bad = [q for q in paths if _not_utf8(q)]
    if bad:
        raise DataError(
            f"--images {text}: {len(bad)} path(s) not valid UTF-8, e.g. {os.fsencode(bad[0])!r}; rename them "
            "(the Parquet path column is UTF-8)"
        )
    return paths


def _walk(root: Path) -> Iterator[Path]:
    """Every file below ROOT, in sorted order, following links to folders except one back to a folder
    it is already inside (a loop, which would name the same files again at every depth)."""
    real = functools.lru_cache(maxsize=None)(os.path.realpath)
    for folder, dirs, files in os.walk(root, followlinks=True):
        rel = Path(folder).relative_to(root)
        if real(folder) in {real(str(root / up)) for up in rel.parents}:
            dirs[:] = []
            continue
        dirs.sort()
        yield from (Path(folder) / f for f in sorted(files))


def _glob(pattern: str) -> Iterator[Path]:
    """Files PATTERN matches as glob.glob(recursive=True) matches them (`**`: any number of folders; a
    name starting with . only where the pattern's part does), without following a loop."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    pats = parts[fixed:]
    if not root.is_dir():
        return
    recursive = "**" in pats
    for f in _walk(root) if recursive else _walk_depth(root, len(pats)):
        if _match(f.relative_to(root).parts, pats):
            yield f


def _walk_depth(root: Path, depth: int) -> Iterator[Path]:
    """The files exactly DEPTH levels below ROOT (a pattern without `**` needs no deeper walk)."""
    for folder, dirs, files in os.walk(root, followlinks=True):
        level = len(Path(folder).relative_to(root).parts) + 1
        if level >= depth:
            dirs[:] = []
        if level == depth:
            yield from (Path(folder) / f for f in files)


def _match(names: tuple[str, ...], pats: tuple[str, ...]) -> bool:
    if not pats:
        return not names
    if pats[0] == "**":
        return _match(names, pats[1:]) or (bool(names) and not names[0].startswith(".") and _match(names[1:], pats))
    if not names or (names[0].startswith(".") and not pats[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], pats[0]) and _match(names[1:], pats[1:])


def _not_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def fingerprint(paths: list[str]) -> str:
    """sha256 over the path list (names, not contents: an archive is too large to hash on every run)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()
