"""Lower precision for a float graph: INT8 (QDQ, calibrated on the line's own good images) and FP16,
target-aware because the fast layout differs. ONNX Runtime's quantization tooling does the work.

  int8 --target cpu       asymmetric uint8 activations, symmetric int8 per-channel weights (U8S8):
                          the layout ONNX Runtime's x86/Arm integer kernels run fast. Conv, Clip and
                          Add are quantized so Q/DQ pairs fold into QLinearConv/QLinearAdd.
  int8 --target tensorrt  TensorRT's explicit quantization: symmetric int8, zero points 0, per-channel
                          weight scales on axis 0, per-tensor activations, float biases, Q/DQ only at
                          the quantized convolutions' inputs (compile.mixed). The activation
                          scales are also written as a TensorRT calibration cache (calib.cache). By
                          default each activation's range is searched (compile.ranges), and fallback
                          convolutions run in FP16 (compile.mixed).
  fp16 --target tensorrt  FP16 tensors in the graph (strongly typed networks take precision from it);
                          the I/O, the distance head, resizes, reductions and smoothing stay FP32.

By rule the feature extractor's convolutions are quantized, and for --target cpu PaDiM's
per-position head matrices (compile.qhead: they are most of its weights and resident memory). The
rest of the heads (nearest neighbour, the student's discrepancy), upsampling, smoothing and score
normalization stay FP32 (they are MatMul/Resize/Reduce ops, or the 1 -> 1 channel blur convolutions). When the gate
(edgesdk.compile.quantize) finds too much loss, `float_convs` names more convolutions to keep in FP32,
picked by `sensitivity`. No torch here."""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgesdk.fsutil import atomic_write_text

TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile", "search")  # search: per tensor, tensorrt only (compile.ranges)


