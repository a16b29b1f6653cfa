"""`edgesdk eval`: score an MVTec-layout test set through the device runtime (no torch).

Reports image AUROC, pixel AUROC, AUPRO, F1 at the bundle's threshold (image level), pixel F1, IoU,
precision and recall of `map > threshold`, recall per defect kind, and latency percentiles of the
whole per-frame path (preprocess + infer + postprocess), measured at batch 1 as a camera would."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesdk.data import mvtec
from edgesdk.images import max_pixels as pixel_limit
from edgesdk.measure.metrics import auroc, f1_at, latency_stats, localization, pixel_f1_iou, recall_by_kind
from edgesdk.progress import bar
from edgesdk.stream.detector import Detector, DetectorOptions


def evaluate(
    bundle: str | Path,
    data: str | Path,
    opts: DetectorOptions = DetectorOptions(),
    warmup: int = 3,
    progress: bool = False,
    max_pixels: int | None = None,
) -> dict:
    """MAX_PIXELS: an image (or mask) over this many pixels is a DataError naming it, never decoded
    (None: $EDGESDK_MAX_PIXELS, else images.MAX_PIXELS)."""
    limit = pixel_limit(max_pixels)  # a bad value is refused before the bundle is loaded
    items = mvtec.test_items(data)
    with Detector(bundle, opts) as det:
        size = det.size
        loaded = [mvtec.read_item(it, size, limit) for it in items]
        for img, _ in loaded[:warmup]:
            det.predict(img)
        scores, maps, stages, named = [], [], [], []
        for img, _ in bar(loaded, desc="eval", unit="img", enabled=progress):
            r = det.predict(img)
            scores.append(r.score)
            maps.append(r.anomaly_map)
            stages.append(r.latency_ms)
            named.append(r.regions[0].kind if r.regions else None)  # the strongest region's kind
        kinds = det.kinds
        threshold = det.threshold
        providers = det.runner.providers if hasattr(det.runner, "providers") else []
    labels = np.array([x.label for x in items])
    scores_a = np.array(scores)
    masks = np.stack([m if m is not None else np.zeros(size, bool) for _, m in loaded])
    per_kind = {}
    for kind in sorted({x.kind for x in items} - {"good"}):
        sel = np.array([x.kind in ("good", kind) for x in items])
        per_kind[kind] = {"image_auroc": auroc(scores_a[sel], labels[sel]), "n_images": int((labels[sel] == 1).sum())}
    f1 = f1_at(scores_a, labels, threshold)
    lat = {k: latency_stats([s[k] for s in stages]) for k in stages[0]}
    maps_a = np.stack(maps)
    px = pixel_f1_iou(maps_a, masks, threshold)
    # A supervised model names kinds: of the defective images it flagged with a region, the share whose
    # strongest region names the image's own kind (only kinds the model knows count).
    known = [(it.kind, k) for it, k in zip(items, named) if it.label and it.kind in kinds and k is not None]
    kind_acc = {"kind_accuracy": sum(a == b for a, b in known) / len(known) if known else None} if kinds else {}
    return {
        **kind_acc,
        "bundle": str(bundle),
        "data": str(data),
        "image_auroc": auroc(scores_a, labels),
        "pixel_auroc": auroc(maps_a, masks),
        **localization(maps_a, masks, threshold),
        "pixel_precision": px["precision"],
        "pixel_recall": px["recall"],
        "recall_by_kind": recall_by_kind(scores_a, [x.kind for x in items], threshold),
        "f1": f1["f1"],
        "precision": f1["precision"],
        "recall": f1["recall"],
        "threshold": threshold,
        "n_images": len(items),
        "n_defective": int(labels.sum()),
        "latency_ms": lat["total"],
        "latency_ms_by_stage": lat,
        "per_defect": per_kind,
        "providers": providers,
        "confusion": {k: f1[k] for k in ("tp", "fp", "fn", "tn")},
    }
