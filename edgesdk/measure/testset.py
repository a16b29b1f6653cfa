"""A labelled test set at a model's input size, and a runner's accuracy on it (`edgesdk bench --data`):
image AUROC, recall per defect kind and, where every defect image has a mask, AUPRO and pixel F1/IoU.
numpy only: the device benchmarks with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.backends.base import Runner
from edgesdk.measure.metrics import auroc, localization, recall_by_kind

ACCURACY_KEYS = ("image_auroc", "aupro", "pixel_f1", "pixel_iou", "recall_by_kind")


@dataclass(frozen=True)
class LabelledSet:
    frames: np.ndarray  # (N, H, W, 3) uint8 at the model's input size
    labels: np.ndarray  # (N,) 1 = defective
    masks: np.ndarray | None  # (N, H, W) bool, None when a defect image has no mask
    kinds: list[str]  # "good" or the defect folder name, per frame


def load_test_set(data: str | Path, size: tuple[int, int]) -> LabelledSet:
    """The MVTec-layout test set of category DATA (test/, ground_truth/) at SIZE."""
    from edgesdk.data import mvtec

    items = mvtec.test_items(data)
    frames, labels, masks = mvtec.read_labelled(items, size)
    return LabelledSet(frames, labels, masks, [it.kind for it in items])


def runner_accuracy(runner: Runner, input_name: str, threshold: float, ts: LabelledSet) -> dict[str, Any]:
    """ACCURACY_KEYS of RUNNER on TS at batch 1, verdicts and defect pixels at THRESHOLD (score or
    map > threshold); the pixel numbers are None without masks."""
    outs = [runner.infer({input_name: ts.frames[i : i + 1]}) for i in range(len(ts.frames))]
    scores = np.array([float(o["score"][0]) for o in outs])
    acc: dict[str, Any] = dict.fromkeys(ACCURACY_KEYS)
    acc.update(image_auroc=auroc(scores, ts.labels), recall_by_kind=recall_by_kind(scores, ts.kinds, threshold))
    if ts.masks is not None:
        acc.update(localization(np.concatenate([o["anomaly_map"] for o in outs]), ts.masks, threshold))
    return acc
