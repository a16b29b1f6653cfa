"""`edgesdk` command line: each subcommand parses arguments and calls one public function.

Heavy modules (torch, onnx) are imported inside the subcommands that need them, so `edgesdk eval`,
`predict` and `run` work on a device with only the base install."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edgesdk.table import table


FORCE_HELP = ("replace --out even when it is neither empty nor an edgesdk {} folder (never a folder that is, "
              "holds or lies inside an input)")


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if getattr(args, "json", False) else text)


def _stage_table(by_stage: dict, title: str) -> str:
    """One row per pipeline stage from {stage: latency_stats(...)}; stages with no samples are skipped."""
    return table([{"stage": k, "p50 ms": v["p50"], "p90 ms": v["p90"], "p99 ms": v["p99"], "mean ms": v["mean"],
                   "max ms": v["max"]} for k, v in by_stage.items() if v.get("n")], title=title)


def cmd_synth(args) -> None:
    from edgesdk.data.synth import TEXTURES, SynthConfig, synth_dataset

    cfg = SynthConfig(size=args.size, n_train=args.n_train, n_test_good=args.n_test_good,
                      n_test_per_defect=args.n_test_per_defect, seed=args.seed)
    summary = synth_dataset(args.out, args.categories or sorted(TEXTURES), cfg, video=not args.no_video,
                            force=args.force)
    rows = [{"category": c, **counts} for c, counts in summary.items()]
    print(table(rows, title=f"sample data -> {args.out}"))


def cmd_train(args) -> None:
    from dataclasses import asdict

    from edgesdk.recipe import load_recipe
    from edgesdk.train import TrainOptions, train

    recipe = load_recipe(args.recipe) if args.recipe else None
    model = args.model or (recipe.model if recipe else "padim")
    config = dict(recipe.config) if recipe and recipe.model == model else {}
    # Flags override the recipe; only the flags given count.
    flags = {"input_size": [args.size, args.size] if args.size else None, "backbone": args.backbone,
             "feature_dim": args.feature_dim, "coreset_ratio": args.coreset_ratio, "steps": args.steps,
             "seconds": args.seconds}
    config.update({k: v for k, v in flags.items() if v is not None})
    topts = {**asdict(TrainOptions()), **(recipe.train if recipe else {}),
             **{k: v for k, v in {"holdout": args.holdout, "k_sigma": args.k_sigma, "seed": args.seed,
                                  "camera": args.camera_augment}.items() if v is not None}}
    topts["camera"] = tuple(topts.get("camera") or ())
    weights = args.backbone_weights or (recipe.backbone_weights if recipe else "") or None
    resolved = {"recipe": recipe.path if recipe else None, "model": model, "config": config, "train": topts,
                "backbone_weights": weights, "export": recipe.export if recipe else {}}
    out = train(args.data, args.out, model, val=args.val, config=config, opts=TrainOptions(**topts),
                backbone_weights=weights, recipe=resolved, force=args.force)
    run = json.loads((out / "run.json").read_text())
    fit = run["fit"]
    print(table([{"run": str(out), "model": run["model"], "backbone": run["config"]["backbone"],
                  "fit images": run["data"]["n_fit"], "held out": run["data"]["n_holdout"],
                  **({"bank": f"{fit['bank_size']} x {fit['feature_dim']} ({fit['bank_mb']} MB)"} if "bank_size" in fit else {}),
                  **({"steps": f"{fit['steps']} ({fit['stopped_by']})"} if "steps" in fit else {}),
                  "threshold": run["threshold"]["value"], "threshold source": run["threshold"]["source"],
                  "fit s": run["timing_s"]["fit"]}]))


def cmd_export(args) -> None:
    from dataclasses import fields

    from edgesdk.compile.gate import report_table
    from edgesdk.compile.onnx import ExportOptions, export_onnx
    from edgesdk.bundle import Bundle
    from edgesdk.errors import OptionError
    from edgesdk.recipe import load_recipe

    run_json = Path(args.run) / "run.json"
    run = json.loads(run_json.read_text()) if run_json.is_file() else {}
    run_recipe = (run.get("recipe") if isinstance(run, dict) else None) or {}
    eopts = dict(load_recipe(args.recipe).export if args.recipe else
                 (run_recipe.get("export") if isinstance(run_recipe, dict) else None) or {})
    known = {f.name for f in fields(ExportOptions)}
    if set(eopts) - known:
        raise OptionError(f"{args.recipe or run_json}: unknown export option {sorted(set(eopts) - known)[0]!r} "
                          f"(known: {', '.join(sorted(known))})")
    for flag in ("precision", "target", "calib", "n_calib", "calib_method", "max_drop", "val"):
        if getattr(args, flag) is not None:
            eopts[flag] = getattr(args, flag)
    out = export_onnx(args.run, args.out, ExportOptions(**eopts), force=args.force)
    b = Bundle.open(out)
    m = b.manifest.metrics
    par = m.get("parity_vs_torch") or m["float_graph_parity_vs_torch"]
    print(table([{"bundle": str(out), "model": b.manifest.model["name"], "precision": b.manifest.precision,
                  "onnx MB": b.manifest.files["model.onnx"].bytes / 1e6,
                  "threshold": b.threshold, "parity score rel err": f"{par['score_max_rel_err']:.1e}",
                  "parity map rel err": f"{par['map_max_rel_err']:.1e}"}]))
    if "vs_float" in m:
        print(report_table(m["vs_float"], b.manifest.precision, b.manifest.calibration or {}))


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (inf and nan are refused; they would disable a check)."""
    from edgesdk.errors import OptionError, finite

    try:
        return finite(text, "value")
    except OptionError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number") from None


