"""Where grass PaDiM's TensorRT INT8 loss came from, and what removes it: Q/DQ pairs on the convolutions'
outputs (ONNX Runtime's quantizer puts them before every ReLU6 and residual Add), which round each
pre-activation a second time on a symmetric grid. TensorRT needs Q/DQ only at quantized layers' inputs."""

import numpy as np
import onnx
import pytest

from edgesdk.compile import gate_data, mixed, quant, ranges
from edgesdk.train import load_run


@pytest.fixture(scope="module")
def calib(run_dir):
    _, meta = load_run(run_dir)
    return gate_data.calibration_frames(quant.QuantOptions(target="tensorrt", n_calib=8), meta, (128, 128))[0]


def _map_error(fp32, qdq, frames) -> float:
    """Relative MSE of the Q/DQ graph's anomaly map against the float graph's on FRAMES."""
    got = [ranges.tap_session(onnx.load(str(p)), []).run(["anomaly_map"], {"image": frames})[0] for p in (fp32, qdq)]
    return float(np.mean((got[1] - got[0]) ** 2) / np.var(got[0]))


def test_tensorrt_qdq_sits_only_at_quantized_convolution_inputs(bundle, calib, tmp_path, monkeypatch):
    """Every activation Q/DQ pair of a TensorRT INT8 graph feeds a quantized convolution; none is left on
    a convolution's output before its ReLU6 or residual Add. All 33 convolutions stay INT8, the graph keeps
    TensorRT's Q/DQ rules, and its anomaly map is closer to the float graph's than with those pairs kept."""
    fp32 = bundle / "model.onnx"
    opts = quant.QuantOptions(target="tensorrt", method="minmax", n_calib=8)
    info = quant.quantize_int8(fp32, tmp_path / "q.onnx", calib, "image", opts)
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name for i in q.graph.initializer}
    readers: dict[str, list[str]] = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    # An activation pair's DequantizeLinear reads a QuantizeLinear's output; a weight's reads an initializer.
    pairs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    assert pairs and all("Conv" in readers[n.output[0]] for n in pairs), [
        (n.output[0], readers[n.output[0]]) for n in pairs if "Conv" not in readers[n.output[0]]
    ]
    assert info["qdq_removed_not_conv_inputs"] > 0 and info["conv_counts"] == {"int8": 33, "fp16": 0, "fp32": 0}
    assert quant.check_trt_qdq_rules(tmp_path / "q.onnx") == []
    monkeypatch.setattr(mixed, "conv_inputs_only", lambda model, convs: [])
    quant.quantize_int8(fp32, tmp_path / "kept.onnx", calib, "image", opts)
    assert _map_error(fp32, tmp_path / "q.onnx", calib) < _map_error(fp32, tmp_path / "kept.onnx", calib)


def test_noise_aware_padim_head_is_mahalanobis_with_the_int8_noise_covariance(run_dir, bundle, calib, tmp_path):
    """After quantizing, the PaDiM head scores the INT8 features against mean + E[delta] and
    Sigma + Cov(delta) (delta = int8 - float features on the calibration frames; Sigma from the run's own
    statistics and ridge), and the scores are normalized again on the held-out good frames (z units)."""
    from edgesdk.compile import noisehead
    from edgesdk.measure.compare import score_onnx

    net, meta = load_run(run_dir)
    fp32, q = bundle / "model.onnx", tmp_path / "q.onnx"
    quant.quantize_int8(fp32, q, calib, "image", quant.QuantOptions(target="tensorrt", method="minmax", n_calib=8))
    head = noisehead.find_padim_head(onnx.load(str(q)))
    assert head is not None
    f = noisehead.tap(onnx.load(str(fp32)), noisehead.find_padim_head(onnx.load(str(fp32))).features, calib, "image")
    g = noisehead.tap(onnx.load(str(q)), head.features, calib, "image")  # (P, N, D), before the rewrite
    hold = gate_data.holdout_frames(meta, run_dir, (128, 128))
    rec = noisehead.correct(fp32, q, calib, hold, "image")
    assert rec is not None and rec["applied"] and rec["n_frames"] == len(calib) and rec["noise_trace_share"] > 0
    # numpy: the run's Gaussians (adapt_state.npz + ridge, as zoo/padim.py fit) plus the noise.
    with np.load(run_dir / "adapt_state.npz") as z:
        n, s1, s2 = int(z["n"]), z["sum"], z["sum_outer"]
    mean = s1 / n
    sigma = (s2 - n * mean[:, :, None] * mean[:, None, :]) / (n - 1) + net.cfg.ridge * np.eye(mean.shape[1])
    delta = g.astype(np.float64) - f
    offset = delta.mean(1)
    r = (delta - offset[:, None]).reshape(-1, delta.shape[2])
    cov = r.T @ r / (len(r) - delta.shape[0])
    want_mean, want_prec = mean + offset, np.linalg.inv(sigma + cov)
    model = onnx.load(str(q))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(inits[head.mean].reshape(want_mean.shape), want_mean, atol=1e-4)
    # The graph's head distances of the INT8 features equal numpy's Mahalanobis distances.
    sqrt = next(nd.output[0] for nd in model.graph.node if nd.op_type == "Sqrt")
    feats, dist = ranges.tap_session(model, [head.features, sqrt]).run([head.features, sqrt], {"image": calib[:2]})
    e = feats.astype(np.float64) - want_mean[:, None]  # (P, 2, D)
    want = np.sqrt(np.maximum(np.einsum("pbd,pde,pbe->pb", e, want_prec, e), 0))
    np.testing.assert_allclose(dist.reshape(want.shape), want, rtol=1e-3, atol=1e-3)
    # Without the noise terms the distances differ: the rewrite is not a no-op.
    e0 = feats.astype(np.float64) - mean[:, None]
    plain = np.sqrt(np.maximum(np.einsum("pbd,pde,pbe->pb", e0, np.linalg.inv(sigma), e0), 0))
    assert np.abs(plain - want).max() > 100 * np.abs(dist.reshape(want.shape) - want).max()
    z, _ = score_onnx(q, hold)
    assert abs(z.mean()) < 1e-3 and abs(z.std(ddof=1) - 1) < 1e-3
    assert rec["normalization"]["n_holdout"] == len(hold)


