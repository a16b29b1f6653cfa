"""Parity of two runners on the same frames: score and map differences and verdict flips at the
threshold. numpy only (the device runs `edgesdk verify` with it)."""

from __future__ import annotations

import numpy as np

from edgesdk.backends.base import Runner
from edgesdk.measure.timing import timed_calls


def compare_runners(ref: Runner, test: Runner, frames: np.ndarray, threshold: float, input_name: str = "image") -> dict:
    """Run both on each frame of (N, H, W, 3) uint8 at batch 1; REF is the reference."""
    rs, ts, map_err, map_scale = [], [], 0.0, 1.0
    for i in range(len(frames)):
        feed = {input_name: frames[i : i + 1]}
        a, b = ref.infer(feed), test.infer(feed)
        rs.append(float(a["score"][0]))
        ts.append(float(b["score"][0]))
        map_err = max(map_err, float(np.abs(a["anomaly_map"] - b["anomaly_map"]).max()))
        map_scale = max(map_scale, float(np.abs(a["anomaly_map"]).max()))
    r, t = np.array(rs), np.array(ts)
    flips = int(((r > threshold) != (t > threshold)).sum())
    return {
        "n_frames": int(len(frames)),
        "threshold": threshold,
        "score_max_abs_err": float(np.abs(r - t).max()),
        "score_mean_abs_err": float(np.abs(r - t).mean()),
        "map_max_abs_err": map_err,
        "map_max_rel_err": map_err / map_scale,
        "verdict_flips": flips,
        "ref_scores": r.tolist(),
        "test_scores": t.tolist(),
    }


def onnx_outputs(path, frames: np.ndarray, input_name: str = "image") -> dict[str, np.ndarray]:
    """Every output of the ONNX graph at PATH on FRAMES (N, H, W, 3) uint8, ONNX Runtime CPU, batch 1."""
    from edgesdk.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, providers="CPUExecutionProvider") as r:
        outs = [r.infer({input_name: frames[i : i + 1]}) for i in range(len(frames))]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def score_onnx(path, frames: np.ndarray, input_name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, H, W)) of an ONNX graph in ONNX Runtime's CPU provider, batch 1."""
    out = onnx_outputs(path, frames, input_name)
    return out["score"], out["anomaly_map"]


def interleaved_p50(
    a, b, frames: np.ndarray, rounds: int = 8, per_round: int = 10, input_name: str = "image"
) -> tuple[float, float]:
    """ONNX Runtime p50 ms of graphs A and B at batch 1, alternating blocks of PER_ROUND calls so
    machine drift hits both alike (two untimed calls per block: caches refill after a switch).
    No spinning pool threads: one session's spinning would slow the other (as in `edgesdk bench`)."""
    from edgesdk.backends.onnxruntime import OnnxRuntimeRunner

    feeds = [{input_name: f[None]} for f in frames]
    with (
        OnnxRuntimeRunner(a, providers="CPUExecutionProvider", spin=False) as ra,
        OnnxRuntimeRunner(b, providers="CPUExecutionProvider", spin=False) as rb,
    ):
        ms: tuple[list[float], list[float]] = ([], [])
        for r in range(rounds):
            for runner, out in ((ra, ms[0]), (rb, ms[1])):
                timed_calls(runner, feeds, per_round + 2, start=r * per_round, untimed=2, out=out)
    return float(np.median(ms[0])), float(np.median(ms[1]))


