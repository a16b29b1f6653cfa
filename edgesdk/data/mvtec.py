"""Dataset layouts: MVTec AD (category/train/good, test/<kind>, ground_truth/<kind>/*_mask.png) and
plain folders of images; reading and resizing one image is edgesdk/images.py. numpy + OpenCV only, so
the device can evaluate too.

Every error names the path and what is wrong with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgesdk.errors import DataError
from edgesdk.images import list_images, read_image, read_mask, resize


@dataclass(frozen=True)
class Item:
    path: Path
    label: int  # 0 good, 1 defective
    kind: str  # "good" or the defect folder name
    mask: Path | None = None  # ground-truth mask, defective items only


def read_batch(paths: list[Path], size: tuple[int, int], limit: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR; LIMIT: as read_image's."""
    return np.stack([read_image(p, size, limit) for p in paths]) if paths else np.zeros((0, *size, 3), np.uint8)


def good_images(data: str | Path) -> list[Path]:
    """Training images: DATA/train/good in an MVTec category, or DATA itself if it holds images."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: not found")
    if (data / "train" / "good").is_dir():
        return list_images(data / "train" / "good")
    if (data / "train").exists():
        raise DataError(f"{data}: has train/ but no train/good/ (MVTec AD layout expected)")
    return list_images(data)


def labelled_items(folder: str | Path) -> list[Item]:
    """Items of an MVTec-style labelled folder: folder/good/*, folder/<defect>/*; masks are looked
    up in folder/../ground_truth/<defect>/<stem>_mask.png (MVTec) and are optional for a val set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    gt = folder.parent / "ground_truth"
    kinds = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if "good" not in kinds:
        raise DataError(f"{folder}: no good/ subfolder (expected good/ and one folder per defect kind)")
    items: list[Item] = []
    for kind in kinds:
        for path in list_images(folder / kind):
            mask = None
            if kind != "good":
                cand = gt / kind / f"{path.stem}_mask.png"
                mask = cand if cand.is_file() else None
            items.append(Item(path, int(kind != "good"), kind, mask))
    return items


def test_items(category: str | Path) -> list[Item]:
    """category/test in MVTec AD layout; every defective image must have its mask and every mask
    its image (a mismatch is an error, not a silent drop that would inflate pixel metrics)."""
    category = Path(category)
    items = labelled_items(category / "test")
    gt = category / "ground_truth"
    for it in items:
        if it.label and it.mask is None:
            raise DataError(
                f"{it.path}: defective test image has no mask {gt / it.kind / (it.path.stem + '_mask.png')}"
            )
    if gt.is_dir():
        have = {(it.kind, it.path.stem) for it in items if it.label}
        for kind_dir in sorted(p for p in gt.iterdir() if p.is_dir()):
            for mask in sorted(kind_dir.glob("*_mask.*")):
                if (kind_dir.name, mask.name.rsplit("_mask", 1)[0]) not in have:
                    raise DataError(
                        f"{mask}: mask without a test image "
                        f"(expected {category / 'test' / kind_dir.name}/"
                        f"{mask.name.rsplit('_mask', 1)[0]}.png)"
                    )
    return items


def read_labelled(
    items: list[Item], size: tuple[int, int], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(frames (N, H, W, 3) uint8, labels (N,), masks (N, H, W) bool or None when a defective item
    has no mask) of labelled ITEMS at SIZE; LIMIT: as read_image's."""
    loaded = [read_item(it, size, limit) for it in items]
    labels = np.array([it.label for it in items])
    masks = None
    if all(m is not None for (_, m), it in zip(loaded, items) if it.label):
        masks = np.stack([m if m is not None else np.zeros(size, bool) for _, m in loaded])
    return np.stack([f for f, _ in loaded]), labels, masks


def read_item(item: Item, size: tuple[int, int], limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(image (H, W, 3) uint8 BGR, mask (H, W) bool or None) at `size`; a mask whose native size
    differs from its image's is an error (it would score the wrong pixels). LIMIT: as read_image's."""
    img = read_image(item.path, limit=limit)
    if item.mask is None:
        return resize(img, size), None
    m = read_mask(item.mask, limit=limit)
    if m.shape != img.shape[:2]:
        raise DataError(
            f"{item.mask}: mask is {m.shape[1]}x{m.shape[0]} but its image {item.path} is {img.shape[1]}x{img.shape[0]}"
        )
    m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) if m.shape != tuple(size) else m
    return resize(img, size), m > 127