@pytest.fixture(scope="module")
def stfpm(tiny_data, tmp_path_factory):
    """(run_dir, bundle_dir) of the student-teacher at test size (conftest's ZOO_CONFIGS)."""
    from conftest import ZOO_CONFIGS
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.train import train

    root = tmp_path_factory.mktemp("st")
    run = train(tiny_data / "brick", root / "run", "stfpm", config=ZOO_CONFIGS["stfpm"], quiet=True)
    return run, export_onnx(run, root / "bundle")


def test_noise_aware_student_teacher_head_takes_the_int8_channel_offset_out_of_t_mean(stfpm, calib, tmp_path):
    """After quantizing, the student-teacher's t_mean becomes t_mean + off_c / t_inv_std with
    off_c = E[(t_q - s_q) - (t - s)] over the calibration frames and positions, so the INT8 difference
    t - s loses its channel offset; the export records it in the manifest and scores stay in z units."""
    from edgesdk.compile import noisehead, noisehead_st
    from edgesdk.measure.compare import score_onnx

    run, bundle = stfpm
    _, meta = load_run(run)
    fp32, q = bundle / "model.onnx", tmp_path / "q.onnx"
    quant.quantize_int8(fp32, q, calib, "image", quant.QuantOptions(target="tensorrt", method="minmax", n_calib=8))
    head = noisehead_st.find_st_head(onnx.load(str(q)))
    assert head is not None and noisehead.find_padim_head(onnx.load(str(q))) is None
    before = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(q)).graph.initializer}
    f = noisehead_st.tap(onnx.load(str(fp32)), head.diff, calib, "image")  # (N, C, h, w)
    g = noisehead_st.tap(onnx.load(str(q)), head.diff, calib, "image")
    hold = gate_data.holdout_frames(meta, run, (128, 128))
    rec = noisehead.correct(fp32, q, calib, hold, "image")
    assert rec is not None and rec["head"] == "student-teacher" and rec["applied"] and rec["n_frames"] == len(calib)
    offset = (g - f).mean((0, 2, 3))
    assert rec["offset_rms"] == pytest.approx(np.sqrt(np.mean(offset**2)), rel=1e-6) and rec["offset_rms"] > 0
    want = before[head.mean].astype(np.float64) + offset.reshape(-1, 1, 1)[None] / before[head.inv_std]
    after = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(q)).graph.initializer}
    np.testing.assert_allclose(after[head.mean], want, rtol=1e-5, atol=1e-6)
    assert np.abs(after[head.mean] - before[head.mean]).max() > 1e-4  # not a no-op
    # The corrected INT8 difference has no channel offset left against the float one.
    h = noisehead_st.tap(onnx.load(str(q)), head.diff, calib, "image")
    assert np.abs((h - f).mean((0, 2, 3))).max() < 0.05 * np.abs(offset).max()
    z, _ = score_onnx(q, hold)
    assert abs(z.mean()) < 1e-3 and abs(z.std(ddof=1) - 1) < 1e-3
    assert rec["normalization"]["n_holdout"] == len(hold)
    # The export's manifest records the correction.
    from edgesdk.bundle import Bundle
    from edgesdk.compile.onnx import ExportOptions, export_onnx

    opts = ExportOptions(precision="int8", target="tensorrt", n_calib=8, max_drop=0.5)
    b = Bundle.open(export_onnx(run, tmp_path / "int8", opts))
    rec = b.manifest.calibration["decisions"]["noise_aware_head"]
    assert rec["head"] == "student-teacher" and rec["applied"] and rec["normalization"]["n_holdout"] == len(hold)
    # The taps that measured the noise are not left behind as outputs (TensorRT's parser refuses untyped ones).
    assert [o.name for o in onnx.load(str(b.model_path)).graph.output] == [
        o.name for o in onnx.load(str(fp32)).graph.output
    ]
