"""PaDiM's head in INT8 on a CPU (compile.qhead): the per-position matrices are stored int8 and
multiplied in integers by ONNX Runtime; the rows keep their own scale per frame, so a far-off
feature is never clipped; the gate measures it and falls back to the float head when it must."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgesdk.bundle import Bundle
from edgesdk.compile import qhead, quant
from edgesdk.compile.onnx import ExportOptions, export_onnx
from edgesdk.measure.compare import score_onnx


def _graph(w: np.ndarray, bank: np.ndarray | None = None):
    """a (P, B, K) @ W (P, K, N) -> y; with BANK also a (P, B, K) @ bank (K, M) -> z (PatchCore's kind)."""
    p, k, n = w.shape
    nodes = [helper.make_node("MatMul", ["a", "W"], ["y"], name="head")]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [p, "b", n])]
    if bank is not None:
        nodes.append(helper.make_node("MatMul", ["a", "bank"], ["z"], name="nn"))
        inits.append(numpy_helper.from_array(bank.astype(np.float32), "bank"))
        outs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [p, "b", bank.shape[1]]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [p, "b", k])], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, a: np.ndarray) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a.astype(np.float32)})


def _bound(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Largest error of the integer product per output: half a step of each side, summed over K.
    |a_k| <= amax_row, |w_kn| <= wmax_col; each rounding moves a value by at most half its step."""
    sa = np.abs(a).max(-1, keepdims=True) / 127  # (P, B, 1)
    sw = np.abs(w).max(1, keepdims=True) / 127  # (P, 1, N)
    amax, wmax, k = sa * 127, sw * 127, a.shape[-1]
    return k * (sa / 2 * wmax + sw / 2 * amax + sa * sw / 4) + 1e-5 * (1 + np.abs(np.matmul(np.abs(a), np.abs(w))))


def test_the_integer_head_matches_float_within_its_rounding_and_leaves_other_matmuls():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 12, 12))
    w = w @ w.transpose(0, 2, 1) / 12 + np.eye(12)  # SPD, like inverse covariances
    bank = rng.standard_normal((12, 7))
    a = rng.standard_normal((16, 3, 12))
    a[3, 1] = 0.0  # a row of zeros: scale floor, exact zeros out
    a[5, 0] *= 1e4  # a far-off feature (an anomaly) keeps its size: no calibrated range clips it
    model = _graph(w, bank)
    y_float, z_float = _run(model, a)
    records = qhead.to_int8(model)
    assert [r["weight"] for r in records] == ["W"] and records[0]["shape"] == [16, 12, 12]
    assert 0 < records[0]["max_rel_err"] <= 0.5 / 127 + 1e-6
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("MatMul") == 1  # the 2-D bank stays float
    names = {i.name: i for i in model.graph.initializer}
    assert "W" not in names and names["qhead0_W_int8"].data_type == TensorProto.INT8 and "bank" in names
    y, z = _run(model, a)
    np.testing.assert_array_equal(z, z_float)
    assert np.all(np.abs(y - y_float) <= _bound(a, w))
    np.testing.assert_array_equal(y[3, 1], 0.0)
    # Its squared distance a^T W a: as large as in float (a calibrated activation range would clip it).
    d, d_float = (y[5, 0] * a[5, 0]).sum(), (y_float[5, 0] * a[5, 0]).sum()
    assert d_float > 1e8 and abs(d - d_float) < 0.02 * d_float


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    p=st.integers(1, 6),
    b=st.integers(1, 3),
    k=st.integers(1, 20),
    n=st.integers(1, 20),
    wexp=st.integers(-6, 6),
    aexp=st.integers(-6, 6),
)
def test_the_rounding_bound_holds_for_any_shapes_and_scales(seed, p, b, k, n, wexp, aexp):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((p, k, n)) * 10.0**wexp
    w[rng.random(w.shape) < 0.2] = 0.0  # whole zero columns happen too
    a = rng.standard_normal((p, b, k)) * 10.0**aexp
    model = _graph(w)
    (y_float,) = _run(model, a)
    qhead.to_int8(model)
    (y,) = _run(model, a)
    assert np.all(np.isfinite(y)) and np.all(np.abs(y - y_float) <= _bound(a, w))


def test_rounding_is_to_nearest_not_toward_zero():
    """Positive activations and weights: truncation would pull every product down by about half a step;
    rounding to nearest leaves the mean error near 0."""
    rng = np.random.default_rng(1)
    w, a = rng.uniform(0.1, 1, (64, 16, 16)), rng.uniform(0.1, 1, (64, 4, 16))
    model = _graph(w)
    (y_float,) = _run(model, a)
    qhead.to_int8(model)
    (y,) = _run(model, a)
    half_step_bias = 16 * 0.5 * (a.max(-1, keepdims=True) / 127) * w.mean()  # (P, B, 1): truncation's pull
    assert abs((y - y_float).mean()) < 0.1 * half_step_bias.mean()


def test_added_names_never_collide_and_old_style_inputs_go_with_the_weight():
    """A graph that already holds the names to_int8 would pick, and lists its initializers as graph
    inputs (older IR): the rewrite takes fresh names, runs twice, and drops W from the inputs too."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 6, 6))
    model = _graph(w)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0.0], np.float32), "qhead0_offset"),
            numpy_helper.from_array(np.ones((1,), np.float32), "qhead0_W_int8"),
        ]
    )
    model.graph.input.extend(
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in model.graph.initializer
    )
    a = rng.standard_normal((4, 2, 6))
    (y_float,) = _run(model, a)
    assert len(qhead.to_int8(model)) == 1
    assert "W" not in {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    (y,) = _run(model, a)
    assert np.all(np.abs(y - y_float) <= _bound(a, w))
    # A second head added later gets its own names again.
    model.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), "W2"))
    model.graph.node.append(helper.make_node("MatMul", ["a", "W2"], ["y2"], name="head2"))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [4, "b", 6]))
    assert [r["weight"] for r in qhead.to_int8(model)] == ["W2"]
    y, y2 = _run(model, a)
    np.testing.assert_array_equal(y, y2)


