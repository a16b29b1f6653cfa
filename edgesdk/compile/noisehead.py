"""A noise-aware PaDiM head for an INT8 graph: the Gaussians the quantized features are scored against
include the quantization noise, which the float fit never saw.

PaDiM scores a position by (f - mean)^T Sigma^-1 (f - mean). Sigma^-1 is huge in the directions where the
good features barely vary (down to the ridge), so an INT8 backbone's feature error delta = f_q - f, small
next to the features themselves, dominates the distance there and reorders good and defective images.
After quantizing, with the calibration frames through the float and the Q/DQ graph (the tensor the
head's Sub(mean) reads, (P, N, D)):

    mean'  = mean + E[delta]                       per position (P, D): the noise's offset
    Sigma' = Sigma + Cov(delta)                    Cov pooled over positions and frames (D, D)
    precision' = inverse(Sigma')

Sigma comes from the graph's own precision, inverted in float64 (the run's statistics are not needed,
and Sigma' = Sigma when there is no noise). Then the score normalization (score_shift, score_scale) is
derived again as training derived it: mean and std of the image scores of the run's held-out good
frames, so scores stay in z units. Only a graph with PaDiM's head pattern is changed:
Sub(x, mean or Unsqueeze(mean)) -> MatMul(., precision (P, D, D)); any other head is left alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHIFT, SCALE = "score_shift", "score_scale"  # zoo/components.py's normalization initializers


@dataclass(frozen=True)
class PadimHead:
    features: str  # (P, B, D) tensor the Sub reads
    mean: str  # initializer, P * D values
    precision: str  # initializer (P, D, D)


def find_padim_head(model) -> PadimHead | None:
    """PaDiM's Mahalanobis head of MODEL (an ONNX ModelProto), or None when the graph has none."""
    inits = {i.name: i for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        prec = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        sub = produced.get(n.input[0]) if prec is not None else None
        if prec is None or sub is None or sub.op_type != "Sub" or len(prec.dims) != 3 or prec.dims[1] != prec.dims[2]:
            continue
        x, m = sub.input
        src = produced.get(m)
        if src is not None and src.op_type == "Unsqueeze":
            m = src.input[0]
        if m in inits and int(np.prod(inits[m].dims)) == prec.dims[0] * prec.dims[1]:
            return PadimHead(x, m, n.input[1])
    return None


def tap(model, tensor: str, frames: np.ndarray, input_name: str) -> np.ndarray:
    """TENSOR of MODEL (P, 1, D) per frame, stacked to (P, N, D) float64."""
    from edgesdk.compile import ranges

    return ranges.tap_frames(model, tensor, frames, input_name, axis=1)


def noise_stats(f: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E[delta] (P, D), Cov(delta) (D, D)) of delta = Q - F, both (P, N, D): the offset per position,
    the covariance around it pooled over all positions and frames."""
    d = q.astype(np.float64) - f
    offset = d.mean(1)
    r = (d - offset[:, None]).reshape(-1, d.shape[2])
    return offset, r.T @ r / max(1, len(r) - d.shape[0])


def correct(
    fp32: Path, qdq: Path, frames: np.ndarray, hold: np.ndarray, input_name: str, cache: dict | None = None
) -> dict | None:
    """Rewrite the PaDiM head of the Q/DQ graph QDQ (in place) for its quantization noise measured against
    the float graph FP32 on FRAMES (N, H, W, 3) uint8, and its score normalization on the held-out good
    frames HOLD. CACHE (a dict) keeps the float features between attempts. Returns the manifest's record,
    or None when the graph has no PaDiM head. A student-teacher head gets compile.noisehead_st's offset."""
    import onnx
    from onnx import numpy_helper

    q = onnx.load(str(qdq))
    head = find_padim_head(q)
    cache = {} if cache is None else cache
    if head is None:  # the student-teacher's head instead (compile.noisehead_st), or none
        from edgesdk.compile import noisehead_st

        st = noisehead_st.correct(q, onnx.load(str(fp32)), frames, input_name, cache)
        if st is not None and st["applied"]:
            onnx.save(q, str(qdq))
            renormalize(q, qdq, hold, input_name, st)
        return st
    if "float" not in cache:
        f = onnx.load(str(fp32))
        f_head = find_padim_head(f)
        if f_head is None:
            return None
        cache["float"] = tap(f, f_head.features, frames, input_name)
    feats_f = cache["float"]
    feats_q = tap(q, head.features, frames, input_name)  # ranges.tap_session taps a copy: Q stays as loaded
    offset, cov = noise_stats(feats_f, feats_q)
    inits = {i.name: i for i in q.graph.initializer}
    mean = numpy_helper.to_array(inits[head.mean])
    prec = numpy_helper.to_array(inits[head.precision]).astype(np.float64)
    sigma = np.linalg.inv(prec)
    trace_share = float(np.trace(cov) / np.mean(np.trace(sigma, axis1=1, axis2=2)))
    new = {
        head.mean: (mean.astype(np.float64) + offset.reshape(mean.shape)).astype(np.float32),
        head.precision: np.linalg.inv(sigma + cov).astype(np.float32),
    }
    for name, a in new.items():
        if not np.all(np.isfinite(a)):
            return {"head": "padim", "applied": False, "why": f"non-finite {name} after the correction"}
        inits[name].CopyFrom(numpy_helper.from_array(a, name))
    onnx.save(q, str(qdq))
    record = {
        "head": "padim",
        "applied": True,
        "how": "mean + E[delta] per position, covariance + Cov(delta) pooled; delta = int8 - float features",
        "n_frames": int(len(frames)),
        "offset_rms": float(np.sqrt(np.mean(offset**2))),
        "noise_trace_share": trace_share,  # trace Cov(delta) / mean trace Sigma
    }
    renormalize(q, qdq, hold, input_name, record)
    return record


def renormalize(q, qdq: Path, hold: np.ndarray, input_name: str, record: dict) -> None:
    """Derive the score normalization of Q (saved at QDQ) again as training did: mean and std of the raw
    image scores of the held-out good frames HOLD, so scores stay in z units; saves Q and notes it in RECORD."""
    import onnx
    from onnx import numpy_helper

    from edgesdk.measure.compare import score_onnx

    inits = {i.name: i for i in q.graph.initializer}
    if SHIFT not in inits or SCALE not in inits:
        return
    shift = float(numpy_helper.to_array(inits[SHIFT]))
    scale = float(numpy_helper.to_array(inits[SCALE]))
    raw = score_onnx(qdq, hold, input_name)[0] / scale + shift
    std = float(raw.std(ddof=1)) if len(raw) > 1 else 0.0
    if np.isfinite(std) and std > 0:
        inits[SHIFT].CopyFrom(numpy_helper.from_array(np.array(raw.mean(), np.float32), SHIFT))
        inits[SCALE].CopyFrom(numpy_helper.from_array(np.array(1.0 / std, np.float32), SCALE))
        onnx.save(q, str(qdq))
        record["normalization"] = {"raw_mean": float(raw.mean()), "raw_std": std, "n_holdout": int(len(raw))}
