"""Recipes (export/*.toml): one reproducible file per zoo entry - model, backbone and its config,
training options, export options - that a user can diff. `edgesdk train --recipe R` and
`edgesdk export RUN --recipe R` read it; command-line flags override its values; the run folder
records the resolved recipe. Unknown keys, wrong types, inf/nan and values out of range are errors
naming the key and the file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgesdk.errors import OptionError, finite
from edgesdk.resources import resolve
from edgesdk.spec import NAME, PRECISIONS, SpecError, from_mapping, load_toml

if TYPE_CHECKING:
    from edgesdk.compile.onnx import ExportOptions
    from edgesdk.train import TrainOptions


@dataclass(frozen=True)
class Recipe:
    model: str
    config: dict = field(default_factory=dict)  # the model's config dataclass fields
    train: dict = field(default_factory=dict)  # TrainOptions fields
    export: dict = field(default_factory=dict)  # ExportOptions fields
    backbone_weights: str = ""  # state-dict file for backbones with none shipped
    # a PatchCore run folder for --model segmenter's anomaly head: relative to the recipe's folder and
    # inside it; load_recipe replaces it with the resolved absolute path
    with_anomaly: str = ""
    path: str = ""

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "model": self.model,
            "backbone_weights": self.backbone_weights,
            "with_anomaly": self.with_anomaly,
            "config": self.config,
            "train": self.train,
            "export": self.export,
        }


Rule = tuple[Callable[[Any], bool], str]
CAMERA = re.compile(r"mp4v|jpeg:(100|[1-9][0-9]?)")

# What each value means sets its range; types are checked before (from_mapping against the dataclass).
# Keys absent from a section keep the dataclass defaults, which satisfy these.
RULES: dict[str, dict[str, Rule]] = {
    "config": {
        "input_size": (
            lambda v: len(v) == 2 and all(d > 0 and d % 32 == 0 for d in v),
            "[height, width], positive multiples of 32",
        ),
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
        "crop": (lambda v: v >= 32 and v % 32 == 0, "a multiple of 32, >= 32 (training crop, pixels)"),
        "reuse": (lambda v: v >= 1, ">= 1"),
        "cache": (lambda v: v >= 1, ">= 1"),
        "defect_share": (lambda v: 0 <= v <= 1, "in [0, 1] (a share of each batch)"),
        "focal_gamma": (lambda v: v >= 0, ">= 0"),
        "dice": (lambda v: v >= 0, ">= 0 (0 = off)"),
        "kind_weight": (lambda v: v >= 0, ">= 0 (0 = off)"),
        "kinds": (lambda v: not v, "left out: the kinds come from --labels DIR"),
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
        "opset": (lambda v: v >= 17, ">= 17 (17 for TensorRT 8.5 is lowered from 18)"),
        "device": (lambda v: v == "" or bool(NAME.fullmatch(v)), "a shipped device profile's name, e.g. xavier-nx"),
        "rtol": (lambda v: v > 0, "> 0"),
        "target": (lambda v: v in ("cpu", "tensorrt"), "cpu or tensorrt"),
        "n_calib": (lambda v: v >= 8, ">= 8 (images to calibrate on)"),
        "calib_method": (
            lambda v: v in ("minmax", "entropy", "percentile", "search"),
            "minmax, entropy, percentile or search (tensorrt)",
        ),
        "max_drop": (lambda v: 0 <= v < 1, "in [0, 1) (a share of AUROC)"),
    },
}
MODEL_RULES: dict[str, dict[str, Rule]] = {
    "padim": {
        "feature_dim": (lambda v: v > 0, "> 0 (channels kept)"),
        "head_rank": (lambda v: v == 0 or (v >= 2 and v % 2 == 0), "0 (full head) or even and >= 2 (low-rank head)"),
    },
}


def _rules(section: str, model: str) -> dict[str, Rule]:
    return {**RULES[section], **(MODEL_RULES.get(model, {}) if section == "config" else {})}


def check_values(section: str, values: dict, where: str, model: str = "") -> None:
    """SpecError naming WHERE [SECTION] and the key for the first value of VALUES (already typed
    by from_mapping) outside its range; keys without a rule pass."""
    rules = _rules(section, model)
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
    if r.with_anomaly:
        if r.model != "segmenter":
            raise SpecError(f"{where}: with_anomaly adds a PatchCore head to model segmenter, not to {r.model!r}")
        r = replace(r, with_anomaly=str(inside_recipe(r.with_anomaly, path, "with_anomaly")))
    return r


def inside_recipe(value: str, recipe: Path, key: str) -> Path:
    """VALUE (a folder a recipe names) resolved against the recipe's folder; refused, naming the file
    and KEY, when it is absolute, climbs out with .., leads out through a link, or is not a folder."""
    where = f"{recipe}: {key} {value!r}"
    if "\0" in value or "\\" in value or Path(value).is_absolute() or ".." in Path(value).parts:
        raise SpecError(f"{where}: must be a plain path relative to the recipe's folder (no .., no absolute path)")
    folder = recipe.resolve().parent
    try:
        real = (folder / value).resolve()
        is_dir = real.is_dir()
    except OSError as e:
        raise SpecError(f"{where}: {e.strerror or e}") from None
    if real != folder and folder not in real.parents:
        raise SpecError(f"{where}: leads to {real}, outside the recipe's folder {folder}")
    if not is_dir:
        raise SpecError(f"{where}: no such folder in {folder} (a run folder of edgesdk train --model patchcore)")
    return real


# Command-line values by the field they set; `edgesdk train` and `export` name them as flags.
CONFIG_FLAGS = ("input_size", "backbone", "feature_dim", "coreset_ratio", "steps", "seconds")
TRAIN_FLAGS = ("holdout", "k_sigma", "seed", "camera")
EXPORT_FLAGS = ("precision", "target", "calib", "n_calib", "calib_method", "max_drop", "val", "opset", "device")
FLAG_NAMES = {"input_size": "--size", "camera": "--camera-augment"}


def flag_name(key: str) -> str:
    return FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def check_flags(section: str, values: dict, model: str = "") -> None:
    """OptionError naming the flag for the first of VALUES (given flags, by field) that is not finite
    or outside the range a recipe's value must keep (RULES): a flag is held to the recipe's rules."""
    rules = _rules(section, model)
    for key, value in values.items():
        if isinstance(value, float):
            finite(value, flag_name(key))
        if key in rules and not rules[key][0](value):
            shown = (
                value[0]
                if key == "input_size" and len(set(value)) == 1
                else ",".join(value)
                if key == "camera"
                else value
            )
            raise OptionError(f"{flag_name(key)} {shown}: {key} must be {rules[key][1]}")


@dataclass(frozen=True)
class TrainRequest:
    """What `edgesdk train` fits: the recipe's values with the flags over them (edgesdk.train.train's
    arguments, `**request.kwargs()`), and the resolved recipe the run folder records."""

    model: str
    config: dict
    opts: "TrainOptions"
    backbone_weights: str | None
    recipe: dict
    with_anomaly: str | None = None

    def kwargs(self) -> dict:
        return {
            "model": self.model,
            "config": self.config,
            "opts": self.opts,
            "backbone_weights": self.backbone_weights,
            "recipe": self.recipe,
            "with_anomaly": self.with_anomaly,
        }


def resolve_train(recipe: str | Path | Recipe | None, flags: dict) -> TrainRequest:
    """RECIPE (a name in export/, a path, or None) with FLAGS over it. FLAGS: command-line values by
    field (CONFIG_FLAGS, TRAIN_FLAGS, "model", "backbone_weights", "with_anomaly"); None means not given.
    The model is the flag's, else the recipe's, else padim; the recipe's config and with_anomaly count
    only for its own model."""
    from dataclasses import asdict

    from edgesdk.train import TrainOptions

    r = recipe if isinstance(recipe, Recipe) or recipe is None else load_recipe(recipe)
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = sorted(set(given) - set(CONFIG_FLAGS + TRAIN_FLAGS + ("model", "backbone_weights", "with_anomaly")))
    if unknown:
        raise OptionError(f"{flag_name(unknown[0])}: not a train option")
    model = given.get("model") or (r.model if r else "padim")
    config_flags = {k: given[k] for k in CONFIG_FLAGS if k in given}
    train_flags = {k: given[k] for k in TRAIN_FLAGS if k in given}
    check_flags("config", config_flags, model)
    check_flags("train", train_flags)
    config = {**(dict(r.config) if r and r.model == model else {}), **config_flags}
    topts = {**asdict(TrainOptions()), **(r.train if r else {}), **train_flags}
    topts["camera"] = tuple(topts.get("camera") or ())
    weights = given.get("backbone_weights") or (r.backbone_weights if r else "") or None
    anomaly = given.get("with_anomaly") or (r.with_anomaly if r and r.model == model else "") or None
    resolved = {
        "recipe": r.path if r else None,
        "model": model,
        "config": config,
        "train": topts,
        "backbone_weights": weights,
        "with_anomaly": str(anomaly) if anomaly else None,
        "export": r.export if r else {},
    }
    return TrainRequest(model, config, TrainOptions(**topts), weights, resolved, anomaly)


def run_export_options(run: str | Path) -> dict:
    """The export options RUN/run.json's recipe recorded at training ({} when it has none, or when
    there is no run.json: export itself says so), typed and range-checked, errors naming the file."""
    from edgesdk.compile.onnx import ExportOptions
    from edgesdk.errors import no_nonfinite

    path = Path(run) / "run.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid JSON ({e})") from None
    rec = meta.get("recipe") if isinstance(meta, dict) else None
    values = (rec.get("export") if isinstance(rec, dict) else None) or {}
    where = f"{path} [recipe.export]"
    no_nonfinite(values, where)
    typed = from_mapping(ExportOptions, values, where)
    check_values("export", {k: getattr(typed, k) for k in values}, str(path))
    return dict(values)


def resolve_export(
    run: str | Path, recipe: str | Path | Recipe | None = None, flags: dict | None = None
) -> "ExportOptions":
    """`edgesdk export RUN`'s options: RECIPE's [export] (a name, a path), else the recipe RUN was
    trained with (run.json), with FLAGS (EXPORT_FLAGS by field, None = not given) over them."""
    from edgesdk.compile.onnx import ExportOptions

    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(given) - set(EXPORT_FLAGS))
    if unknown:
        raise OptionError(f"{flag_name(unknown[0])}: not an export option")
    check_flags("export", given)
    if recipe is None:
        values = run_export_options(run)
    else:
        values = dict((recipe if isinstance(recipe, Recipe) else load_recipe(recipe)).export)
    return ExportOptions(**{**values, **given})
