"""Quantization: target-aware INT8 and FP16 bundles, gated against the float model, with clear
errors for bad calibration data and no bundle when the gate fails."""

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgesdk.bundle import Bundle
from edgesdk.compile import gate, quant
from edgesdk.compile.onnx import ExportError, ExportOptions, export_onnx
from edgesdk.cpu import cpu_features
from edgesdk.errors import DataError
from edgesdk.stream.detector import Detector


def _qdq(path):
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    return m, inits, q


@pytest.fixture(scope="module")
def int8_cpu(run_dir, tmp_path_factory):
    return export_onnx(
        run_dir,
        tmp_path_factory.mktemp("q") / "int8cpu",
        ExportOptions(precision="int8", target="cpu", n_calib=16, max_drop=0.05),
    )


def test_int8_cpu_bundle_is_u8s8_gated_and_rederives_its_threshold(int8_cpu, bundle, tiny_data):
    b = Bundle.open(int8_cpu)  # every listed file hashed, quant report included
    m = b.manifest
    assert m.precision == "int8" and {"quant_report.json", "model.onnx"} <= set(m.files)
    cal = m.calibration
    assert cal["target"] == "cpu" and cal["method"] == "minmax" and cal["n_images"] == 16
    assert "fit images" in cal["source"] and cal["attempts"][-1]["passed"] is True
    # The quantized model's own threshold, from its own held-out scores, never the float value copied.
    assert m.threshold.source.endswith("+requantized") and m.threshold.detail["float_threshold"] == 3.0
    assert m.threshold.value != Bundle.open(bundle).threshold
    rep = m.metrics["vs_float"]
    assert rep["gated_on"] == "image_auroc_drop" and rep["image_auroc_drop"] <= 0.05
    assert rep["n_val"] == 6 + 4 * 3 and 0 < rep["ort_p50_ms"] and rep["model_mb"] > 0
    assert rep["cpu_int8_isa"] == cpu_features()["int8_isa"]  # the speed-up is this machine's
    # U8S8: uint8 activations with zero points, int8 weights with per-channel scales on axis 0.
    _, inits, qs = _qdq(b.model_path)
    act = [q for q in qs if q.input[0] not in inits]
    assert act and all(inits[q.input[2]].dtype == np.uint8 for q in act)
    wq = [inits[n] for n in inits if n.endswith("_quantized") and inits[n].ndim == 4]
    assert wq and all(w.dtype == np.int8 for w in wq)
    assert quant.check_trt_qdq_rules(b.model_path)  # asymmetric: not TensorRT's layout
    # PaDiM's head matrices are int8 too on a CPU (compile.qhead; tests/test_qhead.py): one integer MatMul.
    model = onnx.load(str(b.model_path))
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 1
    # So, on a CPU, do the stem and block 0 (stem, depthwise, 16-channel projection: all at the stem's
    # resolution, up to the narrowest): float initializers as weights, and every later conv is int8.
    kept = cal["decisions"]["fp32_by_rule"]
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    weights = [inits[convs[c].input[1]] for c in kept]
    assert [w.shape[:2] for w in weights] == [(32, 3), (32, 1), (16, 32)]
    assert all(w.dtype == np.float32 for w in weights)
    assert cal["attempts"][0]["fp32_convs"] == len(kept)
    assert sorted(quant.feature_convs(model)) == sorted(kept)  # the float convs left: these only
    # And the device runtime runs it.
    frame = cv2.imread(str(sorted((tiny_data / "brick" / "test" / "good").iterdir())[0]))
    with Detector(int8_cpu) as det:
        r = det.predict(frame)
    assert np.isfinite(r.score) and r.anomaly_map.shape == (128, 128)