def compare_bundles(a, b, data, max_pixels: int | None = None) -> dict:
    """`edgesdk compare A B --data D`: both bundles on D's test images (MVTec layout, or a labelled
    folder good/ + <defect>/), each at its own threshold. {"rows": [one per bundle], "pair": {...}}.
    Pixel metrics (pixel_auroc, aupro, pixel_f1, pixel_iou) are None where a defect image has no mask.
    MAX_PIXELS: an image or mask over this many pixels is a DataError (images.max_pixels)."""
    from edgesdk.bundle import Bundle
    from edgesdk.data import mvtec
    from edgesdk.images import max_pixels as pixel_limit
    from edgesdk.measure.metrics import auroc, localization, recall_by_kind

    limit = pixel_limit(max_pixels)  # a bad --max-pixels or $EDGESDK_MAX_PIXELS before the bundles are opened
    ba, bb = Bundle.open(a), Bundle.open(b)
    if ba.input_size != bb.input_size:
        raise ValueError(
            f"{a} takes {ba.input_size} frames and {b} {bb.input_size}: compare bundles of one model input"
        )
    from pathlib import Path

    items = mvtec.test_items(data) if (Path(data) / "test").is_dir() else mvtec.labelled_items(data)
    frames, labels, masks = mvtec.read_labelled(items, ba.input_size, limit)
    rows, scores = [], []
    p50 = interleaved_p50(ba.model_path, bb.model_path, frames)
    for bundle, ms in zip((ba, bb), p50):
        s, maps = score_onnx(bundle.model_path, frames, bundle.manifest.input.name)
        scores.append(s)
        cal = bundle.manifest.calibration or {}
        rows.append(
            {
                "bundle": str(bundle.path),
                "precision": bundle.manifest.precision,
                "target": cal.get("target", ""),
                "MB": bundle.manifest.files["model.onnx"].bytes / 1e6,
                "image_auroc": auroc(s, labels) if 0 < labels.sum() < len(labels) else None,
                "pixel_auroc": auroc(maps, masks) if masks is not None else None,
                **(
                    localization(maps, masks, bundle.threshold)
                    if masks is not None
                    else dict.fromkeys(("aupro", "pixel_f1", "pixel_iou"))
                ),
                "recall_by_kind": recall_by_kind(s, [it.kind for it in items], bundle.threshold),
                "threshold": bundle.threshold,
                "ort_p50_ms": ms,
            }
        )
    va, vb = scores[0] > ba.threshold, scores[1] > bb.threshold
    d = np.abs(scores[0] - scores[1])
    pair = {
        "n_images": int(len(frames)),
        "score_max_abs_diff": float(d.max()),
        "score_mean_abs_diff": float(d.mean()),
        "verdict_flips": int((va != vb).sum()),
        "image_auroc_drop": (rows[0]["image_auroc"] or 0) - (rows[1]["image_auroc"] or 0),
        "aupro_drop": rows[0]["aupro"] - rows[1]["aupro"] if None not in (rows[0]["aupro"], rows[1]["aupro"]) else None,
        "speedup": p50[0] / p50[1],
        "data": str(data),
    }
    return {"rows": rows, "pair": pair}


def default_tolerance(precision: str) -> float:
    """Largest |score difference| `edgesdk verify` accepts between an engine and ONNX Runtime, in the
    scores' (threshold) units: reduced precision moves scores more than FP32 kernels do."""
    return 0.05 if precision == "fp32" else 0.25


def verify_engine(engine, bundle, tolerance: float | None = None) -> dict:
    """`edgesdk verify`: the TensorRT plan ENGINE against ONNX Runtime (CPU) on BUNDLE's parity frames.
    Passes when no verdict flips at the bundle's threshold and every score is within TOLERANCE
    (default: default_tolerance of the bundle's precision). compare_runners' record, plus "tolerance"
    and "passed"."""
    from edgesdk.backends import OnnxRuntimeRunner, TensorRTRunner
    from edgesdk.bundle import Bundle
    from edgesdk.errors import finite

    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    tol = default_tolerance(b.manifest.precision) if tolerance is None else finite(tolerance, "tolerance")
    if tol < 0:  # inf would pass every engine, nan none (finite refuses both)
        raise ValueError(f"tolerance {tol}: a score difference >= 0, e.g. 0.05")
    frames = b.parity_frames()
    with TensorRTRunner(engine, b) as trt_r, OnnxRuntimeRunner(b.model_path, "CPUExecutionProvider") as ort_r:
        r = compare_runners(ort_r, trt_r, frames, b.threshold, b.manifest.input.name)
    r["tolerance"] = tol
    r["passed"] = r["verdict_flips"] == 0 and r["score_max_abs_err"] <= tol
    return r
