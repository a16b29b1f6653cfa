"""Score a folder of images with a bundle, on a device: no torch, only the base install.

    python samples/score_folder.py BUNDLE FOLDER [--save OVERLAYS]

Prints one line per image and the verdict counts; with --save, writes heatmap overlays of the
anomalous images."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgesdk.images import list_images
from edgesdk.measure.metrics import latency_stats
from edgesdk.stream.detector import predict_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("folder")
    ap.add_argument("--save", type=Path, help="folder for overlays of anomalous images")
    args = ap.parse_args()

    # Verifies the bundle's sha256s, then scores each image (any size) at batch 1; overlays raise if
    # they cannot be written.
    r = predict_files(args.bundle, list_images(args.folder), save=args.save, only_anomalous=True)
    print(f"threshold {r['threshold']:.2f} ({r['threshold_source']})")
    for row in r["results"]:
        boxes = " ".join(str(tuple(reg["bbox"])) for reg in row["regions"])  # x0, y0, x1, y1 in the image
        print(
            f"{Path(row['image']).name:20s} {row['score']:7.2f}  {'DEFECT' if row['is_anomalous'] else 'ok':6s} {boxes}"
        )
    lat = latency_stats([row["latency_ms"] for row in r["results"]])
    n_bad = sum(row["is_anomalous"] for row in r["results"])
    print(f"{n_bad}/{len(r['results'])} anomalous; latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")


if __name__ == "__main__":
    main()
