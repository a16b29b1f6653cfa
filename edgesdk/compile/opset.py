"""Lower an opset-18 ONNX graph to opset 17, the newest TensorRT 8.5 (JetPack 5: Xavier NX/AGX) parses.

torch's dynamo exporter writes opset 18 and cannot convert Pad to 17; onnx's version converter has no
Pad adapter either, and the TorchScript exporter cannot export STFPM's adaptive pooling. Opset 18
changed few ops, and for each the opset-17 form is the same op with an input moved to an attribute
or a new input/attribute left out: that rewrite is done here, node by node, and anything it cannot
express in opset 17 (a new op, a non-constant axes input, a new attribute set away from its default)
is refused by name. The caller checks the result with onnx.checker and runs the parity gate on it."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgesdk.errors import EdgesdkError

SOURCE, TARGET = 18, 17
# Opset 18 moved `axes` of these from an attribute to an optional second input.
AXES_TO_ATTRIBUTE = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)
# Opset 18 gave these a new optional input or attribute; without it they mean what they meant in 17.
SAME_WITHOUT_NEW = frozenset({"Pad", "Resize", "Split", "LpPool"})
# ScatterElements/ScatterND-18 only added reduction="max"/"min".
SCATTER = frozenset({"ScatterElements", "ScatterND"})


class OpsetError(EdgesdkError):
    pass


def default_opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Tensors known without running the graph: initializers and Constant nodes' values."""
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_int", "value_ints"):
                    out[n.output[0]] = np.asarray(helper.get_attribute_value(a), dtype=np.int64)
    return out


def _new_parts_unset(node: onnx.NodeProto, where: str) -> None:
    """NODE uses nothing its opset-17 schema lacks: extra inputs empty, new attributes at their default."""
    old, new = onnx.defs.get_schema(node.op_type, TARGET), onnx.defs.get_schema(node.op_type, SOURCE)
    extra = [name for name in node.input[old.max_input :] if name]
    if extra:
        raise OpsetError(f"{where}: {node.op_type} node {node.name!r} uses input {extra[0]!r}, new in opset 18")
    for a in node.attribute:
        if a.name in old.attributes:
            continue
        default = new.attributes[a.name].default_value if a.name in new.attributes else None
        value = helper.get_attribute_value(a)
        if default is None or not default.name or helper.get_attribute_value(default) != value:
            raise OpsetError(
                f"{where}: {node.op_type} node {node.name!r} sets {a.name}={value!r}, which opset 17 cannot express"
            )


def _lower_node(node: onnx.NodeProto, consts: dict[str, np.ndarray], where: str) -> onnx.NodeProto:
    op = node.op_type
    if op in AXES_TO_ATTRIBUTE:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        noop = attrs.pop("noop_with_empty_axes", 0)
        axes_name = node.input[1] if len(node.input) > 1 else ""
        if axes_name and axes_name not in consts:
            raise OpsetError(f"{where}: {op} node {node.name!r} takes axes from a computed tensor {axes_name!r}")
        axes = [int(v) for v in consts[axes_name].reshape(-1)] if axes_name else []
        if not axes and noop:  # reduce over nothing = identity; opset 17 has no way to say it
            raise OpsetError(f"{where}: {op} node {node.name!r} has noop_with_empty_axes=1 and no axes")
        if axes:
            attrs["axes"] = axes
        return helper.make_node(op, [node.input[0]], list(node.output), name=node.name, **attrs)
    if op in SAME_WITHOUT_NEW:
        _new_parts_unset(node, where)
        # Resize: the new attributes are at their defaults (checked), so dropping them changes nothing.
        old = onnx.defs.get_schema(op, TARGET).attributes
        lowered = onnx.NodeProto()
        lowered.CopyFrom(node)
        del lowered.input[onnx.defs.get_schema(op, TARGET).max_input :]
        keep = [a for a in node.attribute if a.name in old]
        del lowered.attribute[:]
        lowered.attribute.extend(keep)
        return lowered
    if op in SCATTER:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("reduction", b"none") in (b"max", b"min"):
            raise OpsetError(f"{where}: {op} node {node.name!r} reduces by {attrs['reduction']!r}, new in opset 18")
        return node
    raise OpsetError(f"{where}: {op} (node {node.name!r}) is new in opset 18 and has no opset-17 form")


def lower_to_17(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """A copy of MODEL (default domain opset 18) in opset 17; OpsetError naming WHERE and the node
    when a node cannot be expressed there. A model already at 17 comes back unchanged."""
    have = default_opset(model)
    if have == TARGET:
        return model
    if have != SOURCE:
        raise OpsetError(f"{where}: graph is opset {have}; only opset {SOURCE} graphs are lowered to {TARGET}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise OpsetError(f"{where}: graphs with subgraphs (If, Loop, Scan) are not lowered to opset {TARGET}")
    consts = _constants(graph)
    changed = []
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if onnx.defs.get_schema(node.op_type, SOURCE).since_version == SOURCE:
            changed.append((i, _lower_node(node, consts, where)))
    for i, node in changed:
        graph.node[i].CopyFrom(node)
    # Axes tensors that became attributes and that no other node reads go: no dead constants left behind.
    moved = {
        n
        for i, _ in changed
        for n in model.graph.node[i].input[1:2]
        if model.graph.node[i].op_type in AXES_TO_ATTRIBUTE
    }
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    dead = moved - used
    keep = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
    del graph.node[:]
    graph.node.extend(nodes)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = TARGET
    return out


def export_opset(opset: int, device: str = "") -> int:
    """The opset an export writes: OPSET, capped by DEVICE's profile (the newest opset its TensorRT
    parses; a CPU profile has no cap). Below 17 is refused: nothing lowers a graph further."""
    if device:
        from edgesdk.devices import load_profile

        cap = load_profile(device).max_onnx_opset
        opset = min(opset, cap) if cap else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < TARGET:
        where = f"device {device!r}: " if device else ""
        raise OpsetError(f"{where}opset {opset!r}: export writes opset {TARGET} or newer")
    return opset


def lower_file(path: str | os.PathLike, where: str) -> None:
    """Rewrite the opset-18 ONNX file PATH in opset 17, checked by onnx.checker (schemas and shapes)."""
    low = lower_to_17(onnx.load(str(path)), where)
    onnx.checker.check_model(low, full_check=True)
    onnx.save(low, str(path))
