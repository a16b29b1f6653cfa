"""A line that drifts: what synth://conveyor?drift=KIND does to its frames from frame `drift_at` on.

  ramp      the lamp ages: the gain goes linearly from 1 to 1 + amount (default -0.4) over `drift_len`
            frames, then stays there
  shift     the camera is knocked: the whole view moves by `amount` px (default 24 at 256 px) down
            and half that to the side, at once
  blur      the lens is defocused or dusty: a Gaussian blur of sigma `amount` px (default 2.0), at once
  texture   a new batch of material: the part's texture is blended with another category's at weight
            `amount` (default 0.5), at once
`rails` draws the belt's guide rails, fixed in the camera's view (a knock moves them too): the plain
conveyor's texture fills the frame and moves, so it has no fixed structure for the view check to see.
numpy and OpenCV only: the frames of the other material come from the caller (a second Conveyor)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("none", "ramp", "shift", "blur", "texture")
DEFAULT_AMOUNT = {"ramp": -0.4, "shift": 24.0, "blur": 2.0, "texture": 0.5}


@dataclass(frozen=True)
class Drift:
    kind: str = "none"
    at: int = 300  # first drifted frame
    length: int = 300  # ramp: frames from start to full drift
    amount: float | None = None  # None: DEFAULT_AMOUNT[kind]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"drift {self.kind!r}: one of {', '.join(KINDS)}")
        a = self.value
        if self.kind == "ramp" and not -0.95 <= a <= 2.0:
            raise ValueError(f"drift_amount {a:g}: a ramp's gain change is from -0.95 to 2")
        if self.kind in ("shift", "blur") and not 0 < a <= 128:
            raise ValueError(f"drift_amount {a:g}: {self.kind} needs 0 < pixels <= 128")
        if self.kind == "texture" and not 0 < a <= 1:
            raise ValueError(f"drift_amount {a:g}: a texture blend weight is in (0, 1]")

    @property
    def value(self) -> float:
        return DEFAULT_AMOUNT.get(self.kind, 0.0) if self.amount is None else self.amount

    def progress(self, t: int) -> float:
        """0 before onset, then 1 (ramp: rising linearly over `length` frames)."""
        if self.kind == "none" or t < self.at:
            return 0.0
        return min(1.0, (t - self.at + 1) / self.length) if self.kind == "ramp" else 1.0

    def apply(self, img: np.ndarray, t: int, other: np.ndarray | None = None) -> np.ndarray:
        """Frame T (H, W, 3) uint8 as the drifted line shows it; OTHER: the other material's frame T."""
        p = self.progress(t)
        if p == 0.0:
            return img
        a = self.value
        if self.kind == "ramp":
            return np.clip(img.astype(np.float32) * (1.0 + a * p), 0, 255).astype(np.uint8)
        if self.kind == "shift":
            px = a * img.shape[1] / 256.0  # amount is in pixels of a 256 px frame
            m = np.array([[1, 0, px / 2], [0, 1, px]], np.float32)
            return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)
        if self.kind == "blur":
            return cv2.GaussianBlur(img, (0, 0), sigmaX=a * img.shape[1] / 256.0)
        assert other is not None, "texture drift needs the other material's frame"
        return cv2.addWeighted(img, 1.0 - a, other, a, 0.0)


def add_rails(img: np.ndarray) -> np.ndarray:
    """IMG (H, W, 3) uint8 with dark guide rails over the top and bottom eighth, a bright edge each."""
    out = img.copy()
    h, w = img.shape[:2]
    band, edge = h // 8, max(1, h // 64)
    out[:band], out[h - band :] = 40, 40
    out[band - edge : band], out[h - band : h - band + edge] = 220, 220
    return out
