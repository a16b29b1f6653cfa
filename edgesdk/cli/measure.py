"""`edgesdk eval | bench | compare | soak`: accuracy, latency, two bundles side by side, memory over a
long run. Each calls its edgesdk.measure / edgesdk.stream function and prints its tables."""

from __future__ import annotations

from pathlib import Path

from edgesdk.cli._common import (
    count,
    detector_opts,
    emit,
    max_pixels_arg,
    progress_on,
    runtime_args,
    stage_table,
    table,
)
from edgesdk.cli.scale import scale_args


def cmd_eval(args) -> None:
    from edgesdk.measure.evaluate import evaluate

    r = evaluate(args.bundle, args.data, detector_opts(args), progress=progress_on(args), max_pixels=args.max_pixels)
    lat = r["latency_ms"]
    text = table(
        [
            {
                "images": r["n_images"],
                "image AUROC": r["image_auroc"],
                "pixel AUROC": r["pixel_auroc"],
                "AUPRO": r["aupro"],
                "F1": r["f1"],
                "pixel F1": r["pixel_f1"],
                "pixel IoU": r["pixel_iou"],
                "threshold": r["threshold"],
                "p50 ms": lat["p50"],
                "p90 ms": lat["p90"],
                "p99 ms": lat["p99"],
            }
        ],
        title=f"accuracy on {args.data} (F1, pixel F1/IoU and recall at the threshold)",
    )
    text += "\n\n" + table(
        [
            {"defect": k, "images": v["n_images"], "image AUROC": v["image_auroc"], "recall": r["recall_by_kind"][k]}
            for k, v in r["per_defect"].items()
        ],
        title="per defect kind",
    )
    text += "\n\n" + stage_table(r["latency_ms_by_stage"], f"latency per stage ({', '.join(r['providers'])}, batch 1)")
    emit(args, r, text)


def cmd_compare(args) -> None:
    if args.images is not None:
        return _compare_archives(args)
    if args.out or args.labels:
        raise ValueError("--out and --labels go with --images (an archive); --data compares on a test set")
    from edgesdk.fsutil import write_json
    from edgesdk.measure.compare import compare_bundles

    r = compare_bundles(args.a, args.b, args.data, max_pixels=args.max_pixels)
    rows = [{k: v for k, v in row.items() if k != "recall_by_kind"} for row in r["rows"]]
    print(table(rows, title=f"{args.a} vs {args.b} on {r['pair']['n_images']} images of {args.data}"))
    a, b = (row["recall_by_kind"] for row in r["rows"])
    print(table([{"defect": k, "recall A": a[k], "recall B": b[k]} for k in a], title="recall per defect kind"))
    p = r["pair"]
    print(
        table(
            [
                {
                    "max |d score|": p["score_max_abs_diff"],
                    "mean |d score|": p["score_mean_abs_diff"],
                    "verdict flips": p["verdict_flips"],
                    "image AUROC drop": p["image_auroc_drop"],
                    "AUPRO drop": p["aupro_drop"],
                    "speedup (A/B p50)": f"{p['speedup']:.2f}x",
                }
            ]
        )
    )
    if args.json:
        write_json(args.json, r)


def _compare_archives(args) -> None:
    from edgesdk.cli.scale import scale_opts
    from edgesdk.fsutil import write_json
    from edgesdk.scale.compare import compare_archives

    if not args.out:
        raise ValueError("compare --images needs --out DIR (both bundles' Parquet, flips.csv)")
    r = compare_archives(args.a, args.b, args.images, args.out, scale_opts(args), args.labels)
    f, s = r["flips"], r["shift"]
    print(
        table(
            [
                {"flip": "good -> NG", "images": f["good_to_ng"], "first paths": ", ".join(f["first_good_to_ng"])},
                {"flip": "NG -> good", "images": f["ng_to_good"], "first paths": ", ".join(f["first_ng_to_good"])},
            ],
            title=f"{args.a} (A) -> {args.b} (B) on {r['n_images']} images of {args.images}; every flip: {f['file']}",
        )
    )
    rows = []
    for k in ("a", "b"):
        lab = (r["labels"] or {}).get(k) or {}
        run = r[k]
        rows.append(
            {
                "bundle": k.upper(),
                "NG": r[f"ng_{k}"],
                "errors": run["errors"],
                "median score": (s[k] or {}).get("median"),
                "p95 score": (s[k] or {}).get("p95"),
                "image AUROC": lab.get("image_auroc"),
                "recall": lab.get("recall"),
            }
        )
    print(table(rows, title=f"scores (correlation A-B {s['correlation']}, median B-A {s['median_b_minus_a']})"))
    if r["labels"] is None:
        print("no labels: give --labels CSV (path,label) or an MVTec test folder (good/, <defect>/) for AUROC")
    if args.json:
        write_json(args.json, r)


