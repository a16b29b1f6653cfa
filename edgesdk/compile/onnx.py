"""`edgesdk export`: run folder -> bundle folder (model.onnx + parity.json + manifest.json).

The graph takes (batch, H, W, 3) uint8 BGR frames and returns score (batch,) and anomaly_map
(batch, H, W), in the units of the manifest threshold. Export refuses to write a bundle whose ONNX
outputs disagree with torch on the run's held-out good frames: users never get a silently
different model."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgesdk import __version__
from edgesdk.backends.onnxruntime import OnnxRuntimeRunner
from edgesdk.bundle import MODEL_FILE, PARITY_FRAMES, Bundle
from edgesdk.compile import adaptable
from edgesdk.compile.opset import SOURCE, export_opset, lower_file
from edgesdk.cpu import cpu_features
from edgesdk.devices import graph_summary
from edgesdk.fsutil import atomic_dir, prepare_output, write_json
from edgesdk.spec import MANIFEST, InputSpec, Manifest, OutputSpec, Threshold, file_entry
from edgesdk.train import load_run

INPUT, OUTPUTS = "image", ("score", "anomaly_map")
KIND_MAP = "kind_map"  # supervised models: (batch, H, W) int64 index into the manifest's kinds
PRECISIONS = ("fp32", "fp16", "int8")
MAP_MEANING = {
    "": "per-pixel score, same units",
    "segmenter": "per-pixel P(any defect)",
    "hybrid": "per-pixel max of the heads' maps (each its own score / its own threshold)",
}
EXTRA_SPECS = {  # output name -> (dtype, meaning)
    KIND_MAP: ("int64", "per-pixel most likely defect kind: index into kinds"),
    "segmenter_map": ("float32", "the segmenter head: per-pixel P(any defect) / its threshold"),
    "patchcore_map": ("float32", "the PatchCore head: per-pixel z / its threshold"),
}
KIND_MISMATCH = 1e-3  # parity gate: share of pixels whose most likely kind may differ (near-ties)


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"  # fp32, fp16 (--target tensorrt) or int8 (gated against fp32)
    opset: int = 18  # 17 (TensorRT 8.5, JetPack 5) is lowered from torch's 18 by compile/opset.py
    device: str = ""  # a device profile (name or path): its max_onnx_opset caps opset
    rtol: float = 1e-4  # parity gate: |onnx - torch| <= rtol * max(|torch|, 1)
    target: str = "cpu"  # int8 layout: "cpu" (ONNX Runtime U8S8) or "tensorrt" (symmetric)
    calib: str = ""  # folder of the line's good images; "" = the run's fit images
    n_calib: int = 64
    calib_method: str = ""  # minmax, entropy, percentile or search; "" = search for tensorrt int8, else minmax
    max_drop: float = 0.005  # largest image-AUROC drop vs float the gate accepts
    val: str = ""  # labelled folder for the gate; "" = the run's DATA/test if present

    def quant(self):
        from edgesdk.compile.quant import QuantOptions

        return QuantOptions(
            precision=self.precision,
            target=self.target,
            calib=self.calib,
            n_calib=self.n_calib,
            method=self.calib_method,
            max_drop=self.max_drop,
        )


class _NotAboutTorchvision(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def _exporter_quiet():
    """torch.onnx's exporter talks about its own internals on every export, none of it about the
    user's model: a warning per torchvision op it cannot register when torchvision is absent (no zoo
    model uses one), and a FutureWarning torch raises on its own LeafSpec while it copies a tree spec.
    Both are dropped for this call only; every other warning still shows."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    drop = _NotAboutTorchvision()
    registration.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            yield
    finally:
        registration.removeFilter(drop)


