"""Per-tensor activation ranges for TensorRT's symmetric INT8 (`--calib-method search`), each chosen by
its effect on the model's output rather than by one rule for every tensor.

For every activation a Q/DQ graph quantizes, candidates come from |x| sampled on all calibration frames:
  minmax      the largest |x|
  p99.99      the 99.99th and 99.999th percentiles of |x| (an outlier costs the rest of the tensor
  p99.999     resolution under min-max; a ReLU6 output loses half its grid to the sign already)
  mse         the clip c minimising E[(x - q_c(x))^2] on the int8 grid of step c / 127
  entropy     TensorRT's entropy calibration: the clip whose 128-level histogram is closest (KL) to the
              2048-bin one of |x|
Then greedily in graph order, each tensor takes the candidate that gives the smallest error of the
model's float outputs (anomaly map, score) against the float graph on a few frames, the other tensors
at their current choice (all start at `mse`). One ONNX Runtime session does the search: the activation
scales become graph inputs of a copy. Deterministic: strided samples, fixed frames, no randomness."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SAMPLES = 16384  # |x| values kept per tensor per frame (strided)
N_EVAL = 4  # calibration frames the output error is measured on
CANDIDATES = ("minmax", "p99.99", "p99.999", "mse", "entropy")


def candidates(a: np.ndarray, amax: float) -> dict[str, float]:
    """{method: clip} for |x| samples A (1-D, >= 0) whose exact maximum is AMAX."""
    amax = float(max(amax, 1e-8))
    out = {"minmax": amax, "p99.99": float(np.percentile(a, 99.99)), "p99.999": float(np.percentile(a, 99.999))}
    sub = a[:: max(1, len(a) // 50_000)]
    grid = amax * np.linspace(0.05, 1.0, 40)
    err = [float(np.mean((sub - np.clip(np.round(sub / (c / 127)), -127, 127) * (c / 127)) ** 2)) for c in grid]
    out["mse"] = float(grid[int(np.argmin(err))])
    out["entropy"] = entropy_clip(a, amax)
    return {k: max(v, amax * 1e-4) for k, v in out.items()}


def entropy_clip(a: np.ndarray, amax: float, bins: int = 2048, levels: int = 128) -> float:
    """TensorRT's entropy calibration (IInt8EntropyCalibrator2) on |x|: for each clip bin i, P is the
    histogram up to i with the tail folded into its last bin, Q is P merged into LEVELS levels and
    spread back over its non-empty bins; the clip with the smallest KL(P || Q) wins."""
    hist = np.histogram(a, bins=bins, range=(0.0, amax))[0].astype(np.float64)
    best, best_kl = bins, np.inf
    for i in range(levels, bins + 1, 16):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        starts = np.linspace(0, i, levels + 1).astype(int)[:-1]  # i >= levels: every level has a bin
        lengths = np.diff(np.append(starts, i))
        per = np.add.reduceat(hist[:i], starts) / np.maximum(np.add.reduceat(nz.astype(np.float64), starts), 1)
        q = np.repeat(per, lengths) * nz
        if p.sum() == 0 or q.sum() == 0:
            continue
        pn, qn = p[nz] / p.sum(), q[nz] / q.sum()
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(amax * best / bins)


def tap_session(model, outputs: list[str]):
    """An ONNX Runtime session of MODEL that also returns the intermediate tensors OUTPUTS, with nothing
    fused, so each Q/DQ pair runs as written. MODEL itself is left as it was."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the caller's graph keeps its outputs
    model = copy
    have = {o.name for o in model.graph.output}
    for t in outputs:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Unfused: the Q/DQ pairs run as written, and scales may be graph inputs.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def tap_frames(model, tensor: str, frames: np.ndarray, input_name: str, axis: int) -> np.ndarray:
    """TENSOR of MODEL for each of FRAMES (N, H, W, 3) uint8 run one at a time, stacked on AXIS."""
    sess = tap_session(model, [tensor])
    return np.concatenate([sess.run([tensor], {input_name: frames[i : i + 1]})[0] for i in range(len(frames))], axis)


