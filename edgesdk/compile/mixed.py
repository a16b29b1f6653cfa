"""Mixed INT8/FP16 graphs for TensorRT: the convolutions that cannot stay INT8 run in FP16, not FP32.

A strongly typed TensorRT network takes each layer's precision from its tensors' types, so a fallback
convolution gets FP16 weights and bias and an FP16 input, cast at the island's boundary:

    x (fp32, or an INT8 DQ output) -> Cast(fp16) -> Conv(fp16 W, b) -> Cast(fp32) -> y

Two fallback convolutions in a row share the FP16 tensor between them (no Cast pair). ReLU6, residual
Adds and the head stay FP32 (TensorRT fuses the Casts into the neighbouring layers).

ONNX Runtime runs the same graph on a CPU for the gate: where its CPU kernels lack an FP16 Conv it
inserts Casts and computes in FP32, so the gate measures FP16 storage (inputs, weights and outputs
rounded to FP16) with FP32 accumulation; TensorRT's FP16 kernels may also accumulate in FP16."""

from __future__ import annotations

import numpy as np

FP16_MAX = 65504.0


def convs_to_fp16(model, names: set[str]) -> int:
    """Turn the Conv nodes NAMES of MODEL (an ONNX ModelProto, changed in place) into FP16 islands;
    returns how many were converted."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    made: dict[str, str] = {}  # float initializer -> its fp16 copy
    half: dict[str, str] = {}  # fp32 tensor -> an fp16 tensor with the same values
    nodes, n = [], 0

    def fp16_init(name: str) -> str:
        if name not in made:
            a = numpy_helper.to_array(inits[name]).astype(np.float32)
            a = np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)
            made[name] = name + "_fp16"
            model.graph.initializer.append(numpy_helper.from_array(a, made[name]))
        return made[name]

    for node in model.graph.node:
        w = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else ""
        if node.name not in names or w not in inits or inits[w].data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in half:
            half[x] = x + "_fp16"
            nodes.append(helper.make_node("Cast", [x], [half[x]], name=node.name + "_in_fp16", to=TensorProto.FLOAT16))
        node.input[0] = half[x]
        node.input[1] = fp16_init(w)
        if len(node.input) > 2 and node.input[2]:
            node.input[2] = fp16_init(node.input[2])
        y = node.output[0]
        node.output[0] = y + "_fp16"
        half[y] = node.output[0]
        nodes.append(node)
        nodes.append(
            helper.make_node("Cast", [node.output[0]], [y], name=node.name + "_out_fp32", to=TensorProto.FLOAT)
        )
        n += 1
    # A Cast to fp16 of a tensor that an island's output Cast made in fp32 reads the fp16 tensor itself.
    out_cast = {nd.output[0]: nd.input[0] for nd in nodes if nd.op_type == "Cast" and nd.name.endswith("_out_fp32")}
    final = []
    for nd in nodes:
        if nd.op_type == "Cast" and nd.name.endswith("_in_fp16") and nd.input[0] in out_cast:
            src, dst = out_cast[nd.input[0]], nd.output[0]
            for other in nodes:
                for k, i in enumerate(other.input):
                    if i == dst:
                        other.input[k] = src
            continue
        final.append(nd)
    del model.graph.node[:]
    model.graph.node.extend(final)
    used = {i for nd in final for i in nd.input}
    unused = [i for i in model.graph.initializer if i.name not in used]
    for i in unused:
        model.graph.initializer.remove(i)
    return n


def conv_inputs_only(model, convs: set[str]) -> list[str]:
    """Remove from MODEL (changed in place) each activation Q/DQ pair whose output no convolution of CONVS
    reads; their consumers read the float tensor again. Returns the tensors freed, in graph order.

    ONNX Runtime's quantizer also puts a pair on every quantized convolution's output when a Clip (ReLU6)
    or an Add follows: a second rounding, on a symmetric grid, of a pre-activation tensor that the next
    convolution's input pair rounds again. TensorRT needs Q/DQ only at a quantized layer's inputs (it
    fuses the next layer's Quantize into the producing convolution, ReLU6 and residual Add included), so
    those pairs only add error: PaDiM's Mahalanobis head amplifies it in its low-variance directions."""
    inits = {i.name for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    drop, freed = set(), []
    for dq in model.graph.node:
        q = produced.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits or len(readers[q.output[0]]) != 1:
            continue
        if dq.output[0] in outputs or any(r.name in convs for r in readers.get(dq.output[0], [])):
            continue
        for r in readers.get(dq.output[0], []):
            r.input[:] = [q.input[0] if i == dq.output[0] else i for i in r.input]
        drop |= {id(q), id(dq)}
        freed.append(q.input[0])
    kept = [n for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    for i in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(i)
    return freed


def conv_precisions(model) -> dict[str, str]:
    """{feature conv: "int8" | "fp16" | "fp32"} from what the graph carries: an INT8 conv reads a
    DequantizeLinear'd weight, an FP16 conv an FP16 initializer."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    kind = {TensorProto.FLOAT16: "fp16", TensorProto.FLOAT: "fp32"}
    out = {}
    for n in model.graph.node:
        w = n.input[1] if n.op_type == "Conv" and len(n.input) > 1 else ""
        if w in dq:
            out[n.name] = "int8"
        elif w in inits and list(inits[w].dims[:2]) != [1, 1] and inits[w].data_type in kind:
            out[n.name] = kind[inits[w].data_type]  # not the (1 -> 1 channel) blur: quant.feature_convs' rule
    return out


def counts(model) -> dict[str, int]:
    """{"int8": n, "fp16": n, "fp32": n} feature convolutions of MODEL."""
    p = conv_precisions(model)
    return {k: sum(1 for v in p.values() if v == k) for k in ("int8", "fp16", "fp32")}
