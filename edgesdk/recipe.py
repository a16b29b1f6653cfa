"""Recipes (export/*.toml): one reproducible file per zoo entry - model, backbone and its config,
training options, export options - that a user can diff. `edgesdk train --recipe R` and
`edgesdk export RUN --recipe R` read it; command-line flags override its values; the run folder
records the resolved recipe. Unknown keys and wrong types are errors naming the key and the file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgesdk.resources import resolve
from edgesdk.spec import SpecError, from_mapping, load_toml


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


def load_recipe(name_or_path: str | Path) -> Recipe:
    """export/NAME.toml among the shipped recipes, or a path; every section is checked against the
    dataclass it configures, so a typo fails here, naming the key and the file."""
    from edgesdk.compile.onnx import ExportOptions
    from edgesdk.train import TrainOptions
    from edgesdk.zoo import MODEL_NAMES, models

    path = resolve(str(name_or_path), "export")
    where = str(path)
    r = from_mapping(Recipe, {**load_toml(path), "path": where}, where)
    if r.model not in MODEL_NAMES:
        raise SpecError(f"{where}: model {r.model!r} is not in the zoo ({', '.join(MODEL_NAMES)})")
    cfg_cls = models()[r.model][1]
    from_mapping(cfg_cls, r.config, f"{where} [config]")
    from_mapping(TrainOptions, r.train, f"{where} [train]")
    from_mapping(ExportOptions, r.export, f"{where} [export]")
    return r
