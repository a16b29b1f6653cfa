"""`edgesdk calibrate`: re-derive a bundle's threshold from known-good frames of the line's own
source, written as a new verified bundle (the original stays intact). Runs on the device: no torch.

Why: a line's camera pipeline is never the training pipeline. Trained on PNGs and scored on an mp4
of the same parts, good frames drift by several z (codec, gain, blur), so the export threshold
raises false alarms and loses recall. The score normalization inside the graph is kept; the
threshold moves in its z units, to mean + k std of the line's good scores (k as the bundle's own
threshold used, else 3), and the statistics are recorded in the manifest."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.fsutil import atomic_dir, write_json
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.spec import MANIFEST, Threshold
from edgesdk.video import open_source

MIN_FRAMES = 30     # below this the std of the good scores is too rough to set a threshold on


def line_scores(det: Detector, source: str, frames: int, progress: bool = True) -> np.ndarray:
    """Scores (N,) of the first FRAMES frames of SOURCE."""
    from tqdm import tqdm

    scores = []
    with open_source(source) as src, tqdm(total=frames, desc="calibrate", unit="frame", disable=not progress) as bar:
        while len(scores) < frames and (frame := src.read(timeout=5.0)) is not None:
            scores.append(float(det.infer(det.preprocess(frame.image))[0][0]))   # score only: no regions
            bar.update()
    return np.asarray(scores, np.float64)


def calibrate(bundle: str | Path, source: str, out: str | Path, frames: int = 200, k_sigma: float | None = None,
              opts: DetectorOptions = DetectorOptions(), progress: bool = True) -> dict:
    """Write OUT: BUNDLE with its threshold re-derived on FRAMES known-good frames of SOURCE.
    Returns the statistics recorded in OUT's manifest."""
    bundle, out = Path(bundle), Path(out)
    if frames < MIN_FRAMES:
        raise ValueError(f"--frames {frames}: at least {MIN_FRAMES} known-good frames are needed")
    if out.resolve() == bundle.resolve():
        raise ValueError(f"--out {out}: give a new folder; the original bundle stays as exported")
    b = Bundle.open(bundle)
    with Detector(b, dataclasses.replace(opts, threshold=None)) as det:
        z = line_scores(det, source, frames, progress)
    if len(z) < MIN_FRAMES:
        raise ValueError(f"{source}: gave {len(z)} frames before it ended; calibration needs at least "
                         f"{MIN_FRAMES} known-good frames; use a longer clip")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{source}: {int((~np.isfinite(z)).sum())} frames scored NaN/inf with {bundle}")
    old = b.manifest.threshold
    k = float(k_sigma if k_sigma is not None else old.detail.get("k_sigma", 3.0))
    value = float(z.mean() + k * z.std(ddof=1))
    stats = {"source": source, "frames": int(len(z)), "k_sigma": k, "mean": float(z.mean()),
             "std": float(z.std(ddof=1)), "p99": float(np.percentile(z, 99)), "max": float(z.max()),
             "flagged_at_old_threshold": int((z > old.value).sum()), "flagged_at_new_threshold": int((z > value).sum()),
             "old_threshold": old.value, "old_source": old.source, "from_bundle": str(bundle),
             "from_model_sha256": b.onnx_sha256}
    thr = Threshold(value, "line_good_k_sigma", {"how": f"mean + {k:g} std of {len(z)} known-good frames of "
                                                        f"{source}", **stats})
    manifest = dataclasses.replace(b.manifest, threshold=thr,
                                   provenance={**b.manifest.provenance, "line_calibration": stats})
    with atomic_dir(out) as stage:
        for name in b.manifest.files:          # every file the manifest vouches for, hashes unchanged
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(b.path / name, stage / name)
        write_json(stage / MANIFEST, manifest.to_dict())
        Bundle.open(stage)                     # the new bundle verifies before it replaces anything
    return {**stats, "threshold": value}
