"""The lower-precision gate checks every output of a bundle (compile/gate_outputs.py), not only score and
anomaly_map: a low-precision graph whose kind_map is wrong is refused, naming kind_map."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from edgesdk.bundle import Bundle
from edgesdk.compile import gate, gate_outputs, quant


def permute_kinds(path, n_kinds: int) -> None:
    """Rewrite the graph at PATH so that kind_map = (kind + 1) mod N_KINDS: every pixel's kind is another
    one, while score, anomaly_map and the graph's shapes stay as they were."""
    m = onnx.load(str(path))
    out = next(o for o in m.graph.output if o.name == "kind_map")
    for node in m.graph.node:
        node.output[:] = ["kind_map_raw" if o == "kind_map" else o for o in node.output]
    m.graph.initializer.extend(
        [
            helper.make_tensor("one_i64", onnx.TensorProto.INT64, [], [1]),
            helper.make_tensor("n_i64", onnx.TensorProto.INT64, [], [n_kinds]),
        ]
    )
    m.graph.node.extend(
        [
            helper.make_node("Add", ["kind_map_raw", "one_i64"], ["kind_map_plus"]),
            helper.make_node("Mod", ["kind_map_plus", "n_i64"], [out.name]),
        ]
    )
    onnx.save(m, str(path))


def test_fp16_bundle_with_a_permuted_kind_head_fails_the_gate_naming_kind_map(seg, tmp_path, monkeypatch):
    from edgesdk.compile.onnx import ExportOptions, export_onnx

    opts = ExportOptions(precision="fp16", target="tensorrt", max_drop=0.05)
    good = Bundle.open(export_onnx(seg[0], tmp_path / "fp16", opts))
    rep = good.manifest.metrics["vs_float"]
    kinds = rep["outputs"]["kind_map"]
    assert rep["passed"] and kinds["passed"] and kinds["n_pixels_both_flag"] > 0
    assert kinds["kind_agreement"] >= gate_outputs.MIN_KIND_AGREEMENT and kinds["flagged_by"] == "anomaly_map"
    assert good.manifest.calibration["attempts"][0]["kind_map"] == round(kinds["kind_agreement"], 4)

    real = quant.convert_fp16

    def broken(src, dst, keep=()):
        info = real(src, dst, keep)
        permute_kinds(dst, len(good.manifest.kinds))
        return info

    monkeypatch.setattr(quant, "convert_fp16", broken)
    with pytest.raises(gate.GateError, match=r"kind_map \(kind agreement 0\.0"):
        export_onnx(seg[0], tmp_path / "never", opts)
    assert not (tmp_path / "never").exists()
