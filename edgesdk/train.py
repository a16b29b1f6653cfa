"""`edgesdk train`: fit a zoo model on good images and pick its threshold, into a run folder.

A run folder holds what export needs and nothing device-specific:
  model.pt            state dict (weights, Gaussians, score normalization) - load with weights_only
  run.json            model config, data provenance, threshold and how it was chosen, timings
  holdout_frames.npy  (N, H, W, 3) uint8 held-out good frames, for parity checks at export
  adapt_state.npz     PaDiM: the fit's sufficient statistics (export puts them in the bundle for `adapt`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from edgesdk import __version__
from edgesdk.data import mvtec
from edgesdk.errors import OptionError, no_nonfinite
from edgesdk.fsutil import atomic_dir, prepare_output, write_json
from edgesdk.images import max_pixels as pixel_limit
from edgesdk.measure.metrics import best_f1_threshold
from edgesdk.progress import bar as progress_bar
from edgesdk.spec import SpecError
from edgesdk.zoo import MODEL_NAMES, RUN_MODELS, SUPERVISED, hybrid, models
from edgesdk.zoo.components import AnomalyModel
from edgesdk.zoo.patchcore import Patchcore
from edgesdk.zoo.segmenter import Segmenter

log = logging.getLogger(__name__)
ADAPT_STATE = "adapt_state.npz"
FEW_IMAGES = 10  # below this the held-out std, and with it the threshold, rests on a handful of scores


@dataclass(frozen=True)
class TrainOptions:
    holdout: float = 0.2  # share of the good images kept out of fitting to set the threshold
    k_sigma: float = 3.0  # threshold = mean + k * std of held-out good scores (z units)
    batch: int = 16
    seed: int = 0
    max_parity_frames: int = 8
    camera: tuple[str, ...] = ()  # fit on each image again as each of these camera pipelines delivers it
    # (edgesdk.data.camera: "mp4v", "jpeg:Q"); the held-out set stays as is


def split_holdout(paths: list[Path], share: float, seed: int) -> tuple[list[Path], list[Path]]:
    if len(paths) < 4:
        raise mvtec.DataError(
            f"{paths[0].parent if paths else '?'}: {len(paths)} good images; "
            "at least 4 are needed (fit + held-out threshold)"
        )
    n_hold = min(len(paths) - 2, max(2, round(share * len(paths))))
    order = np.random.default_rng(seed).permutation(len(paths))
    hold = sorted(int(i) for i in order[:n_hold])
    return [p for i, p in enumerate(paths) if i not in set(hold)], [paths[i] for i in hold]


class Seen:
    """What the fit batches held: whether any two frames differ and whether any frame is not flat."""

    def __init__(self) -> None:
        self.first: np.ndarray | None = None
        self.varied = self.textured = False

    def add(self, x: np.ndarray) -> None:  # x: (B, H, W, 3) uint8
        if not len(x):
            return
        if self.first is None:
            self.first = x[0].copy()
        self.varied = self.varied or bool((x != self.first).any())
        flat = x.reshape(len(x), -1)
        self.textured = self.textured or bool((flat.max(axis=1) > flat.min(axis=1)).any())


def batches(
    paths: list[Path],
    size: tuple[int, int],
    batch: int,
    camera: tuple[str, ...] = (),
    seen: Seen | None = None,
    limit: int | None = None,
):
    """(B, H, W, 3) uint8 batches of the images, each followed by its camera-simulated copies."""
    from edgesdk.data.camera import simulate

    for i in range(0, len(paths), batch):
        x = mvtec.read_batch(paths[i : i + batch], size, limit)
        if seen is not None:
            seen.add(x)
        yield x
        for kind in camera:
            yield simulate(x, kind)


def data_warnings(paths: list[Path], fit_paths: list[Path], seen: Seen) -> list[str]:
    """What makes a fit untrustworthy without making it impossible: too few images, all the same."""
    out = []
    where = paths[0].parent if paths else "?"
    if len(paths) < FEW_IMAGES:
        out.append(
            f"{where}: only {len(paths)} good images; at least {FEW_IMAGES} are needed for a threshold "
            "that holds on the line (more for the model to learn the parts' normal variation)"
        )
    if len(fit_paths) > 1 and not seen.varied:  # only then can the files be identical too
        same = len({hashlib.sha256(p.read_bytes()).digest() for p in fit_paths}) == 1
        out.append(
            f"{where}: all {len(fit_paths)} fit images "
            + ("are byte-identical copies of one file" if same else "have the same pixels at the model's input size")
            + "; the model learns one picture, "
            "not the parts' normal variation"
        )
    if fit_paths and not seen.textured:
        out.append(
            f"{where}: every fit image is one flat colour (zero variance); is the camera covered or the exposure wrong?"
        )
    return out


def train(
    data: str | Path,
    out: str | Path,
    model: str = "padim",
    val: str | Path | None = None,
    config: dict | None = None,
    opts: TrainOptions = TrainOptions(),
    quiet: bool = False,
    backbone_weights: str | None = None,
    recipe: dict | None = None,
    force: bool = False,
    labels: str | Path | None = None,
    with_anomaly: str | Path | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Fit `model` on DATA's good images (DATA/train/good or a plain folder) and write run folder OUT.
    backbone_weights: a state-dict file for the config's backbone (None: the shipped ImageNet weights,
    which only efficientnet_lite0 has). OUT is replaced only when missing, empty or a run folder (any
    folder with FORCE), and never when it is, holds or lies inside DATA, VAL or the weights file.
    Too few or identical images are warned about and listed in run.json's `warnings`.
    LABELS: a labelled folder (edgesdk.data.labelled) for the supervised models (SUPERVISED), which
    need one; the anomaly models learn from good images only and refuse it.
    WITH_ANOMALY: a PatchCore run on the same backbone (segmenter only): the run folder then holds the
    hybrid of both (zoo/hybrid.py), one backbone pass flagging known kinds by name and any other defect.
    MAX_PIXELS: an image of DATA, VAL or LABELS over this many pixels is a DataError (images.max_pixels)."""
    limit = pixel_limit(max_pixels)
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(MODEL_NAMES)}")
    if model in SUPERVISED and labels is None:
        raise OptionError(
            f"--model {model} learns from labelled defects: pass --labels DIR (good/, <kind>/, "
            "ground_truth/<kind>/<stem>_mask.png; `edgesdk data synth` writes CATEGORY/labels)"
        )
    if model not in SUPERVISED and labels is not None:
        raise OptionError(
            f"--labels {labels}: --model {model} learns from good images only; labelled images "
            f"train {', '.join(SUPERVISED)} (for a threshold from labelled images use --val)"
        )
    if with_anomaly is not None and model != "segmenter":
        raise OptionError(
            f"--with-anomaly {with_anomaly}: adds a PatchCore head to --model segmenter, not to --model {model}"
        )
    cls, cfg_cls = models()[model]
    unknown = sorted(set(config or {}) - set(cfg_cls().to_dict()))
    if unknown:
        raise ValueError(f"{model}: unknown config key {unknown[0]!r} (known: {', '.join(cfg_cls().to_dict())})")
    labelled = None
    if labels is not None:
        from edgesdk.data.labelled import load_labels

        labelled = load_labels(labels, limit)
        config = {**(config or {}), "kinds": list(labelled.kinds)}
    cfg = cfg_cls.from_dict({**cfg_cls().to_dict(), **(config or {})})
    from edgesdk.data.camera import parse

    camera = parse(opts.camera)
    torch.manual_seed(opts.seed)
    paths = mvtec.good_images(data)
    inputs = [data, val, backbone_weights, labels, with_anomaly]
    prepare_output(out, "run", inputs, force)  # before minutes of fitting, not after
    fit_paths, hold_paths = split_holdout(paths, opts.holdout, opts.seed)
    val_items = mvtec.labelled_items(val) if val is not None else None
    if val_items is not None and not any(it.label for it in val_items):
        raise mvtec.DataError(f"{val}: no defective images; an F1 threshold needs both kinds")

    t0 = time.perf_counter()
    net = cls(cfg, weights=backbone_weights or "imagenet")
    anomaly = None if with_anomaly is None else anomaly_head(with_anomaly, cast(Segmenter, net))
    bar = progress_bar(total=len(fit_paths) * (1 + len(camera)), desc=f"fit {model}", unit="img", enabled=not quiet)
    seen = Seen()
    extra = {"labelled": labelled, "camera": camera} if labelled is not None else {}
    fit_info = net.fit(
        batches(fit_paths, cfg.input_size, opts.batch, camera, seen, limit),
        progress=None if quiet else bar.update,
        **extra,
    )
    bar.close()
    warnings = data_warnings(paths, fit_paths, seen)
    for w in warnings:
        log.warning("%s", w)
    cfg = net.cfg  # fit may resolve parts of it (PatchCore's bank size)
    t_fit = time.perf_counter() - t0

    # Score normalization from held-out good images: z = (raw - mean) / std. A model whose map is a
    # probability (the segmenter) keeps it: 0.5 means what it says, on every line.
    hold = mvtec.read_batch(hold_paths, cfg.input_size, limit)
    raw = net.raw_scores(hold, opts.batch)
    probability = getattr(net, "units", "z") == "probability"
    std = max(float(raw.std(ddof=1)), 1e-6 * max(abs(float(raw.mean())), 1.0))
    if probability:
        raw_mean, std = 0.0, 1.0
    else:
        raw_mean = float(raw.mean())
        net.set_score_normalization(raw_mean, 1.0 / std)
    z_hold = (raw - raw_mean) / std
    if val_items is None and probability:
        threshold = {
            "value": 0.5,
            "source": "probability",
            "detail": {
                "n_holdout": len(hold_paths),
                "holdout_max": float(z_hold.max()),
                "holdout_false_positive_rate": float((z_hold > 0.5).mean()),
            },
        }
    elif val_items is None:
        threshold = {
            "value": opts.k_sigma,
            "source": "good_holdout_k_sigma",
            "detail": {
                "k_sigma": opts.k_sigma,
                "n_holdout": len(hold_paths),
                "holdout_max_z": float(z_hold.max()),
                "holdout_false_positive_rate": float((z_hold > opts.k_sigma).mean()),
            },
        }
    else:
        vx = mvtec.read_batch([it.path for it in val_items], cfg.input_size, limit)
        vz = (net.raw_scores(vx, opts.batch) - raw_mean) / std
        val_labels = np.array([it.label for it in val_items])
        thr, f1 = best_f1_threshold(vz, val_labels)
        threshold = {
            "value": thr,
            "source": "val_f1",
            "detail": {"val": str(val), "n_val": len(val_items), "val_f1": f1, "n_defective": int(val_labels.sum())},
        }
    normalization = (
        {"kind": "probability", "formula": "score = max over pixels of P(defect)"}
        if probability
        else {
            "kind": "z_from_good_holdout",
            "raw_mean": raw_mean,
            "raw_std": std,
            "formula": "score = (max_distance - raw_mean) / raw_std",
        }
    )
    if anomaly is not None:
        model, net, threshold, normalization, fit_info = compose_hybrid(
            cast(Segmenter, net), threshold, normalization, fit_info, anomaly, with_anomaly, hold, opts.batch
        )
        cfg = net.cfg
    t_total = time.perf_counter() - t0

    run = {
        "model": model,
        "config": cfg.to_dict(),
        "threshold": threshold,
        "normalization": normalization,
        "backbone_weights": str(Path(backbone_weights).resolve()) if backbone_weights else "imagenet (shipped)",
        "recipe": recipe,
        "fit": fit_info,
        **(
            {"labels": {"path": str(Path(labels).resolve()), "kinds": list(labelled.kinds), "counts": labelled.count()}}
            if labels is not None and labelled is not None
            else {}
        ),
        "data": {
            "path": str(Path(data).resolve()),
            "n_fit": len(fit_paths),
            "n_holdout": len(hold_paths),
            "camera_augmentation": list(camera),
            "holdout_files": [p.name for p in hold_paths],
        },
        "timing_s": {"fit": round(t_fit, 3), "total": round(t_total, 3)},
        "versions": {"edgesdk": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "warnings": warnings,
    }
    with atomic_dir(out, kind="run", inputs=inputs, force=force) as stage:
        torch.save(net.state_dict(), stage / "model.pt")
        np.save(stage / "holdout_frames.npy", hold[: opts.max_parity_frames])
        if getattr(net, "fit_stats", None) is not None:
            np.savez(stage / ADAPT_STATE, **net.fit_stats)
        write_json(stage / "run.json", run)
    return Path(out)


def compose_hybrid(seg: Segmenter, threshold: dict, normalization: dict, fit: dict, anomaly, run_dir, hold, batch: int):
    """The segmenter and the --with-anomaly PatchCore as one model ("hybrid", zoo/hybrid.py): each head's
    map divided by its own threshold, so the run's threshold is 1.0 and either head passing it flags."""
    pc, meta = anomaly
    if not threshold["value"] > 0:
        raise ValueError(f"--val: the segmenter's threshold {threshold['value']} must be > 0 for a hybrid")
    net = hybrid.Hybrid.compose(seg, threshold["value"], pc, meta["threshold"]["value"])
    z = net.raw_scores(hold, batch)
    heads = {"segmenter": threshold, "patchcore": {**meta["threshold"], "run": str(Path(run_dir).resolve())}}
    both = {
        "value": 1.0,
        "source": "heads",
        "detail": {
            **heads,
            "rule": "flagged when either head's map passes its own threshold (1.0 in the bundle's units)",
            "n_holdout": int(len(hold)),
            "holdout_max": float(z.max()),
            "holdout_false_positive_rate": float((z > 1.0).mean()),
        },
    }
    norm = {
        "kind": "heads",
        "formula": "anomaly_map = max(P(defect) / segmenter threshold, z / patchcore threshold)",
        "segmenter": normalization,
        "patchcore": meta["normalization"],
    }
    return "hybrid", net, both, norm, {**fit, "patchcore": meta["fit"]}


def anomaly_head(run_dir: str | Path, seg: Segmenter) -> tuple[Patchcore, dict]:
    """--with-anomaly RUN_DIR: the fitted PatchCore and its run.json, checked to share SEG's backbone pass."""
    if not (Path(run_dir) / "run.json").is_file():
        raise OptionError(
            f"--with-anomaly {run_dir}: no run.json; pass a folder made by `edgesdk train --model patchcore`"
        )
    meta = read_run(run_dir)
    hybrid.check_anomaly_run(run_dir, meta, seg)
    pc, _ = load_run(run_dir)
    hybrid.check_backbone(run_dir, cast(Patchcore, pc), seg)
    return cast(Patchcore, pc), meta


def load_run(run_dir: str | Path) -> tuple[AnomalyModel, dict]:
    """(model in eval mode with fitted state, run.json dict); errors name the file."""
    run_dir = Path(run_dir)
    meta = read_run(run_dir)
    cls, cfg_cls = models()[meta["model"]]
    net = cls(cfg_cls.from_dict(meta["config"]), weights=None)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval(), meta


def read_run(run_dir: str | Path) -> dict:
    """RUN_DIR/run.json, checked (a JSON object, finite numbers, a zoo model, its data fields);
    errors name the file."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; is {run_dir} a folder made by `edgesdk train`?")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SpecError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    no_nonfinite(meta, str(meta_path))
    if meta.get("model") not in RUN_MODELS:
        raise ValueError(f"{meta_path}: unknown model {meta.get('model')!r}")
    check_run_data(meta, meta_path)
    return meta


def check_run_data(meta: dict, where: Path) -> None:
    """run.json's `data` as export reads it: a path string, and held-out file names that are plain
    names inside that folder (export reads the images they name)."""
    data = meta.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        raise SpecError(f"{where}: field data.path must be a string (the training data folder)")
    names = data.get("holdout_files", [])
    if not isinstance(names, list):
        raise SpecError(f"{where}: field data.holdout_files must be a list of file names")
    for i, n in enumerate(names):
        if not isinstance(n, str) or n in ("", ".", "..") or any(c in n for c in "/\\\0"):
            raise SpecError(
                f"{where}: field data.holdout_files[{i}] must be a plain file name in the data folder, got {n!r}"
            )
