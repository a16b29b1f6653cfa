"""The lower-precision gate checks every output of a bundle (compile/gate_outputs.py), not only score and
anomaly_map: a low-precision graph whose kind_map is wrong is refused, naming kind_map."""

from __future__ import annotations

import shutil

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


def offset_output(path, name: str, offset: float) -> None:
    """Rewrite the graph at PATH so that output NAME is its value + OFFSET, while every node that read it
    (a hybrid's anomaly_map = max of the head maps) still reads the value before the offset."""
    m = onnx.load(str(path))
    raw = f"{name}_raw"
    for node in m.graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
        node.input[:] = [raw if i == name else i for i in node.input]
    elem = next(o for o in m.graph.output if o.name == name).type.tensor_type.elem_type
    m.graph.initializer.append(helper.make_tensor(f"{name}_offset", elem, [], [offset]))
    m.graph.node.append(helper.make_node("Add", [raw, f"{name}_offset"], [name]))
    onnx.save(m, str(path))


@pytest.fixture(scope="module")
def unlabelled_hybrid(tiny_data, tmp_path_factory):
    """(run_dir, fp32 bundle) of a hybrid (segmenter + PatchCore head) trained on a plain folder of good
    images: no DATA/test, so the gate has no labels and bounds the head maps by their p99 error."""
    from conftest import SEG_CONFIG
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.train import train

    root = tmp_path_factory.mktemp("unlabelled")
    good = shutil.copytree(tiny_data / "brick" / "train" / "good", root / "good")
    pc = train(good, root / "pc", "patchcore", config={"input_size": [128, 128], "coreset_ratio": 0.02}, quiet=True)
    labels = tiny_data / "brick" / "labels"
    run = train(good, root / "run", "segmenter", config=SEG_CONFIG, quiet=True, labels=labels, with_anomaly=pc)
    return run, export_onnx(run, root / "bundle")


def test_head_maps_without_labels_are_bounded_by_their_p99_error(unlabelled_hybrid, tmp_path, monkeypatch):
    from edgesdk.compile.onnx import ExportOptions, export_onnx

    run, fp32 = unlabelled_hybrid
    thr = Bundle.open(fp32).threshold
    opts = ExportOptions(precision="fp16", target="tensorrt", max_drop=0.05)
    real = quant.convert_fp16
    shift = {"by": 0.0}

    def shifted(src, dst, keep=()):
        info = real(src, dst, keep)
        offset_output(dst, "patchcore_map", shift["by"])
        return info

    monkeypatch.setattr(quant, "convert_fp16", shifted)
    # Half the bound: the head map is off by 0.125 threshold units everywhere, and the gate passes it.
    shift["by"] = 0.5 * gate_outputs.MAX_MAP_ERR * thr
    rep = Bundle.open(export_onnx(run, tmp_path / "within", opts)).manifest.metrics["vs_float"]
    pc = rep["outputs"]["patchcore_map"]
    assert rep["passed"] and pc["passed"] and pc["gated_on"] == "p99_abs_err_thr_units" and "image_auroc" not in pc
    assert 0.1 < pc["p99_abs_err_thr_units"] < gate_outputs.MAX_MAP_ERR
    assert rep["outputs"]["segmenter_map"]["passed"]
    # Twice the bound: refused, naming the output and its error; nothing is written.
    shift["by"] = 2 * gate_outputs.MAX_MAP_ERR * thr
    with pytest.raises(gate.GateError, match=r"patchcore_map \(p99_abs_err_thr_units: p99_abs_err_thr_units 0\.[45]"):
        export_onnx(run, tmp_path / "never", opts)
    assert not (tmp_path / "never").exists()
