"""The accuracy gate of `edgesdk export --precision fp16|int8`: a lower-precision graph is measured
against the float model before a bundle may claim its precision.

Data (compile.gate_data), all from the run unless told otherwise:
  calibration  the line's own good images: --calib DIR, or the run's fit images (never its held-out ones)
  held-out     the run's held-out good images: the quantized model's own threshold is re-derived on them
  validation   --val DIR, or the run's DATA/test when it exists (labelled): image/pixel AUROC, verdicts
Attempt 1 quantizes by rule (feature convolutions; for --target cpu PaDiM's head matrices too,
compile.qhead, and attempt 2 then keeps that head float). If the image-AUROC drop (or, without labelled
data, the share of held-out verdict flips) exceeds max_drop, the convolutions whose outputs drifted
most from the float model (quant.sensitivity; for --target cpu, the contiguous tail from the earliest
of them) are kept FP32, in growing steps, until it passes or
every step failed: then GateError with the table of attempts, and nothing is written.
For --target tensorrt INT8 the kept convolutions are FP16 islands (compile.mixed; TRT_STEPS), and FP32
only in a last attempt where FP16 failed too; the activation ranges are searched once per tensor
(compile.ranges) and reused by every attempt, and a PaDiM head is rewritten for the INT8 features'
quantization noise (compile.noisehead). Each attempt counts its INT8/FP16/FP32 convolutions."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.compile import gate_outputs, noisehead, qhead, quant
from edgesdk.cpu import cpu_features
from edgesdk.measure.compare import interleaved_p50, onnx_outputs
from edgesdk.measure.metrics import auroc, pixel_f1_iou
from edgesdk.progress import say
from edgesdk.table import table

STEPS = (0.1, 0.25, 0.5)  # shares of the feature convolutions kept FP32 after a failed attempt
# tensorrt int8: shares kept FP16 (mixed INT8/FP16 islands); the last share again in FP32 if FP16 fails too
TRT_STEPS = (0.05, 0.1, 0.2, 0.5)
PIXEL_F1_DROP = 0.02  # a supervised model's pixel F1 (its outlines) may drop this much, at most
SLOW_SPEEDUP = 1.05  # a cpu INT8 bundle below this speed-up over float gets the advice to use FP32


class GateError(RuntimeError):
    """The lower-precision model lost more accuracy than allowed; no bundle was written."""


def rederive_threshold(threshold: dict, z_float: np.ndarray, z_low: np.ndarray) -> dict:
    """The lower-precision model's own threshold from its held-out good scores: the same k sigma
    above their mean (for a k-sigma threshold), or the float threshold moved by the held-out mean shift
    (for a validation-F1 threshold). Never the float value copied."""
    detail = {**threshold["detail"], "float_threshold": threshold["value"]}
    if threshold["source"].startswith("good_holdout_k_sigma"):
        k = float(threshold["detail"]["k_sigma"])
        value = float(z_low.mean() + k * z_low.std(ddof=1))
        detail["how"] = f"mean + {k:g} std of this model's {len(z_low)} held-out good scores"
    else:
        value = float(threshold["value"] + z_low.mean() - z_float.mean())
        detail["how"] = "float threshold + this model's held-out mean shift"
    source = threshold["source"]
    source = source if source.endswith("+requantized") else source + "+requantized"
    return {"value": value, "source": source, "detail": detail}


def measure(ref: dict, low: Path, thr_float: dict, max_drop: float) -> tuple[dict, dict]:
    """One attempt's report (and its threshold) against REF (float scores on held-out/validation); every
    other output of the graph against the float graph's in report["outputs"] (compile.gate_outputs)."""
    hold_out = onnx_outputs(low, ref["hold_frames"])
    val_out = None
    zl = hold_out["score"]
    thr = rederive_threshold(thr_float, ref["hold_z"], zl)
    diff = np.abs(zl - ref["hold_z"])
    r: dict = {
        "n_holdout": int(len(zl)),
        "score_max_abs_diff": float(diff.max()),
        "score_mean_abs_diff": float(diff.mean()),
        "threshold": thr["value"],
        "threshold_float": float(thr_float["value"]),
    }
    flips = int(((ref["hold_z"] > thr_float["value"]) != (zl > thr["value"])).sum())
    n = len(zl)
    if ref.get("val") is not None:
        frames, labels, masks, _ = ref["val"]
        val_out = onnx_outputs(low, frames)
        vl, ml = val_out["score"], val_out["anomaly_map"]
        d = np.abs(vl - ref["val_z"])
        r.update(
            score_max_abs_diff=max(r["score_max_abs_diff"], float(d.max())),
            n_val=int(len(vl)),
            image_auroc=auroc(vl, labels),
            image_auroc_drop=ref["image_auroc"] - auroc(vl, labels),
        )
        if masks is not None:
            r["pixel_auroc"] = auroc(ml, masks)
            r["pixel_auroc_drop"] = ref["pixel_auroc"] - r["pixel_auroc"]
            if "val_maps" in ref:  # a supervised model's outlines are its product: their F1 is gated too
                r["pixel_f1_float"] = pixel_f1_iou(ref["val_maps"], masks, thr_float["value"])["f1"]
                r["pixel_f1"] = pixel_f1_iou(ml, masks, thr["value"])["f1"]
                r["pixel_f1_drop"] = r["pixel_f1_float"] - r["pixel_f1"]
        flips += int(((ref["val_z"] > thr_float["value"]) != (vl > thr["value"])).sum())
        n += len(vl)
    r["verdict_flips"], r["flip_share"] = flips, flips / max(n, 1)
    # With labels, the AUROC drop decides (a flip near the threshold is not a lost defect); without
    # them, agreement of verdicts on the held-out good images is all there is to go on.
    r["gated_on"] = "image_auroc_drop" if "image_auroc_drop" in r else "flip_share"
    r["outputs"] = gate_outputs.check(
        ref, (hold_out, val_out), thr_float["value"], thr["value"], max_drop, PIXEL_F1_DROP
    )
    r["outputs_failed"] = gate_outputs.failures(r["outputs"])  # each names its output and its limit
    r["passed"] = bool(
        r[r["gated_on"]] <= max_drop and r.get("pixel_f1_drop", 0.0) <= PIXEL_F1_DROP and not r["outputs_failed"]
    )
    if "pixel_f1_drop" in r:
        r["pixel_f1_max_drop"] = PIXEL_F1_DROP
    return r, thr


