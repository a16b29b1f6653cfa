"""`edgesdk calibrate`: re-derive a bundle's threshold from known-good frames of the line's own
source, written as a new verified bundle (the original stays intact). Runs on the device: no torch.

Why: a line's camera pipeline is never the training pipeline. Trained on PNGs and scored on an mp4
of the same parts, good frames drift by several z (codec, gain, blur), so the export threshold
raises false alarms and loses recall. The score normalization inside the graph is kept; the
threshold moves in its z units, to mean + k std of the line's good scores (k as the bundle's own
threshold used, else 3), and the statistics are recorded in the manifest.

The frames are the user's word that the parts were good. Frames that stand far out of the clip's own
spread (and above the bundle's threshold) are counted as suspect and warned about: a clip with defects
in it would raise the threshold past the defects it should catch."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.errors import OptionError, finite
from edgesdk.fsutil import atomic_dir, prepare_output, write_json
from edgesdk.progress import bar
from edgesdk.spec import MANIFEST, Threshold
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.video import open_source

MIN_FRAMES = 30  # below this the std of the good scores is too rough to set a threshold on
SUSPECT_MADS = 6.0  # a frame this many median absolute deviations above the clip's median (about 4 std of
# normal scores: one good frame in ~40000) is no longer taken for a good part
log = logging.getLogger(__name__)


def _local_paths(source: str) -> list[Path]:
    """The files or folders a source URI reads on this machine (none for cameras and streams)."""
    parsed = urlparse(source)
    if len(parsed.scheme) > 1 and parsed.scheme != "file":
        return []
    cands = [Path(source), Path(source.split("?")[0])]
    if parsed.scheme == "file":
        cands.append(Path(parsed.netloc + parsed.path))
    return [p for p in cands if p.exists()]


def _k_sigma(k, name: str, where: str = "") -> float:
    k = finite(k, name, where)
    if k < 0:
        raise OptionError(f"{where + ': ' if where else ''}{name} must be >= 0, got {k:g}")
    return k


def suspect_frames(z: np.ndarray, old_threshold: float, held_out_std: float) -> np.ndarray:
    """Indices of the frames (N,) of a supposedly good clip that look like defects: above the bundle's
    own threshold and more than SUSPECT_MADS median absolute deviations above the clip's median. The
    MAD is the clip's own (a few defect frames barely move it; the clip may sit a few z off the export's
    held-out scores, which is what calibration corrects), floored at what normal scores of the held-out
    std would have (0.6745 std), so a clip of near-identical frames does not make its noise suspect."""
    med = float(np.median(z))
    mad = max(float(np.median(np.abs(z - med))), 0.6745 * held_out_std)
    return np.flatnonzero((z > old_threshold) & (z > med + SUSPECT_MADS * mad))


def line_scores(det: Detector, source: str, frames: int, progress: bool = True) -> np.ndarray:
    """Scores (N,) of the first FRAMES frames of SOURCE."""
    scores: list[float] = []
    with open_source(source) as src, bar(total=frames, desc="calibrate", unit="frame", enabled=progress) as b:
        while len(scores) < frames and (frame := src.read(timeout=5.0)) is not None:
            scores.append(float(det.infer(det.preprocess(frame.image))[0][0]))  # score only: no regions
            b.update()
    return np.asarray(scores, np.float64)


def calibrate(
    bundle: str | Path,
    source: str,
    out: str | Path,
    frames: int = 200,
    k_sigma: float | None = None,
    opts: DetectorOptions = DetectorOptions(),
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write OUT: BUNDLE with its threshold re-derived on FRAMES known-good frames of SOURCE.
    Returns the statistics recorded in OUT's manifest. OUT is replaced only when missing, empty or a
    bundle (any folder with FORCE), and never when it is, holds or lies inside BUNDLE or SOURCE."""
    bundle, out = Path(bundle), Path(out)
    if frames < MIN_FRAMES:
        raise ValueError(f"--frames {frames}: at least {MIN_FRAMES} known-good frames are needed")
    if k_sigma is not None:
        k_sigma = _k_sigma(k_sigma, "--k-sigma")
    if out.resolve() == bundle.resolve():
        raise ValueError(f"--out {out}: give a new folder; the original bundle stays as exported")
    inputs = [bundle, *_local_paths(source)]
    prepare_output(out, "bundle", inputs, force)
    b = Bundle.open(bundle)
    old = b.manifest.threshold
    if k_sigma is None:
        k_sigma = _k_sigma(old.detail.get("k_sigma", 3.0), "threshold.detail.k_sigma", str(bundle / MANIFEST))
    with Detector(b, dataclasses.replace(opts, threshold=None)) as det:
        z = line_scores(det, source, frames, progress)
    if len(z) < MIN_FRAMES:
        raise ValueError(
            f"{source}: gave {len(z)} frames before it ended; calibration needs at least "
            f"{MIN_FRAMES} known-good frames; use a longer clip"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{source}: {int((~np.isfinite(z)).sum())} frames scored NaN/inf with {bundle}")
    k = k_sigma
    value = float(z.mean() + k * z.std(ddof=1))
    # Scores are z units of the export's held-out good scores (normalization z_from_good_holdout):
    # their std is 1 by construction.
    held_std = 1.0 if b.manifest.normalization.get("kind") == "z_from_good_holdout" else 0.0
    suspect = suspect_frames(z, old.value, held_std)
    if len(suspect):
        log.warning(
            "%s: %d of %d frames score far above the rest of the clip and the bundle's threshold %.3g "
            "(frames %s, z up to %.3g vs median %.3g): they look like defects, not good parts; the "
            "threshold derived from them is too high to catch such defects. Calibrate on a clip of "
            "known-good parts only",
            source,
            len(suspect),
            len(z),
            old.value,
            ", ".join(map(str, suspect[:10].tolist())) + (", ..." if len(suspect) > 10 else ""),
            float(z[suspect].max()),
            float(np.median(z)),
        )
    stats = {
        "source": source,
        "frames": int(len(z)),
        "k_sigma": k,
        "mean": float(z.mean()),
        "std": float(z.std(ddof=1)),
        "p99": float(np.percentile(z, 99)),
        "max": float(z.max()),
        "flagged_at_old_threshold": int((z > old.value).sum()),
        "flagged_at_new_threshold": int((z > value).sum()),
        "old_threshold": old.value,
        "old_source": old.source,
        "from_bundle": str(bundle),
        "from_model_sha256": b.onnx_sha256,
        "suspect_frames": int(len(suspect)),
        "suspect_frame_indices": suspect.tolist(),
    }
    thr = Threshold(
        value, "line_good_k_sigma", {"how": f"mean + {k:g} std of {len(z)} known-good frames of {source}", **stats}
    )
    manifest = dataclasses.replace(
        b.manifest, threshold=thr, provenance={**b.manifest.provenance, "line_calibration": stats}
    )
    with atomic_dir(out, kind="bundle", inputs=inputs, force=force) as stage:
        for name in b.manifest.files:  # every file the manifest vouches for, hashes unchanged
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(b.path / name, stage / name)
        write_json(stage / MANIFEST, manifest.to_dict())
        Bundle.open(stage)  # the new bundle verifies before it replaces anything
    return {**stats, "threshold": value}
