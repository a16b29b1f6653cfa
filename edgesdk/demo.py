"""`edgesdk demo`: the whole host -> device path on bundled sample data for every zoo model (PaDiM,
PatchCore, student-teacher on every category; the supervised segmenter on the first category, from
its 5 labelled images per defect kind), with comparison tables at the end.

sample data -> train (per category) -> export + parity -> eval through the device runtime ->
torch eager vs ONNX Runtime latency on the same frames -> stream the conveyor video into JSONL and
overlays, checked against the video's per-frame ground truth -> the streamed model quantized to INT8
for this CPU, gated against the float model. The segmenter's test defects get overlays whose regions
name their kind (OUT/overlays-segmenter/<kind>/). Writes OUT/summary.json.

OUT must be new, empty or a demo's own folder (fsutil.DEMO_MARKER, or a demo's summary.json): the
demo writes data/, runs/, bundles/, overlays, stream.jsonl and summary.json into it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgesdk.backends.onnxruntime import OnnxRuntimeRunner
from edgesdk.backends.torch import TorchRunner
from edgesdk.bundle import Bundle
from edgesdk.compile.onnx import export_onnx
from edgesdk.data import mvtec
from edgesdk.data.synth import TEXTURES, SynthConfig, synth_dataset
from edgesdk.fsutil import DEMO_MARKER, KINDS, OutputError, write_json
from edgesdk.measure.evaluate import evaluate
from edgesdk.measure.metrics import f1_at
from edgesdk.measure.timing import time_runner
from edgesdk.stream.detector import predict_files
from edgesdk.stream.pipeline import run_stream
from edgesdk.table import table
from edgesdk.train import train

QUICK = SynthConfig(size=128, n_train=100, n_test_good=8, n_test_per_defect=4)


def claim_out(out: Path) -> None:
    """OutputError unless OUT is missing, empty or a demo's own folder; then it is marked as one."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a demo folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and (why := KINDS["demo"](out)):
        raise OutputError(
            f"{out}: not used: {why}; the demo writes data/, runs/, bundles/, stream.jsonl and "
            "summary.json there: choose a new or empty folder for --out"
        )
    write_json(out / DEMO_MARKER, {"made_by": "edgesdk demo"})


def stream_check(bundle: Path, video: Path, out: Path) -> dict:
    """Run the conveyor video and compare per-frame verdicts with its ground truth."""
    jsonl = out / "stream.jsonl"
    jsonl.unlink(missing_ok=True)
    summary = run_stream(bundle, f"file://{video.resolve()}", [f"jsonl://{jsonl}", f"dir://{out / 'overlays'}"])
    truth = json.loads(video.with_suffix(".json").read_text())["frames"]
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    y = np.array([t["is_anomalous"] for t in truth])
    s = np.array([r["score"] for r in recs])
    f = f1_at(s, y, recs[0]["threshold"])
    return {
        **summary,
        "frame_f1": f["f1"],
        "frame_confusion": {k: f[k] for k in ("tp", "fp", "fn", "tn")},
        "timeline": "".join("X" if r["is_anomalous"] else "." for r in recs),
        "truth": "".join("X" if v else "." for v in y),
    }


def quantize_check(out: Path, name: str) -> tuple[dict, str]:
    """RUNS/NAME exported to INT8 for this CPU, gated against the float model: (summary, the gate's
    report as text), or its refusal (then no bundle exists, which is the point of the gate)."""
    from edgesdk.compile.gate import GateError, report_table
    from edgesdk.compile.onnx import ExportOptions

    bundle = out / "bundles" / f"{name}-int8"
    try:
        export_onnx(out / "runs" / name, bundle, ExportOptions(precision="int8", target="cpu"))
    except GateError as e:
        return {"bundle": None, "passed": False, "why": str(e)}, str(e)
    m = Bundle.open(bundle).manifest
    rep, cal = m.metrics["vs_float"], m.calibration or {}
    return {
        "bundle": str(bundle),
        "passed": True,
        "image_auroc_float": rep["reference"].get("image_auroc"),
        **{
            k: rep.get(k)
            for k in (
                "image_auroc",
                "image_auroc_drop",
                "score_max_abs_diff",
                "ort_p50_ms_float",
                "ort_p50_ms",
                "speedup_vs_float",
                "model_mb_float",
                "model_mb",
            )
        },
        "fp32_convs": len(cal["decisions"]["fp32_convs"]),
    }, report_table(rep, "int8", cal)