def parity(net: torch.nn.Module, onnx_path: Path, frames: np.ndarray) -> dict:
    """Every output of torch vs ONNX Runtime (CPU) on the same frames, batch 1 and batch 2: score and
    anomaly_map, and a model's extra outputs (EXTRA_OUTPUTS): an integer map (kind_map) as the share of
    pixels that differ, a float map as its largest error relative to its largest magnitude."""
    with torch.no_grad():
        t_score, t_map = (t.numpy() for t in net(torch.from_numpy(frames)))
        extra_of = getattr(net, "extra_outputs", None)
        t_extra = {k: v.numpy() for k, v in extra_of(torch.from_numpy(frames)).items()} if extra_of else {}
    with OnnxRuntimeRunner(onnx_path, providers="CPUExecutionProvider") as r:
        per_frame = [r.infer({INPUT: frames[i : i + 1]}) for i in range(len(frames))]
        batched = r.infer({INPUT: frames[:2]})
    o_score = np.concatenate([o["score"] for o in per_frame])
    o_map = np.concatenate([o["anomaly_map"] for o in per_frame])
    scale = np.maximum(np.abs(t_score), 1.0)
    map_scale = max(float(np.abs(t_map).max()), 1.0)
    extras: dict[str, float] = {}
    for name, t in t_extra.items():
        o = np.concatenate([p[name] for p in per_frame])
        if t.dtype.kind in "iu":  # an index map: near-ties may flip a pixel, nothing else may
            extras[f"{name}_mismatch_share"] = float((o != t).mean())
            extras[f"{name}_batch2_mismatch_share"] = float((batched[name] != o[:2]).mean())
        else:
            extras[f"{name}_max_rel_err"] = float(np.abs(o - t).max() / max(float(np.abs(t).max()), 1.0))
            extras[f"{name}_batch2_max_abs_err"] = float(np.abs(batched[name] - o[:2]).max())
    return {
        **extras,
        "n_frames": int(len(frames)),
        "score_max_abs_err": float(np.abs(o_score - t_score).max()),
        "score_max_rel_err": float((np.abs(o_score - t_score) / scale).max()),
        "map_max_abs_err": float(np.abs(o_map - t_map).max()),
        "map_max_rel_err": float(np.abs(o_map - t_map).max() / map_scale),
        "batch2_max_abs_err": float(np.abs(batched["score"] - o_score[:2]).max()),
    }


