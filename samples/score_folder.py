"""Score a folder of images with a bundle, on a device: no torch, only the base install.

    python samples/score_folder.py BUNDLE FOLDER [--save OVERLAYS]

Prints one line per image and the verdict counts; with --save, writes heatmap overlays."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgesdk.images import list_images, read_image
from edgesdk.measure.metrics import latency_stats
from edgesdk.stream.detector import Detector
from edgesdk.viz import save_overlay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("folder")
    ap.add_argument("--save", type=Path, help="folder for overlays of anomalous images")
    args = ap.parse_args()

    latencies, n_bad = [], 0
    with Detector(args.bundle) as det:                     # verifies the bundle's sha256s
        print(f"threshold {det.threshold:.2f} ({det.bundle.manifest.threshold.source})")
        for path in list_images(args.folder):
            image = read_image(path)                       # (h, w, 3) uint8 BGR, any size
            r = det.predict(image)
            latencies.append(r.latency_ms["total"])
            n_bad += r.is_anomalous
            boxes = " ".join(str(reg.bbox) for reg in r.regions)
            print(f"{path.name:20s} {r.score:7.2f}  {'DEFECT' if r.is_anomalous else 'ok':6s} {boxes}")
            if args.save and r.is_anomalous:
                save_overlay(args.save / path.name, image, r, det.threshold)   # raises if it cannot write
    lat = latency_stats(latencies)
    print(f"{n_bad}/{len(latencies)} anomalous; latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")


if __name__ == "__main__":
    main()
