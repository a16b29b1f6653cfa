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
    summary = synth_dataset(args.out, args.categories or sorted(TEXTURES), cfg, video=not args.no_video)
    rows = [{"category": c, **counts} for c, counts in summary.items()]
    print(table(rows, title=f"sample data -> {args.out}"))


def cmd_train(args) -> None:
    from edgesdk.train import TrainOptions, train

    config = {"input_size": [args.size, args.size]} if args.size else {}
    if args.feature_dim:
        config["feature_dim"] = args.feature_dim
    out = train(args.data, args.out, args.model, val=args.val, config=config,
                opts=TrainOptions(holdout=args.holdout, k_sigma=args.k_sigma, seed=args.seed))
    run = json.loads((out / "run.json").read_text())
    print(table([{"run": str(out), "model": run["model"], "fit images": run["data"]["n_fit"],
                  "held out": run["data"]["n_holdout"], "threshold": run["threshold"]["value"],
                  "threshold source": run["threshold"]["source"], "fit s": run["timing_s"]["fit"]}]))


def cmd_export(args) -> None:
    from edgesdk.build.onnx import ExportOptions, export_onnx

    out = export_onnx(args.run, args.out, ExportOptions(precision=args.precision))
    from edgesdk.bundle import Bundle

    b = Bundle.open(out)
    par = b.manifest.metrics["parity_vs_torch"]
    print(table([{"bundle": str(out), "precision": b.manifest.precision,
                  "onnx MB": b.manifest.files["model.onnx"].bytes / 1e6,
                  "threshold": b.threshold, "parity score rel err": f"{par['score_max_rel_err']:.1e}",
                  "parity map rel err": f"{par['map_max_rel_err']:.1e}"}]))


def _detector_opts(args):
    from edgesdk.runtime import DetectorOptions

    return DetectorOptions(providers=args.providers, threshold=args.threshold)


def cmd_eval(args) -> None:
    from edgesdk.evaluate import evaluate

    r = evaluate(args.bundle, args.data, _detector_opts(args), progress=not args.json)
    lat = r["latency_ms"]
    text = table([{"data": str(args.data), "images": r["n_images"], "image AUROC": r["image_auroc"],
                   "pixel AUROC": r["pixel_auroc"], "F1": r["f1"], "threshold": r["threshold"],
                   "p50 ms": lat["p50"], "p90 ms": lat["p90"], "p99 ms": lat["p99"]}], title="accuracy")
    text += "\n\n" + _stage_table(r["latency_ms_by_stage"],
                                  f"latency per stage ({', '.join(r['providers'])}, batch 1)")
    _emit(args, r, text)


def cmd_predict(args) -> None:
    import cv2

    from edgesdk.data.mvtec import read_image
    from edgesdk.runtime import Detector
    from edgesdk.viz import overlay

    rows = []
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    with Detector(args.bundle, _detector_opts(args)) as det:
        for path in args.images:
            img = read_image(path)
            r = det.predict(img)
            row = {"image": str(path), "score": r.score, "is_anomalous": r.is_anomalous,
                   "regions": [x.to_dict() for x in r.regions], "latency_ms": r.latency_ms["total"]}
            if args.save:
                dest = Path(args.save) / f"{Path(path).stem}_overlay.png"
                cv2.imwrite(str(dest), overlay(img, r.anomaly_map, det.threshold, r.regions))
                row["overlay"] = str(dest)
            rows.append(row)
    text = table([{"image": r["image"], "score": r["score"], "verdict": "DEFECT" if r["is_anomalous"] else "ok",
                   "regions": len(r["regions"]), "ms": r["latency_ms"]} for r in rows])
    _emit(args, {"threshold": det.threshold, "results": rows}, text)


def cmd_run(args) -> None:
    from edgesdk.pipeline import run_stream

    def show(rec):
        if args.verbose:
            print(f"frame {rec['frame_id']:5d}  score {rec['score']:7.3f}  "
                  f"{'DEFECT' if rec['is_anomalous'] else 'ok':6s}  {rec['latency_ms']['total']:6.2f} ms")

    s = run_stream(args.bundle, args.source, args.sink, _detector_opts(args), args.max_frames, show)
    text = f"{s['frames']} frames, {s['anomalous_frames']} anomalous, {s['fps']:.1f} FPS -> {', '.join(args.sink)}\n"
    text += _stage_table(s["latency_ms"], "latency per stage")
    _emit(args, s, text)


def cmd_demo(args) -> None:
    from edgesdk.demo import demo

    demo(args.out, categories=args.categories, quick=args.quick)


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
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("train", help="fit a model on good images -> run folder")
    s.add_argument("--model", default="padim")
    s.add_argument("--data", required=True, help="MVTec category folder or a folder of good images")
    s.add_argument("--out", required=True)
    s.add_argument("--val", help="labelled folder (good/ + defect folders) for an F1-optimal threshold")
    s.add_argument("--size", type=int, help="model input size (square), default 256")
    s.add_argument("--feature-dim", type=int)
    s.add_argument("--holdout", type=float, default=0.2)
    s.add_argument("--k-sigma", type=float, default=3.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("export", help="run folder -> verified ONNX bundle")
    s.add_argument("run")
    s.add_argument("--out", required=True)
    s.add_argument("--precision", default="fp32", choices=["fp32"])
    s.set_defaults(fn=cmd_export)

    def runtime_args(s):
        s.add_argument("--providers", default="auto", help="ONNX Runtime provider, or auto")
        s.add_argument("--threshold", type=float, help="override the bundle's threshold")
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
    s.add_argument("--source", required=True, help="file://video.mkv, a folder of images, ...")
    s.add_argument("--sink", action="append", required=True, help="jsonl://out.jsonl, dir://overlays/")
    s.add_argument("--max-frames", type=int)
    runtime_args(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="sample data -> train -> export -> eval -> stream, with tables")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--categories", nargs="+")
    s.add_argument("--quick", action="store_true", help="small images and few of them (a smoke run)")
    s.set_defaults(fn=cmd_demo)
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
