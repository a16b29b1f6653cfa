"""The model zoo: model name -> (class, config class). Every model takes (B, H, W, 3) uint8 BGR
frames and returns (score (B,), anomaly_map (B, H, W)) in z units (see components.AnomalyModel), or
in probabilities for the supervised segmenter."""

from __future__ import annotations


def models() -> dict:
    from edgesdk.zoo.hybrid import Hybrid, HybridConfig
    from edgesdk.zoo.padim import Padim, PadimConfig
    from edgesdk.zoo.patchcore import Patchcore, PatchcoreConfig
    from edgesdk.zoo.segmenter import Segmenter, SegmenterConfig
    from edgesdk.zoo.stfpm import Stfpm, StfpmConfig

    return {
        "padim": (Padim, PadimConfig),
        "patchcore": (Patchcore, PatchcoreConfig),
        "stfpm": (Stfpm, StfpmConfig),
        "segmenter": (Segmenter, SegmenterConfig),
        "hybrid": (Hybrid, HybridConfig),  # composed by train --with-anomaly, never fitted on its own
    }


MODEL_NAMES = ("padim", "patchcore", "stfpm", "segmenter")
RUN_MODELS = (*MODEL_NAMES, "hybrid")  # what a run folder may hold
SUPERVISED = ("segmenter",)  # trained on a labelled folder (--labels) besides the good images
