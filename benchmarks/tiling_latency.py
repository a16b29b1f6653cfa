"""Tiling benchmark: a frame's latency against its tile count, for one bundle (stream/tiling.py).

    python benchmarks/tiling_latency.py BUNDLE [--grids 1x1,2x2,4x3,8x6] [--overlap 0]
        [--rounds 20] [--backend onnxruntime] [--json F]

Each grid COLSxROWS names a frame of that many model-sized tiles (tile=auto: the bundle's input; a
256 px bundle: 256x256, 512x512, 1024x768, 2048x1536 frames; with --overlap the frame is the same
and the grid denser). Each frame is scored ROUNDS times after two warm-up runs by Detector.predict
with DetectorOptions(tile=TileSpec(None, OVERLAP)): tiles cut as one batch, one runner call,
the maps stitched into one in frame pixels, regions found there. Reported per frame: the median
and p90 of the whole predict, the median of each stage (preprocess = cutting the tiles, infer,
postprocess = stitching and regions) and the inference per tile; and for comparison the same frame
scored whole (resized to the model's input, untiled), which is what tiling costs against.
The frames are a noisy gradient: the work per tile does not depend on what the tile shows.
Prints a table and writes JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.stream.tiling import TileSpec
from edgesdk.table import table


def frame_of(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 BGR: a smooth gradient with sensor-like noise."""
    rng = np.random.default_rng(seed)
    ramp = (
        np.linspace(60, 190, w, dtype=np.float32)[None, :, None]
        + np.linspace(-20, 20, h, dtype=np.float32)[:, None, None]
    )
    return np.clip(ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def timed(det: Detector, frame: np.ndarray, rounds: int) -> dict:
    for _ in range(2):
        det.predict(frame)
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = det.predict(frame)
        runs.append({**r.latency_ms, "wall": (time.perf_counter() - t0) * 1e3, "tiles": r.tiles})
    med = lambda k: float(np.median([x[k] for x in runs]))  # noqa: E731
    return {
        "tiles": runs[0]["tiles"],
        "p50_ms": med("wall"),
        "p90_ms": float(np.percentile([x["wall"] for x in runs], 90)),
        "preprocess_ms": med("preprocess"),
        "infer_ms": med("infer"),
        "postprocess_ms": med("postprocess"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--grids", default="1x1,2x2,4x3,8x6", help="frames as COLSxROWS model-sized tiles")
    ap.add_argument("--overlap", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    bundle = Bundle.open(args.bundle)
    mh, mw = bundle.input_size
    base = DetectorOptions(backend=args.backend, threads=args.threads)
    rows = []
    with (
        Detector(bundle, dataclasses.replace(base, tile=TileSpec(None, args.overlap))) as tiled,
        Detector(bundle, base) as whole,
    ):
        for g in args.grids.split(","):
            cols, nrows = (int(v) for v in g.lower().split("x"))
            frame = frame_of(nrows * mh, cols * mw)
            t, u = timed(tiled, frame, args.rounds), timed(whole, frame, args.rounds)
            rows.append(
                {
                    "frame": f"{cols * mw}x{nrows * mh}",
                    **t,
                    "infer_per_tile_ms": t["infer_ms"] / t["tiles"],
                    "untiled_p50_ms": u["p50_ms"],
                }
            )
    print(table(rows, title=f"tiled scoring, {args.bundle} ({mw}x{mh} input, overlap {args.overlap}, {args.backend})"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bundle": args.bundle, "input": [mh, mw], "overlap": args.overlap, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
