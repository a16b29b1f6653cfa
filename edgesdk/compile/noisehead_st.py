"""A noise-aware student-teacher head for an INT8 graph: the quantization's systematic offset between the
teacher and the student is taken out of their difference.

The student imitates the float teacher, so an INT8 teacher is a shifted target: its features move by an
offset per channel that the student's INT8 output does not share, and the squared distance
mean_c (t - s)^2 of every good position grows by it. After quantizing, with the calibration frames through
the float and the Q/DQ graph (the tensor Sub(t, s) the distance squares, (N, C, h, w)):

    off_c   = E[(t_q - s_q) - (t - s)]                 over frames and positions: one value per channel
    t_mean' = t_mean + off_c / t_inv_std               so that t_q' = (x - t_mean') * t_inv_std = t_q - off_c

(per position and channel was measured too and did worse: docs/QUANTIZATION.md). The score normalization
is then derived again on the held-out good frames, as noisehead does for PaDiM. Only a graph with the
student-teacher's head pattern is changed: Sub(x, t_mean (1, C, 1, 1)) -> Mul(., t_inv_std (1, C, 1, 1))
-> Sub(., s); any other head is left alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StHead:
    mean: str  # initializer (1, C, 1, 1): the teacher's channel means
    inv_std: str  # initializer (1, C, 1, 1)
    diff: str  # (B, C, h, w) tensor t - s


def find_st_head(model) -> StHead | None:
    """The student-teacher head of MODEL (an ONNX ModelProto), or None when the graph has none."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def channel_init(name: str) -> bool:
        d = list(inits[name].dims) if name in inits else []
        return len(d) == 4 and d[0] == d[2] == d[3] == 1

    for n in model.graph.node:
        if n.op_type != "Sub" or not channel_init(n.input[1]):
            continue
        for mul in readers.get(n.output[0], []):
            if mul.op_type != "Mul" or not channel_init(mul.input[1]):
                continue
            if inits[mul.input[1]].dims != inits[n.input[1]].dims:
                continue
            for sub in readers.get(mul.output[0], []):
                if sub.op_type == "Sub" and sub.input[0] == mul.output[0] and sub.input[1] not in inits:
                    return StHead(n.input[1], mul.input[1], sub.output[0])
    return None


def tap(model, tensor: str, frames: np.ndarray, input_name: str) -> np.ndarray:
    """TENSOR of MODEL per frame, stacked to (N, C, h, w) float64."""
    from edgesdk.compile import ranges

    return ranges.tap_frames(model, tensor, frames, input_name, axis=0).astype(np.float64)


def correct(q, fp32_model, frames: np.ndarray, input_name: str, cache: dict) -> dict | None:
    """Fold the channel offset of the Q/DQ model Q's teacher-student difference (against FP32_MODEL's on
    FRAMES (N, H, W, 3) uint8) into Q's t_mean, in memory. CACHE keeps the float difference between
    attempts. Returns the manifest's record, or None when either graph has no student-teacher head."""
    from onnx import numpy_helper

    head = find_st_head(q)
    if head is None:
        return None
    if "st_float" not in cache:
        f_head = find_st_head(fp32_model)
        if f_head is None:
            return None
        cache["st_float"] = tap(fp32_model, f_head.diff, frames, input_name)
    offset = (tap(q, head.diff, frames, input_name) - cache["st_float"]).mean((0, 2, 3))  # (C,)
    inits = {i.name: i for i in q.graph.initializer}
    mean = numpy_helper.to_array(inits[head.mean]).astype(np.float64)
    inv = numpy_helper.to_array(inits[head.inv_std]).astype(np.float64)
    new = (mean + offset.reshape(mean.shape) / inv).astype(np.float32)
    if not np.all(np.isfinite(new)):
        return {"head": "student-teacher", "applied": False, "why": f"non-finite {head.mean} after the correction"}
    inits[head.mean].CopyFrom(numpy_helper.from_array(new, head.mean))
    return {
        "head": "student-teacher",
        "applied": True,
        "how": "t_mean + E[delta]/t_inv_std per channel; delta = int8 - float (teacher - student)",
        "n_frames": int(len(frames)),
        "offset_rms": float(np.sqrt(np.mean(offset**2))),
    }
