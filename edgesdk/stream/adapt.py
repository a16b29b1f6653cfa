"""`edgesdk adapt`: a bundle taught the line's new normal from operator-confirmed good frames, on the
device (no torch), written as a new verified bundle; the original stays byte for byte as it was.

A line moves after installation (a new material batch, an ageing lamp) and good parts start to raise
false alarms. The frames the operator confirms as good (false alarms the dir:// sink saved, moved to a
good/ folder) go into the model the way its training images did:
  PaDiM      their features join the sufficient statistics the bundle carries (n, sums, outer-product
             sums): mean and inverse covariance per position are exactly those of a fit on old + new.
  PatchCore  their patch features join the memory bank, thinned back to the bank's size (the graph's
             memory and latency budget) by the same greedy coreset as training.
  STFPM      refused: a student learns its features by training.
A quarter of the frames (at least 2) stay out of the update: with the bundle's parity frames (held-out
good frames of the export) they set the threshold as `calibrate` does, mean + k std of good scores.
A bundle that carries calibrate's drift reference gets it re-measured on the frames (drift_reference).
Frames that stand far above the rest (calibrate.suspect_frames) look like defects and are left out.

Gate: before anything is written, the labelled images (--val DIR: good/ and one folder per defect)
are scored by the old and the new model at their thresholds; defect recall must not fall."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesdk.backends.onnxruntime import OnnxRuntimeRunner
from edgesdk.bundle import MODEL_FILE, PARITY_FRAMES, Bundle
from edgesdk.errors import DataError, EdgesdkError, OptionError, finite
from edgesdk.fsutil import atomic_dir, prepare_output, write_json
from edgesdk.images import list_images, max_pixels, read_image, resize
from edgesdk.progress import bar
from edgesdk.spec import MANIFEST, SpecError, Threshold, file_entry
from edgesdk.spec.adapt import FEATURES_OUTPUT, HEADS, AdaptSpec
from edgesdk.stream import heads
from edgesdk.stream.calibrate import check_k_sigma, local_paths, suspect_frames
from edgesdk.stream.drift_ref import DRIFT_FILE, Reference, ReferenceBuilder, load_reference

MIN_FRAMES = 8  # at least 2 held out for the threshold and a few to learn from
log = logging.getLogger(__name__)


class AdaptError(EdgesdkError):
    """This bundle cannot be adapted, or the adapted model failed its gate; nothing was written."""


@dataclass(frozen=True)
class AdaptOptions:
    good: str = ""  # folder of confirmed-good images (dir:// overlays, *_overlay.*, are skipped)
    source: str = ""  # or a source URI of good parts (file://good.mp4, a camera)
    frames: int = 0  # at most this many frames (0: every image of --good; 50 of a --source)
    val: str = ""  # labelled folder for the gate: good/ and one folder per defect kind
    gate: bool = True  # False: write without the recall check (the report says so)
    holdout: float = 0.25  # share of the frames kept out of the update to set the threshold
    k_sigma: float | None = None  # None: the bundle's own k, else 3
    batch: int = 8
    max_pixels: int | None = None  # --good and --val images over this many pixels are refused, never decoded


def _check_opts(opts: AdaptOptions) -> AdaptOptions:
    if bool(opts.good) == bool(opts.source):
        raise OptionError("give the confirmed-good frames as --good DIR or --source URI (one of them)")
    if opts.frames < 0 or opts.batch < 1:
        raise OptionError(f"--frames must be >= 0 and batch >= 1, got {opts.frames}, {opts.batch}")
    holdout = finite(opts.holdout, "holdout")
    if not 0 < holdout < 1:
        raise OptionError(f"holdout must be in (0, 1), got {holdout:g}")
    if opts.gate and not opts.val:
        raise OptionError(
            "--val DIR is needed: the adapted model is gated on labelled images (DIR/good and one "
            "folder per defect kind), so that defect recall cannot fall; --no-gate skips the check"
        )
    k = None if opts.k_sigma is None else check_k_sigma(opts.k_sigma, "--k-sigma")
    # The pixel limit resolved once: a bad --max-pixels or $EDGESDK_MAX_PIXELS is refused before any work.
    return dataclasses.replace(opts, k_sigma=k, max_pixels=max_pixels(opts.max_pixels))


def adaptable(b: Bundle) -> AdaptSpec:
    """The bundle's adapt field, or AdaptError saying why it cannot be adapted and what to do instead."""
    m = b.manifest
    name = m.model.get("name")
    if m.adapt is not None:
        return m.adapt
    if name not in HEADS:
        raise AdaptError(
            f"{b.path}: a {name} model cannot be adapted on the device: a student-teacher learns its "
            "features by training. Add the confirmed-good frames to its training images, then train "
            "and export again on the workstation (or calibrate its threshold: edgesdk calibrate)"
        )
    if m.precision != "fp32":
        raise AdaptError(
            f"{b.path}: a {m.precision} bundle cannot be adapted (its head is not stored as fp32): "
            "adapt the fp32 bundle of the same run, then quantize it on the workstation"
        )
    raise AdaptError(
        f"{b.path}: exported without what adapt needs (manifest field adapt: features.onnx and the "
        "head's place in model.onnx); export the run again with this edgesdk (edgesdk export)"
    )


