"""TensorRT INT8 that passes the gate: per-tensor activation ranges chosen by their effect on the output
(compile.ranges), and FP16 (not FP32) islands for the convolutions that cannot stay INT8 (compile.mixed),
built into a real strongly typed TensorRT for RTX engine."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesdk.bundle import Bundle
from edgesdk.compile import gate, mixed, quant, ranges
from edgesdk.compile.onnx import ExportOptions, export_onnx


def _outlier_graphs(tmp_path):
    """float: x -> Identity -> a -> Conv(1x1, 4 -> 4) -> y; qdq: the same with a Q/DQ pair on `a` at
    its min-max scale. FRAMES (16, 4, 8, 8) ~ N(0, 1), one glint of 200 in frame 3 only."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w")
    frames = rng.normal(size=(16, 4, 8, 8)).astype(np.float32)
    frames[3, 0, 0, 0] = 200.0
    s = numpy_helper.from_array(np.array(200.0 / 127, np.float32), "a_scale")
    z = numpy_helper.from_array(np.array(0, np.int8), "a_zero_point")
    io = (
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    ident = helper.make_node("Identity", ["x"], ["a"])
    f = helper.make_graph([ident, helper.make_node("Conv", ["a", "w"], ["y"])], "f", *io, [w])
    q = helper.make_graph(
        [
            ident,
            helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero_point"], ["aq"]),
            helper.make_node("DequantizeLinear", ["aq", "a_scale", "a_zero_point"], ["ad"]),
            helper.make_node("Conv", ["ad", "w"], ["y"]),
        ],
        "q",
        *io,
        [w, s, z],
    )
    for name, g in (("f", f), ("q", q)):
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / f"{name}.onnx")
    return tmp_path / "f.onnx", tmp_path / "q.onnx", frames


def test_range_search_clips_a_glint_that_min_max_would_spend_the_grid_on(tmp_path):
    """Min-max spends int8's 127 steps on one glint (step 1.57: every N(0, 1) value rounds to 0 or +-1.57);
    the search measures the output on frames without it and takes a clip far below."""
    pre, qdq, frames = _outlier_graphs(tmp_path)
    cands = ranges.candidates(np.abs(frames).ravel(), 200.0)
    # The glint dominates the squared error of the calibration samples themselves, so per-tensor MSE keeps
    # it; the entropy clip does not. Only the output on other frames tells which one the model needs.
    assert cands["minmax"] == 200.0 and cands["mse"] > 150 and cands["entropy"] < 20
    scales, rec = ranges.search(pre, qdq, frames, "x")
    assert set(scales) == {"a"} and scales["a"] == pytest.approx(cands["entropy"] / 127)
    assert rec["output_rel_mse_chosen"] < 0.05 * rec["output_rel_mse_minmax"] and rec["methods"]["entropy"] == 1
    # The choice lands in the graph's Q/DQ scale (shared by the pair), and the graph then runs better.
    m = onnx.load(str(qdq))
    assert ranges.set_scales(m, scales) == 1
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert float(inits["a_scale"]) == pytest.approx(scales["a"])


def test_tensorrt_int8_falls_back_to_fp16_islands_and_builds_a_strongly_typed_engine(run_dir, tmp_path, monkeypatch):
    """The first (all-INT8) attempt is made to fail: the fallback keeps the most sensitive convolutions
    in FP16 (FP16 weights, Casts at the island's edges), not FP32; the gate report and the manifest
    count INT8/FP16/FP32 convolutions; ONNX Runtime runs the mixed graph; TensorRT builds it."""
    real, calls = gate.measure, []

    def first_fails(*a, **k):
        r, thr = real(*a, **k)
        calls.append(r["passed"])
        return ({**r, "passed": False} if len(calls) == 1 else r), thr

    monkeypatch.setattr(gate, "measure", first_fails)
    out = export_onnx(
        run_dir, tmp_path / "mixed", ExportOptions(precision="int8", target="tensorrt", n_calib=8, max_drop=0.2)
    )
    b = Bundle.open(out)
    cal = b.manifest.calibration
    assert cal["method"] == "search" and cal["decisions"]["range_search"]["n_frames"] == 8
    # PaDiM's head was rewritten for the INT8 features' noise (compile.noisehead), and the manifest says so.
    assert cal["decisions"]["noise_aware_head"]["applied"] and cal["decisions"]["qdq_removed_not_conv_inputs"] > 0
    first, second = cal["attempts"][:2]
    assert (first["int8_convs"], first["fp16_convs"], first["fp32_convs"]) == (33, 0, 0)
    # 5 % of 33 convolutions, the worst by SQNR, in FP16; none in FP32.
    assert (second["int8_convs"], second["fp16_convs"], second["fp32_convs"]) == (31, 2, 0) and second["passed"]
    counts = b.manifest.metrics["vs_float"]["conv_counts"]
    assert counts == {"int8": 31, "fp16": 2, "fp32": 0} and cal["decisions"]["conv_counts"] == counts
    worst = [c for c, _ in cal["decisions"]["sensitivity_sqnr_db"][:2]]
    assert sorted(cal["decisions"]["fp16_convs"]) == sorted(worst)
    model = onnx.load(str(b.model_path))
    assert mixed.counts(model) == counts and quant.check_trt_qdq_rules(b.model_path) == []
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for c in worst:
        assert inits[nodes[c].input[1]].data_type == TensorProto.FLOAT16
        assert nodes[c + "_out_fp32"].op_type == "Cast" and nodes[c + "_out_fp32"].input[0] == nodes[c].output[0]
    from edgesdk.measure.compare import score_onnx

    z, _ = score_onnx(b.model_path, b.parity_frames()[:2])
    assert np.all(np.isfinite(z))
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile
    from edgesdk.spec import BuildConfig

    r = build_engine(b, load_profile("rtx"), BuildConfig(batch=(1, 1, 1)))
    assert r.sidecar.strongly_typed and r.sidecar.precision == "int8" and r.plan.stat().st_size > 100_000
    assert r.sidecar.tensorrt_module == "tensorrt_rtx" == trt.__name__


def test_search_is_for_tensorrt_and_the_default_there():
    assert quant.QuantOptions(target="tensorrt").method == "search"
    assert quant.QuantOptions().method == "minmax" and quant.QuantOptions(target="tensorrt", precision="fp16").method
    with pytest.raises(ValueError, match="calib_method search: for --target tensorrt"):
        quant.QuantOptions(method="search")
