"""`edgesdk demo`: the whole host -> device path on bundled sample data, with tables at the end.

sample data -> train (per category) -> export + parity -> eval through the device runtime ->
torch eager vs ONNX Runtime latency on the same frames -> stream the conveyor video into JSONL and
overlays, checked against the video's per-frame ground truth. Writes OUT/summary.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgesdk.backends.onnxruntime import OnnxRuntimeRunner
from edgesdk.backends.torch import TorchRunner
from edgesdk.bench import time_runner
from edgesdk.build.onnx import export_onnx
from edgesdk.bundle import Bundle
from edgesdk.data import mvtec
from edgesdk.data.synth import TEXTURES, SynthConfig, synth_dataset
from edgesdk.evaluate import evaluate
from edgesdk.fsutil import write_json
from edgesdk.metrics import f1_at
from edgesdk.pipeline import run_stream
from edgesdk.table import table
from edgesdk.train import train

QUICK = SynthConfig(size=128, n_train=100, n_test_good=8, n_test_per_defect=4)


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
    return {**summary, "frame_f1": f["f1"], "frame_confusion": {k: f[k] for k in ("tp", "fp", "fn", "tn")},
            "timeline": "".join("X" if r["is_anomalous"] else "." for r in recs),
            "truth": "".join("X" if v else "." for v in y)}


def build_engines(out: Path, categories: list[str]) -> list[dict]:
    """Each bundle -> a TensorRT for RTX engine (its builder needs no GPU); [] where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        print("      (TensorRT for RTX not installed: pip install 'edgesdk[tensorrt-rtx]' to build engines)")
        return []
    from edgesdk.build.trt import build_engine
    from edgesdk.devices import load_profile

    rtx = load_profile("rtx")
    return [{"category": c, **build_engine(out / "bundles" / c, rtx).row()} for c in categories]


def demo(out: str | Path = "out/demo", categories: list[str] | None = None, quick: bool = False) -> dict:
    out = Path(out)
    categories = categories or sorted(TEXTURES)
    cfg = QUICK if quick else SynthConfig()
    t0 = time.perf_counter()
    print(f"[1/4] sample data ({', '.join(categories)}, {cfg.size}px) -> {out / 'data'}")
    synth_dataset(out / "data", categories, cfg)
    results = {}
    for cat in categories:
        print(f"[2/4] {cat}: train -> export -> eval")
        run, bundle = out / "runs" / cat, out / "bundles" / cat
        train(out / "data" / cat, run, config={"input_size": [cfg.size, cfg.size]})
        export_onnx(run, bundle)
        ev = evaluate(bundle, out / "data" / cat)
        # Same frames, same batch 1, model call only: torch eager vs the exported graph.
        frames = mvtec.read_batch([it.path for it in mvtec.test_items(out / "data" / cat)], (cfg.size, cfg.size))
        feeds = [{"image": frames[i:i + 1]} for i in range(len(frames))]
        opened = Bundle.open(bundle)
        with TorchRunner(run) as tr, OnnxRuntimeRunner(opened.model_path) as ort:
            lat_torch, lat_ort = time_runner(tr, feeds), time_runner(ort, feeds)
        results[cat] = {"eval": ev, "torch_ms": lat_torch, "onnxruntime_ms": lat_ort,
                        "onnx_mb": (bundle / "model.onnx").stat().st_size / 1e6,
                        "parity": opened.manifest.metrics["parity_vs_torch"]}
    engines = build_engines(out, categories)
    video = out / "data" / f"conveyor_{categories[0]}.mkv"
    print(f"[3/4] stream {video.name} through the {categories[0]} bundle")
    stream = stream_check(out / "bundles" / categories[0], video, out)
    print("[4/4] done\n")

    acc = [{"category": c, "image AUROC": r["eval"]["image_auroc"], "pixel AUROC": r["eval"]["pixel_auroc"],
            "F1": r["eval"]["f1"], "threshold": r["eval"]["threshold"], "test images": r["eval"]["n_images"],
            "parity rel err": f"{max(r['parity']['score_max_rel_err'], r['parity']['map_max_rel_err']):.1e}"}
           for c, r in results.items()]
    acc.append({"category": "mean", **{k: float(np.mean([a[k] for a in acc])) for k in
                                        ("image AUROC", "pixel AUROC", "F1")}})
    print(table(acc, title=f"accuracy (PaDiM, EfficientNet-Lite0, {cfg.size}x{cfg.size}, ONNX Runtime)"))
    lat = []
    for c, r in results.items():
        for name, s in (("torch eager", r["torch_ms"]), ("onnxruntime", r["onnxruntime_ms"])):
            lat.append({"category": c, "backend": name, "p50 ms": s["p50"], "p90 ms": s["p90"], "p99 ms": s["p99"],
                        "FPS": s["fps"], "noisy": s["high_variance"]})
        lat.append({"category": c, "backend": "speed-up (p50)", "p50 ms": r["torch_ms"]["p50"] / r["onnxruntime_ms"]["p50"]})
    print("\n" + table(lat, title="latency, model call, batch 1, uint8 frame in (same frames, same run)"))
    e2e = [{"category": c, "p50 ms": r["eval"]["latency_ms"]["p50"], "p99 ms": r["eval"]["latency_ms"]["p99"],
            "ONNX MB": r["onnx_mb"]} for c, r in results.items()]
    print("\n" + table(e2e, title="device runtime per frame (resize + infer + regions)"))
    if engines:
        print("\n" + table(engines, title="TensorRT engines (rtx profile, built ahead of time; running one needs the GPU)"))
    print(f"\nstream: {stream['frames']} frames at {stream['fps']:.0f} FPS, frame F1 {stream['frame_f1']:.3f} "
          f"{stream['frame_confusion']}\n  detected {stream['timeline']}\n  truth    {stream['truth']}")
    summary = {"config": vars(cfg), "categories": results, "engines": engines,
               "stream": stream, "wall_s": time.perf_counter() - t0}
    write_json(out / "summary.json", summary)
    print(f"\nsummary -> {out / 'summary.json'}, overlays -> {out / 'overlays'}; {summary['wall_s']:.0f} s in all")
    return summary
