"""The low-rank PaDiM head (head_rank) through INT8 and TensorRT: the noise-aware head rebuilds Sigma from
the factors, adds the INT8 features' noise covariance and factors it again by the fit's rule; the gated
INT8 exports (cpu and tensorrt) pass; TensorRT for RTX builds engines of the float and INT8 graphs."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgesdk.bundle import Bundle
from edgesdk.compile import gate_data, noisehead, quant, ranges
from edgesdk.compile.onnx import ExportOptions, export_onnx
from edgesdk.train import load_run

CONFIG = {"input_size": [128, 128], "feature_dim": 24, "head_rank": 8}


@pytest.fixture(scope="module")
def rank(tiny_data, tmp_path_factory):
    from edgesdk.train import train

    root = tmp_path_factory.mktemp("rank8")
    run = train(tiny_data / "brick", root / "run", config=CONFIG, quiet=True)
    return run, export_onnx(run, root / "bundle")


def _factors(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eigenvalues kept (P, k), their vectors (P, D, k), c_p (P,)) by the fit's rule, from (P, D, D)."""
    lam, u = np.linalg.eigh(cov)
    d = lam.shape[1]
    keep = np.r_[0 : k // 2, d - k // 2 : d]
    return lam[:, keep], u[:, :, keep], 1 / lam[:, k // 2 : d - k // 2].mean(1)


def test_noise_aware_low_rank_head_refactors_sigma_plus_the_int8_noise(rank, tmp_path):
    run, bundle = rank
    net, meta = load_run(run)
    k = net.cfg.head_rank
    calib = gate_data.calibration_frames(quant.QuantOptions(target="tensorrt", n_calib=8), meta, (128, 128))[0]
    fp32, q = bundle / "model.onnx", tmp_path / "q.onnx"
    quant.quantize_int8(fp32, q, calib, "image", quant.QuantOptions(target="tensorrt", method="minmax", n_calib=8))
    head = noisehead.find_padim_head(onnx.load(str(q)))
    assert head is not None and head.weight and head.ref
    f = noisehead.tap(onnx.load(str(fp32)), noisehead.find_padim_head(onnx.load(str(fp32))).features, calib, "image")
    g = noisehead.tap(onnx.load(str(q)), head.features, calib, "image")  # (P, N, D), before the rewrite
    hold = gate_data.holdout_frames(meta, run, (128, 128))
    rec = noisehead.correct(fp32, q, calib, hold, "image")
    assert rec is not None and rec["applied"] and rec["noise_trace_share"] > 0
    # numpy: the run's low-rank Sigma (its statistics + ridge, eigenvalues outside S set to 1/c_p) + the noise.
    with np.load(run / "adapt_state.npz") as z:
        n, s1, s2 = int(z["n"]), z["sum"], z["sum_outer"]
    mean = s1 / n
    full = (s2 - n * mean[:, :, None] * mean[:, None, :]) / (n - 1) + net.cfg.ridge * np.eye(mean.shape[1])
    lam, u, c = _factors(full, k)
    sigma = np.eye(full.shape[1]) / c[:, None, None] + np.matmul(
        u * (lam - 1 / c[:, None])[:, None], u.transpose(0, 2, 1)
    )
    delta = g.astype(np.float64) - f
    offset = delta.mean(1)
    r = (delta - offset[:, None]).reshape(-1, delta.shape[2])
    lam2, u2, c2 = _factors(sigma + r.T @ r / (len(r) - delta.shape[0]), k)
    want_mean = mean + offset
    model = onnx.load(str(q))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(inits[head.mean].reshape(want_mean.shape), want_mean, atol=1e-4)
    np.testing.assert_allclose(inits[head.ref].reshape(-1), c2, rtol=1e-4)
    # The graph's head distances of the INT8 features equal numpy's low-rank distances.
    sqrt = next(nd.output[0] for nd in model.graph.node if nd.op_type == "Sqrt")
    feats, dist = ranges.tap_session(model, [head.features, sqrt]).run([head.features, sqrt], {"image": calib[:2]})

    def lowrank(e, lam, u, c):
        return np.sqrt(c[:, None] * (e**2).sum(-1) + (np.matmul(e, u) ** 2 * (1 / lam - c[:, None])[:, None]).sum(-1))

    want = lowrank(feats.astype(np.float64) - want_mean[:, None], lam2, u2, c2)  # (P, 2)
    np.testing.assert_allclose(dist.reshape(want.shape), want, rtol=1e-3, atol=1e-3)
    plain = lowrank(feats.astype(np.float64) - mean[:, None], lam, u, c)  # the float fit's head
    assert np.abs(plain - want).max() > 100 * np.abs(dist.reshape(want.shape) - want).max()


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_low_rank_int8_exports_pass_their_gate(rank, tmp_path, target):
    run, _ = rank
    out = export_onnx(run, tmp_path / target, ExportOptions(precision="int8", target=target, n_calib=8, max_drop=0.2))
    b = Bundle.open(out)
    cal = b.manifest.calibration
    assert b.manifest.precision == "int8" and cal["attempts"][-1]["passed"] is True
    if target == "tensorrt":
        assert cal["decisions"]["noise_aware_head"]["applied"] and quant.check_trt_qdq_rules(b.model_path) == []
    model = onnx.load(str(b.model_path))
    head = noisehead.find_padim_head(model)
    if target == "tensorrt":
        assert head is not None and head.weight  # the head stays low-rank and float
    else:  # on a CPU its basis (P, D, k) is int8 (compile.qhead), the rest of it float
        (rec,) = cal["decisions"]["int8_head"]
        assert len(rec["shape"]) == 3 and rec["shape"][2] == CONFIG["head_rank"]
        assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 1


def test_tensorrt_for_rtx_builds_low_rank_engines(rank, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile
    from edgesdk.spec import BuildConfig

    run, bundle = rank
    int8 = export_onnx(
        run, tmp_path / "int8", ExportOptions(precision="int8", target="tensorrt", n_calib=8, max_drop=0.2)
    )
    for src in (bundle, int8):
        b = Bundle.open(shutil.copytree(src, tmp_path / f"own-{src.name}"))
        r = build_engine(b, load_profile("rtx"), BuildConfig(batch=(1, 1, 2)))
        assert r.plan.is_file() and r.sidecar.onnx_sha256 == b.onnx_sha256


def test_the_head_is_found_when_the_exporter_leaves_the_weight_unsqueeze_unfolded(rank, tmp_path):
    """At 256 px torch's exporter keeps weight (P, k) and an Unsqueeze node in the float graph (the tiny
    graph here has it folded to (P, 1, k)): the same graph with the Unsqueeze put back is still found."""
    from edgesdk.measure.compare import score_onnx

    _, bundle = rank
    model = onnx.load(str(bundle / "model.onnx"))
    head = noisehead.find_padim_head(model)
    assert head is not None and head.weight
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[head.weight])
    assert w.ndim == 3 and w.shape[1] == 1  # folded here
    model.graph.initializer.remove(inits[head.weight])
    model.graph.initializer.extend(
        [numpy_helper.from_array(w[:, 0], "w_pk"), numpy_helper.from_array(np.array([1], np.int64), "axis_1")]
    )
    model.graph.node.insert(0, onnx.helper.make_node("Unsqueeze", ["w_pk", "axis_1"], [head.weight]))
    onnx.save(model, str(tmp_path / "m.onnx"))
    found = noisehead.find_padim_head(onnx.load(str(tmp_path / "m.onnx")))
    assert found is not None and (found.weight, found.ref) == ("w_pk", head.ref)
    frames = Bundle.open(bundle).parity_frames()[:2]
    np.testing.assert_allclose(score_onnx(tmp_path / "m.onnx", frames)[0], score_onnx(bundle / "model.onnx", frames)[0])
