"""PaDiM's distance head in INT8 for `--precision int8 --target cpu`.

PaDiM's head multiplies each position's centred feature by its own matrix: MatMul(a (P, B, K),
W (P, K, N)) with W the inverse covariances (P, D, D), or a low-rank head's basis (P, D, k). At
P = 1024, D = 80 that is 26 MB of float32 weights, the bulk of the model and of its resident memory.
Here W is stored int8 (a quarter of it) and multiplied in integers:

  W  -> Wq (P, K, N) int8, symmetric, one scale per output column of each position: sw (P, 1, N)
  a  -> aq (P, B, K) uint8 = round(a / sa) + 128, one scale per row: sa = max|a| / 127 (P, B, 1)
  y  =  float(MatMulInteger(aq, Wq, zero point 128)) * sw * sa  ~ a @ W   (P, B, N)

Activations are uint8 because ONNX Runtime's x86 integer GEMM runs U8S8; its S8S8 path is far
slower on batched matrices. The rows' scales are taken per frame (dynamic), so no calibration range
can clip a far-off feature: an anomaly's distance stays as large as it is. The accuracy gate
measures the whole graph as for the convolutions (compile.gate); when its first attempt fails, the
next keeps this head float.

Only a MatMul whose second input is a 3-D float32 initializer (one matrix per position) is taken:
PatchCore's nearest-neighbour MatMul (a 2-D bank) and every other op stay as they are."""

from __future__ import annotations

import numpy as np

QMAX = 127  # symmetric int8 range, both sides (the uint8 rows are offset by 128)
ZERO = 128


def batched_weights(model) -> list:
    """MatMul nodes of MODEL whose B is a 3-D float32 initializer (P, K, N) and A an activation."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[0] not in inits
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 3
        and inits[n.input[1]].data_type == TensorProto.FLOAT
    ]


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W (P, K, N) float -> (Wq (P, K, N) int8, scale (P, 1, N) float32), symmetric per column.
    A column of zeros gets scale 1 (its values stay 0). Non-finite weights are refused."""
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("a head matrix holds non-finite values; it cannot be quantized")
    scale = np.abs(w).max(axis=1, keepdims=True) / QMAX
    scale[scale == 0] = 1.0
    wq = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return wq, scale.astype(np.float32)


def to_int8(model) -> list[dict]:
    """Rewrite each batched-weight MatMul of MODEL (an ONNX ModelProto, changed in place) as the
    integer product above; the MatMul's output keeps its name, so every reader is unchanged. Returns
    one record per rewritten MatMul: its weight, shape and the weights' largest relative error."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.compile.opset import default_opset

    targets = batched_weights(model)
    if not targets:
        return []
    g = model.graph
    pre = _free_prefix(model)
    opset = default_opset(model)
    inits = {i.name: i for i in g.initializer}
    shared: dict[str, np.ndarray] = {
        **({"axis": np.array([-1], np.int64)} if opset >= 18 else {}),
        "inv_qmax": np.array(1.0 / QMAX, np.float32),
        # A row of zeros: its scale would be 0 and 0 / 0 NaN; with this floor it quantizes to 0.
        "tiny": np.array(1e-30, np.float32),
        "offset": np.array(float(ZERO), np.float32),
        "zero": np.array(ZERO, np.uint8),
    }
    g.initializer.extend(numpy_helper.from_array(v, f"{pre}_{k}") for k, v in shared.items())
    records, done, rewrites = [], set(), {}
    for k, node in enumerate(targets):
        a, w, y = node.input[0], node.input[1], node.output[0]
        t, wq_name, sw_name = f"{pre}_{k}", f"{pre}_{w}_int8", f"{pre}_{w}_scale"
        if w not in done:  # one int8 copy of a weight two MatMuls share
            wf = numpy_helper.to_array(inits[w])
            wq, sw = quantize_weights(wf)
            err = float(np.abs(wq * sw.astype(np.float64) - wf).max() / max(float(np.abs(wf).max()), 1e-30))
            g.initializer.extend([numpy_helper.from_array(wq, wq_name), numpy_helper.from_array(sw, sw_name)])
            records.append({"matmul": node.name or y, "weight": w, "shape": list(wf.shape), "max_rel_err": err})
            done.add(w)
        rewrites[y] = [  # keyed by the output: one producer per tensor
            helper.make_node("Abs", [a], [t + "_abs"]),
            # ReduceMax takes its axes as an input from opset 18, as an attribute before (--opset 17).
            helper.make_node("ReduceMax", [t + "_abs", f"{pre}_axis"], [t + "_amax"], keepdims=1)
            if opset >= 18
            else helper.make_node("ReduceMax", [t + "_abs"], [t + "_amax"], keepdims=1, axes=[-1]),
            helper.make_node("Mul", [t + "_amax", f"{pre}_inv_qmax"], [t + "_s0"]),
            helper.make_node("Max", [t + "_s0", f"{pre}_tiny"], [t + "_sa"]),
            helper.make_node("Div", [a, t + "_sa"], [t + "_div"]),
            helper.make_node("Round", [t + "_div"], [t + "_round"]),
            helper.make_node("Add", [t + "_round", f"{pre}_offset"], [t + "_shift"]),
            helper.make_node("Cast", [t + "_shift"], [t + "_aq"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [t + "_aq", wq_name, f"{pre}_zero"], [t + "_acc"], name=t),
            helper.make_node("Cast", [t + "_acc"], [t + "_accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [t + "_accf", sw_name], [t + "_cols"]),
            helper.make_node("Mul", [t + "_cols", t + "_sa"], [y]),
        ]
    # Each rewritten MatMul's nodes take its place: the graph stays in topological order.
    nodes = [m for n in g.node for m in (rewrites.get(n.output[0], [n]) if n.op_type == "MatMul" else [n])]
    del g.node[:]
    g.node.extend(nodes)
    readers = {i for n in g.node for i in n.input}
    unread = done - readers  # the float weights nobody reads any more
    for name in unread:
        g.initializer.remove(inits[name])
    kept = [i for i in g.input if i.name not in unread]  # older graphs list initializers as inputs too
    del g.input[:]
    g.input.extend(kept)
    return records


def _free_prefix(model) -> str:
    """A name prefix no tensor, initializer or node of MODEL starts with, for what to_int8 adds."""
    g = model.graph
    names = {i.name for i in g.initializer} | {v.name for v in list(g.input) + list(g.output)}
    names |= {x for n in g.node for x in [n.name, *n.input, *n.output]}
    k = 0
    while any(x.startswith(f"qhead{k}_") for x in names):
        k += 1
    return f"qhead{k}"
