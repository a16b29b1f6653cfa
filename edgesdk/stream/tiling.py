"""Tiled scoring of high-resolution frames: a grid of model-sized tiles, cut as one batch, their
anomaly maps stitched back into one map in frame pixels. numpy and cv2 only (device side).

A line camera's 2-12 MP frame squeezed into a 256x256 model input shrinks a defect of a few dozen
pixels to one or two; scored tile by tile it stays at full size. The grid:
  - tiles of (th, tw) pixels overlapping by `overlap` along each axis cover the whole frame; the last
    row and column are shifted inward to end at the frame's edge (overlapping their neighbour more),
    so no tile is padded and every tile is real image;
  - a frame with a side shorter than the tile is refused (DataError naming both sizes): scoring it
    whole would squash or stretch it to the model's input, which tiling was asked to avoid, and a
    frame smaller than the tile means the tile= or roi= setting does not fit the camera.
Stitching takes the max where tiles overlap: a defect on a tile border is seen by both tiles, each
at its edge; a blend (a weighted mean) would average the stronger view with the weaker one and lower
the defect, while the max keeps it at full strength and agrees with the bundle's own rule (the frame
score is the max of its map, so the frame score is the max over the tiles' scores). A segmenter's
kind map follows the same rule: each pixel takes its kind from the tile whose map is highest there,
the tile its stitched value came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgesdk.errors import DataError, OptionError

MAX_TILES = 4096  # per frame: a guard against a tile/overlap that would cut millions of tiles


@dataclass(frozen=True)
class TileSpec:
    """Score frames tile by tile. size: the tile's side in frame pixels (None: the model's input,
    height x width); overlap: pixels shared by neighbouring tiles, 0 <= overlap < size. Tiles of
    another size than the model's input are resized to it (and their maps back)."""

    size: int | None = None
    overlap: int = 0

    def __post_init__(self) -> None:
        for name, v in (("tile", self.size), ("overlap", self.overlap)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise OptionError(f"{name} must be a whole number of pixels, got {v!r}")
        if self.size is not None and not 1 <= self.size <= 65535:
            raise OptionError(f"tile must be 1 to 65535 pixels, got {self.size}")
        if self.overlap < 0:
            raise OptionError(f"overlap must be >= 0, got {self.overlap}")
        if self.size is not None and self.overlap >= self.size:
            raise OptionError(f"overlap {self.overlap} must be less than the tile ({self.size})")

    def resolve(self, model_hw: tuple[int, int]) -> tuple[int, int]:
        """(th, tw) of the tiles for a model whose input is MODEL_HW; an overlap that does not fit a
        tile of the model's size (tile=auto) is an OptionError."""
        if self.size is not None:
            return self.size, self.size
        if self.overlap >= min(model_hw):
            raise OptionError(
                f"overlap {self.overlap} must be less than the tile (auto: the model's input, "
                f"{model_hw[1]}x{model_hw[0]})"
            )
        return int(model_hw[0]), int(model_hw[1])


def _starts(n: int, t: int, overlap: int) -> list[int]:
    """Tile starts along one axis of N pixels: every t - overlap, the last one shifted to end at N."""
    step = t - overlap
    starts = list(range(0, n - t + 1, step))
    if starts[-1] + t < n:
        starts.append(n - t)
    return starts


def grid(frame_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: int) -> np.ndarray:
    """(N, 2) int64 top-left (y, x) of each tile, row by row, covering a FRAME_HW frame."""
    (h, w), (th, tw) = frame_hw, tile_hw
    if h < th or w < tw:
        raise DataError(
            f"a {w}x{h} frame is smaller than the {tw}x{th} tile: set a smaller tile= (or none), or a larger roi="
        )
    ys, xs = _starts(h, th, overlap), _starts(w, tw, overlap)
    if len(ys) * len(xs) > MAX_TILES:
        raise DataError(
            f"tile {tw}x{th} with overlap {overlap} cuts a {w}x{h} frame into {len(ys) * len(xs)} tiles "
            f"(at most {MAX_TILES}): use a larger tile or a smaller overlap"
        )
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int64).reshape(-1, 2)


def cut(frame: np.ndarray, origins: np.ndarray, tile_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 frame -> (N, mh, mw, 3) uint8 batch of its tiles at the model's input size."""
    (th, tw), (mh, mw) = tile_hw, model_hw
    batch = np.empty((len(origins), mh, mw, 3), np.uint8)
    same = (th, tw) == (mh, mw)
    for i, (y, x) in enumerate(origins):
        tile = frame[y : y + th, x : x + tw]
        if same:
            batch[i] = tile
        else:  # shrinking averages (INTER_AREA), as images.resize does for whole frames
            interp = cv2.INTER_AREA if th > mh or tw > mw else cv2.INTER_LINEAR
            batch[i] = cv2.resize(tile, (mw, mh), interpolation=interp)
    return batch


def _to_tile(m: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    """A (mh, mw) tile map at the tile's (th, tw) frame size; bilinear never exceeds its inputs, so the
    tile's peak is kept or lowered."""
    th, tw = tile_hw
    if m.shape == (th, tw):
        return m
    return cv2.resize(np.ascontiguousarray(m, np.float32), (tw, th), interpolation=cv2.INTER_LINEAR)


def _kinds_to_tile(k: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    """A (mh, mw) kind map at (th, tw) by nearest neighbour (centre-aligned): kind indices are labels,
    never blended."""
    (th, tw), (mh, mw) = tile_hw, k.shape
    if (mh, mw) == (th, tw):
        return k
    rows = np.minimum(((np.arange(th) + 0.5) * mh / th).astype(np.int64), mh - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * mw / tw).astype(np.int64), mw - 1)
    return k[rows[:, None], cols[None, :]]


def stitch(maps: np.ndarray, origins: np.ndarray, tile_hw: tuple[int, int], frame_hw: tuple[int, int]) -> np.ndarray:
    """(N, mh, mw) per-tile maps -> (H, W) float32 map in frame pixels, the max where tiles overlap.
    Every pixel is covered by some tile (grid), so the -inf start never survives."""
    th, tw = tile_hw
    out = np.full(frame_hw, -np.inf, np.float32)
    for m, (y, x) in zip(maps, origins):
        view = out[y : y + th, x : x + tw]
        np.maximum(view, _to_tile(m, tile_hw), out=view)
    return out


def stitch_kinds(
    maps: np.ndarray,
    kind_maps: np.ndarray,
    origins: np.ndarray,
    tile_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(N, mh, mw) per-tile maps and kind maps -> the (H, W) float32 map of `stitch` and an (H, W) int64
    kind map: each pixel's kind from the tile whose map is highest there (the first such tile on a tie),
    so a region's kinds come from the tiles that flagged it."""
    th, tw = tile_hw
    out = np.full(frame_hw, -np.inf, np.float32)
    kinds = np.zeros(frame_hw, np.int64)
    for m, k, (y, x) in zip(maps, kind_maps, origins):
        m = _to_tile(m, tile_hw)
        view, kview = out[y : y + th, x : x + tw], kinds[y : y + th, x : x + tw]
        wins = m > view  # before the max: this tile's value is the one the stitched map keeps
        np.maximum(view, m, out=view)
        kview[wins] = _kinds_to_tile(k, tile_hw)[wins]
    return out, kinds
