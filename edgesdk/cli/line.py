"""`edgesdk predict | run | calibrate | adapt`: a bundle on the line's images, streams and known-good
frames (device side, no torch)."""

from __future__ import annotations

from edgesdk.cli._common import (
    FORCE_HELP,
    count,
    detector_opts,
    emit,
    finite_float,
    max_pixels_arg,
    runtime_args,
    stage_table,
    table,
)


def cmd_predict(args) -> None:
    from edgesdk.stream.detector import predict_files

    r = predict_files(args.bundle, args.images, detector_opts(args), save=args.save)
    text = table(
        [
            {
                "image": x["image"],
                "score": x["score"],
                "verdict": "DEFECT" if x["is_anomalous"] else "ok",
                "regions": len(x["regions"]),
                "ms": x["latency_ms"],
            }
            for x in r["results"]
        ]
    )
    emit(args, {"threshold": r["threshold"], "results": r["results"]}, text)


def cmd_run(args) -> None:
    from edgesdk.stream.drift import DriftOptions
    from edgesdk.stream.pipeline import run_stream

    def show(rec):
        if args.verbose:
            print(
                f"frame {rec['frame_id']:5d}  score {rec['score']:7.3f}  "
                f"{'DEFECT' if rec['is_anomalous'] else 'ok':6s}  {rec['latency_ms']['total']:6.2f} ms"
            )

    s = run_stream(
        args.bundle,
        args.source,
        args.sink,
        detector_opts(args),
        args.max_frames,
        show,
        streams=args.streams,
        strict=args.strict,
        drift=DriftOptions.preset(args.drift),
        batch_deadline_ms=args.batch_deadline_ms,
    )
    text = (
        f"{s['frames']} frames, {s['anomalous_frames']} anomalous, {s['fps']:.1f} FPS "
        f"({s['streams']} stream{'s' * (s['streams'] > 1)}) -> {', '.join(s['sinks'])}\n"
    )
    if s["drift"] and any(s["drift"]["events"].values()):
        text += "drift events: " + ", ".join(f"{k} {n}" for k, n in s["drift"]["events"].items() if n) + "\n"
    for name, c in s.get("sources", {}).items():
        text += f"  {name}: {c['frames']} frames, {c['anomalous_frames']} anomalous, {c['dropped_frames']} dropped\n"
    if s["errors"]:
        text += f'{s["errors"]} unreadable image(s) skipped; their records carry an "error" field\n'
    text += stage_table(s["latency_ms"], "latency per stage")
    emit(args, s, text)


def cmd_calibrate(args) -> None:
    from edgesdk.stream.calibrate import calibrate

    st = calibrate(
        args.bundle,
        args.source,
        args.out,
        args.frames,
        args.k_sigma,
        detector_opts(args),
        progress=not args.quiet,
        force=args.force,
    )
    per = st["sources"] if len(args.source) > 1 else {args.source[0]: st}
    rows = [
        {
            **({"source": name} if len(per) > 1 else {"bundle": args.out}),
            "frames": x["frames"],
            "good mean z": x["mean"],
            "good std z": x["std"],
            "threshold": f"{x['old_threshold']:.3f} -> {x['threshold']:.3f}",
            "good flagged before": x["flagged_at_old_threshold"],
            "good flagged after": x["flagged_at_new_threshold"],
            "suspect frames": x["suspect_frames"],
        }
        for name, x in per.items()
    ]
    title = f"line calibration on {args.source[0]}" if len(per) == 1 else f"per-source calibration into {args.out}"
    emit(args, st, table(rows, title=title))


def cmd_adapt(args) -> None:
    from edgesdk.stream.adapt import AdaptOptions, adapt

    opts = AdaptOptions(
        good=args.good or "",
        source=args.source or "",
        frames=args.frames or 0,
        val=args.val or "",
        gate=not args.no_gate,
        k_sigma=args.k_sigma,
        max_pixels=args.max_pixels,
    )
    r = adapt(args.bundle, args.out, opts, progress=not args.quiet and not args.json, force=args.force)
    g, t, fa = r["gate"], r["threshold"], r["false_alarms"]
    size = (
        f"N {r['n_before']} -> {r['n_after']}"
        if "n_after" in r
        else f"bank {r['bank_size']} ({r['new_patches']} new patches)"
    )
    row = {
        "bundle": args.out,
        "model": r["model"],
        "frames used": len(r["fit_frames"]),
        "held out": len(r["holdout_frames"]),
        "suspect": len(r["suspect_frames"]),
        "statistics": size,
        "threshold": f"{t['old']:.3f} -> {t['new']:.3f}",
        "false alarms (held out)": f"{fa['old_on_holdout']:.2f} -> {fa['new_on_holdout']:.2f}",
    }
    if g["checked"]:
        row["recall (val)"] = f"{g['recall']['old']:.2f} -> {g['recall']['new']:.2f}"
        row["false alarms (val)"] = f"{g['false_alarm_rate']['old']:.2f} -> {g['false_alarm_rate']['new']:.2f}"
    else:
        row["gate"] = "skipped (--no-gate)"
    emit(args, r, table([row], title=f"adapted {args.bundle} on {args.good or args.source}"))