def lower_precision(
    stage: Path,
    fp32: Path,
    ref: dict,
    thr_float: dict,
    calib: np.ndarray,
    opts: quant.QuantOptions,
    model_file: str,
    progress=None,
) -> dict:
    """Write STAGE/MODEL_FILE at opts.precision from the float graph FP32, gated against REF.
    Returns the manifest's record: threshold, calibration, quantization decisions, gate report.
    PROGRESS(text) gets each attempt's table (default: stdout, unless edgesdk.progress is quiet)."""
    import onnx

    dst = stage / model_file
    graph = onnx.load(str(fp32))
    convs = quant.feature_convs(graph)
    # By rule on a CPU each stem and the convs at its resolution up to the narrowest stay FP32: int8
    # gains nothing there, and their error reaches every later layer (quant.float_prefix says what
    # was measured).
    rule = tuple(quant.float_prefix(graph)) if opts.target == "cpu" and opts.precision == "int8" else ()
    keep: tuple[str, ...] = rule
    half: tuple[str, ...] = ()
    ranked: list[tuple[str, float]] = []
    attempts: list[dict[str, Any]] = []
    info: dict = {}
    report: dict[str, Any] = {}
    thr: dict = {}
    # On TensorRT the fallback is FP16 (its INT8 kernels' neighbour), FP32 only where FP16 fails too.
    mixed = opts.precision == "int8" and opts.target == "tensorrt"
    plan = [(0.0, "")] + (
        [(s, "fp16") for s in TRT_STEPS] + [(TRT_STEPS[-1], "fp32")] if mixed else [(s, "fp32") for s in STEPS]
    )
    # cpu INT8: PaDiM's head matrices are INT8 too (compile.qhead). If the first attempt fails, the
    # second keeps the head float: the head's error is not one convolutions kept FP32 can undo. The
    # convolution fallbacks then go on with whichever head lost less.
    int8_head = opts.precision == "int8" and opts.target == "cpu" and bool(qhead.batched_weights(graph))
    plan[1:1] = [(0.0, "float-head")] if int8_head else []
    head_int8, attempt1 = int8_head, dict[str, Any]()
    scales: dict[str, float] | None = None  # searched once on the all-INT8 graph; later attempts reuse them
    searched: dict = {}
    float_feats: dict = {}  # the float graph's head features, tapped once
    ref = gate_outputs.with_float_outputs(ref, fp32)  # kind_map, head maps: compared in every attempt
    for step, fallback in plan:
        if step:
            if not ranked:  # rank once, from the first (all-quantized) attempt
                ranked = quant.sensitivity(fp32, dst, calib[:8], "image")
            worst = {c for c, _ in ranked[: max(1, round(step * len(convs)))]}
            if opts.target == "cpu":
                # On a CPU each FP32 island between INT8 layers costs a Q/DQ pair and a layout change
                # (measured: 8 scattered FP32 convs made PaDiM 0.89x the float speed), so keep the
                # contiguous tail from the earliest bad layer on (cumulative error makes the deepest
                # layers the worst anyway).
                first = min(convs.index(c) for c in worst)
                worst = set(convs[first:])
            chosen = tuple(c for c in convs if c in worst or c in rule)
            keep, half = (chosen, ()) if fallback != "fp16" else (rule, tuple(c for c in chosen if c not in rule))
        t0 = time.perf_counter()
        if opts.precision == "fp16":
            info = quant.convert_fp16(fp32, dst, keep)
        else:
            info = quant.quantize_int8(
                fp32, dst, calib, "image", opts, keep, half, scales, head_int8 and fallback != "float-head"
            )
            scales, searched = info.pop("scales", None), info.pop("range_search", searched)
            if mixed:  # PaDiM's Gaussians take in the INT8 features' noise (compile.noisehead)
                head = noisehead.correct(fp32, dst, calib, ref["hold_frames"], "image", float_feats)
                info.update({"noise_aware_head": head} if head else {})
        report, thr = measure(ref, dst, thr_float, opts.max_drop)
        counts = info.get("conv_counts", {})
        attempts.append(
            {
                **({"int8_convs": counts["int8"], "fp16_convs": counts["fp16"]} if counts else {}),
                "fp32_convs": len(keep),
                **({"head": "int8" if "int8_head" in info else "fp32"} if int8_head else {}),
                "seconds": round(time.perf_counter() - t0, 1),
                **{
                    k: report.get(k)
                    for k in (
                        "image_auroc",
                        "image_auroc_drop",
                        "pixel_auroc",
                        "pixel_f1",
                        "verdict_flips",
                        "score_max_abs_diff",
                        "passed",
                    )
                    if k in report or k != "pixel_f1"
                },
                **gate_outputs.summary(report["outputs"]),
            }
        )
        note = table([attempts[-1]], title=f"{opts.precision} ({opts.target}) attempt {len(attempts)}")
        (progress or (lambda text: say(text, sys.stdout)))(note)
        if report["passed"]:
            break
        if fallback == "float-head":
            head_int8 = _loss(attempt1) <= _loss(report)
        attempt1 = attempt1 or report
    if not report["passed"]:
        dst.unlink(missing_ok=True)
        raise GateError(
            f"{opts.precision} --target {opts.target} loses more than max_drop {opts.max_drop} against the float "
            f"model (gated on {report['gated_on']}"
            + (f" and pixel_f1_drop <= {PIXEL_F1_DROP}" if "pixel_f1_drop" in report else "")
            + (f", failing: {'; '.join(report['outputs_failed'])}" if report["outputs_failed"] else "")
            + f") even with up to {max(a['fp32_convs'] + a.get('fp16_convs', 0) for a in attempts)} of {len(convs)} "
            + ("convolutions kept FP16 or FP32; " if mixed else "convolutions kept FP32; ")
            + ("PaDiM's head was tried in float too; " if int8_head else "")
            + "no bundle written.\n"
            + table(attempts, title="attempts")
            + "\nTry --calib-method percentile or entropy, more calibration images, or another precision."
        )
    ranges = info.pop("ranges", {})
    if opts.precision == "int8" and opts.target == "tensorrt":
        bad = quant.check_trt_qdq_rules(dst)
        if bad:
            raise GateError(f"{dst}: breaks TensorRT's Q/DQ rules: " + "; ".join(bad[:5]))
        quant.write_trt_calib_cache(stage / "calib.cache", ranges)
    report["ort_p50_ms_float"], report["ort_p50_ms"] = interleaved_p50(fp32, dst, ref["hold_frames"])
    report["speedup_vs_float"] = report["ort_p50_ms_float"] / report["ort_p50_ms"]
    report["cpu_int8_isa"] = cpu_features()["int8_isa"]  # the speed-up above depends on them
    tip = advice(opts, report["speedup_vs_float"], attempts[-1]["fp32_convs"], len(convs), report["cpu_int8_isa"])
    if tip:
        report["advice"] = tip
    report["model_mb"], report["model_mb_float"] = dst.stat().st_size / 1e6, fp32.stat().st_size / 1e6
    if "conv_counts" in info:
        report["conv_counts"] = info["conv_counts"]
        report["int8_conv_share"] = info["conv_counts"]["int8"] / max(1, sum(info["conv_counts"].values()))
    report["reference"] = {k: ref[k] for k in ("image_auroc", "pixel_auroc", "val_where") if k in ref}
    if "pixel_f1_float" in report:
        report["reference"]["pixel_f1"] = report["pixel_f1_float"]
    return {
        "threshold": thr,
        "report": report,
        "attempts": attempts,
        "decisions": {
            **info,
            **({"range_search": searched} if searched else {}),
            "rule": (
                "feature convolutions and PaDiM's head matrices (int8 per column, rows scaled per frame); "
                "resizes, reductions, blur and normalization stay FP32"
                if "int8_head" in info
                else "feature convolutions only; distance head, resizes, reductions, blur and normalization stay FP32"
            )
            + ("; on a CPU each stem and the convolutions at its resolution, up to the narrowest, too" if rule else ""),
            "fp32_by_rule": list(rule),
            "sensitivity_sqnr_db": [[c, round(s, 2)] for c, s in ranked[:20]],
        },
    }


