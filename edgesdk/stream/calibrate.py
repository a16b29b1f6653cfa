"""`edgesdk calibrate`: re-derive a bundle's threshold from known-good frames of the line's own
source, written as a new verified bundle (the original stays intact). Runs on the device: no torch.

Why: a line's camera pipeline is never the training pipeline. Trained on PNGs and scored on an mp4
of the same parts, good frames drift by several z (codec, gain, blur), so the export threshold
raises false alarms and loses recall. The score normalization inside the graph is kept; the
threshold moves in its z units, to mean + k std of the line's good scores (k as the bundle's own
threshold used, else 3), and the statistics are recorded in the manifest. The same frames make the
drift alarms' reference (drift.json, stream/drift_ref.py): their scores and how they look.

The frames are the user's word that the parts were good. Frames that stand far out of the clip's own
spread (and above the bundle's threshold) are counted as suspect and warned about: a clip with defects
in it would raise the threshold past the defects it should catch.

A source with ?tile= (stream/tiling.py) is scored tile by tile here too: a tiled frame's score is the
max over its tiles, higher than the same frame scored whole, so the threshold must come from the
scores `edgesdk run` will compare it with.

Several sources (`--source A --source B`, one per camera of a multi-source run): each camera's own
good frames give it its own threshold, by the same method, and its own drift reference; they go into
the manifest's thresholds_by_source and drift_sources.json by source name (?name=, else the URI with
secrets hidden, as stream/multi.py names it), and `run` picks them by that name."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.errors import DataError, OptionError, finite
from edgesdk.fsutil import atomic_dir, prepare_output, write_json
from edgesdk.progress import bar
from edgesdk.spec import MANIFEST, Threshold, file_entry, source_name_problem
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.stream.drift_ref import DRIFT_FILE, SOURCES_FILE, ReferenceBuilder
from edgesdk.stream.drift_ref import SCHEMA as REF_SCHEMA
from edgesdk.stream.multi import split_source
from edgesdk.stream.sinkguard import public_uri
from edgesdk.stream.tiling import TileSpec
from edgesdk.video import open_source
from edgesdk.video.sources import source_tiling

MIN_FRAMES = 30  # below this the std of the good scores is too rough to set a threshold on
SUSPECT_MADS = 6.0  # a frame this many median absolute deviations above the clip's median (about 4 std of
# normal scores: one good frame in ~40000) is no longer taken for a good part
log = logging.getLogger(__name__)


def local_paths(source: str) -> list[Path]:
    """The files or folders a source URI reads on this machine (none for cameras and streams)."""
    parsed = urlparse(source)
    if len(parsed.scheme) > 1 and parsed.scheme != "file":
        return []
    cands = [Path(source), Path(source.split("?")[0])]
    if parsed.scheme == "file":
        cands.append(Path(parsed.netloc + parsed.path))
    return [p for p in cands if p.exists()]


def check_k_sigma(k, name: str, where: str = "") -> float:
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


def line_scores(det: Detector, source: str, frames: int, progress: bool = True, on_frame=None) -> np.ndarray:
    """Scores (N,) of the first FRAMES frames of SOURCE; ON_FRAME(image) sees each frame too."""
    scores: list[float] = []
    with open_source(source) as src, bar(total=frames, desc="calibrate", unit="frame", enabled=progress) as b:
        while len(scores) < frames and (frame := src.read(timeout=5.0)) is not None:
            if det.tile_hw is not None:  # the max over the frame's tiles, as the stream loop scores it
                scores.append(det.predict(frame.image).score)
            else:
                scores.append(float(det.infer(det.preprocess(frame.image))[0][0]))  # score only: no regions
            if on_frame is not None:
                on_frame(frame.image)
            b.update()
    return np.asarray(scores, np.float64)


def calibrate(
    bundle: str | Path,
    source: str | list[str],
    out: str | Path,
    frames: int = 200,
    k_sigma: float | None = None,
    opts: DetectorOptions = DetectorOptions(),
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write OUT: BUNDLE with its threshold re-derived on FRAMES known-good frames of SOURCE.
    Returns the statistics recorded in OUT's manifest. OUT is replaced only when missing, empty or a
    bundle (any folder with FORCE), and never when it is, holds or lies inside BUNDLE or SOURCE.
    Several sources (one per camera, `?name=` as for `run`): each gets its own threshold and drift
    reference, by name (calibrate_sources); the bundle's own threshold stays."""
    if not isinstance(source, str) and len(source) > 1:
        return calibrate_sources(bundle, list(source), out, frames, k_sigma, opts, progress, force)
    source = source if isinstance(source, str) else source[0]
    bundle, out = Path(bundle), Path(out)
    b, inputs, k = _prepare(bundle, [source], out, frames, k_sigma, force)
    if (tiles := source_tiling(source)) is not None:
        opts = dataclasses.replace(opts, tile=TileSpec(*tiles))
    with Detector(b, dataclasses.replace(opts, threshold=None)) as det:
        stats, value, drift = _line_threshold(det, b, source, source, frames, k, progress)
    thr = Threshold(
        value,
        "line_good_k_sigma",
        {"how": f"mean + {k:g} std of {stats['frames']} known-good frames of {source}", **stats},
    )
    with atomic_dir(out, kind="bundle", inputs=inputs, force=force) as stage:
        files = _copy_files(b, stage, skip=(DRIFT_FILE,))  # an earlier calibration's drift.json: replaced
        write_json(stage / DRIFT_FILE, drift.to_dict())
        files[DRIFT_FILE] = file_entry(stage / DRIFT_FILE)
        manifest = dataclasses.replace(
            b.manifest, threshold=thr, files=files, provenance={**b.manifest.provenance, "line_calibration": stats}
        )
        write_json(stage / MANIFEST, manifest.to_dict())
        Bundle.open(stage)  # the new bundle verifies before it replaces anything
    return {**stats, "threshold": value}


