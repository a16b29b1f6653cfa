"""The lower-precision gate (compile/gate.py) on every output of a bundle besides score and anomaly_map:
a supervised model's kind_map and a hybrid's head maps (spec/heads.py), each compared with the float
graph's on the gate's own frames (held-out good, then validation), each with its own limit.

  kind_map     share of the pixels both graphs flag as defective (the map that names kinds above the
               bundle's threshold: the kinds head's output, else anomaly_map) whose kind is unchanged,
               at least MIN_KIND_AGREEMENT: the device names a region by its pixels' majority kind
               (stream/detector.py kind_of), so a few boundary pixels flipping between near-tied kinds
               cannot rename a region, while a wrong kind head changes most of them.
  other maps   (a hybrid's segmenter_map, patchcore_map; float32, batch x H x W) with labels: the same
               rule as anomaly_map, image AUROC of the map's max may drop max_drop at most, and with
               masks its pixel F1 at the bundle's threshold PIXEL_F1_DROP at most; without labels the
               99th percentile of |low - float| in units of the bundle's threshold, MAX_MAP_ERR at most.
The output names come from the float graph, whose outputs are the manifest's, and the heads from the
net's manifest heads (reference() stores them); nothing is guessed from a name's spelling but kind_map,
which the spec (spec/heads.py, the manifest's kinds) names so."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesdk.measure.compare import onnx_outputs
from edgesdk.measure.metrics import auroc, pixel_f1_iou

KIND_MAP = "kind_map"  # the spec's name for the (batch, H, W) int64 kind index (spec/heads.py)
GATED = ("score", "anomaly_map")  # gate.measure's own outputs
MIN_KIND_AGREEMENT = 0.98
MAX_MAP_ERR = 0.25  # p99 |low - float| of a map without labels, in units of the bundle threshold


def with_float_outputs(ref: dict, fp32: Path) -> dict:
    """REF plus the float graph's outputs on its held-out and validation frames (run once per export)."""
    hold = onnx_outputs(fp32, ref["hold_frames"])
    val = onnx_outputs(fp32, ref["val"][0]) if ref.get("val") is not None else None
    return {**ref, "float_outputs": (hold, val)}


def _joined(hold: dict, val: dict | None, name: str) -> np.ndarray:
    return hold[name] if val is None else np.concatenate([hold[name], val[name]])


def check(ref: dict, low: tuple[dict, dict | None], thr_float: float, thr: float, max_drop: float, f1_drop: float):
    """{output: its numbers and "passed"} for every output of the float graph besides score and
    anomaly_map; LOW: the low graph's outputs on the held-out and the validation frames (or None).
    THR_FLOAT / THR: each graph's bundle threshold. {} when REF holds no float outputs."""
    if "float_outputs" not in ref:
        return {}
    fh, fv = ref["float_outputs"]
    lh, lv = low
    flag_by = next((h.output for h in ref.get("heads", ()) if h.kinds), "anomaly_map")
    out: dict[str, dict] = {}
    for name in [n for n in fh if n not in GATED]:
        f, lo = _joined(fh, fv, name), _joined(lh, lv, name)
        if name == KIND_MAP:
            both = (_joined(fh, fv, flag_by) > thr_float) & (_joined(lh, lv, flag_by) > thr)
            n = int(both.sum())
            agree = float((f[both] == lo[both]).mean()) if n else 1.0
            out[name] = {
                "flagged_by": flag_by,
                "n_pixels_both_flag": n,
                "kind_agreement": agree,
                "kind_changed_share": 1.0 - agree,
                "min_kind_agreement": MIN_KIND_AGREEMENT,
                "passed": agree >= MIN_KIND_AGREEMENT,
            }
            continue
        err = np.abs(lo.astype(np.float64) - f) / thr_float
        r: dict = {"p99_abs_err_thr_units": float(np.percentile(err, 99)), "max_abs_err_thr_units": float(err.max())}
        if fv is not None and lv is not None:
            _, labels, masks, _ = ref["val"]
            fz, lz = fv[name].reshape(len(labels), -1).max(1), lv[name].reshape(len(labels), -1).max(1)
            r.update(image_auroc_float=auroc(fz, labels), image_auroc=auroc(lz, labels))
            r["image_auroc_drop"] = r["image_auroc_float"] - r["image_auroc"]
            ok = r["image_auroc_drop"] <= max_drop
            if masks is not None:
                r["pixel_f1_float"] = pixel_f1_iou(fv[name], masks, thr_float)["f1"]
                r["pixel_f1"] = pixel_f1_iou(lv[name], masks, thr)["f1"]
                r["pixel_f1_drop"] = r["pixel_f1_float"] - r["pixel_f1"]
                ok = ok and r["pixel_f1_drop"] <= f1_drop
            r.update(gated_on="image_auroc_drop" + (" and pixel_f1_drop" if masks is not None else ""), passed=ok)
        else:
            r.update(
                gated_on="p99_abs_err_thr_units", max_err=MAX_MAP_ERR, passed=r["p99_abs_err_thr_units"] <= MAX_MAP_ERR
            )
        r["passed"] = bool(r["passed"])
        out[name] = r
    return out


def summary(outputs: dict[str, dict]) -> dict[str, float]:
    """One number per output for the attempts table: kind agreement, the AUROC drop, or the p99 error."""
    keys = ("kind_agreement", "image_auroc_drop", "p99_abs_err_thr_units")
    return {name: round(next(r[k] for k in keys if k in r), 4) for name, r in outputs.items()}


def failures(outputs: dict[str, dict]) -> list[str]:
    """'NAME (what failed)' for each output that failed its limit."""
    said = []
    for name, r in outputs.items():
        if r["passed"]:
            continue
        if "kind_agreement" in r:
            said.append(f"{name} (kind agreement {r['kind_agreement']:.3f} < {MIN_KIND_AGREEMENT})")
        else:
            said.append(
                f"{name} ({r['gated_on']}: " + ", ".join(f"{k} {r[k]:.3f}" for k in r["gated_on"].split(" and ")) + ")"
            )
    return said