def build_engines(out: Path, bundles: list[str]) -> list[dict]:
    """Each bundle -> a TensorRT for RTX engine (its builder needs no GPU); [] where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        print("      (TensorRT for RTX not installed: pip install 'edgesdk[tensorrt-rtx]' to build engines)")
        return []
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile

    rtx = load_profile("rtx")
    return [{"bundle": b, **build_engine(out / "bundles" / b, rtx).row()} for b in bundles]


MODELS = ("padim", "patchcore", "stfpm", "segmenter")
ANOMALY = ("padim", "patchcore", "stfpm")  # trained on every category; the segmenter on the first only


def model_config(model: str, size: int, quick: bool, full: bool) -> dict:
    """The zoo's defaults at SIZE; the demo shortens the trained models' budgets. Student (full: the
    recipe's 1500 steps / 300 s; default: 20 s; quick: 400 steps, however long they take); segmenter
    (full: its 300 steps / 170 s; default: 300 steps / 90 s; quick: 60 steps on 64 px crops)."""
    cfg: dict = {"input_size": [size, size]}
    if model == "stfpm" and not full:
        cfg.update({"steps": 400, "seconds": 3600.0} if quick else {"seconds": 20.0})
    if model == "segmenter" and not full:
        cfg.update({"steps": 60, "seconds": 3600.0, "crop": 64, "reuse": 2} if quick else {"seconds": 90.0})
    return cfg


def segmenter_overlays(out: Path, cat: str) -> dict:
    """The segmenter bundle on CAT's defective test images: an overlay each, its regions named by kind,
    in OUT/overlays-segmenter/<kind>/; and how often the strongest region names the image's kind."""
    dest = out / "overlays-segmenter"
    by_kind: dict[str, list[Path]] = {}
    for it in mvtec.test_items(out / "data" / cat):
        if it.label:
            by_kind.setdefault(it.kind, []).append(it.path)
    named, files, total = 0, [], 0
    for kind, paths in sorted(by_kind.items()):  # a folder per kind: test images of each kind share names
        rows = predict_files(out / "bundles" / f"{cat}-segmenter", paths, save=dest / kind)["results"]
        files += [r["overlay"] for r in rows]
        named += sum(bool(r["regions"]) and r["regions"][0].get("kind") == kind for r in rows)
        total += len(rows)
    return {"dir": str(dest), "overlays": files, "top_region_names_kind": named / max(total, 1)}


def run_model(out: Path, cat: str, model: str, cfg: dict, size: int) -> dict:
    """train -> export -> eval -> torch eager vs ONNX Runtime latency, for one category and model (the
    segmenter from the category's labels/ folder)."""
    name = f"{cat}-{model}"
    run, bundle = out / "runs" / name, out / "bundles" / name
    labels = out / "data" / cat / "labels" if model == "segmenter" else None
    train(out / "data" / cat, run, model, config=cfg, labels=labels)
    export_onnx(run, bundle)
    ev = evaluate(bundle, out / "data" / cat)
    # Same frames, same batch 1, model call only: torch eager vs the exported graph.
    frames = mvtec.read_batch([it.path for it in mvtec.test_items(out / "data" / cat)], (size, size))
    feeds = [{"image": frames[i : i + 1]} for i in range(len(frames))]
    opened = Bundle.open(bundle)
    with TorchRunner(run) as tr, OnnxRuntimeRunner(opened.model_path) as ort:
        lat_torch, lat_ort = time_runner(tr, feeds), time_runner(ort, feeds)
    meta = json.loads((run / "run.json").read_text())
    return {
        "eval": ev,
        "torch_ms": lat_torch,
        "onnxruntime_ms": lat_ort,
        "fit": meta["fit"],
        "fit_s": meta["timing_s"]["total"],
        "onnx_mb": (bundle / "model.onnx").stat().st_size / 1e6,
        "parity": opened.manifest.metrics["parity_vs_torch"],
    }


def demo(
    out: str | Path = "out/demo",
    categories: list[str] | None = None,
    quick: bool = False,
    full: bool = False,
    models: tuple[str, ...] = MODELS,
) -> dict:
    out = Path(out)
    categories = categories or sorted(TEXTURES)
    cfg = QUICK if quick else SynthConfig()
    claim_out(out)  # before anything is written or removed in it
    t0 = time.perf_counter()
    print(f"[1/5] sample data ({', '.join(categories)}, {cfg.size}px) -> {out / 'data'}")
    synth_dataset(out / "data", categories, cfg)
    results: dict = {}
    for cat in categories:
        for model in models:
            if model not in ANOMALY and cat != categories[0]:
                continue
            print(f"[2/5] {cat} / {model}: train -> export -> eval")
            results.setdefault(cat, {})[model] = run_model(
                out, cat, model, model_config(model, cfg.size, quick, full), cfg.size
            )
    seg = segmenter_overlays(out, categories[0]) if "segmenter" in models else None
    engines = build_engines(out, [f"{c}-{m}" for c, by_model in results.items() for m in by_model])
    video = out / "data" / f"conveyor_{categories[0]}.mkv"
    stream_model = "patchcore" if "patchcore" in models else models[0]
    print(f"[3/5] stream {video.name} through the {categories[0]}-{stream_model} bundle")
    stream = stream_check(out / "bundles" / f"{categories[0]}-{stream_model}", video, out)
    print(f"[4/5] {categories[0]}-{stream_model} to INT8 for this CPU, gated against the float model")
    int8, int8_text = quantize_check(out, f"{categories[0]}-{stream_model}")
    print("[5/5] done\n")

    rows = []
    for c, by_model in results.items():
        for m, r in by_model.items():
            rows.append(
                {
                    "category": c,
                    "model": m,
                    "image AUROC": r["eval"]["image_auroc"],
                    "pixel AUROC": r["eval"]["pixel_auroc"],
                    "AUPRO": r["eval"]["aupro"],
                    "pixel F1": r["eval"]["pixel_f1"],
                    "F1": r["eval"]["f1"],
                    "fit s": r["fit_s"],
                    "ORT p50 ms": r["onnxruntime_ms"]["p50"],
                    "torch p50 ms": r["torch_ms"]["p50"],
                    "speed-up": r["torch_ms"]["p50"] / r["onnxruntime_ms"]["p50"],
                    "noisy": r["onnxruntime_ms"]["high_variance"],
                    "ONNX MB": r["onnx_mb"],
                    "bank": r["fit"].get("bank_size", ""),
                    "parity": f"{max(r['parity']['score_max_rel_err'], r['parity']['map_max_rel_err']):.0e}",
                }
            )
    print(
        table(
            rows,
            title=f"zoo on the sample set (EfficientNet-Lite0, {cfg.size}x{cfg.size}, batch 1, "
            "uint8 frame in; ORT = ONNX Runtime, model call only, same frames, same run)",
        )
    )
    means = [
        {
            "model": m,
            **{
                k: float(np.mean([r[k] for r in rows if r["model"] == m]))
                for k in ("image AUROC", "pixel AUROC", "AUPRO", "pixel F1", "F1", "fit s", "ORT p50 ms")
            },
        }
        for m in models
        if m in ANOMALY
    ]
    if means:
        print("\n" + table(means, title="anomaly models, mean over categories"))
    if seg is not None:
        side = [
            {
                "model": m,
                **{k: r["eval"][e] for k, e in (("image AUROC", "image_auroc"), ("AUPRO", "aupro"))},
                **{k: r["eval"][e] for k, e in (("pixel F1", "pixel_f1"), ("pixel IoU", "pixel_iou"))},
                "kind accuracy": r["eval"].get("kind_accuracy", ""),
                "threshold": r["eval"]["threshold"],
            }
            for m, r in results[categories[0]].items()
        ]
        steps = results[categories[0]]["segmenter"]["fit"]["steps"]
        print(
            "\n"
            + table(
                side,
                title=f"{categories[0]}: the segmenter ({steps} steps, 5 labelled images per kind) beside "
                "the anomaly models; pixel F1 at each bundle's own threshold",
            )
        )
        print(
            f"segmenter overlays ({len(seg['overlays'])} test defects, each region named by its kind) -> {seg['dir']}; "
            f"the strongest region names the image's kind on {seg['top_region_names_kind']:.0%}"
        )
    if engines:
        print(
            "\n"
            + table(engines, title="TensorRT engines (rtx profile, built ahead of time; running one needs the GPU)")
        )
    print(f"\nINT8 for this CPU ({categories[0]}-{stream_model}):\n{int8_text}")
    print(
        f"\nstream: {stream['frames']} frames at {stream['fps']:.0f} FPS, frame F1 {stream['frame_f1']:.3f} "
        f"{stream['frame_confusion']}\n  detected {stream['timeline']}\n  truth    {stream['truth']}"
    )
    summary = {
        "config": vars(cfg),
        "student_budget": model_config("stfpm", cfg.size, quick, full),
        "segmenter_budget": model_config("segmenter", cfg.size, quick, full),
        "segmenter": seg,
        "categories": results,
        "means": means,
        "engines": engines,
        "stream": stream,
        "int8": int8,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    print(f"\nsummary -> {out / 'summary.json'}, overlays -> {out / 'overlays'}; {summary['wall_s']:.0f} s in all")
    return summary
