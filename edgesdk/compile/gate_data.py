"""The data the accuracy gate (compile.gate) measures on, read from the run unless told otherwise:

  calibration  the line's own good images: --calib DIR, or the run's fit images (never its held-out ones)
  held-out     the run's held-out good images: the quantized model's own threshold is re-derived on them
  validation   --val DIR, or the run's DATA/test when it exists (labelled)

Errors name the folder they came from (DataError)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesdk.compile import quant
from edgesdk.data import mvtec

MIN_CALIB = 8


def calibration_frames(opts: quant.QuantOptions, meta: dict, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """(N, H, W, 3) uint8 calibration frames and where they came from; errors name the folder."""
    if opts.calib:
        folder = Path(opts.calib)
        if not folder.is_dir():
            raise mvtec.DataError(f"calibration folder {folder}: not found")
        paths = mvtec.good_images(folder)
        source = str(folder.resolve())
    else:
        data = Path(meta["data"]["path"])
        held = set(meta["data"].get("holdout_files", []))
        try:
            paths = [p for p in mvtec.good_images(data) if p.name not in held]
        except mvtec.DataError as e:
            raise mvtec.DataError(
                f"{e} (the run's training images, used for calibration by default; "
                "pass --calib DIR with the line's good images)"
            ) from e
        source = f"{data} (the run's fit images)"
    if len(paths) < MIN_CALIB:
        raise mvtec.DataError(
            f"calibration folder {paths[0].parent if paths else opts.calib}: {len(paths)} "
            f"images; at least {MIN_CALIB} are needed to calibrate"
        )
    pick = np.linspace(0, len(paths) - 1, min(opts.n_calib, len(paths))).round().astype(int)
    chosen = [paths[i] for i in sorted(set(pick.tolist()))]
    return mvtec.read_batch(chosen, size), {"source": source, "n_images": len(chosen), "n_available": len(paths)}


def holdout_frames(meta: dict, run_dir: Path, size: tuple[int, int]) -> np.ndarray:
    """The run's held-out good images (all of them; the run folder keeps only a few as frames)."""
    data = Path(meta["data"]["path"])
    root = data / "train" / "good" if (data / "train" / "good").is_dir() else data
    paths = [root / n for n in meta["data"].get("holdout_files", [])]
    if paths and all(p.is_file() for p in paths):
        return mvtec.read_batch(paths, size)
    return np.load(run_dir / "holdout_frames.npy")


def validation_set(
    val: str, meta: dict, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str] | None:
    """(frames, labels, masks or None, where) from VAL or the run's DATA/test; None if neither."""
    if val:
        items = mvtec.labelled_items(val)
        where = str(Path(val).resolve())
    else:
        data = Path(meta["data"]["path"])
        if not (data / "test").is_dir():
            return None
        items = mvtec.test_items(data)
        where = str((data / "test").resolve())
    return (*mvtec.read_labelled(items, size), where)