def activation_scale_names(qdq) -> dict[str, str]:
    """{activation tensor: its scale initializer} of the per-tensor QuantizeLinear nodes, in graph order."""
    inits = {i.name: i for i in qdq.graph.initializer}
    return {
        n.input[0]: n.input[1]
        for n in qdq.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits
    }


def search(pre: Path, qdq: Path, frames: np.ndarray, input_name: str) -> tuple[dict[str, float], dict]:
    """Chosen {activation tensor: scale} for the Q/DQ graph QDQ made from the float graph PRE, and a
    record {tensor: method} with the output error before/after. FRAMES: (N, H, W, 3) uint8."""
    import onnx
    from onnx import TensorProto, helper

    t0 = time.perf_counter()
    q = onnx.load(str(qdq))
    names = activation_scale_names(q)
    tensors = list(names)
    f_sess = tap_session(onnx.load(str(pre)), tensors)
    outs = [o.name for o in f_sess.get_outputs() if o.name not in names]
    amax = dict.fromkeys(tensors, 0.0)
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for i in range(len(frames)):  # one frame at a time: all activations of a 256 px frame at once
        got = f_sess.run(tensors, {input_name: frames[i : i + 1]})
        for t, x in zip(tensors, got):
            ax = np.abs(x.ravel())
            amax[t] = max(amax[t], float(ax.max()))
            samples[t].append(ax[:: max(1, ax.size // SAMPLES)])
    cands = {t: candidates(np.concatenate(samples[t]), amax[t]) for t in tensors}
    del samples
    ev = frames[np.linspace(0, len(frames) - 1, min(N_EVAL, len(frames))).round().astype(int)]
    ref = dict(zip(outs, f_sess.run(outs, {input_name: ev})))
    ref = {k: v for k, v in ref.items() if v.dtype.kind == "f" and v.size > len(ev)}  # maps, not per-image scores
    ref = ref or dict(zip(outs, f_sess.run(outs, {input_name: ev})))
    del f_sess
    # The search copy: each activation scale a (scalar) graph input instead of an initializer.
    scale_names = set(names.values())
    keep = [i for i in q.graph.initializer if i.name not in scale_names]
    del q.graph.initializer[:]
    q.graph.initializer.extend(keep)
    for s in sorted(scale_names):
        q.graph.input.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, []))
    q_sess = tap_session(q, list(ref))

    def error(choice: dict[str, str]) -> float:
        feeds = {input_name: ev, **{names[t]: np.array(cands[t][m] / 127, np.float32) for t, m in choice.items()}}
        got = q_sess.run(list(ref), feeds)
        return float(sum(np.mean((g - r) ** 2) / (np.var(r) + 1e-12) for g, r in zip(got, ref.values())))

    choice = dict.fromkeys(tensors, "mse")
    before = error(dict.fromkeys(tensors, "minmax"))
    best = error(choice)
    n_evals = 2
    for t in tensors:
        for m in CANDIDATES:
            # A candidate within 5 % of one tried already moves the output too little to pay for a run.
            tried = {choice[t]} | {k for k in CANDIDATES[: CANDIDATES.index(m)]}
            if any(abs(cands[t][m] - cands[t][k]) <= 0.05 * cands[t][k] for k in tried):
                continue
            e = error({**choice, t: m})
            n_evals += 1
            if e < best:
                best, choice[t] = e, m
    scales = {t: cands[t][choice[t]] / 127 for t in tensors}
    counts = {m: sum(1 for c in choice.values() if c == m) for m in CANDIDATES}
    return scales, {
        "methods": counts,
        "output_rel_mse_minmax": before,
        "output_rel_mse_chosen": best,
        "n_frames": int(len(frames)),
        "n_eval_frames": int(len(ev)),
        "n_evals": n_evals,
        "search_seconds": round(time.perf_counter() - t0, 1),
    }


def set_scales(model, scales: dict[str, float]) -> int:
    """Write SCALES ({activation tensor: scale}) into MODEL's Q/DQ scale initializers; returns how many."""
    from onnx import numpy_helper

    names = activation_scale_names(model)
    n = 0
    for init in model.graph.initializer:
        for t, s in names.items():
            if s == init.name and t in scales:
                init.CopyFrom(numpy_helper.from_array(np.array(scales[t], dtype=np.float32), init.name))
                n += 1
    return n
