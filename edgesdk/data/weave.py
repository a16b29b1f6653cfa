"""Woven fabric for the sample data: a plain weave and a 2/2 twill rendered thread by thread, and the
defects that matter on a loom (a broken thread, a float, a slub) painted where the threads are.

Warp threads run vertically (x = i * period), weft threads horizontally (y = j * period). Each thread
has its own centre jitter, width and tone; yarns are round (brighter along their middle), dip into
shadow where they pass under a crossing thread, carry fibre streaks along their length, and the
whole cloth bows a little (a slow sinusoidal displacement). Deterministic per Weave.seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 512  # texture pixels, as the scikit-image textures
THREAD_DEFECTS = ("broken", "float", "slub")  # edits of one weft thread over a run of warp crossings


@dataclass(frozen=True)
class Weave:
    period: float  # texture pixels between neighbouring threads
    twill: bool  # 2/2 twill (diagonal ribs) instead of plain over-one-under-one
    tint: tuple[float, float, float]  # BGR
    seed: int


WEAVES = {
    "twill": Weave(period=10.0, twill=True, tint=(0.70, 0.80, 1.05), seed=11),
    "weave": Weave(period=16.0, twill=False, tint=(0.80, 0.95, 1.05), seed=7),  # coarse plain weave
}


@dataclass(frozen=True)
class Edit:
    """A thread defect: weft thread J between warp threads I0 (inclusive) and I1 (exclusive)."""

    kind: str
    j: int
    i0: int
    i1: int


def render(w: Weave, edit: Edit | None = None) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 BGR cloth, with EDIT applied to one weft thread."""
    rng = np.random.default_rng(w.seed)
    p, n = w.period, int(SIZE / w.period) + 4
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    xs = xx + 1.5 * np.sin(2 * np.pi * yy / SIZE * 2 + rng.uniform(0, 2 * np.pi))  # the cloth bows
    ys = yy + 1.5 * np.sin(2 * np.pi * xx / SIZE * 3 + rng.uniform(0, 2 * np.pi))
    centre = [(np.arange(n) - 2) * p + rng.normal(0, 0.05 * p, n) for _ in range(2)]  # warp (x), weft (y)
    width = [p * rng.uniform(0.72, 0.86, n) for _ in range(2)]
    tone = [rng.normal(1.0, 0.05, n) for _ in range(2)]
    i = np.clip(np.round(xs / p + 2).astype(np.int64), 0, n - 1)  # nearest warp thread, (SIZE, SIZE)
    j = np.clip(np.round(ys / p + 2).astype(np.int64), 0, n - 1)  # nearest weft thread
    u, v = xs - centre[0][i], ys - centre[1][j]  # offsets across the warp and across the weft
    warp_w, weft_w, weft_tone = width[0][i], width[1][j], tone[1][j]
    warp_top = (i + j) % 4 < 2 if w.twill else (i + j) % 2 == 0
    weft_on, loose = np.ones_like(warp_top), np.zeros_like(warp_top)
    if edit is not None:
        run = (j == edit.j) & (i >= edit.i0) & (i < edit.i1)
        if edit.kind == "broken":  # the weft is missing: the warp and the gaps show
            weft_on &= ~run
        elif edit.kind == "float":  # the weft skips its under-passes and lies loose on top, straight
            warp_top &= ~run
            loose = run
        elif edit.kind == "slub":  # a thick, brighter stretch of yarn
            weft_w, weft_tone = np.where(run, 0.98 * p, weft_w), np.where(run, weft_tone * 1.18, weft_tone)
        else:
            raise ValueError(f"unknown thread defect {edit.kind!r}; choose from {THREAD_DEFECTS}")
    warp_in = np.abs(u) < warp_w / 2
    weft_in = weft_on & (np.abs(v) < weft_w / 2)
    fib = rng.normal(0, 1, (2, SIZE, SIZE)).astype(np.float32)
    fibre_warp = cv2.GaussianBlur(fib[0], (0, 0), sigmaX=0.7, sigmaY=5.0)  # streaks along each thread
    fibre_weft = cv2.GaussianBlur(fib[1], (0, 0), sigmaX=5.0, sigmaY=0.7)
    # Round yarn: bright along the middle; dimmer where it dives under the crossing thread.
    warp_lum = tone[0][i] * (0.62 + 0.38 * np.sqrt(np.clip(1 - (2 * u / warp_w) ** 2, 0, 1)))
    weft_lum = weft_tone * (0.62 + 0.38 * np.sqrt(np.clip(1 - (2 * v / weft_w) ** 2, 0, 1)))
    warp_lum = warp_lum * (1 - 0.3 * (2 * v / p) ** 2) + 0.15 * fibre_warp
    weft_lum = np.where(loose, weft_lum, weft_lum * (1 - 0.3 * (2 * u / p) ** 2)) + 0.15 * fibre_weft
    lum = np.full((SIZE, SIZE), 0.18, np.float32)  # the gaps between threads
    under = 0.62  # a thread seen beside the one crossing over it is in its shadow
    lum = np.where(warp_in, warp_lum * under, lum)
    lum = np.where(weft_in, weft_lum * under, lum)
    lum = np.where(warp_in & (warp_top | ~weft_in), warp_lum, lum)
    lum = np.where(weft_in & (~warp_top | ~warp_in), weft_lum, lum)
    gray = 215 * lum
    return np.clip(gray[..., None] * np.asarray(w.tint, np.float32), 0, 255).astype(np.uint8)


def thread_edit(w: Weave, kind: str, cx: float, cy: float, rng: np.random.Generator) -> Edit:
    """A thread defect of KIND on the weft thread nearest (CX, CY) in texture pixels, running over 3-8
    warp crossings from there."""
    if kind not in THREAD_DEFECTS:
        raise ValueError(f"unknown thread defect {kind!r}; choose from {THREAD_DEFECTS}")
    j, i0 = int(round(cy / w.period + 2)), int(round(cx / w.period + 2))
    length = int(rng.integers(3, 9))
    return Edit(kind, j, i0 - length // 2, i0 - length // 2 + length)
