"""Image archives walked as `glob` walks them, without following a loop: a folder's files and a glob
pattern's matches, following links to folders (an archive may link its date folders in) but never into
a folder the walk is already inside (a link back up would name the same files again at every depth;
`glob`'s `**` followed one 40 levels down). Patterns are matched part by part while walking, so only
the folders a pattern can match are listed. Standard library only."""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path
from typing import Iterator

Chain = frozenset[tuple[int, int]]  # (st_dev, st_ino) of the real folders the walk is inside


def _key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:  # unreadable or gone: skipped, as glob and os.walk skip it
        return []


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows a link
    except OSError:
        return False


def files_below(folder: str | Path, hidden: bool = True, chain: Chain | None = None) -> Iterator[str]:
    """Every file below FOLDER, sorted by name at each level; names starting with . skipped unless HIDDEN."""
    if chain is None:
        key = _key(str(folder))
        chain = frozenset([key]) if key else frozenset()
    for e in _entries(str(folder)):
        if not hidden and e.name.startswith("."):
            continue
        if not _is_dir(e):
            yield e.path
        elif (key := _key(e.path)) is not None and key not in chain:
            yield from files_below(e.path, hidden, chain | {key})


def glob_files(pattern: str) -> Iterator[str]:
    """What glob.glob(PATTERN, recursive=True) matches, loops aside (`**`: any number of folders, not
    hidden ones; a part matches a name starting with . only if it starts with . itself); duplicates
    possible where a pattern has `**` twice. A pattern ending in a separator matches folders only: none."""
    if pattern.endswith(os.sep):
        return
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = str(Path(*parts[:fixed])) if fixed else os.curdir
    if fixed == len(parts):
        if os.path.lexists(root):
            yield root
        return
    key = _key(root)
    if key is not None and os.path.isdir(root):
        yield from _expand(root, parts[fixed:], frozenset([key]), fixed == 0)


def _expand(folder: str, pats: tuple[str, ...], chain: Chain, bare: bool) -> Iterator[str]:
    """Matches of PATS below FOLDER (CHAIN: the real folders it is inside; BARE: FOLDER is the current
    directory, which a relative pattern's matches do not name)."""

    def join(name: str) -> str:
        return name if bare else os.path.join(folder, name)

    pat, rest = pats[0], pats[1:]
    if pat == "**":
        if not rest:
            for f in files_below(folder, hidden=False, chain=chain):
                yield os.path.relpath(f) if bare else f
            return
        yield from _expand(folder, rest, chain, bare)  # `**` as no folder at all
        for e in _entries(folder):
            if not e.name.startswith(".") and _is_dir(e) and (key := _key(e.path)) is not None and key not in chain:
                yield from _expand(join(e.name), pats, chain | {key}, False)
        return
    if not glob.has_magic(pat):  # a plain name (or `..`): looked up, not listed, as glob does
        names = [pat] if os.path.lexists(os.path.join(folder, pat)) else []
    else:
        hidden = pat.startswith(".")
        names = [
            e.name
            for e in _entries(folder)
            if (hidden or not e.name.startswith(".")) and fnmatch.fnmatchcase(e.name, pat)
        ]
    for name in names:
        path = join(name)
        if not rest:
            yield path
        elif os.path.isdir(path) and (key := _key(path)) is not None:
            yield from _expand(path, rest, chain | {key}, False)
