"""Adaptation benchmark: a bundle on a line that moved (a new material batch, an ageing lamp) raises false
alarms; does `edgesdk adapt` on a few confirmed-good frames bring them down at unchanged defect recall?

    python benchmarks/adapt_shift.py BUNDLE... --data data/brick [--frames 30] [--gain 0.75]
        [--offset 0] [--tint 1,1,1] [--seed 1] [--json F]

The moved line is fresh synthetic parts (the sample generator with another --seed: none of them in
training) through a photometric change of the whole view: value * gain * tint[BGR] + offset.
  good/   FRAMES of its good parts: what the operator confirms and `adapt --good` reads
  line    its test set (good parts and painted defects): false alarms and recall, before and after
The gate's labelled set (--val) is DATA/test, the line as it was. Prints a table and writes JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.data import mvtec
from edgesdk.data.synth import SynthConfig, write_category
from edgesdk.images import list_images, read_image
from edgesdk.stream.adapt import AdaptError, AdaptOptions, adapt, scores
from edgesdk.table import table


def moved(img: np.ndarray, gain: float, offset: float, tint: np.ndarray) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain * tint + offset, 0, 255).astype(np.uint8)


def rates(bundle: Path, frames: np.ndarray, labels: np.ndarray) -> dict:
    b = Bundle.open(bundle)
    flag = scores(b.model_path, frames, 8) > b.threshold
    return {
        "false_alarms": float(flag[labels == 0].mean()),
        "recall": float(flag[labels == 1].mean()),
        "threshold": b.threshold,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--data", required=True, help="the category the bundles were trained on (MVTec layout)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--gain", type=float, default=0.75)
    p.add_argument("--offset", type=float, default=0.0)
    p.add_argument("--tint", default="1,1,1", help="B,G,R factors")
    p.add_argument("--seed", type=int, default=1, help="synthetic parts of the moved line")
    p.add_argument(
        "--window",
        type=int,
        help="texture pixels one image sees (the generator's knob: a new batch "
        "with coarser or finer grain); default: the training data's",
    )
    p.add_argument("--json")
    a = p.parse_args(argv)
    data = Path(a.data)
    tint = np.asarray([float(x) for x in a.tint.split(",")], np.float32)
    meta = json.loads((data / "edgesdk-synth.json").read_text())
    cfg = SynthConfig(
        **{**meta["config"], "seed": a.seed, "n_train": a.frames, **({"window": a.window} if a.window else {})}
    )
    rows, out = [], []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_category(t / "line", meta["category"], cfg)
        good = t / "good"
        good.mkdir()
        for i, path in enumerate(list_images(t / "line" / meta["category"] / "train/good")):
            cv2.imwrite(str(good / f"frame_{i:06d}.png"), moved(read_image(path), a.gain, a.offset, tint))
        items = mvtec.test_items(t / "line" / meta["category"])
        labels = np.array([it.label for it in items])
        for bundle in map(Path, a.bundles):
            size = Bundle.open(bundle).input_size
            frames = np.stack([moved(read_image(it.path, size), a.gain, a.offset, tint) for it in items])
            before = rates(bundle, frames, labels)
            model = Bundle.open(bundle).manifest.model["name"]
            try:
                r = adapt(
                    bundle,
                    t / f"adapted_{bundle.name}",
                    AdaptOptions(good=str(good), val=str(data / "test")),
                    progress=False,
                )
            except AdaptError as e:  # the gate refused: the line keeps the bundle it has
                out.append({"bundle": str(bundle), "before": before, "refused": str(e)})
                rows.append(
                    {
                        "model": model,
                        "frames": a.frames,
                        "threshold": f"{before['threshold']:.1f}",
                        "line false alarms": f"{before['false_alarms']:.2f}",
                        "line recall": f"{before['recall']:.2f}",
                        "gate": "refused: " + str(e).split(": ")[1],
                    }
                )
                continue
            after = rates(t / f"adapted_{bundle.name}", frames, labels)
            out.append({"bundle": str(bundle), "before": before, "after": after, "report": r})
            g = r["gate"]
            rows.append(
                {
                    "model": model,
                    "frames": r["frames"],
                    "threshold": f"{before['threshold']:.1f} -> {after['threshold']:.1f}",
                    "line false alarms": f"{before['false_alarms']:.2f} -> {after['false_alarms']:.2f}",
                    "line recall": f"{before['recall']:.2f} -> {after['recall']:.2f}",
                    "gate": f"recall {g['recall']['old']:.2f} -> {g['recall']['new']:.2f}, false alarms "
                    f"{g['false_alarm_rate']['old']:.2f} -> {g['false_alarm_rate']['new']:.2f}",
                }
            )
    print(
        table(
            rows,
            title=f"adapt on {a.frames} good frames of a line moved by gain {a.gain:g}, tint {a.tint}, "
            f"offset {a.offset:g}, window {cfg.window} (line: {len(labels)} parts, "
            f"{int(labels.sum())} defective; gate on {data / 'test'})",
        )
    )
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": out}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