def _bench_lines(r: dict) -> list[str]:
    """The notes under the bench table: why a row has no numbers, engines built, pipeline rows."""
    lines, said = [], set()
    for row in r["rows"]:
        key = (row["bundle"], row["backend"])
        if key in said:
            continue  # one line per bundle and backend, not per batch
        said.add(key)
        if row.get("reason"):
            lines.append(f"  {row['backend']} ({Path(row['bundle']).name}): {row['reason']}")
        if row.get("engine"):
            lines.append(
                f"  engine built ahead of time: {row['engine']} ({row['engine_mb']:.1f} MB, {row['engine_build_s']} s)"
            )
    for row in r["rows"]:
        if "stage_p50_ms" in row:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stage_p50_ms"].items())
            lines.append(
                f"  pipeline {Path(row['bundle']).name} on {row['source']}: {row['frames']} frames, "
                f"{row['fps']:.1f} FPS = {row['share_of_model_only_fps']:.0%} of model-only; "
                f"stage p50 ms: {stages}"
            )
    return lines


def cmd_bench(args) -> None:
    from edgesdk.fsutil import atomic_write_text, write_json
    from edgesdk.measure.bench_report import cores_text, for_json, markdown, plot, table_rows
    from edgesdk.measure.benchmark import BenchOptions, bench

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise ValueError(f"--batch {args.batch!r}: expected sizes like 1,4") from None
    opts = BenchOptions(
        backends=tuple(args.backends.split(",")),
        batches=batches,
        iters=args.iters,
        seconds=args.seconds or 0.0,
        data=args.data or "",
        run=args.run or "",
        cold_start=not args.no_cold_start,
        e2e=args.e2e or "",
    )
    r = bench(args.bundles, opts)
    print(table(table_rows(r), title=f"bench ({r['method']['frames']}, {r['method']['rounds']} interleaved rounds)"))
    for line in _bench_lines(r):
        print(line)
    print(
        f"harness overhead {r['harness_overhead_ms'] * 1e3:.2f} µs per call; {r['provenance']['cpu']}, "
        f"{cores_text(r['provenance'])}, INT8 instructions: {', '.join(r['provenance']['int8_isa']) or 'none'}"
    )
    if args.json:
        write_json(args.json, for_json(r))
    if args.md:
        atomic_write_text(args.md, markdown(r))
    if args.plot:
        plot(r, args.plot)
    if any(row["status"] == "error" for row in r["rows"]):
        raise SystemExit(1)


def cmd_soak(args) -> None:
    from edgesdk.fsutil import write_json
    from edgesdk.stream.soak import plot, soak

    r = soak(args.bundle, args.source, args.frames, args.sink, opts=detector_opts(args), streams=args.streams)
    if args.out_json:
        write_json(args.out_json, r)
    if args.plot:
        plot(r, args.plot)
    text = table(
        [
            {
                k: r[k]
                for k in (
                    "frames",
                    "fps",
                    "dropped_frames",
                    "rss_mb_start",
                    "rss_mb_after_warmup",
                    "rss_mb_end",
                    "rss_growth_mb",
                    "slope_mb_per_10k_frames",
                )
            }
        ],
        title=f"soak: {args.bundle} on {args.source}",
    )
    emit(args, {k: v for k, v in r.items() if k != "samples"}, text)


def add_commands(sub) -> None:
    s = sub.add_parser("eval", help="score an MVTec-layout test set with a bundle")
    s.add_argument("bundle")
    s.add_argument("--data", required=True)
    max_pixels_arg(s)
    runtime_args(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("soak", help="run the stream loop for many frames and show resident memory stays flat")
    s.add_argument("bundle")
    s.add_argument("--source", required=True, help="e.g. line.mkv?loop=1 or synth://conveyor (endless sources)")
    s.add_argument("--frames", type=count, default=20000)
    s.add_argument("--sink", action="append", default=[], help="sinks to keep on during the soak")
    s.add_argument("--out-json", help="write the result (with every RSS sample) here")
    s.add_argument("--plot", help="PNG of RSS over frames")
    s.add_argument("--streams", type=count, default=1, help="frames in flight, as for run")
    runtime_args(s)
    s.set_defaults(fn=cmd_soak)

    s = sub.add_parser(
        "compare",
        help="two bundles side by side on labelled data (--data: AUROC, score differences, verdict flips, "
        "size, ONNX Runtime p50) or over an image archive (--images: flips with paths, score shift)",
    )
    s.add_argument("a")
    s.add_argument("b")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="MVTec category (uses test/) or a labelled folder (good/, <defect>/)")
    what.add_argument("--images", help="an archive, as for score: a folder (recursive), a glob or a list of paths")
    s.add_argument("--out", help="--images: output folder (A/, B/ Parquet, flips.csv, compare.json); resumable")
    s.add_argument("--labels", help="--images: a CSV of path,label (0/good, 1/NG) for AUROC and recall")
    scale_args(s)
    s.add_argument("--json", help="write the comparison here")
    s.set_defaults(fn=cmd_compare)

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