def _detector_opts(args):
    from edgesdk.stream.detector import DetectorOptions

    return DetectorOptions(backend=args.backend, providers=args.providers, threshold=args.threshold,
                           engine=args.engine)


def _batch(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:1:4") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError(f"--batch {text!r}: need MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def _workspace(text: str) -> int:
    from edgesdk.spec import MAX_WORKSPACE_MB

    try:
        mb = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workspace {text!r}: expected megabytes, e.g. 1024") from None
    if not 0 < mb <= MAX_WORKSPACE_MB:
        raise argparse.ArgumentTypeError(f"--workspace {text!r}: need 1 <= MB <= {MAX_WORKSPACE_MB}")
    return mb


def _dla(text: str) -> int:
    try:
        core = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dla {text!r}: expected a DLA core (0, 1) or -1 for the GPU") from None
    if core < -1:
        raise argparse.ArgumentTypeError(f"--dla {text!r}: a DLA core is 0 or more; -1 means the GPU only")
    return core


def _tolerance(text: str) -> float:
    from edgesdk.errors import finite

    try:
        tol = finite(text, "--tolerance")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if tol < 0:        # inf would pass every engine, nan none
        raise argparse.ArgumentTypeError(f"--tolerance {text!r}: a score difference >= 0, e.g. 0.05")
    return tol


def cmd_build(args) -> None:
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile
    from edgesdk.spec import BuildConfig, EngineSidecar

    device = load_profile(args.device)
    cfg = BuildConfig(batch=args.batch, workspace_mb=args.workspace, dla_core=args.dla,
                      timing_cache=not args.no_timing_cache)
    if not args.json:
        print(f"building {args.bundle} for {device.name} ({device.description}) with {device.tensorrt_module}",
              file=sys.stderr)
    r = build_engine(args.bundle, device, cfg, out=args.out, progress=not args.json, force=args.force)
    s = r.sidecar
    text = table([r.row()], title=f"engine for {device.name}") + "\n"
    text += ("reused: same bundle, TensorRT, device and profile as the existing plan (--force rebuilds)\n"
             if r.reused else "")
    text += "".join(f"note: {n}\n" for n in r.notes)
    text += f"plan     {r.plan}\nsidecar  {EngineSidecar.path_for(r.plan)}\nnvinfer  {r.deepstream}\n"
    if r.timing_cache:
        text += f"timing cache {r.timing_cache}\n"
    text += f"trtexec equivalent:\n  {r.trtexec}"
    _emit(args, {"plan": str(r.plan), "reused": r.reused, "sidecar": s.to_dict(), "trtexec": r.trtexec,
                 "deepstream": str(r.deepstream), "notes": list(r.notes)}, text)


def cmd_verify(args) -> None:
    from edgesdk.backends import OnnxRuntimeRunner, TensorRTRunner
    from edgesdk.bundle import Bundle
    from edgesdk.measure.compare import compare_runners

    b = Bundle.open(args.bundle)
    frames = b.parity_frames()
    with TensorRTRunner(args.engine, b) as trt_r, OnnxRuntimeRunner(b.model_path, "CPUExecutionProvider") as ort_r:
        r = compare_runners(ort_r, trt_r, frames, b.threshold, b.manifest.input.name)
    tol = args.tolerance if args.tolerance is not None else (0.05 if b.manifest.precision == "fp32" else 0.25)
    r["tolerance"] = tol
    r["passed"] = r["verdict_flips"] == 0 and r["score_max_abs_err"] <= tol
    text = table([{"frames": r["n_frames"], "score max |diff|": r["score_max_abs_err"],
                   "map max |diff|": r["map_max_abs_err"], "verdict flips": r["verdict_flips"],
                   "tolerance": tol, "result": "PASS" if r["passed"] else "FAIL"}],
                 title=f"{Path(args.engine).name} vs ONNX Runtime (CPU) on the bundle's parity frames")
    _emit(args, r, text)
    if not r["passed"]:
        raise SystemExit(1)


def cmd_compare(args) -> None:
    from edgesdk.measure.compare import compare_bundles
    from edgesdk.fsutil import write_json

    r = compare_bundles(args.a, args.b, args.data)
    print(table(r["rows"], title=f"{args.a} vs {args.b} on {r['pair']['n_images']} images of {args.data}"))
    p = r["pair"]
    print(table([{"max |d score|": p["score_max_abs_diff"], "mean |d score|": p["score_mean_abs_diff"],
                  "verdict flips": p["verdict_flips"], "image AUROC drop": p["image_auroc_drop"],
                  "speedup (A/B p50)": f"{p['speedup']:.2f}x"}]))
    if args.json:
        write_json(args.json, r)


def cmd_bench(args) -> None:
    from edgesdk.measure.benchmark import BenchOptions, bench, for_json, markdown, plot, table_rows
    from edgesdk.fsutil import atomic_write_text, write_json

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise ValueError(f"--batch {args.batch!r}: expected sizes like 1,4") from None
    opts = BenchOptions(backends=tuple(args.backends.split(",")), batches=batches, iters=args.iters,
                        seconds=args.seconds or 0.0, data=args.data or "", run=args.run or "",
                        cold_start=not args.no_cold_start, e2e=args.e2e or "")
    r = bench(args.bundles, opts)
    print(table(table_rows(r), title=f"bench ({r['method']['frames']}, {r['method']['rounds']} interleaved rounds)"))
    said = set()
    for row in r["rows"]:
        key = (row["bundle"], row["backend"])
        if key in said:
            continue          # one line per bundle and backend, not per batch
        said.add(key)
        if row.get("reason"):
            print(f"  {row['backend']} ({Path(row['bundle']).name}): {row['reason']}")
        if row.get("engine"):
            print(f"  engine built ahead of time: {row['engine']} ({row['engine_mb']:.1f} MB, {row['engine_build_s']} s)")
    for row in r["rows"]:
        if "stage_p50_ms" in row:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stage_p50_ms"].items())
            print(f"  pipeline {Path(row['bundle']).name} on {row['source']}: {row['frames']} frames, {row['fps']:.1f} FPS "
                  f"= {row['share_of_model_only_fps']:.0%} of model-only; stage p50 ms: {stages}")
    print(f"harness overhead {r['harness_overhead_ms'] * 1e3:.2f} µs per call; {r['provenance']['cpu']}, "
          f"{r['provenance']['cores']} cores")
    if args.json:
        write_json(args.json, for_json(r))
    if args.md:
        atomic_write_text(args.md, markdown(r))
    if args.plot:
        plot(r, args.plot)
    if any(row["status"] == "error" for row in r["rows"]):
        raise SystemExit(1)


def cmd_device(args) -> None:
    from edgesdk import devices

    if args.device_cmd == "list":
        rows = [{"profile": p.name, "description": p.description, "TensorRT": f"{p.tensorrt_module} {p.tensorrt_version}".strip(),
                 "JetPack": p.jetpack, "CC": p.compute_capability, "DLA": p.dla_cores,
                 "precisions": ",".join(p.gpu_precisions), "camera": p.camera} for p in devices.list_profiles()]
        _emit(args, {"profiles": rows}, table(rows, title="device profiles (devices/*.toml)"))
    elif args.device_cmd == "info":
        f = devices.detect()
        rows = [{"fact": k, "value": ", ".join(map(str, v)) if isinstance(v, list) and not (v and isinstance(v[0], dict))
                 else ("; ".join(g["name"] + " cc " + g["compute_capability"] for g in v) if isinstance(v, list) else v)}
                for k, v in f.items()]
        _emit(args, f, table(rows, title="this machine"))
    else:
        from edgesdk.bundle import Bundle

        prof = devices.load_profile(args.device)
        checks = devices.check_bundle(Bundle.open(args.bundle), prof, args.dla, args.batch)
        verdict = "fail" if any(c.status == "fail" for c in checks) else "ok"
        rows = [{"check": c.name, "status": c.status.upper(), "detail": c.detail} for c in checks]
        text = table(rows, title=f"{args.bundle} on {prof.name}") + \
            f"\n{'will run' if verdict == 'ok' else 'will NOT run'} on {prof.name}"
        _emit(args, {"device": prof.name, "runs": verdict == "ok",
                     "checks": [vars(c) for c in checks]}, text)
        if verdict != "ok":
            raise SystemExit(1)


def cmd_eval(args) -> None:
    from edgesdk.measure.evaluate import evaluate

    r = evaluate(args.bundle, args.data, _detector_opts(args), progress=not args.json)
    lat = r["latency_ms"]
    text = table([{"data": str(args.data), "images": r["n_images"], "image AUROC": r["image_auroc"],
                   "pixel AUROC": r["pixel_auroc"], "F1": r["f1"], "threshold": r["threshold"],
                   "p50 ms": lat["p50"], "p90 ms": lat["p90"], "p99 ms": lat["p99"]}], title="accuracy")
    text += "\n\n" + _stage_table(r["latency_ms_by_stage"],
                                  f"latency per stage ({', '.join(r['providers'])}, batch 1)")
    _emit(args, r, text)


def cmd_predict(args) -> None:
    from edgesdk.images import read_image
    from edgesdk.stream.detector import Detector
    from edgesdk.viz import save_overlay

    rows = []
    with Detector(args.bundle, _detector_opts(args)) as det:
        for path in args.images:
            img = read_image(path)
            r = det.predict(img)
            row = {"image": str(path), "score": r.score, "is_anomalous": r.is_anomalous,
                   "regions": [x.to_dict() for x in r.regions], "latency_ms": r.latency_ms["total"]}
            if args.save:
                row["overlay"] = str(save_overlay(Path(args.save) / f"{Path(path).stem}_overlay.png", img,
                                                  r, det.threshold))
            rows.append(row)
    text = table([{"image": r["image"], "score": r["score"], "verdict": "DEFECT" if r["is_anomalous"] else "ok",
                   "regions": len(r["regions"]), "ms": r["latency_ms"]} for r in rows])
    _emit(args, {"threshold": det.threshold, "results": rows}, text)


def _count(text: str) -> int:
    """argparse type of --max-frames, --frames, --streams: a whole number >= 1 (0 would score nothing)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def cmd_run(args) -> None:
    from edgesdk.stream.pipeline import run_stream

    def show(rec):
        if args.verbose:
            print(f"frame {rec['frame_id']:5d}  score {rec['score']:7.3f}  "
                  f"{'DEFECT' if rec['is_anomalous'] else 'ok':6s}  {rec['latency_ms']['total']:6.2f} ms")

    s = run_stream(args.bundle, args.source, args.sink, _detector_opts(args), args.max_frames, show,
                   streams=args.streams, strict=args.strict)
    text = (f"{s['frames']} frames, {s['anomalous_frames']} anomalous, {s['fps']:.1f} FPS "
            f"({s['streams']} stream{'s' * (s['streams'] > 1)}) -> {', '.join(s['sinks'])}\n")
    if s["errors"]:
        text += f"{s['errors']} unreadable image(s) skipped; their records carry an \"error\" field\n"
    text += _stage_table(s["latency_ms"], "latency per stage")
    _emit(args, s, text)


def cmd_calibrate(args) -> None:
    from edgesdk.stream.calibrate import calibrate

    st = calibrate(args.bundle, args.source, args.out, args.frames, args.k_sigma, _detector_opts(args),
                   force=args.force)
    text = table([{"bundle": args.out, "frames": st["frames"], "good mean z": st["mean"], "good std z": st["std"],
                   "threshold": f"{st['old_threshold']:.3f} -> {st['threshold']:.3f}",
                   "good flagged before": st["flagged_at_old_threshold"],
                   "good flagged after": st["flagged_at_new_threshold"], "suspect frames": st["suspect_frames"]}],
                 title=f"line calibration on {args.source}")
    _emit(args, st, text)


def cmd_soak(args) -> None:
    from edgesdk.fsutil import write_json
    from edgesdk.stream.soak import plot, soak

    r = soak(args.bundle, args.source, args.frames, args.sink, opts=_detector_opts(args), streams=args.streams)
    if args.out_json:
        write_json(args.out_json, r)
    if args.plot:
        plot(r, args.plot)
    text = table([{k: r[k] for k in ("frames", "fps", "dropped_frames", "rss_mb_start", "rss_mb_after_warmup",
                                     "rss_mb_end", "rss_growth_mb", "slope_mb_per_10k_frames")}],
                 title=f"soak: {args.bundle} on {args.source}")
    _emit(args, {k: v for k, v in r.items() if k != "samples"}, text)


def cmd_demo(args) -> None:
    from edgesdk.demo import MODELS, demo

    demo(args.out, categories=args.categories, quick=args.quick, full=args.full,
         models=tuple(args.models) if args.models else MODELS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesdk", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log what sources/sinks resolved")
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("synth", help="sample data set in MVTec AD layout + conveyor video")
    s.add_argument("out")
    s.add_argument("--categories", nargs="+")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--n-train", type=int, default=200)
    s.add_argument("--n-test-good", type=int, default=20)
    s.add_argument("--n-test-per-defect", type=int, default=8)
    s.add_argument("--no-video", action="store_true")
    s.add_argument("--force", action="store_true", help="replace category folders this command did not make")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("train", help="fit a model on good images -> run folder")
    s.add_argument("--recipe", help="export/NAME.toml (or a path): model, backbone, config; flags override it")
    s.add_argument("--model", choices=["padim", "patchcore", "stfpm"], help="default: the recipe's, else padim")
    s.add_argument("--data", required=True, help="MVTec category folder or a folder of good images")
    s.add_argument("--out", required=True)
    s.add_argument("--val", help="labelled folder (good/ + defect folders) for an F1-optimal threshold")
    s.add_argument("--backbone", choices=["efficientnet_lite0", "resnet18", "wide_resnet50_2"])
    s.add_argument("--backbone-weights", help="state dict for the backbone (torchvision's for the ResNets)")
    s.add_argument("--size", type=int, help="model input size (square), default 256")
    s.add_argument("--feature-dim", type=int)
    s.add_argument("--coreset-ratio", type=float, help="patchcore: share of fit patches kept in the bank")
    s.add_argument("--steps", type=int, help="stfpm: training step budget")
    s.add_argument("--seconds", type=float, help="stfpm: training time budget")
    s.add_argument("--holdout", type=float)
    s.add_argument("--k-sigma", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--camera-augment", type=lambda v: v.split(","), metavar="KINDS",
                   help="fit on each image again as the line's camera delivers it: mp4v, jpeg:Q (comma-separated)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("run"))
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("export", help="run folder -> verified ONNX bundle")
    s.add_argument("run")
    s.add_argument("--out", required=True)
    s.add_argument("--recipe", help="take export options from this recipe (default: the run's recipe)")
    s.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    s.add_argument("--target", choices=["cpu", "tensorrt"],
                   help="int8 layout: cpu = ONNX Runtime U8S8 (fast on x86/Arm CPUs), tensorrt = symmetric "
                        "explicit quantization (+ calib.cache); fp16 needs tensorrt")
    s.add_argument("--calib", help="folder of the line's good images to calibrate on (default: the run's fit images)")
    s.add_argument("--n-calib", type=int, help="calibration images used (default 64)")
    s.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"])
    s.add_argument("--max-drop", type=float, help="largest image-AUROC drop vs float accepted (default 0.005)")
    s.add_argument("--val", help="labelled folder (good/, <defect>/) for the gate (default: the run's DATA/test)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("bundle"))
    s.set_defaults(fn=cmd_export)

    def runtime_args(s):
        s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
        s.add_argument("--engine", help="tensorrt: plan file (default: the match in BUNDLE/engines/)")
        s.add_argument("--providers", default="auto", help="ONNX Runtime provider, or auto")
        s.add_argument("--threshold", type=_finite_float, help="override the bundle's threshold")
        s.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("eval", help="score an MVTec-layout test set with a bundle")
    s.add_argument("bundle")
    s.add_argument("--data", required=True)
    runtime_args(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("predict", help="score images")
    s.add_argument("bundle")
    s.add_argument("images", nargs="+")
    s.add_argument("--save", help="folder for heatmap overlays")
    runtime_args(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("run", help="score every frame of a stream into sinks")
    s.add_argument("bundle")
    s.add_argument("--source", required=True,
                   help="file://video.mp4 or a path, a folder of images, v4l2:///dev/video0, rtsp://..., "
                        "http://... (MJPEG), csi://0, synth://conveyor; options ?fps=&loop=&roi=&size=")
    s.add_argument("--sink", action="append", required=True, help="jsonl://out.jsonl, dir://overlays/")
    s.add_argument("--max-frames", type=_count, help="stop after this many frames (default: the source's end)")
    s.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be read (default: record it with an error, go on)")
    s.add_argument("--streams", type=_count, default=1,
                   help="frames in flight (ONNX Runtime): 1 = lowest latency; 2 on a 2-core CPU = 8-21%% more "
                        "frames a second at ~1.7x the latency (file backlogs, cameras faster than the model)")
    runtime_args(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("calibrate", help="re-derive the threshold on known-good frames of the line's own "
                                         "source, into a new bundle (the original stays intact)")
    s.add_argument("bundle")
    s.add_argument("--source", required=True, help="known-good frames: file://good.mp4, a folder, a camera URI")
    s.add_argument("--frames", type=int, default=200, help="frames to score (default 200, at least 30)")
    s.add_argument("--out", required=True, help="the calibrated bundle's folder")
    s.add_argument("--k-sigma", type=float, help="threshold = mean + k std of the good scores "
                                                 "(default: the bundle's own k, else 3)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("bundle"))
    runtime_args(s)
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("soak", help="run the stream loop for many frames and show resident memory stays flat")
    s.add_argument("bundle")
    s.add_argument("--source", required=True, help="e.g. line.mkv?loop=1 or synth://conveyor (endless sources)")
    s.add_argument("--frames", type=_count, default=20000)
    s.add_argument("--sink", action="append", default=[], help="sinks to keep on during the soak")
    s.add_argument("--out-json", help="write the result (with every RSS sample) here")
    s.add_argument("--plot", help="PNG of RSS over frames")
    s.add_argument("--streams", type=_count, default=1, help="frames in flight, as for run")
    runtime_args(s)
    s.set_defaults(fn=cmd_soak)

    s = sub.add_parser("build", help="bundle -> TensorRT engine for a device profile (raw plan + sidecar)")
    s.add_argument("bundle")
    s.add_argument("--device", required=True, help="profile name in devices/ (orin-nx, rtx, ...) or a path to your "
                   "own profile (a value with / or ending in .toml is a path)")
    s.add_argument("--out", help="engine folder (default BUNDLE/engines)")
    s.add_argument("--batch", type=_batch, default=(1, 1, 4), help="optimization profile MIN:OPT:MAX (default 1:1:4)")
    s.add_argument("--workspace", type=_workspace, default=1024, help="builder workspace, MB")
    s.add_argument("--dla", type=_dla, default=-1, help="DLA core (Jetson Orin/Xavier); layers it lacks run on the GPU")
    s.add_argument("--force", action="store_true", help="rebuild even if a matching plan exists")
    s.add_argument("--no-timing-cache", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser("compare", help="two bundles side by side on labelled data: AUROC, score differences, "
                                       "verdict flips, size, ONNX Runtime p50")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--data", required=True, help="MVTec category (uses test/) or a labelled folder (good/, <defect>/)")
    s.add_argument("--json", help="write the comparison here")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("verify", help="run an engine on the bundle's parity frames and compare with ONNX Runtime")
    s.add_argument("engine")
    s.add_argument("--bundle", required=True)
    s.add_argument("--tolerance", type=_tolerance, help="max score difference (default 0.05 fp32, 0.25 fp16/int8)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("bench", help="latency/throughput/memory/accuracy of bundles per backend and batch, one table")
    s.add_argument("bundles", nargs="+")
    s.add_argument("--data", help="MVTec category: real frames and image AUROC (default: the parity frames)")
    s.add_argument("--backends", default="torch,onnxruntime,tensorrt")
    s.add_argument("--batch", default="1", help="batch sizes, e.g. 1,4")
    s.add_argument("--iters", type=int, default=200, help="timed calls per row")
    s.add_argument("--seconds", type=float, help="time budget for all rows instead of --iters")
    s.add_argument("--run", help="run folder of the torch baseline (default: the one each bundle records)")
    s.add_argument("--no-cold-start", action="store_true")
    s.add_argument("--e2e", help="source URI (file://clip.mkv, a folder...): add the stream pipeline row")
    s.add_argument("--json", help="write the result as JSON")
    s.add_argument("--md", help="write a Markdown table")
    s.add_argument("--plot", help="write a PNG latency plot")
    s.set_defaults(fn=cmd_bench)

    dev = sub.add_parser("device", help="device profiles, this machine, will a bundle run there")
    dsub = dev.add_subparsers(dest="device_cmd", required=True)
    s = dsub.add_parser("list", help="shipped device profiles")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_device)
    s = dsub.add_parser("info", help="detect this machine and the profile that matches")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_device)
    s = dsub.add_parser("check", help="will BUNDLE run on --device, and why not")
    s.add_argument("bundle")
    s.add_argument("--device", required=True, help="profile name in devices/ or a path to a .toml (as for build)")
    s.add_argument("--dla", type=_dla, default=-1)
    s.add_argument("--batch", type=_batch, default=(1, 1, 4))
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_device)

    s = sub.add_parser("demo", help="sample data -> train -> export -> eval -> stream, with tables")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--categories", nargs="+")
    s.add_argument("--quick", action="store_true", help="small images and few of them (a smoke run)")
    s.add_argument("--full", action="store_true", help="the student-teacher's full training budget (README table)")
    s.add_argument("--models", nargs="+", choices=["padim", "patchcore", "stfpm"], help="default: all three")
    s.set_defaults(fn=cmd_demo)

    from edgesdk.deploy.commands import add_commands   # keygen, pack, inspect, install, stage, rollback, status

    add_commands(sub)
    from edgesdk.fleet.commands import add_commands as add_fleet   # agent, rollout, fleet status|forget

    add_fleet(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        # Our errors name the file and the problem; a traceback would bury that.
        print(f"edgesdk {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
