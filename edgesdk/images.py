"""Image I/O and resizing, the one implementation both sides use: the device resizes every frame
with `resize` (stream/detector.py), reads image folders as sources (video/sources.py); the host
reads data sets with the same functions (data/mvtec.py), so training and scoring see the same pixels.
numpy + OpenCV only. Every error is a DataError naming the path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgesdk.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return files


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 BGR, resized to size=(H, W) if given."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: not a readable image")
    return resize(img, size) if size is not None else img


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
