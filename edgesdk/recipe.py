"""Recipes (export/*.toml): one reproducible file per zoo entry - model, backbone and its config,
training options, export options - that a user can diff. `edgesdk train --recipe R` and
`edgesdk export RUN --recipe R` read it; command-line flags override its values; the run folder
records the resolved recipe. Unknown keys, wrong types, inf/nan and values out of range are errors
naming the key and the file."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgesdk.resources import resolve
from edgesdk.spec import PRECISIONS, SpecError, from_mapping, load_toml


@dataclass(frozen=True)
class Recipe:
    model: str
    config: dict = field(default_factory=dict)     # the model's config dataclass fields
    train: dict = field(default_factory=dict)      # TrainOptions fields
    export: dict = field(default_factory=dict)     # ExportOptions fields
    backbone_weights: str = ""                     # state-dict file for backbones with none shipped
    path: str = ""

    def to_dict(self) -> dict:
        return {"path": self.path, "model": self.model, "backbone_weights": self.backbone_weights,
                "config": self.config, "train": self.train, "export": self.export}


Rule = tuple[Callable[[Any], bool], str]
CAMERA = re.compile(r"mp4v|jpeg:(100|[1-9][0-9]?)")

# What each value means sets its range; types are checked before (from_mapping against the dataclass).
# Keys absent from a section keep the dataclass defaults, which satisfy these.
RULES: dict[str, dict[str, Rule]] = {
    "config": {
        "input_size": (lambda v: len(v) == 2 and all(d > 0 and d % 32 == 0 for d in v),
                       "[height, width], positive multiples of 32"),
        "taps": (lambda v: all(t >= 0 for t in v), "backbone block indices >= 0"),
        "feature_dim": (lambda v: v >= 0, ">= 0 (0 = every channel)"),
        "grid_stride": (lambda v: v > 0, "> 0"),
        "sigma": (lambda v: v > 0, "> 0 (Gaussian smoothing, pixels)"),
        "ridge": (lambda v: v > 0, "> 0 (keeps each covariance invertible)"),
        "seed": (lambda v: v >= 0, ">= 0"),
        "pool": (lambda v: v >= 1, ">= 1"),
        "coreset_ratio": (lambda v: 0 < v <= 1, "in (0, 1] (a share of the fit patches)"),
        "projection_dim": (lambda v: v > 0, "> 0"),
        "num_neighbors": (lambda v: v >= 1, ">= 1"),
        "bank_size": (lambda v: v >= 0, ">= 0"),
        "width": (lambda v: v > 0, "> 0"),
        "steps": (lambda v: v > 0, "> 0"),
        "seconds": (lambda v: v > 0, "> 0"),
        "batch": (lambda v: v > 0, "> 0"),
        "lr": (lambda v: v > 0, "> 0"),
        "hard_quantile": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "penalty": (lambda v: v >= 0, ">= 0 (0 = off)"),
    },
    "train": {
        "holdout": (lambda v: 0 < v < 1, "in (0, 1) (a share of the good images)"),
        "k_sigma": (lambda v: v >= 0, ">= 0"),
        "batch": (lambda v: v > 0, "> 0"),
        "seed": (lambda v: v >= 0, ">= 0"),
        "max_parity_frames": (lambda v: v >= 1, ">= 1"),
        "camera": (lambda v: all(CAMERA.fullmatch(k) for k in v), 'camera pipelines "mp4v" or "jpeg:Q" (Q 1-100)'),
    },
    "export": {
        "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        "opset": (lambda v: v > 0, "> 0"),
        "rtol": (lambda v: v > 0, "> 0"),
        "target": (lambda v: v in ("cpu", "tensorrt"), "cpu or tensorrt"),
        "n_calib": (lambda v: v >= 8, ">= 8 (images to calibrate on)"),
        "calib_method": (lambda v: v in ("minmax", "entropy", "percentile"), "minmax, entropy or percentile"),
        "max_drop": (lambda v: 0 <= v < 1, "in [0, 1) (a share of AUROC)"),
    },
}
MODEL_RULES: dict[str, dict[str, Rule]] = {
    "padim": {"feature_dim": (lambda v: v > 0, "> 0 (channels kept)")},
}


def check_values(section: str, values: dict, where: str, model: str = "") -> None:
    """SpecError naming WHERE [SECTION] and the key for the first value of VALUES (already typed
    by from_mapping) outside its range; keys without a rule pass."""
    rules = {**RULES[section], **(MODEL_RULES.get(model, {}) if section == "config" else {})}
    for key, value in values.items():
        if key in rules and not rules[key][0](value):
            raise SpecError(f"{where} [{section}]: {key} must be {rules[key][1]}, got {value!r}")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """export/NAME.toml among the shipped recipes, or a path; every section is checked against the
    dataclass it configures and the ranges above, so a typo fails here, naming the key and the file."""
    from edgesdk.compile.onnx import ExportOptions
    from edgesdk.train import TrainOptions
    from edgesdk.zoo import MODEL_NAMES, models

    path = resolve(str(name_or_path), "export")
    where = str(path)
    r = from_mapping(Recipe, {**load_toml(path), "path": where}, where)
    if r.model not in MODEL_NAMES:
        raise SpecError(f"{where}: model {r.model!r} is not in the zoo ({', '.join(MODEL_NAMES)})")
    cfg_cls = models()[r.model][1]
    for section, cls in (("config", cfg_cls), ("train", TrainOptions), ("export", ExportOptions)):
        values = getattr(r, section)
        typed = from_mapping(cls, values, f"{where} [{section}]")
        check_values(section, {k: getattr(typed, k) for k in values}, where, r.model)
    return r