@dataclass(frozen=True)
class QuantOptions:
    precision: str = "int8"  # "int8" or "fp16"
    target: str = "cpu"  # "cpu" (ONNX Runtime) or "tensorrt"
    calib: str = ""  # folder of good images; "" = the run's training images
    n_calib: int = 64  # images used to calibrate (fewer if fewer exist, at least 8)
    method: str = ""  # activation range: minmax, entropy, percentile, search; "" = search (tensorrt int8), else minmax
    max_drop: float = 0.005  # allowed image-AUROC drop vs float (0.005 = 0.5 points)

    def __post_init__(self) -> None:
        if not self.method:
            object.__setattr__(
                self, "method", "search" if (self.target, self.precision) == ("tensorrt", "int8") else "minmax"
            )
        if self.precision not in ("int8", "fp16"):
            raise ValueError(f"precision {self.precision!r}: quantize to int8 or fp16")
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r}: choose from {', '.join(TARGETS)}")
        if self.precision == "fp16" and self.target != "tensorrt":
            raise ValueError(
                "fp16 is for --target tensorrt: ONNX Runtime's x86 CPU kernels run FP16 no "
                "faster than FP32 (use int8 --target cpu there)"
            )
        if self.method not in METHODS:
            raise ValueError(f"calib_method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.method == "search" and self.target != "tensorrt":
            raise ValueError("calib_method search: for --target tensorrt (symmetric int8); use minmax for cpu")
        if self.n_calib < 8:
            raise ValueError(f"n_calib {self.n_calib}: at least 8 images are needed to calibrate")
        if not 0 <= self.max_drop < 1:
            raise ValueError(f"max_drop {self.max_drop}: a share of AUROC in [0, 1), e.g. 0.005")

    def to_dict(self) -> dict:
        return asdict(self)


def feature_convs(model) -> list[str]:
    """Names of the Conv nodes of the feature extractor (backbone, student), in graph order; not the
    Gaussian smoothing of the (B, 1, H, W) score map (1 -> 1 channel kernels), which stays FP32."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if w is not None and list(w.dims[:2]) != [1, 1]:
            out.append(n.name)
    return out


def float_prefix(model) -> list[str]:
    """The feature convolutions a CPU keeps FP32 by rule: per network (each chain of convolutions
    from the image; STFPM has two), those that run at its stem's output resolution, up to the
    narrowest of them. For EfficientNet-Lite0 that is the stem, block 0's depthwise and its 16-channel
    projection, all at 128x128 (for a 256x256 frame).

    Why, measured on this 2-core AVX2 CPU (ONNX Runtime U8S8):
      - a 3-input-channel stem runs at 0.7x its FP32 speed in int8, and a high-resolution depthwise
        conv at ~1.0x: int8 gains nothing there;
      - the one FP32 -> INT8 boundary costs a Quantize and a layout change of the tensor that crosses
        it, so it goes where that tensor is smallest: after the 16-channel projection, not after the
        32-channel stem (half the bytes) or the 96-channel expansion (6x);
      - against keeping the stem alone it costs no speed (edgesdk bench, brick, 80 interleaved rounds,
        p50: PaDiM -3 %, PatchCore +1 %, student +4 %), and all 9 sample bundles (3 categories x 3
        models) pass the gate, 8 at the first attempt (6 of 9 passed before). Gravel PatchCore's
        image-AUROC loss goes 0.008 -> 0.000, its largest score difference 5.3 -> 1.2 z: the early
        layers' quantization error no longer reaches every later one."""
    inits = {i.name: i for i in model.graph.initializer}
    convs = set(feature_convs(model))
    # Per tensor: (its stride vs the image, the stem it descends from; "" before any conv). A node
    # with several activation inputs (a residual Add) takes the coarsest.
    info: dict[str, tuple[int, str]] = {}
    stem_stride: dict[str, int] = {}
    chains: dict[str, list[tuple[str, int]]] = {}  # stem -> [(conv, out channels)] at its resolution
    for n in model.graph.node:
        stride, stem = max((info[i] for i in n.input if i in info), default=(1, ""), key=lambda t: t[0])
        if n.name in convs:
            stride *= max(next((list(a.ints) for a in n.attribute if a.name == "strides"), [1]))
            stem = stem or n.name
            if stride == stem_stride.setdefault(stem, stride):
                chains.setdefault(stem, []).append((n.name, int(inits[n.input[1]].dims[0])))
        for o in n.output:
            info[o] = (stride, stem)
    keep = []
    for chain in chains.values():
        narrowest = min(range(len(chain)), key=lambda i: chain[i][1])
        keep += [c for c, _ in chain[: narrowest + 1]]
    return keep


def _quantizable_neighbours(model, convs: set[str]) -> list[str]:
    """Clip (ReLU6) and Add (residual) nodes whose float inputs all come from quantized convs or
    other such nodes: quantizing them lets ONNX Runtime fold Q/DQ into QLinearConv/QLinearAdd."""
    produced = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    ok = set(convs)
    for n in model.graph.node:
        if n.op_type in ("Clip", "Add"):
            acts = [i for i in n.input if i and i not in inits]
            if acts and all(i in produced and produced[i].name in ok for i in acts):
                ok.add(n.name)
    return sorted(ok - convs)


class FrameReader:
    """ONNX Runtime CalibrationDataReader over (N, H, W, 3) uint8 frames, one per call."""

    def __init__(self, frames: np.ndarray, input_name: str):
        self.frames, self.name, self.i = frames, input_name, 0

    def get_next(self):
        if self.i >= len(self.frames):
            return None
        self.i += 1
        return {self.name: self.frames[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(
    src: Path,
    dst: Path,
    frames: np.ndarray,
    input_name: str,
    opts: QuantOptions,
    keep_float: tuple[str, ...] = (),
    keep_fp16: tuple[str, ...] = (),
    scales: dict[str, float] | None = None,
    int8_head: bool = True,
) -> dict:
    """QDQ INT8 model of SRC at DST; the convolutions in KEEP_FLOAT stay FP32, those in KEEP_FP16 become
    FP16 islands (compile.mixed). With opts.method "search" the activation scales are SCALES, or searched
    per tensor (compile.ranges) when None. For --target cpu with INT8_HEAD, PaDiM's per-position head
    matrices become int8 too (compile.qhead). Returns what was done, "scales" included."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgesdk.compile import mixed, qhead, ranges

    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        # ONNX shape inference is enough for our static graphs; the symbolic pass fails on PatchCore's
        # (TopK/ArgMin over a data-dependent gather) with a TypeError.
        quant_pre_process(str(src), str(pre), skip_optimization=False, skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        convs = [c for c in feature_convs(model) if c not in set(keep_float) | set(keep_fp16)]
        trt = opts.target == "tensorrt"
        # TensorRT fuses Conv+ReLU6 and residual Adds itself from Q/DQ around the convolutions.
        nodes = convs if trt else convs + _quantizable_neighbours(model, set(convs))
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
            "search": CalibrationMethod.MinMax,  # the starting graph; ranges.search replaces its scales
        }[opts.method]
        quantize_static(
            str(pre),
            str(dst),
            FrameReader(frames, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=nodes,
            op_types_to_quantize=["Conv", "Clip", "Add"],
            calibrate_method=method,
            extra_options={
                "ActivationSymmetric": trt,
                "WeightSymmetric": True,
                # TensorRT takes float biases; an int32 bias DQ is outside its rules.
                "QuantizeBias": not trt,
                "CalibPercentile": 99.999,
                "CalibMovingAverage": False,
            },
        )
        freed: list[str] = []
        if trt:  # Q/DQ at the quantized convolutions' inputs only (mixed.conv_inputs_only says why)
            q = onnx.load(str(dst))
            freed = mixed.conv_inputs_only(q, set(convs))
            onnx.save(q, str(dst))
        search: dict = {}
        if opts.method == "search" and scales is None:
            scales, search = ranges.search(pre, dst, frames, input_name)
        q = onnx.load(str(dst))
        if opts.method == "search" and scales:
            ranges.set_scales(q, scales)
        mixed.convs_to_fp16(q, set(keep_fp16))
        head = qhead.to_int8(q) if int8_head and not trt else []
        onnx.save(q, str(dst))
    finally:
        pre.unlink(missing_ok=True)
        for tmp in dst.parent.glob("augmented_model*.onnx"):
            tmp.unlink(missing_ok=True)
    return {
        "quantized_convs": len(convs),
        "quantized_other": len(nodes) - len(convs),
        "fp32_convs": sorted(keep_float),
        "fp16_convs": sorted(keep_fp16),
        **({"int8_head": head} if head else {}),
        **({"qdq_removed_not_conv_inputs": len(freed)} if trt else {}),
        "conv_counts": mixed.counts(q),
        **({"range_search": search} if search else {}),
        "scales": scales,
        "ranges": activation_scales(q),
    }


def activation_scales(model) -> dict[str, float]:
    """{tensor: scale} of every per-tensor QuantizeLinear of an activation."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        and n.input[0] not in inits
        and n.input[1] in inits
        and inits[n.input[1]].size == 1
    }


def write_trt_calib_cache(path: Path, ranges: dict[str, float], version: str = "10") -> None:
    """TensorRT's calibration cache: a header, then `tensor: <scale as big-endian float32 hex>` lines
    (the format IInt8Calibrator.read_calibration_cache returns and trtexec --calib reads)."""
    lines = [f"TRT-{version}-EntropyCalibration2"]
    lines += [f"{k}: {struct.pack('>f', v).hex()}" for k, v in sorted(ranges.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_trt_calib_cache(path: Path) -> dict[str, float]:
    lines = Path(path).read_text().splitlines()
    return {k: struct.unpack(">f", bytes.fromhex(v.strip()))[0] for k, v in (ln.rsplit(":", 1) for ln in lines[1:])}


FP16_BLOCK = (
    "MatMul",
    "Gemm",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceMean",
    "Sqrt",
    "Resize",
    "ArgMax",
    "ArgMin",
    "TopK",
    "Softmax",
    "Pow",
    "Min",
    "Max",
    "Pad",
    "Cast",
    "Gather",
    "GatherElements",
)


def convert_fp16(src: Path, dst: Path, keep_float: tuple[str, ...] = ()) -> dict:
    """FP16 graph with FP32 I/O; the score head (distances, reductions, resizes, the blur) stays FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    convs = set(feature_convs(model))
    blur = sorted({n.name for n in model.graph.node if n.op_type == "Conv"} - convs)
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP16_BLOCK), node_block_list=blur + list(keep_float)
    )
    # The converter adds one identical "<x>_cast_to_fp32" Cast per FP32 consumer of an FP16 tensor;
    # with two consumers (PatchCore's distance MatMul feeds Min and ArgMin) that is an invalid graph.
    seen, nodes = set(), []
    for n in half.graph.node:
        key = (n.op_type, tuple(n.input), tuple(n.output))
        if n.op_type != "Cast" or key not in seen:
            nodes.append(n)
        seen.add(key)
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    onnx.save(half, str(dst))
    return {"fp32_ops": list(FP16_BLOCK), "fp32_convs": sorted(keep_float), "fp32_blur_convs": blur}


def check_trt_qdq_rules(onnx_path: Path) -> list[str]:
    """TensorRT's explicit-quantization rules: INT8 with zero points 0, weight scales per channel on
    axis 0, activation scales per tensor, no integer-typed bias. Returns the violations (empty = ok)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    bad = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1])
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and zp.dtype != np.int8:
            bad.append(f"{n.name}: zero point type {zp.dtype}; TensorRT takes int8 only")
        elif zp is not None and np.any(zp != 0):
            bad.append(f"{n.name}: zero point {zp.ravel()[:3].tolist()} is not 0 (asymmetric)")
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale is not None and scale.size > 1:
            if n.input[0] not in inits:
                bad.append(f"{n.name}: per-channel scales on an activation")
            elif axis != 0:
                bad.append(f"{n.name}: weight scales on axis {axis}; TensorRT needs axis 0 (output channels)")
    return bad


def sensitivity(fp32: Path, qdq: Path, frames: np.ndarray, input_name: str) -> list[tuple[str, float]]:
    """Quantized convolutions ranked worst first by the SQNR (dB) of their output against the float
    model's on FRAMES: where the quantized model has drifted furthest, keeping layers FP32 helps most.
    [(conv name, sqnr_db), ...]."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    from edgesdk.compile import ranges

    f = onnx.load(str(fp32))
    convs = set(feature_convs(f))
    outs = {n.output[0]: n.name for n in f.graph.node if n.name in convs}
    q = onnx.load(str(qdq))
    q_out = {n.name: n.output[0] for n in q.graph.node if n.name in convs}
    names = [t for t, c in outs.items() if c in q_out]

    def run(model, tensors):
        sess = ranges.tap_session(model, tensors)
        got = [sess.run(tensors, {input_name: frames[i : i + 1]}) for i in range(len(frames))]
        return {t: np.concatenate([g[k] for g in got]) for k, t in enumerate(tensors)}

    a = run(f, names)
    b = run(q, [q_out[outs[t]] for t in names])
    scores = [(outs[t], float(sqnr(a[t], b[q_out[outs[t]]]))) for t in names]
    return sorted(scores, key=lambda s: s[1])
