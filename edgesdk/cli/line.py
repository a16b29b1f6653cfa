"""`edgesdk predict | run | calibrate`: a bundle on the line's images, streams and known-good frames
(device side, no torch)."""

from __future__ import annotations

from edgesdk.cli._common import FORCE_HELP, count, detector_opts, emit, runtime_args, stage_table, table


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
    )
    text = (
        f"{s['frames']} frames, {s['anomalous_frames']} anomalous, {s['fps']:.1f} FPS "
        f"({s['streams']} stream{'s' * (s['streams'] > 1)}) -> {', '.join(s['sinks'])}\n"
    )
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
    text = table(
        [
            {
                "bundle": args.out,
                "frames": st["frames"],
                "good mean z": st["mean"],
                "good std z": st["std"],
                "threshold": f"{st['old_threshold']:.3f} -> {st['threshold']:.3f}",
                "good flagged before": st["flagged_at_old_threshold"],
                "good flagged after": st["flagged_at_new_threshold"],
                "suspect frames": st["suspect_frames"],
            }
        ],
        title=f"line calibration on {args.source}",
    )
    emit(args, st, text)


def add_commands(sub) -> None:
    s = sub.add_parser("predict", help="score images")
    s.add_argument("bundle")
    s.add_argument("images", nargs="+")
    s.add_argument("--save", help="folder for heatmap overlays")
    runtime_args(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("run", help="score every frame of a stream into sinks")
    s.add_argument("bundle")
    s.add_argument(
        "--source",
        required=True,
        help="file://video.mp4 or a path, a folder of images, v4l2:///dev/video0, rtsp://..., "
        "http://... (MJPEG), csi://0, synth://conveyor; options ?fps=&loop=&roi=&size=",
    )
    s.add_argument("--sink", action="append", required=True, help="jsonl://out.jsonl, dir://overlays/")
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
    runtime_args(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser(
        "calibrate",
        help="re-derive the threshold on known-good frames of the line's own "
        "source, into a new bundle (the original stays intact)",
    )
    s.add_argument("bundle")
    s.add_argument("--source", required=True, help="known-good frames: file://good.mp4, a folder, a camera URI")
    s.add_argument("--frames", type=int, default=200, help="frames to score (default 200, at least 30)")
    s.add_argument("--out", required=True, help="the calibrated bundle's folder")
    s.add_argument(
        "--k-sigma",
        type=float,
        help="threshold = mean + k std of the good scores (default: the bundle's own k, else 3)",
    )
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("bundle"))
    runtime_args(s)
    s.set_defaults(fn=cmd_calibrate)
