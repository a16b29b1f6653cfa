"""Training batches for supervised models from a few labelled images: crops (defect crops
oversampled), flips, 90-degree rotations, brightness/contrast, and the line's camera codec.

Labels travel with the pixels: a target map (H, W) int64 holds 0 (background), k (the k-th defect
kind, 1-based) or IGNORE where the pixels' classes are unknown (a defective image without a mask).
Deterministic per numpy Generator; numpy + OpenCV only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgesdk.data.camera import simulate

IGNORE = -1


@dataclass(frozen=True)
class Pool:
    """The images a batch is drawn from, at the model's input size."""

    frames: np.ndarray  # (N, H, W, 3) uint8 BGR
    classes: np.ndarray  # (N,) int64: 0 good, k defect kind k
    masks: np.ndarray  # (N, H, W) bool
    has_mask: np.ndarray  # (N,) bool; good images count as fully labelled

    def targets(self, i: int) -> np.ndarray:
        """(H, W) int64 target map of image I."""
        if not self.has_mask[i]:
            return np.full(self.masks.shape[1:], IGNORE, np.int64)
        return np.where(self.masks[i], self.classes[i], 0).astype(np.int64)


def crop_at(h: int, w: int, size: int, rng: np.random.Generator, around: np.ndarray | None) -> tuple[int, int]:
    """Top-left (y, x) of a SIZE crop: random, or holding a random pixel of AROUND (a (H, W) bool
    mask) at a random place inside the crop."""
    if around is not None and around.any():
        ys, xs = np.nonzero(around)
        j = int(rng.integers(len(ys)))
        y0 = int(ys[j]) - int(rng.integers(size // 8, size - size // 8))
        x0 = int(xs[j]) - int(rng.integers(size // 8, size - size // 8))
    else:
        y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return min(max(y0, 0), h - size), min(max(x0, 0), w - size)


def geometric(img: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip and 90-degree rotation of an (h, w, 3) image and its (h, w) target."""
    k = int(rng.integers(4))
    img, target = np.rot90(img, k), np.rot90(target, k)
    if rng.random() < 0.5:
        img, target = img[:, ::-1], target[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(target)


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast as a line's lighting drifts: gain about the image mean, and an offset."""
    x = img.astype(np.float32)
    m = x.mean()
    x = (x - m) * rng.uniform(0.8, 1.2) + m * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10)
    return np.clip(x, 0, 255).astype(np.uint8)


def batch(
    pool: Pool,
    picks: np.ndarray,
    size: int,
    rng: np.random.Generator,
    camera: tuple[str, ...] = (),
    camera_share: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """(frames (B, S, S, 3) uint8, targets (B, S, S) int64) for the images PICKS (indices into POOL):
    defect images labelled with a mask are cropped around their defect, the rest anywhere; each is
    flipped, rotated and relit. With CAMERA kinds, a CAMERA_SHARE of batches goes through one of them
    (edgesdk.data.camera), else through JPEG at a random quality."""
    h, w = pool.frames.shape[1:3]
    size = min(size, h, w)
    xs, ts = [], []
    for i in picks:
        around = pool.masks[i] if pool.classes[i] and pool.has_mask[i] else None
        y0, x0 = crop_at(h, w, size, rng, around)
        img = pool.frames[i, y0 : y0 + size, x0 : x0 + size]
        t = pool.targets(int(i))[y0 : y0 + size, x0 : x0 + size]
        img, t = geometric(img, t, rng)
        xs.append(photometric(img, rng))
        ts.append(t)
    x = np.stack(xs)
    if rng.random() < camera_share:
        kinds = camera or (f"jpeg:{int(rng.integers(50, 96))}",)
        x = simulate(x, kinds[int(rng.integers(len(kinds)))])
    return x, np.stack(ts)
