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
Sub(x, mean or Unsqueeze(mean)) -> MatMul(., precision (P, D, D)); any other head is left alone.

The low-rank head (zoo PadimConfig.head_rank k) has MatMul(., basis (P, D, k)) instead, and its weight
(P, k) and ref (P,) a few Mul nodes downstream. Its Sigma is rebuilt from the factors,
(1/c_p) I + sum_i (lam_i - 1/c_p) u_i u_i^T with lam_i = 1 / (weight_i + c_p), the noise added, and
factored again by the fit's rule (stream/heads.py lowrank_factors): the graph keeps its shapes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHIFT, SCALE = "score_shift", "score_scale"  # zoo/components.py's normalization initializers


@dataclass(frozen=True)
class PadimHead:
    features: str  # (P, B, D) tensor the Sub reads
    mean: str  # initializer, P * D values
    precision: str  # initializer (P, D, D); of a low-rank head its basis (P, D, k)
    weight: str = ""  # low-rank head only: initializers of P * k and P values
    ref: str = ""


def find_padim_head(model) -> PadimHead | None:
    """PaDiM's Mahalanobis head of MODEL (an ONNX ModelProto), or None when the graph has none."""
    inits = {i.name: i for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        prec = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        sub = produced.get(n.input[0]) if prec is not None else None
        if prec is None or sub is None or sub.op_type != "Sub" or len(prec.dims) != 3 or prec.dims[2] > prec.dims[1]:
            continue
        x, m = sub.input
        src = produced.get(m)
        if src is not None and src.op_type == "Unsqueeze":
            m = src.input[0]
        if m not in inits or int(np.prod(inits[m].dims)) != prec.dims[0] * prec.dims[1]:
            continue
        if prec.dims[1] == prec.dims[2]:
            return PadimHead(x, m, n.input[1])
        p, k = prec.dims[0], prec.dims[2]
        weight = _downstream_inits(model, n.output[0], p * k, inits)  # proj * proj * weight
        ref = _downstream_inits(model, sub.output[0], p, inits)  # ref * (diff * diff).sum(-1)
        if len(weight) == 1 and len(ref) == 1:
            return PadimHead(x, m, n.input[1], weight[0], ref[0])
    return None


def _downstream_inits(model, tensor: str, size: int, inits: dict, depth: int = 3) -> list[str]:
    """Initializers of SIZE values that Mul nodes within DEPTH nodes downstream of TENSOR read, directly
    or through an Unsqueeze (torch's exporter leaves weight.unsqueeze(1) unfolded in some graphs)."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    unsq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Unsqueeze"}
    found: set[str] = set()
    frontier = [tensor]
    for _ in range(depth):
        nodes = [r for t in frontier for r in readers.get(t, [])]
        found |= {
            src
            for r in nodes
            if r.op_type == "Mul"
            for src in (unsq.get(i, i) for i in r.input)
            if src in inits and int(np.prod(inits[src].dims)) == size
        }
        frontier = [o for r in nodes for o in r.output]
    return sorted(found)


def lowrank_sigma(basis: np.ndarray, weight: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(P, D, D) float64 covariances of a low-rank head: basis (P, D, k), weight P * k, ref P values (any
    folded shape): (1/c_p) I + sum_i (lam_i - 1/c_p) u_i u_i^T, lam_i = 1 / (weight_i + c_p)."""
    p, d, k = basis.shape
    c = ref.reshape(p, 1).astype(np.float64)
    lam = 1 / (weight.reshape(p, k).astype(np.float64) + c)  # (P, k)
    u = basis.astype(np.float64)
    return np.eye(d) / c[:, :, None] + np.matmul(u * (lam - 1 / c)[:, None], u.transpose(0, 2, 1))


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
    if head.weight:
        sigma = lowrank_sigma(prec, *(numpy_helper.to_array(inits[t]) for t in (head.weight, head.ref)))
    else:
        sigma = np.linalg.inv(prec)
    trace_share = float(np.trace(cov) / np.mean(np.trace(sigma, axis1=1, axis2=2)))
    new = {head.mean: (mean.astype(np.float64) + offset.reshape(mean.shape)).astype(np.float32)}
    if head.weight:
        from edgesdk.stream.heads import lowrank_factors

        fac = lowrank_factors(sigma + cov, prec.shape[2])
        new.update({head.precision: fac["basis"], head.weight: fac["weight"], head.ref: fac["ref"]})
    else:
        new[head.precision] = np.linalg.inv(sigma + cov).astype(np.float32)
    for name, a in new.items():
        if not np.all(np.isfinite(a)):
            return {"head": "padim", "applied": False, "why": f"non-finite {name} after the correction"}
        inits[name].CopyFrom(numpy_helper.from_array(a.reshape(tuple(inits[name].dims)), name))
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