def _loss(report: dict) -> tuple[float, float]:
    """What an attempt lost against the float model: the gated metric, then the largest score shift."""
    return report[report["gated_on"]], report["score_max_abs_diff"]


def advice(
    opts: quant.QuantOptions, speedup: float, fp32_convs: int, n_convs: int, int8_isa: list[str] | None = None
) -> str | None:
    """A cpu bundle that passed the gate only by keeping many convolutions FP32, or on a CPU without 8-bit
    multiply-accumulate instructions (INT8_ISA empty: ONNX Runtime widens to 16 bits), is correct but buys
    nothing here: say so where the user decides (the export's output, the manifest) instead of shipping it
    silently. TensorRT-layout bundles are timed in ONNX Runtime only for parity, so never for them."""
    if opts.target != "cpu" or speedup >= SLOW_SPEEDUP:
        return None
    why = (
        f"{fp32_convs} of {n_convs} convolutions kept FP32 to pass the gate"
        if int8_isa is None or int8_isa
        else f"this CPU has no AVX-512 VNNI, AVX-VNNI, AMX or Arm dot-product; {fp32_convs} of {n_convs} "
        "convolutions kept FP32"
    )
    where = (
        ""
        if int8_isa is None or int8_isa
        else "; a CPU with VNNI/AMX or a Jetson gains from INT8 where this one cannot"
    )
    return (
        f"this {opts.precision} bundle runs at {speedup:.2f}x the float graph here ({why}): deploy the FP32 "
        f"bundle on this CPU, or calibrate on more of the line's images{where}"
    )


