"""`--images DIR|GLOB|LIST` -> a sorted list of absolute image paths, and its fingerprint.

DIR: every image below the folder (recursively, archives nest by date); GLOB: a pattern with * ? or
[ (`**` recursive); LIST: a text file of paths, one a line (relative ones are relative to the file's
folder; blank lines and lines starting with # are skipped). DIR and `**` follow links to folders (an
archive may link its date folders in), except a link back to a folder they are inside, which would
name the same files again at every depth. Standard library only."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from edgesdk.errors import DataError
from edgesdk.images import IMAGE_EXTS
from edgesdk.scale.walk import files_below, glob_files


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
        found = [q for q in map(Path, files_below(p)) if _is_image(q) and q.is_file()]
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
        found = [q for q in map(Path, glob_files(text)) if _is_image(q) and q.is_file()]
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