def add_commands(sub) -> None:
    s = sub.add_parser("predict", help="score images")
    s.add_argument("bundle")
    s.add_argument("images", nargs="+")
    s.add_argument("--save", help="folder for heatmap overlays")
    runtime_args(s)
    max_pixels_arg(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("run", help="score every frame of a stream into sinks")
    s.add_argument("bundle")
    s.add_argument(
        "--source",
        action="append",
        required=True,
        help="file://video.mp4 or a path, a folder of images, v4l2:///dev/video0, rtsp://..., "
        "http://... (MJPEG), csi://0, synth://conveyor; options ?fps=&loop=&roi=&size=, and ?tile=N|auto&overlap=N "
        "to score high-resolution frames tile by tile; given more than once, the sources' frames are batched "
        "into one inference call (each source may add ?name=&threshold=)",
    )
    s.add_argument("--sink", action="append", required=True, help="jsonl://out.jsonl, dir://overlays/")
    s.add_argument(
        "--batch-deadline-ms",
        type=float,
        default=10.0,
        help="several sources: how long a frame waits for the other sources' frames before its batch "
        "runs without them (default 10)",
    )
    s.add_argument("--max-frames", type=count, help="stop after this many frames (default: the source's end)")
    s.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image that cannot be read (default: record it with an error, go on)",
    )
    s.add_argument(
        "--streams",
        type=count,
        default=1,
        help="frames in flight (ONNX Runtime): 1 = lowest latency; 2 on a 2-core CPU = 8-21%% more "
        "frames a second at ~1.7x the latency (file backlogs, cameras faster than the model)",
    )
    s.add_argument(
        "--drift",
        default="normal",
        choices=["off", "low", "normal", "high"],
        help="drift alarms' sensitivity: score shift against the calibration, brightness, contrast, "
        "sharpness, camera shift (default normal; the references come from `calibrate`)",
    )
    runtime_args(s)
    max_pixels_arg(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser(
        "calibrate",
        help="re-derive the threshold on known-good frames of the line's own "
        "source, into a new bundle (the original stays intact)",
    )
    s.add_argument("bundle")
    s.add_argument(
        "--source",
        action="append",
        required=True,
        help="known-good frames: file://good.mp4, a folder, a camera URI; given more than once, each source "
        "(named by ?name=, else its URI, as for `run`) gets its own threshold and drift reference, which a "
        "run with several sources picks by name",
    )
    s.add_argument("--frames", type=int, default=200, help="frames to score (default 200, at least 30)")
    s.add_argument("--out", required=True, help="the calibrated bundle's folder")
    s.add_argument(
        "--k-sigma",
        type=float,
        help="threshold = mean + k std of the good scores (default: the bundle's own k, else 3)",
    )
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("bundle"))
    runtime_args(s)
    max_pixels_arg(s)
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser(
        "adapt",
        help="teach a PaDiM or PatchCore bundle the line's new normal from confirmed-good "
        "frames, on the device, into a new gated bundle (the original stays intact)",
    )
    s.add_argument("bundle")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--good", help="folder of confirmed-good frames (e.g. false alarms dir:// saved)")
    src.add_argument("--source", help="a source URI of good parts: file://good.mp4, a folder, a camera")
    s.add_argument("--frames", type=count, help="at most this many frames (default: all of --good, 50 of --source)")
    s.add_argument(
        "--val",
        help="labelled folder (good/ and one folder per defect kind): defect recall on it "
        "must not fall, or nothing is written",
    )
    s.add_argument("--no-gate", action="store_true", help="write without the recall check on --val")
    s.add_argument(
        "--k-sigma",
        type=finite_float,
        help="threshold = mean + k std of held-out good scores (default: the bundle's own k, else 3)",
    )
    s.add_argument("--out", required=True, help="the adapted bundle's folder")
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("bundle"))
    max_pixels_arg(s)
    s.add_argument("--json", action="store_true", help="print the report as one JSON object")
    s.set_defaults(fn=cmd_adapt)
