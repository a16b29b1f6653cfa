"""The model zoo: model name -> (class, config class). Every model takes (B, H, W, 3) uint8 BGR
frames and returns (score (B,), anomaly_map (B, H, W)) in z units; see components.AnomalyModel."""

from __future__ import annotations


def models() -> dict:
    from edgesdk.zoo.padim import Padim, PadimConfig
    from edgesdk.zoo.patchcore import Patchcore, PatchcoreConfig
    from edgesdk.zoo.stfpm import Stfpm, StfpmConfig

    return {"padim": (Padim, PadimConfig), "patchcore": (Patchcore, PatchcoreConfig), "stfpm": (Stfpm, StfpmConfig)}


MODEL_NAMES = ("padim", "patchcore", "stfpm")
