"""Where grass PaDiM's TensorRT INT8 loss came from, and what removes it: Q/DQ pairs on the convolutions'
outputs (ONNX Runtime's quantizer puts them before every ReLU6 and residual Add), which round each
pre-activation a second time on a symmetric grid. TensorRT needs Q/DQ only at quantized layers' inputs."""

import numpy as np
import onnx
import pytest

from edgesdk.compile import gate, mixed, quant, ranges
from edgesdk.train import load_run


@pytest.fixture(scope="module")
def calib(run_dir):
    _, meta = load_run(run_dir)
    return gate.calibration_frames(quant.QuantOptions(target="tensorrt", n_calib=8), meta, (128, 128))[0]


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