@pytest.mark.parametrize("model", ["padim", "patchcore", "stfpm"])
def test_tensorrt_int8_and_fp16_bundles_pass_qdq_rules_and_build_engines(zoo, model, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile
    from edgesdk.spec import BuildConfig

    run, float_bundle = zoo[model]
    ref = Bundle.open(float_bundle)
    frames = ref.parity_frames()[:2]
    for precision in ("int8", "fp16"):
        out = export_onnx(
            run, tmp_path / precision, ExportOptions(precision=precision, target="tensorrt", n_calib=8, max_drop=0.2)
        )
        b = Bundle.open(out)
        assert b.manifest.precision == precision and b.manifest.calibration["target"] == "tensorrt"
        model_pb, inits, qs = _qdq(b.model_path)
        if precision == "int8":
            assert qs and quant.check_trt_qdq_rules(b.model_path) == []
            cache = quant.read_trt_calib_cache(out / "calib.cache")
            assert cache == pytest.approx(quant.activation_scales(model_pb), rel=1e-6) and len(cache) == len(
                [q for q in qs if q.input[0] not in inits]
            )
        else:
            assert not qs and any(i.data_type == onnx.TensorProto.FLOAT16 for i in model_pb.graph.initializer)
            assert model_pb.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        # Runs correctly in ONNX Runtime: FP16 scores match the float bundle's; INT8 scores carry the
        # quantization noise as an offset (symmetric int8 raises PatchCore's nearest-neighbour distances
        # by many z), so the check is that each bundle, at its own threshold, gives the same verdicts.
        from edgesdk.measure.compare import score_onnx

        lo, _ = score_onnx(b.model_path, frames)
        hi, _ = score_onnx(ref.model_path, frames)
        assert np.all(np.isfinite(lo))
        if precision == "fp16":
            assert np.abs(lo - hi).max() < 0.1
        assert np.array_equal(lo > b.threshold, hi > ref.threshold), (lo, b.threshold, hi, ref.threshold)
        r = build_engine(b, load_profile("rtx"), BuildConfig(batch=(1, 1, 2)))
        assert r.sidecar.strongly_typed and r.sidecar.precision == precision and r.plan.stat().st_size > 100_000
        assert r.sidecar.tensorrt_module == "tensorrt_rtx" and trt.__version__ == r.sidecar.tensorrt_version


def test_cpu_float_prefix_keeps_each_network_up_to_its_narrowest_conv_at_stem_resolution(zoo):
    """STFPM has two networks on the image: the student's next conv halves the resolution again, so
    only its stem stays FP32; the teacher (EfficientNet-Lite0) keeps stem, depthwise and the
    16-channel projection, and not the 96-channel expansion that still runs at 128x128."""
    model = onnx.load(str(zoo["stfpm"][1] / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node}
    kept = quant.float_prefix(model)
    shapes = [list(inits[convs[c].input[1]].dims[:2]) for c in kept]
    stems = [c for c, s in zip(kept, shapes) if s[1] == 3]
    assert len(stems) == 2 and sorted(shapes) == sorted([[16, 3], [32, 3], [32, 1], [16, 32]])
    order = quant.feature_convs(model)
    teacher = order.index(next(c for c, s in zip(kept, shapes) if s == [32, 3]))
    assert order[teacher + 3] not in kept and list(inits[convs[order[teacher + 3]].input[1]].dims[:2]) == [96, 16]


def test_a_cpu_bundle_no_faster_than_float_says_to_deploy_fp32():
    cpu, trt = quant.QuantOptions(), quant.QuantOptions(target="tensorrt")
    tip = gate.advice(cpu, 0.97, 28, 33)
    assert "0.97x" in tip and "28 of 33" in tip and "FP32 bundle" in tip
    assert gate.advice(cpu, 1.3, 3, 33) is None and gate.advice(trt, 0.5, 3, 33) is None
    # The CPU's INT8 instructions (edgesdk.cpu) say why: none at all is a reason FP32 convolutions are not.
    bare, vnni = gate.advice(cpu, 0.97, 2, 33, []), gate.advice(cpu, 0.97, 2, 33, ["AVX-512 VNNI"])
    assert "no AVX-512 VNNI" in bare and "a CPU with VNNI/AMX or a Jetson gains" in bare
    assert "no AVX-512 VNNI" not in vnni and "2 of 33 convolutions kept FP32" in vnni


def test_check_trt_qdq_rules_names_each_violation(tmp_path):
    """A hand-made graph with an asymmetric activation and per-channel weights on axis 1."""
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w")
    ws = numpy_helper.from_array(np.ones(3, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(3, np.int8), "wz")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(128, np.uint8), "z")
    g = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="act_q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="act_dq"),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_dq", axis=1),
            helper.make_node("Conv", ["xd", "wd"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, ws, wz, s, z],
    )
    onnx.save(helper.make_model(g), tmp_path / "bad.onnx")
    bad = quant.check_trt_qdq_rules(tmp_path / "bad.onnx")
    assert any(b.startswith("act_q: zero point type uint8") for b in bad)
    assert any(b.startswith("w_dq: weight scales on axis 1") for b in bad)


def _negate_scores(src, dst, *a, **k):
    """A 'quantizer' that writes the float graph with its outputs negated: the gate must refuse it."""
    m = onnx.load(str(src))
    for out in m.graph.output:
        for n in m.graph.node:
            n.output[:] = [o + "_pre" if o == out.name else o for o in n.output]
            n.input[:] = [i + "_pre" if i == out.name else i for i in n.input]
        m.graph.node.append(onnx.helper.make_node("Neg", [out.name + "_pre"], [out.name]))
    onnx.save(m, str(dst))
    return {"ranges": {}}


def test_gate_failure_reports_attempts_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(quant, "quantize_int8", _negate_scores)
    monkeypatch.setattr(
        quant,
        "sensitivity",
        lambda fp32, q, frames, name: [(c, 0.0) for c in quant.feature_convs(onnx.load(str(fp32)))],
    )
    out = tmp_path / "never"
    with pytest.raises(gate.GateError) as e:
        export_onnx(run_dir, out, ExportOptions(precision="int8", n_calib=8))
    msg = str(e.value)
    assert "no bundle written" in msg and "image_auroc_drop" in msg and msg.count("no") >= 4
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half-written bundle either


@pytest.mark.parametrize("case", ["missing", "empty", "too_few", "unreadable"])
def test_bad_calibration_folder_is_named_and_nothing_is_written(run_dir, tiny_data, tmp_path, case):
    calib = tmp_path / "calib"
    if case != "missing":
        calib.mkdir()
    good = cv2.imread(str(sorted((tiny_data / "brick" / "train" / "good").iterdir())[0]))
    for i in range({"too_few": 3, "unreadable": 9}.get(case, 0)):
        cv2.imwrite(str(calib / f"{i}.png"), good)
    if case == "unreadable":
        (calib / "4.png").write_bytes(b"not a png")
    out = tmp_path / "b"
    expected = {
        "missing": f"calibration folder {calib}: not found",
        "empty": f"{calib}: no images",
        "too_few": f"calibration folder {calib}: 3 images; at least 8",
        "unreadable": f"{calib / '4.png'}: not a readable image",
    }[case]
    with pytest.raises(DataError) as e:
        export_onnx(run_dir, out, ExportOptions(precision="int8", calib=str(calib), n_calib=16))
    assert expected in str(e.value)
    assert not out.exists()


def test_option_errors_are_clear(run_dir, tmp_path):
    with pytest.raises(ValueError, match="fp16 is for --target tensorrt"):
        export_onnx(run_dir, tmp_path / "x", ExportOptions(precision="fp16", target="cpu"))
    with pytest.raises(ExportError, match="precision 'int4'"):
        export_onnx(run_dir, tmp_path / "x", ExportOptions(precision="int4"))
    with pytest.raises(ValueError, match="calib_method 'avg'"):
        export_onnx(run_dir, tmp_path / "x", ExportOptions(precision="int8", calib_method="avg"))
    assert not (tmp_path / "x").exists()


def test_tensorrt_build_refuses_a_cpu_int8_bundle(int8_cpu):
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile

    with pytest.raises(ValueError, match="quantized for ONNX Runtime on a CPU.*--target tensorrt"):
        build_engine(int8_cpu, load_profile("rtx"))


def test_compare_cli_reports_both_bundles_and_their_differences(bundle, int8_cpu, tiny_data, tmp_path):
    out = tmp_path / "cmp.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "compare",
            str(bundle),
            str(int8_cpu),
            "--data",
            str(tiny_data / "brick"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "verdict flips" in r.stdout and "int8" in r.stdout
    j = json.loads(out.read_text())
    assert [row["precision"] for row in j["rows"]] == ["fp32", "int8"] and j["pair"]["n_images"] == 18
    assert j["rows"][1]["target"] == "cpu" and 0 <= j["rows"][0]["image_auroc"] <= 1
    rep = Bundle.open(int8_cpu).manifest.metrics["vs_float"]
    assert j["rows"][1]["image_auroc"] == pytest.approx(rep["image_auroc"])  # same data, same number
