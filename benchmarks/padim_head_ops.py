"""PaDiM's head as ONNX ops, one ONNX Runtime session each, calls interleaved (docs/BENCHMARKS.md, issue 23).

  python benchmarks/padim_head_ops.py [--positions 1024] [--dim 80] [--rounds 300]

quad: (x - mu) (P, 1, D) @ precision (P, D, D), * (x - mu), ReduceSum: today's graph.
chol: (x - mu) @ L, squared, ReduceSum, with precision = L L^T: the same bytes, no second operand.
fp16: quad with the precision stored as FP16 and a Cast to FP32 (kept_fp32_initializer: whether ONNX
Runtime folded the Cast back into an FP32 initializer at load, so that nothing is saved once running).
Prints p50 and the median per-round ratio to quad, and each head's largest relative error to numpy."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def head(kind: str, mean: np.ndarray, w: np.ndarray) -> bytes:
    p, d = mean.shape
    nodes = [helper.make_node("Sub", ["x", "mean"], ["d"])]
    inits = [numpy_helper.from_array(mean[:, None, :], "mean"), numpy_helper.from_array(np.array([-1], np.int64), "ax")]
    if kind == "fp16":
        inits.append(numpy_helper.from_array(w.astype(np.float16), "W16"))
        nodes.append(helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(w, "W"))
    other = "p" if kind == "chol" else "d"
    nodes += [
        helper.make_node("MatMul", ["d", "W"], ["p"]),
        helper.make_node("Mul", ["p", other], ["q"]),
        helper.make_node("ReduceSum", ["q", "ax"], ["y"], keepdims=0),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [p, 1, d])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [p, 1])
    m = helper.make_model(helper.make_graph(nodes, kind, [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=300)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    g = rng.standard_normal((a.positions, a.dim, a.dim)).astype(np.float32)
    prec = (g @ g.transpose(0, 2, 1) / a.dim + np.eye(a.dim)).astype(np.float32)  # (P, D, D) SPD
    mean = rng.standard_normal((a.positions, a.dim)).astype(np.float32)
    weights = {"quad": prec, "chol": np.linalg.cholesky(prec).astype(np.float32), "fp16": prec}
    x = rng.standard_normal((a.positions, 1, a.dim)).astype(np.float32)
    diff = x[:, 0] - mean
    ref = np.einsum("pd,pde,pe->p", diff, prec, diff)
    sessions, report = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, w in weights.items():
            o = ort.SessionOptions()
            o.log_severity_level, o.optimized_model_filepath = 3, str(Path(tmp) / f"{k}.onnx")
            sessions[k] = ort.InferenceSession(head(k, mean, w), o, providers=["CPUExecutionProvider"])
            kept = {i.name: i.data_type for i in onnx.load(o.optimized_model_filepath).graph.initializer}
            err = float(np.abs(sessions[k].run(None, {"x": x})[0][:, 0] - ref).max() / np.abs(ref).max())
            report[k] = {"rel_err": f"{err:.1e}", "kept_fp32_initializer": kept.get("W") == TensorProto.FLOAT}
    ms: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(a.rounds + 5):
        for k in list(sessions)[:: 1 if r % 2 else -1]:
            t = time.perf_counter()
            sessions[k].run(None, {"x": x})
            if r >= 5:
                ms[k].append((time.perf_counter() - t) * 1e3)
    for k, v in ms.items():
        ratio = float(np.median(np.array(v) / np.array(ms["quad"])))
        print(k, f"p50 {np.median(v):.2f} ms", f"ratio to quad {ratio:.3f}", report[k])


if __name__ == "__main__":
    main()