def good_frames(opts: AdaptOptions, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """(names, (N, H, W, 3) uint8 frames at the model's size) of the confirmed-good frames."""
    if opts.good:
        paths = [p for p in list_images(opts.good) if not p.stem.endswith("_overlay")]
        paths = paths[: opts.frames] if opts.frames else paths
        return [p.name for p in paths], np.stack(
            [read_image(p, size, opts.max_pixels) for p in paths]
        ) if paths else np.zeros(0)
    from edgesdk.video import open_source

    names: list[str] = []
    imgs: list[np.ndarray] = []
    with open_source(opts.source) as src:
        while len(imgs) < (opts.frames or 50) and (frame := src.read(timeout=5.0)) is not None:
            if frame.image is not None:
                names.append(f"frame {frame.frame_id}" + (f" ({frame.name})" if frame.name else ""))
                imgs.append(resize(frame.image, size))
    return names, np.stack(imgs) if imgs else np.zeros(0)


def scores(model: Path, frames: np.ndarray, batch: int, output: str = "score") -> np.ndarray:
    """OUTPUT of the graph at MODEL for FRAMES (N, H, W, 3) uint8, BATCH frames a call (ONNX Runtime)."""
    if not len(frames):
        return np.zeros(0, np.float32)
    with OnnxRuntimeRunner(model) as r:
        name = r.inputs[0].name
        return np.concatenate([r.infer({name: frames[i : i + batch]})[output] for i in range(0, len(frames), batch)])


def _val(val: str, size: tuple[int, int], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    from edgesdk.data import mvtec

    items = mvtec.labelled_items(val)
    labels = np.array([it.label for it in items])
    if not labels.any():
        raise DataError(f"{val}: no defective images; the gate needs defects to measure recall on")
    return np.stack([read_image(it.path, size, limit) for it in items]), labels


def _rates(z: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    flag = z > threshold
    return {"recall": float(flag[labels == 1].mean()), "false_alarm_rate": float(flag[labels == 0].mean())}


def _split(n: int, share: float) -> np.ndarray:
    """Indices (K,) of the frames held out: evenly spread over the N frames, K = max(2, share * N)."""
    k = max(2, int(round(share * n)))
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def new_head(b: Bundle, spec: AdaptSpec, model: bytes, feats: np.ndarray) -> tuple[dict, dict, dict | None]:
    """(head tensors shaped as stored, what changed, PaDiM's new statistics or None) for FEATS (N, P, D)."""
    if spec.kind == "padim":
        where = str(b.path / spec.state)
        with np.load(b.path / spec.state, allow_pickle=False) as z:
            state = heads.check_state({k: z[k] for k in z.files}, spec, where)
        if feats.shape[1:] != state["sum"].shape:
            raise AdaptError(
                f"{b.path / spec.features}: features {feats.shape[1:]} do not fit the statistics "
                f"{state['sum'].shape} of {where}"
            )
        mean = heads.read_head(model, "mean", spec.tensors["mean"]).reshape(state["sum"].shape)
        if not np.allclose(mean, state["sum"] / int(state["n"]), rtol=1e-5, atol=1e-5):
            raise SpecError(
                f"{b.path / MANIFEST}: field adapt.tensors.mean does not point at the mean of {where} "
                "in model.onnx; export the run again"
            )
        new = heads.padim_state(state, feats)
        values = heads.padim_head(new, spec.ridge, spec.rank)
        info = {"n_before": int(state["n"]), "n_after": int(new["n"])}
    else:
        t = spec.tensors["bank"]
        bank = heads.read_head(model, "bank", t).reshape(-1, t.shape[-1])
        if feats.shape[-1] != bank.shape[1]:
            raise AdaptError(
                f"{b.path / spec.features}: features of {feats.shape[-1]} channels do not fit the "
                f"bank's {bank.shape[1]}"
            )
        sq = heads.read_head(model, "bank_sq", spec.tensors["bank_sq"]).reshape(-1)
        support = heads.read_head(model, "support", spec.tensors["support"])
        if (
            len(sq) != len(bank)
            or not np.allclose(sq, (bank * bank).sum(1), rtol=1e-4, atol=1e-4)
            or not ((support >= 0) & (support < len(bank))).all()
        ):
            raise SpecError(
                f"{b.path / MANIFEST}: field adapt.tensors does not point at the memory bank in "
                "model.onnx; export the run again"
            )
        values, info = heads.patchcore_head(bank, feats, spec)
        new = None
    return {k: v.reshape(spec.tensors[k].shape) for k, v in values.items()}, info, new


def adapt(bundle: str | Path, out: str | Path, opts: AdaptOptions, progress: bool = True, force: bool = False) -> dict:
    """Write OUT: BUNDLE adapted to the confirmed-good frames of OPTS, gated, with a re-derived threshold.
    Returns the report (also in OUT's manifest, provenance.adaptation). OUT is replaced only when missing,
    empty or a bundle (any folder with FORCE), and never when it is, holds or lies inside an input."""
    opts = _check_opts(opts)
    bundle, out = Path(bundle), Path(out)
    if out.resolve() == bundle.resolve():
        raise OptionError(f"--out {out}: give a new folder; the original bundle stays as it is")
    # No --source: local_paths("") would name the working folder (Path("") is ".") as an input.
    sources = local_paths(opts.source) if opts.source else []
    inputs: list[str | Path] = [bundle, opts.good, *sources, opts.val]
    prepare_output(out, "bundle", inputs, force)
    b = Bundle.open(bundle)
    spec = adaptable(b)
    old_thr = b.threshold
    k = (
        opts.k_sigma
        if opts.k_sigma is not None
        else check_k_sigma(
            b.manifest.threshold.detail.get("k_sigma", 3.0), "threshold.detail.k_sigma", str(bundle / MANIFEST)
        )
    )
    size = b.input_size
    val = _val(opts.val, size, opts.max_pixels) if opts.gate else None
    names, frames = good_frames(opts, size)
    if len(frames) < MIN_FRAMES:
        raise DataError(f"{opts.good or opts.source}: {len(frames)} good frames; adapt needs at least {MIN_FRAMES}")
    with bar(total=4, desc="adapt", unit="step", enabled=progress) as steps:
        z_old = scores(b.model_path, frames, opts.batch)
        held_std = 1.0 if b.manifest.normalization.get("kind") == "z_from_good_holdout" else 0.0
        suspect = suspect_frames(z_old, old_thr, held_std)
        if len(suspect):
            log.warning(
                "%s: %d frames score far above the others (%s): they look like defects and are left out",
                opts.good or opts.source,
                len(suspect),
                ", ".join(names[i] for i in suspect[:10]),
            )
        keep = np.setdiff1d(np.arange(len(frames)), suspect)
        hold = keep[_split(len(keep), opts.holdout)]
        fit = np.setdiff1d(keep, hold)
        if len(fit) < 1:
            raise DataError(
                f"{opts.good or opts.source}: after {len(suspect)} suspect frames, no frame is left to learn from"
            )
        feats = scores(b.path / spec.features, frames[fit], opts.batch, FEATURES_OUTPUT)  # (N, P, D)
        steps.update()
        model = b.model_path.read_bytes()
        values, change, state = new_head(b, spec, model, feats)
        steps.update()
        report = {
            "bundle": str(bundle),
            "out": str(out),
            "model": spec.kind,
            "frames": len(frames),
            "fit_frames": [names[i] for i in fit],
            "holdout_frames": [names[i] for i in hold],
            "suspect_frames": [names[i] for i in suspect],
            **change,
        }
        with atomic_dir(out, kind="bundle", inputs=inputs, force=force) as stage:
            for name in b.manifest.files:
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                if name not in (MODEL_FILE, spec.state):
                    shutil.copy2(b.path / name, stage / name)
            (stage / MODEL_FILE).write_bytes(heads.write_head(model, spec, values))
            if state is not None:
                np.savez(stage / spec.state, **state)
            parity = b.parity_frames() if PARITY_FRAMES in b.manifest.files else frames[:0]
            z_good = scores(stage / MODEL_FILE, np.concatenate([frames[hold], parity]), opts.batch).astype(np.float64)
            if not np.all(np.isfinite(z_good)):
                raise AdaptError(
                    f"{out}: the adapted model scored {int((~np.isfinite(z_good)).sum())} good frames "
                    "NaN/inf; nothing written"
                )
            new_thr = float(z_good.mean() + k * z_good.std(ddof=1))
            steps.update()
            report.update(
                threshold={"old": old_thr, "new": new_thr, "k_sigma": k, "n_good_scores": len(z_good)},
                false_alarms={
                    "old_on_all_frames": float((z_old > old_thr).mean()),
                    "old_on_holdout": float((z_old[hold] > old_thr).mean()),
                    "new_on_holdout": float((z_good[: len(hold)] > new_thr).mean()),
                },
            )
            report["gate"] = _gate(stage, b, val, old_thr, new_thr, opts) if val is not None else {"checked": False}
            drift = drift_reference(b, frames[keep], z_good, opts.good or opts.source)
            if drift is not None:
                write_json(stage / DRIFT_FILE, drift.to_dict())
                report["drift_reference"] = "re-measured on the frames (look and scores); the view kept"
            thr = Threshold(
                new_thr,
                "adapt_good_k_sigma",
                {
                    "how": f"mean + {k:g} std of {len(z_good)} good frames kept out of the update",
                    "k_sigma": k,
                    "old_threshold": old_thr,
                },
            )
            m = b.manifest
            manifest = dataclasses.replace(
                m,
                threshold=thr,
                files={n: file_entry(stage / n) for n in m.files},
                provenance={**m.provenance, "adaptation": {**report, "from_model_sha256": b.onnx_sha256}},
            )
            write_json(stage / MANIFEST, manifest.to_dict())
            Bundle.open(stage)  # the new bundle verifies before it replaces anything
            steps.update()
    return report


def drift_reference(b: Bundle, frames: np.ndarray, z_good: np.ndarray, source: str) -> Reference | None:
    """The drift alarms' reference for the adapted bundle, when BUNDLE has one (from calibrate): the look
    (brightness, contrast, sharpness) of the confirmed FRAMES and the new model's good scores Z_GOOD are
    the line's new normal, or the alarms would ring on it forever. The view (the fixed scene) is kept:
    a new lamp or material batch does not move the camera, and a few dozen frames are too few to
    measure the view's own noise on."""
    old = load_reference(b)
    if old is None:
        return None
    refs = ReferenceBuilder()
    for f in frames:
        refs.add_image(f)
    new = refs.reference(z_good, f"adapt on {source}")
    return dataclasses.replace(new, view=old.view, view_noise=old.view_noise)


def _gate(
    stage: Path, b: Bundle, val: tuple[np.ndarray, np.ndarray], old_thr: float, new_thr: float, opts: AdaptOptions
) -> dict:
    frames, labels = val
    old = _rates(scores(b.model_path, frames, opts.batch), labels, old_thr)
    new = _rates(scores(stage / MODEL_FILE, frames, opts.batch), labels, new_thr)
    gate = {
        "checked": True,
        "val": opts.val,
        "n_good": int((labels == 0).sum()),
        "n_defective": int(labels.sum()),
        "recall": {"old": old["recall"], "new": new["recall"]},
        "false_alarm_rate": {"old": old["false_alarm_rate"], "new": new["false_alarm_rate"]},
    }
    if new["recall"] < old["recall"]:
        raise AdaptError(
            f"{opts.val}: the adapted model's defect recall {new['recall']:.3f} is below the bundle's "
            f"{old['recall']:.3f} (threshold {old_thr:.3f} -> {new_thr:.3f}); nothing written. Check "
            "that the frames are good parts only, or give more of them"
        )
    return gate