def calibrate_sources(
    bundle: str | Path,
    sources: list[str],
    out: str | Path,
    frames: int = 200,
    k_sigma: float | None = None,
    opts: DetectorOptions = DetectorOptions(),
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write OUT: BUNDLE with one threshold per camera, each re-derived as `calibrate` does on FRAMES
    known-good frames of that camera alone (manifest thresholds_by_source), and each camera's drift
    reference (drift_sources.json); `run` with several sources picks them by the source's name (its
    ?name=, else its URI with secrets hidden: stream/multi.py). The bundle's own threshold and
    drift.json stay; an earlier per-source calibration is replaced. Returns {"sources": {name: stats}}."""
    bundle, out = Path(bundle), Path(out)
    parsed = [split_source(u) for u in sources]
    names = [name for _, name, _ in parsed]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise OptionError(f"--source: two sources are named {dup[0]!r}; give each its own ?name=")
    for uri, (_, name, thr) in zip(sources, parsed):
        if why := source_name_problem(name):  # checked before any frame is read: it is a key of the manifest
            raise OptionError(f"{public_uri(uri)}: the source's name {why}; give it a ?name=")
        if thr is not None:
            raise OptionError(f"{public_uri(uri)}: ?threshold= sets a run's threshold; calibrate derives it")
    b, inputs, k = _prepare(bundle, [inner for inner, _, _ in parsed], out, frames, k_sigma, force)
    per: dict[str, dict] = {}
    thresholds, refs = {}, {}
    with Detector(b, dataclasses.replace(opts, threshold=None)) as det:
        for inner, name, _ in parsed:
            shown = public_uri(inner)
            stats, value, refs[name] = _line_threshold(det, b, inner, shown, frames, k, progress)
            how = f"mean + {k:g} std of {stats['frames']} known-good frames of {shown}"
            thresholds[name] = Threshold(value, "line_good_k_sigma", {"how": how, **stats})
            per[name] = {**stats, "threshold": value}
    with atomic_dir(out, kind="bundle", inputs=inputs, force=force) as stage:
        files = _copy_files(b, stage, skip=(SOURCES_FILE,))
        write_json(stage / SOURCES_FILE, {"schema": REF_SCHEMA, "sources": {n: r.to_dict() for n, r in refs.items()}})
        files[SOURCES_FILE] = file_entry(stage / SOURCES_FILE)
        prov = {**b.manifest.provenance, "line_calibration_by_source": {n: st for n, st in per.items()}}
        manifest = dataclasses.replace(b.manifest, thresholds_by_source=thresholds, files=files, provenance=prov)
        write_json(stage / MANIFEST, manifest.to_dict())
        Bundle.open(stage)  # the new bundle verifies before it replaces anything
    return {"sources": per, "k_sigma": k, "bundle_threshold": b.manifest.threshold.value}


def _prepare(bundle: Path, sources: list[str], out: Path, frames: int, k_sigma, force: bool):
    """The checks before any frame is read: (the opened bundle, the paths OUT must not touch, k)."""
    if frames < MIN_FRAMES:
        raise ValueError(f"--frames {frames}: at least {MIN_FRAMES} known-good frames are needed")
    if k_sigma is not None:
        k_sigma = check_k_sigma(k_sigma, "--k-sigma")
    if out.resolve() == bundle.resolve():
        raise ValueError(f"--out {out}: give a new folder; the original bundle stays as exported")
    inputs = [bundle, *(p for s in sources for p in local_paths(s))]
    prepare_output(out, "bundle", inputs, force)
    b = Bundle.open(bundle)
    if k_sigma is None:
        old = b.manifest.threshold
        k_sigma = check_k_sigma(old.detail.get("k_sigma", 3.0), "threshold.detail.k_sigma", str(bundle / MANIFEST))
    return b, inputs, k_sigma


def _copy_files(b: Bundle, stage: Path, skip: tuple[str, ...]) -> dict:
    """Every file the manifest vouches for but SKIP copied into STAGE, hashes unchanged; their entries."""
    for name in b.manifest.files:
        if name not in skip:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(b.path / name, stage / name)
    return {n: e for n, e in b.manifest.files.items() if n not in skip}


def _line_threshold(det: Detector, b: Bundle, source: str, shown: str, frames: int, k: float, progress: bool):
    """(statistics, threshold, drift reference) of FRAMES known-good frames of SOURCE (SHOWN in messages)
    scored by DET: the threshold is mean + K std of their scores; see the module's notes."""
    refs = ReferenceBuilder()  # the drift alarms' reference: these frames' look and scores
    z = line_scores(det, source, frames, progress, refs.add_image)
    bundle, old = b.path, b.manifest.threshold
    if len(z) < MIN_FRAMES:
        raise ValueError(
            f"{shown}: gave {len(z)} frames before it ended; calibration needs at least "
            f"{MIN_FRAMES} known-good frames; use a longer clip"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{shown}: {int((~np.isfinite(z)).sum())} frames scored NaN/inf with {bundle}")
    if np.ptp(z) <= 1e-9 * max(1.0, float(np.abs(z).max())):  # the spread is rounding: no line to learn from
        raise DataError(
            f"{shown}: every frame scored the same ({float(z[0]):.6g}) with {bundle}: the camera shows a constant "
            "image (lens covered, lamp off, frozen feed); calibrate on the running line"
        )
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
            shown,
            len(suspect),
            len(z),
            old.value,
            ", ".join(map(str, suspect[:10].tolist())) + (", ..." if len(suspect) > 10 else ""),
            float(z[suspect].max()),
            float(np.median(z)),
        )
    stats = {
        "source": shown,
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
    drift = refs.reference(np.delete(z, suspect), f"calibration on {shown}")  # suspect frames are no reference
    return stats, value, drift
