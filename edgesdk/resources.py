"""Where the data folders shipped with edgesdk live: `devices/` (device profiles) and `export/`
(recipes). A wheel carries them inside the package (edgesdk/_data/, hatchling force-include); a
source checkout has them at the repository root. Standard library only."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """edgesdk/_data/NAME in an installed wheel, else NAME/ beside the package in a checkout."""
    for cand in (_PKG / "_data" / name, _PKG.parent / name):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"edgesdk's {name}/ folder is missing from this install ({_PKG})")


def resolve(name_or_path: str, folder: str, suffix: str = ".toml") -> Path:
    """A file path as given, or FOLDER/NAME.toml among the shipped ones; a clear error lists them."""
    p = Path(name_or_path)
    if p.suffix == suffix or p.parent != Path("."):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found")
        return p
    cand = data_dir(folder) / f"{name_or_path}{suffix}"
    if not cand.is_file():
        have = sorted(f.stem for f in data_dir(folder).glob(f"*{suffix}"))
        raise FileNotFoundError(
            f"{name_or_path!r}: no such {folder[:-1] if folder.endswith('s') else folder} "
            f"(shipped: {', '.join(have)}; or give a path to a {suffix} file)"
        )
    return cand