def test_non_finite_head_weights_are_refused():
    w = np.ones((2, 3, 3))
    w[1, 2, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        qhead.to_int8(_graph(w))


def test_padim_cpu_int8_bundle_stores_its_head_int8(run_dir, bundle, tmp_path):
    out = export_onnx(
        run_dir, tmp_path / "int8", ExportOptions(precision="int8", target="cpu", n_calib=16, max_drop=0.05)
    )
    b, f = Bundle.open(out), Bundle.open(bundle)
    cal = b.manifest.calibration
    (rec,) = cal["decisions"]["int8_head"]
    assert cal["attempts"][-1]["passed"] and cal["attempts"][-1]["head"] == "int8"
    assert "head matrices" in cal["decisions"]["rule"]
    model = onnx.load(str(b.model_path))
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 1
    assert qhead.batched_weights(model) == []  # no 3-D float weight left
    float_head = 4 * int(np.prod(rec["shape"]))
    assert b.model_path.stat().st_size < f.model_path.stat().st_size - 0.7 * float_head
    # The device runtime runs it (how close it stays to float is the gate's to say, passed above).
    assert np.all(np.isfinite(score_onnx(b.model_path, f.parity_frames())[0]))


def test_the_gate_keeps_the_head_float_when_the_int8_head_fails(run_dir, tmp_path, monkeypatch):
    """A head quantizer that flips its weights' sign makes the INT8-head attempt fail; the next keeps the
    head float at the same convolutions (keeping convolutions FP32 could not undo the head's error),
    passes, and the bundle says so."""
    real = qhead.quantize_weights
    monkeypatch.setattr(qhead, "quantize_weights", lambda w: (lambda q, s: (-q, s))(*real(w)))
    out = export_onnx(run_dir, tmp_path / "b", ExportOptions(precision="int8", target="cpu", n_calib=8, max_drop=0.05))
    cal = Bundle.open(out).manifest.calibration
    att = cal["attempts"]
    assert [(a["head"], a["passed"]) for a in att] == [("int8", False), ("fp32", True)]
    assert att[0]["fp32_convs"] == att[1]["fp32_convs"] == len(cal["decisions"]["fp32_by_rule"])
    assert "int8_head" not in cal["decisions"] and "distance head" in cal["decisions"]["rule"]
    model = onnx.load(str(out / "model.onnx"))
    assert all(n.op_type != "MatMulInteger" for n in model.graph.node)
    assert len(qhead.batched_weights(model)) == 1


def test_tensorrt_int8_keeps_the_float_head(bundle, tmp_path):
    calib = np.random.default_rng(0).integers(0, 255, (8, 128, 128, 3), dtype=np.uint8)
    q = tmp_path / "q.onnx"
    info = quant.quantize_int8(
        Bundle.open(bundle).model_path,
        q,
        calib,
        "image",
        quant.QuantOptions(target="tensorrt", method="minmax", n_calib=8),
    )
    assert "int8_head" not in info and len(qhead.batched_weights(onnx.load(str(q)))) == 1