def export_onnx(
    run_dir: str | Path, out: str | Path, opts: ExportOptions = ExportOptions(), force: bool = False
) -> Path:
    """Export the run in RUN_DIR to a verified bundle folder OUT (written atomically). OUT is replaced
    only when missing, empty or a bundle (any folder with FORCE), and never when it is, holds or lies
    inside what the export reads: the run, its training data, the calibration and validation folders."""
    if opts.precision not in PRECISIONS:
        raise ExportError(f"precision {opts.precision!r}: choose from {', '.join(PRECISIONS)}")
    qopts = opts.quant() if opts.precision != "fp32" else None  # option errors before any work
    opset = export_opset(opts.opset, opts.device)
    run_dir = Path(run_dir)
    net, meta = load_run(run_dir)
    inputs = [run_dir, meta["data"]["path"], opts.calib, opts.val]
    prepare_output(out, "bundle", inputs, force)
    h, w = net.cfg.input_size
    kinds = tuple(getattr(net.cfg, "kinds", ()))
    names = OUTPUTS + tuple(getattr(net, "EXTRA_OUTPUTS", ()))  # kind_map; a hybrid's head maps
    frames = np.load(run_dir / "holdout_frames.npy")
    calib: np.ndarray | None = None  # (N, H, W, 3) uint8, set with calib_info for fp16/int8
    calib_info: dict = {}
    if qopts is not None:  # bad calibration data fails here, before anything is written
        from edgesdk.compile import gate, gate_data

        calib, calib_info = gate_data.calibration_frames(qopts, meta, (h, w))
    with atomic_dir(out, kind="bundle", inputs=inputs, force=force) as stage:
        onnx_path = stage / MODEL_FILE
        # Batch 2, not 1: torch.export specializes a size-1 dim to a constant (no dynamic batch).
        example = torch.zeros(2, h, w, 3, dtype=torch.uint8)

        def export(module: torch.nn.Module, path: Path, *outputs: str) -> None:
            with _exporter_quiet():
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    input_names=[INPUT],
                    output_names=list(outputs),
                    dynamic_shapes={"frames": {0: torch.export.Dim("batch")}},
                    opset_version=max(opset, SOURCE),  # torch writes no older opset
                    external_data=False,
                    dynamo=True,
                    verbose=False,
                )
            if opset < SOURCE:
                lower_file(path, str(run_dir))

        export(net.for_export(), onnx_path, *names)
        import onnx

        onnx.checker.check_model(str(onnx_path))
        # torch's exporter falls back to its own opset when it cannot convert every op to the one asked
        # for (e.g. Pad to 17): a bundle must never claim an opset its graph does not have.
        summary = graph_summary(onnx_path)
        if summary["opset"] != opset:
            raise ExportError(
                f"{run_dir}: export asked for ONNX opset {opset}, but torch's exporter wrote "
                f"opset {summary['opset']} (it cannot convert every op of this model to "
                f"{opset}); no bundle written"
            )
        par = parity(net, onnx_path, frames)
        worst = max(v for k, v in par.items() if k.endswith(("_rel_err", "batch2_max_abs_err")))
        if worst > opts.rtol:
            raise ExportError(f"{run_dir}: ONNX disagrees with torch beyond rtol {opts.rtol}: {par}")
        if max((v for k, v in par.items() if k.endswith("_mismatch_share")), default=0.0) > KIND_MISMATCH:
            raise ExportError(
                f"{run_dir}: ONNX's kind_map disagrees with torch on more than {KIND_MISMATCH:.1%} of the pixels: {par}"
            )
        write_json(stage / "parity.json", {"rtol": opts.rtol, "passed": True, **par})
        # The frames parity was measured on travel with the bundle: `edgesdk verify` compares a
        # TensorRT engine with ONNX Runtime on them on the device. (N, H, W, 3) uint8 BGR.
        np.save(stage / PARITY_FRAMES, frames)
        threshold, metrics, calibration = meta["threshold"], {"parity_vs_torch": par}, None
        # What `edgesdk adapt` needs on the device; fp32 only (the head of a quantized graph is not raw fp32).
        adapt = (
            adaptable.prepare(net, meta["model"], run_dir, stage, frames, opts.rtol, export) if qopts is None else None
        )
        extra_files: tuple[str, ...] = adapt.bundle_files() if adapt else ()
        if qopts is not None and calib is not None:
            float_path = stage / "float.onnx"
            onnx_path.rename(float_path)
            ref = gate.reference(
                net, gate_data.holdout_frames(meta, run_dir, (h, w)), gate_data.validation_set(opts.val, meta, (h, w))
            )
            low = gate.lower_precision(stage, float_path, ref, meta["threshold"], calib, qopts, MODEL_FILE)
            float_path.unlink()
            threshold = low["threshold"]
            metrics = {"float_graph_parity_vs_torch": par, "vs_float": low["report"]}
            calibration = {**qopts.to_dict(), **calib_info, "attempts": low["attempts"], "decisions": low["decisions"]}
            write_json(
                stage / "quant_report.json",
                {
                    "report": low["report"],
                    "attempts": low["attempts"],
                    "decisions": low["decisions"],
                    "threshold": threshold,
                },
            )
            extra_files = ("quant_report.json",) + (("calib.cache",) if (stage / "calib.cache").exists() else ())
        graph = graph_summary(onnx_path) if calibration is not None else summary  # int8/fp16: a new graph
        if graph["opset"] != opset:  # the quantizer must not have moved the opset the device parses
            raise ExportError(f"{run_dir}: the {opts.precision} graph is opset {graph['opset']}, not {opset}")
        import onnxruntime

        manifest = Manifest(
            model={
                "name": meta["model"],
                "backbone": net.cfg.backbone,
                "config": meta["config"],
                **({"fit": meta["fit"]} if "fit" in meta else {}),
            },
            input=InputSpec(name=INPUT, height=h, width=w),
            outputs=(
                OutputSpec("score", ("batch",), meaning="image anomaly score = max of anomaly_map"),
                OutputSpec("anomaly_map", ("batch", h, w), meaning=MAP_MEANING.get(meta["model"], MAP_MEANING[""])),
            )
            + tuple(OutputSpec(n, ("batch", h, w), *EXTRA_SPECS[n]) for n in names[2:]),
            kinds=kinds,
            heads=getattr(net, "manifest_heads", tuple)(),  # a hybrid's heads, () otherwise
            threshold=Threshold(**threshold),
            normalization=meta["normalization"],
            precision=opts.precision,
            files={name: file_entry(stage / name) for name in (MODEL_FILE, "parity.json", PARITY_FRAMES) + extra_files},
            metrics=metrics,
            calibration=calibration,
            graph=graph,
            provenance={
                "run": str(run_dir.resolve()),
                "data": meta["data"],
                "train_timing_s": meta["timing_s"],
                "opset": opset,
                **({"device": opts.device} if opts.device else {}),
                "host": platform.platform(),
                **cpu_features(),
                "versions": {
                    **meta["versions"],
                    "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__,
                    "export_torch": torch.__version__,
                },
            },
            edgesdk_version=__version__,
            created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            adapt=adapt,
        )
        write_json(stage / MANIFEST, manifest.to_dict())
        Bundle.open(stage)  # the manifest reads back and every hash verifies, or nothing is replaced
    return Path(out)
