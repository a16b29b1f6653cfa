"""A labelled folder for supervised models (MVTec style, everything inside one folder):

  DIR/good/*.png                              good images (optional: the category's good images count too)
  DIR/<kind>/*.png                            images of one defect kind, one folder per kind
  DIR/ground_truth/<kind>/<stem>_mask.png     the defect's pixels (optional per image: an image of a
                                              kind without a mask is an image-level label only)

Strict, because a label that is silently dropped or misread trains the wrong thing: an unknown file,
an empty kind, a mask without its image, a mask whose size differs from its image's, or a link out of
the folder is an error naming the file. numpy + OpenCV only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesdk.data.mvtec import Item, read_item
from edgesdk.errors import DataError
from edgesdk.images import IMAGE_EXTS
from edgesdk.spec.manifest import kind_name_problem

GROUND_TRUTH = "ground_truth"


def check_kind_name(name: str, where: str) -> str:
    """NAME if it can name a defect kind (a folder, a manifest entry, a record field), else DataError."""
    why = kind_name_problem(name)
    if why:
        raise DataError(f"{where}: cannot name a defect kind: {why}")
    return name


@dataclass(frozen=True)
class LabelledSet:
    root: Path
    kinds: tuple[str, ...]  # defect kinds, sorted; a kind's index + 1 is its class (0 = background)
    items: tuple[Item, ...]  # good and defective images; mask None = image-level label only
    limit: int | None = None  # most pixels an image or mask may have (images.read_image); None: the default

    def count(self) -> dict[str, int]:
        """Images per kind ("good" first) and how many have masks."""
        out = {k: sum(it.kind == k for it in self.items) for k in ("good", *self.kinds)}
        return {**out, "masks": sum(it.mask is not None for it in self.items)}

    def read(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(frames (N, H, W, 3) uint8 BGR, classes (N,) int64: 0 good or kind index + 1, masks (N, H, W)
        bool (all False where there is none), has_mask (N,) bool: good images count as fully labelled)."""
        frames, masks = [], []
        for it in self.items:
            img, m = read_item(it, size, self.limit)
            if m is not None and it.label and not m.any():
                raise DataError(
                    f"{it.mask}: no defect pixels at {size[1]}x{size[0]}; remove the mask to keep "
                    f"{it.path} as an image-level label"
                )
            frames.append(img)
            masks.append(m if m is not None else np.zeros(size, bool))
        classes = np.array([0 if it.kind == "good" else self.kinds.index(it.kind) + 1 for it in self.items])
        has = np.array([it.kind == "good" or it.mask is not None for it in self.items])
        return np.stack(frames), classes.astype(np.int64), np.stack(masks), has


def _inside(path: Path, root: Path) -> Path:
    """PATH when it is a plain file or folder inside ROOT (no symbolic link on the way), else DataError."""
    if path.is_symlink() or root not in path.resolve().parents:
        raise DataError(f"{path}: a symbolic link or outside {root}; a labelled folder's files must lie inside it")
    return path


def _images(folder: Path, root: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        _inside(p, root)
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            raise DataError(f"{p}: not an image ({', '.join(IMAGE_EXTS)}); a kind's folder holds only its images")
        files.append(p)
    if not files:
        raise DataError(f"{folder}: no images; remove the empty kind or add its images")
    return files


def load_labels(folder: str | Path, limit: int | None = None) -> LabelledSet:
    """The labelled folder FOLDER, checked (see the module's notes); masks are matched, not read yet
    (then with the pixel limit LIMIT)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: labelled folder not found")
    root = folder.resolve()
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    for p in entries:
        _inside(p, root)
        if not p.is_dir():
            raise DataError(
                f"{p}: unknown file; a labelled folder holds good/, one folder per defect kind and {GROUND_TRUTH}/"
            )
    kinds = tuple(check_kind_name(p.name, str(p)) for p in entries if p.name not in ("good", GROUND_TRUTH))
    if not kinds:
        raise DataError(f"{folder}: no defect kind folders (expected <kind>/*.png next to good/)")
    items = [Item(p, 0, "good") for p in (_images(folder / "good", root) if (folder / "good").is_dir() else [])]
    stems: dict[str, dict[str, Path]] = {}
    for kind in kinds:
        stems[kind] = {}
        for p in _images(folder / kind, root):
            if p.stem in stems[kind]:
                raise DataError(
                    f"{p}: two images named {p.stem} (also {stems[kind][p.stem].name}); a mask could belong to either"
                )
            stems[kind][p.stem] = p
    masks: dict[tuple[str, str], Path] = {}
    gt = folder / GROUND_TRUTH
    for kdir in sorted(gt.iterdir()) if gt.is_dir() else []:
        if kdir.name.startswith("."):
            continue
        _inside(kdir, root)
        if not kdir.is_dir() or kdir.name not in kinds:
            raise DataError(f"{kdir}: not a defect kind of this folder (kinds: {', '.join(kinds)})")
        for m in sorted(kdir.iterdir()):
            if m.name.startswith("."):
                continue
            _inside(m, root)
            stem = m.stem.rsplit("_mask", 1)[0]
            if not m.is_file() or not m.stem.endswith("_mask") or m.suffix.lower() not in IMAGE_EXTS:
                raise DataError(f"{m}: not a mask (expected <image stem>_mask.png)")
            if stem not in stems[kdir.name]:
                raise DataError(f"{m}: mask without an image (expected {folder / kdir.name}/{stem}.png)")
            if (kdir.name, stem) in masks:
                raise DataError(f"{m}: a second mask for {stems[kdir.name][stem]} (also {masks[kdir.name, stem]})")
            masks[kdir.name, stem] = m
    for kind in kinds:
        items += [Item(p, 1, kind, masks.get((kind, stem))) for stem, p in stems[kind].items()]
    return LabelledSet(folder, kinds, tuple(items), limit)
