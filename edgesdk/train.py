"""`edgesdk train`: fit a zoo model on good images and pick its threshold, into a run folder.

A run folder holds what export needs and nothing device-specific:
  model.pt            state dict (weights, Gaussians, score normalization) - load with weights_only
  run.json            model config, data provenance, threshold and how it was chosen, timings
  holdout_frames.npy  (N, H, W, 3) uint8 held-out good frames, for parity checks at export
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgesdk import __version__
from edgesdk.data import mvtec
from edgesdk.fsutil import atomic_dir
from edgesdk.measure.metrics import best_f1_threshold
from edgesdk.fsutil import write_json
from edgesdk.zoo import MODEL_NAMES, models


@dataclass(frozen=True)
class TrainOptions:
    holdout: float = 0.2        # share of the good images kept out of fitting to set the threshold
    k_sigma: float = 3.0        # threshold = mean + k * std of held-out good scores (z units)
    batch: int = 16
    seed: int = 0
    max_parity_frames: int = 8
    camera: tuple[str, ...] = ()   # fit on each image again as each of these camera pipelines delivers it
                                   # (edgesdk.data.camera: "mp4v", "jpeg:Q"); the held-out set stays as is


def split_holdout(paths: list[Path], share: float, seed: int) -> tuple[list[Path], list[Path]]:
    if len(paths) < 4:
        raise mvtec.DataError(f"{paths[0].parent if paths else '?'}: {len(paths)} good images; "
                              "at least 4 are needed (fit + held-out threshold)")
    n_hold = min(len(paths) - 2, max(2, round(share * len(paths))))
    order = np.random.default_rng(seed).permutation(len(paths))
    hold = sorted(int(i) for i in order[:n_hold])
    return [p for i, p in enumerate(paths) if i not in set(hold)], [paths[i] for i in hold]


def batches(paths: list[Path], size: tuple[int, int], batch: int, camera: tuple[str, ...] = ()):
    """(B, H, W, 3) uint8 batches of the images, each followed by its camera-simulated copies."""
    from edgesdk.data.camera import simulate

    for i in range(0, len(paths), batch):
        x = mvtec.read_batch(paths[i:i + batch], size)
        yield x
        for kind in camera:
            yield simulate(x, kind)


def train(data: str | Path, out: str | Path, model: str = "padim", val: str | Path | None = None,
          config: dict | None = None, opts: TrainOptions = TrainOptions(), quiet: bool = False,
          backbone_weights: str | None = None, recipe: dict | None = None) -> Path:
    """Fit `model` on DATA's good images (DATA/train/good or a plain folder) and write run folder OUT.
    backbone_weights: a state-dict file for the config's backbone (None: the shipped ImageNet weights,
    which only efficientnet_lite0 has)."""
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(MODEL_NAMES)}")
    cls, cfg_cls = models()[model]
    unknown = sorted(set(config or {}) - set(cfg_cls().to_dict()))
    if unknown:
        raise ValueError(f"{model}: unknown config key {unknown[0]!r} (known: {', '.join(cfg_cls().to_dict())})")
    cfg = cfg_cls.from_dict({**cfg_cls().to_dict(), **(config or {})})
    from edgesdk.data.camera import parse

    camera = parse(opts.camera)
    torch.manual_seed(opts.seed)
    paths = mvtec.good_images(data)
    fit_paths, hold_paths = split_holdout(paths, opts.holdout, opts.seed)
    val_items = mvtec.labelled_items(val) if val is not None else None
    if val_items is not None and not any(it.label for it in val_items):
        raise mvtec.DataError(f"{val}: no defective images; an F1 threshold needs both kinds")

    t0 = time.perf_counter()
    net = cls(cfg, weights=backbone_weights or "imagenet")
    bar = tqdm(total=len(fit_paths) * (1 + len(camera)), desc=f"fit {model}", unit="img", disable=quiet)
    fit_info = net.fit(batches(fit_paths, cfg.input_size, opts.batch, camera), progress=None if quiet else bar.update)
    bar.close()
    cfg = net.cfg                       # fit may resolve parts of it (PatchCore's bank size)
    t_fit = time.perf_counter() - t0

    # Score normalization from held-out good images: z = (raw - mean) / std.
    hold = mvtec.read_batch(hold_paths, cfg.input_size)
    raw = net.raw_scores(hold, opts.batch)
    std = max(float(raw.std(ddof=1)), 1e-6 * max(abs(float(raw.mean())), 1.0))
    net.set_score_normalization(float(raw.mean()), 1.0 / std)
    z_hold = (raw - raw.mean()) / std
    if val_items is None:
        threshold = {"value": opts.k_sigma, "source": "good_holdout_k_sigma",
                     "detail": {"k_sigma": opts.k_sigma, "n_holdout": len(hold_paths),
                                "holdout_max_z": float(z_hold.max()),
                                "holdout_false_positive_rate": float((z_hold > opts.k_sigma).mean())}}
    else:
        vx = mvtec.read_batch([it.path for it in val_items], cfg.input_size)
        vz = (net.raw_scores(vx, opts.batch) - raw.mean()) / std
        labels = np.array([it.label for it in val_items])
        thr, f1 = best_f1_threshold(vz, labels)
        threshold = {"value": thr, "source": "val_f1",
                     "detail": {"val": str(val), "n_val": len(val_items), "val_f1": f1,
                                "n_defective": int(labels.sum())}}
    t_total = time.perf_counter() - t0

    run = {
        "model": model, "config": cfg.to_dict(), "threshold": threshold,
        "normalization": {"kind": "z_from_good_holdout", "raw_mean": float(raw.mean()),
                          "raw_std": std, "formula": "score = (max_distance - raw_mean) / raw_std"},
        "backbone_weights": str(Path(backbone_weights).resolve()) if backbone_weights else "imagenet (shipped)",
        "recipe": recipe,
        "fit": fit_info,
        "data": {"path": str(Path(data).resolve()), "n_fit": len(fit_paths), "n_holdout": len(hold_paths),
                 "camera_augmentation": list(camera),
                 "holdout_files": [p.name for p in hold_paths]},
        "timing_s": {"fit": round(t_fit, 3), "total": round(t_total, 3)},
        "versions": {"edgesdk": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    with atomic_dir(out) as stage:
        torch.save(net.state_dict(), stage / "model.pt")
        np.save(stage / "holdout_frames.npy", hold[: opts.max_parity_frames])
        write_json(stage / "run.json", run)
    return Path(out)


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode with fitted state, run.json dict); errors name the file."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; is {run_dir} a folder made by `edgesdk train`?")
    meta = json.loads(meta_path.read_text())
    if meta.get("model") not in MODEL_NAMES:
        raise ValueError(f"{meta_path}: unknown model {meta.get('model')!r}")
    cls, cfg_cls = models()[meta["model"]]
    net = cls(cfg_cls.from_dict(meta["config"]), weights=None)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval(), meta
