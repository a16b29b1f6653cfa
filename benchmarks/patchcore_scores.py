"""Where PatchCore's image score loses a defect: one memory bank per category and feature setting,
every score read from it, on the category's test set.

    python benchmarks/patchcore_scores.py DATA/CAT... [--taps 4,10] [--pool 3] [--projection-dim 64]
        [--coreset-ratio 0.01] [--size 256] [--json F]

Per bank (fit on the good images that `edgesdk train` fits on: the same 20 % held out), the rows are
  smoothed  score = max of the smoothed, re-weighted map (edgesdk before peak_score)
  peak      score = the re-weighted worst patch distance on the grid (the paper's and anomalib's;
            edgesdk's default, peak_score): the smoothed map lifted to it
and each again with num_neighbors 1 (no re-weighting) and with the smoothing at sigma 2.
Columns: image AUROC, per-kind image AUROC, pixel AUROC and AUPRO of the map the score comes from,
embedding and coreset seconds. Prints a table and writes JSON."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgesdk.data import mvtec
from edgesdk.measure.metrics import aupro, auroc
from edgesdk.table import table
from edgesdk.train import split_holdout
from edgesdk.zoo.components import GaussianBlur
from edgesdk.zoo.patchcore import Patchcore, PatchcoreConfig


def rows_for(cat: Path, cfg: PatchcoreConfig) -> list[dict]:
    size = cfg.input_size
    fit_paths, _ = split_holdout(mvtec.good_images(cat / "train" / "good"), 0.2, 0)
    items = mvtec.test_items(cat)
    frames = torch.from_numpy(mvtec.read_batch([i.path for i in items], size))
    masks = np.stack([m if (m := mvtec.read_item(i, size)[1]) is not None else np.zeros(size, bool) for i in items])
    kinds = np.array([i.kind for i in items])
    labels = kinds != "good"
    net = Patchcore(cfg).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        fit = [
            net.embed(torch.from_numpy(mvtec.read_batch(fit_paths[i : i + 16], size)))
            for i in range(0, len(fit_paths), 16)
        ]
        q = torch.cat([net.embed(frames[i : i + 16]) for i in range(0, len(frames), 16)])  # (N, P, D)
    t_embed = time.perf_counter() - t0
    net.embed = lambda b: b  # type: ignore[method-assign]  # fit and score on the features computed above
    with torch.no_grad():
        stats = net.fit([torch.cat(fit).numpy()])
    rows = []
    for k, sigma in ((cfg.num_neighbors, cfg.sigma), (1, cfg.sigma), (cfg.num_neighbors, 2.0)):
        net.cfg, net.blur = replace(net.cfg, num_neighbors=k), GaussianBlur(sigma / 4)
        with torch.no_grad():
            grid = torch.cat([net.distance_map(q[i : i + 16]) for i in range(0, len(q), 16)])  # (N, 1, h, w)
            smooth = torch.cat([net.smooth(grid[i : i + 16]) for i in range(0, len(q), 16)])[:, 0].numpy()
        s_smooth = smooth.reshape(len(smooth), -1).max(1)
        s_peak = grid.flatten(1).amax(1).double().numpy()
        for score, s, amap in (
            ("smoothed", s_smooth, smooth),
            ("peak", s_peak, smooth * (s_peak / np.maximum(s_smooth, 1e-12))[:, None, None]),
        ):
            per = {
                kd: round(auroc(s[(kinds == kd) | ~labels], labels[(kinds == kd) | ~labels]), 3)
                for kd in sorted(set(kinds[labels]))
            }
            rows.append(
                {
                    "category": cat.name,
                    "score": score,
                    "num_neighbors": k,
                    "sigma": sigma,
                    "image_auroc": round(auroc(s, labels), 4),
                    "pixel_auroc": round(auroc(amap[labels], masks[labels]), 4),
                    "aupro": round(aupro(amap, masks), 4),
                    "by_kind": per,
                    "embed_s": round(t_embed, 1),
                    "coreset_s": stats["coreset_s"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+", type=Path)
    ap.add_argument("--taps", default="4,10")
    ap.add_argument("--pool", type=int, default=3)
    ap.add_argument("--projection-dim", type=int, default=64)
    ap.add_argument("--coreset-ratio", type=float, default=0.01)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    cfg = PatchcoreConfig(
        input_size=(a.size, a.size),
        taps=tuple(int(t) for t in a.taps.split(",")),
        pool=a.pool,
        projection_dim=a.projection_dim,
        coreset_ratio=a.coreset_ratio,
    )
    rows = [r for cat in a.categories for r in rows_for(cat, cfg)]
    print(table([{**r, "by_kind": " ".join(f"{k} {v}" for k, v in r["by_kind"].items())} for r in rows]))
    if a.json:
        a.json.write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