def report_table(r: dict, precision: str, cal: dict) -> str:
    """The gate's parity report as a table: float vs this precision, one row each; then its advice."""
    ref = r.get("reference", {})
    rows = [
        {
            "model": "float (PyTorch)",
            "image AUROC": ref.get("image_auroc"),
            "pixel AUROC": ref.get("pixel_auroc"),
            **({"pixel F1": ref["pixel_f1"]} if "pixel_f1" in ref else {}),
            "threshold": r["threshold_float"],
            "ORT p50 ms": r["ort_p50_ms_float"],
            "MB": r["model_mb_float"],
        },
        {
            "model": f"{precision} ({cal.get('target', '')})",
            "image AUROC": r.get("image_auroc"),
            "pixel AUROC": r.get("pixel_auroc"),
            **({"pixel F1": r["pixel_f1"]} if "pixel_f1" in r else {}),
            "threshold": r["threshold"],
            "ORT p50 ms": r["ort_p50_ms"],
            "MB": r["model_mb"],
            "max |dz|": r["score_max_abs_diff"],
            "mean |dz| (held-out)": r["score_mean_abs_diff"],
            "verdict flips": f"{r['verdict_flips']} of {r['n_holdout'] + r.get('n_val', 0)}",
            "speedup": f"{r['speedup_vs_float']:.2f}x",
        },
    ]
    text = table(
        rows,
        title=f"{precision} vs float: gated on {r['gated_on']}, "
        f"calibrated on {cal.get('n_images')} images ({cal.get('method')})",
    )
    return text + (f"\nnote: {r['advice']}" if r.get("advice") else "")


def reference(net, hold: np.ndarray, val) -> dict:
    """Float (PyTorch) scores the gate compares with: held-out good frames and validation frames."""
    import torch

    def run(frames):
        zs, ms = [], []
        with torch.no_grad():
            for i in range(0, len(frames), 16):
                z, m = net(torch.from_numpy(np.ascontiguousarray(frames[i : i + 16])))
                zs.append(z.numpy())
                ms.append(m.numpy())
        return np.concatenate(zs), np.concatenate(ms)

    # a hybrid's heads (spec/heads.py): which output names kinds, for compile.gate_outputs
    ref: dict = {
        "hold_frames": hold,
        "hold_z": run(hold)[0],
        "val": val,
        "heads": getattr(net, "manifest_heads", tuple)(),
    }
    if val is not None:
        frames, labels, masks, where = val
        ref["val_z"], maps = run(frames)
        ref["image_auroc"], ref["val_where"] = auroc(ref["val_z"], labels), where
        if masks is not None:
            ref["pixel_auroc"] = auroc(maps, masks)
            if getattr(net.cfg, "kinds", ()):  # supervised: measure() gates on its pixel F1 too
                ref["val_maps"] = maps
    return ref
