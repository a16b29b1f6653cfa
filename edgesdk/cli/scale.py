"""`edgesdk score`: a bundle over an image archive into Parquet (edgesdk.scale.run), on a process
pool or, with --ray, Ray Data."""

from __future__ import annotations

from edgesdk.cli._common import count, emit, progress_on, table


def scale_args(s) -> None:
    """The flags `score` and `compare --images` share."""
    s.add_argument(
        "--batch",
        type=count,
        default=16,
        help="images per ONNX Runtime call, and per Parquet part file of a new --out (a resumed one keeps its own)",
    )
    s.add_argument("--workers", type=count, help="worker processes or Ray actors (default: one per core / Ray CPU)")
    s.add_argument("--threads", type=count, help="ONNX Runtime threads per worker (default: cores / workers)")
    s.add_argument(
        "--max-pixels",
        type=count,
        metavar="N",
        help="an image over N pixels (width x height) is an error row, never decoded (default: 50000000, "
        "or $EDGESDK_MAX_PIXELS)",
    )
    s.add_argument("--ray", metavar="ADDRESS", help="score on Ray Data: HEAD:PORT of a cluster, or local")


def scale_opts(args):
    from edgesdk.scale.run import ScoreOptions

    return ScoreOptions(args.batch, args.workers, args.threads, args.ray, progress_on(args), max_pixels=args.max_pixels)


def cmd_score(args) -> None:
    from edgesdk.scale.run import score_archive

    r = score_archive(args.bundle, args.images, args.out, scale_opts(args))
    keys = ("n_images", "scored", "resumed", "errors", "ng", "good", "engine", "workers", "threads", "images_per_s")
    emit(args, r, table([{k: r[k] for k in keys}], title=f"{args.bundle} on {args.images} -> {r['out']} (Parquet)"))


def add_commands(sub) -> None:
    s = sub.add_parser("score", help="score an image archive into Parquet: process pool, or Ray Data with --ray")
    s.add_argument("bundle")
    s.add_argument("--images", required=True, help="a folder (recursive), a glob pattern, or a text file of paths")
    s.add_argument("--out", required=True, help="output folder: Parquet parts + _run.json; rerun to resume")
    scale_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_score)
