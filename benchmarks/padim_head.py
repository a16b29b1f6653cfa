"""PaDiM's head is memory-bound: per frame it reads P * D * D floats of inverse covariances (26 MB at
the default 32x32 grid and 80 channels). Which cheaper head keeps the accuracy? One fit, every variant:

    python benchmarks/padim_head.py data/brick data/grass data/gravel [--json F]

  per_position D   the zoo's head with D of the 176 channels (its own random subset, seed 0)
  stride16         per_position 80 on a 16x16 grid (grid_stride 16): P / 4
  shared           one covariance for every position, pooled within position: (D, D)
  scaled_shared    per-position variances, one pooled correlation: (P, D) + (D, D)
  diagonal         per-position variances alone: (P, D)
Every variant is fitted on all of DATA/train/good (no holdout), in float64, ridge 0.01 as the zoo's fit,
and scored by the zoo's own smoothing on DATA/test: image AUROC, pixel AUROC, AUPRO. Host only (torch)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from edgesdk.data import mvtec
from edgesdk.measure.metrics import aupro, auroc
from edgesdk.measure.testset import load_test_set
from edgesdk.table import table
from edgesdk.zoo.components import mahalanobis
from edgesdk.zoo.padim import Padim, PadimConfig

SIZE, RIDGE, ALL = (256, 256), 0.01, 176


def _features(net: Padim, frames: np.ndarray) -> torch.Tensor:
    """(N, 176, P) float64: every channel of the zoo's taps on NET's grid."""
    with torch.no_grad():
        out = [
            net.grid_features(torch.from_numpy(frames[i : i + 16]), net.taps).flatten(2)
            for i in range(0, len(frames), 16)
        ]
    return torch.cat(out).double()


def _heads(train: torch.Tensor, dims: list[int], stride: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """name -> (channel indices (D,), mean (P, D), precision (P, D, D)) of each variant, and its head bytes."""
    x = train.permute(2, 0, 1)  # (P, N, C)
    n, p = x.shape[1], x.shape[0]
    mean = x.mean(1)
    cov = torch.matmul((x - mean[:, None]).transpose(1, 2), x - mean[:, None]) / (n - 1)  # (P, C, C)
    out = {}

    def pick(d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = Padim(PadimConfig(feature_dim=d, grid_stride=stride), weights=None).channel_idx
        return idx, mean[:, idx], cov[:, idx][:, :, idx] + RIDGE * torch.eye(d, dtype=torch.float64)

    if stride != 8:
        idx, m, c = pick(80)
        return {f"stride{stride}": (idx, m, torch.linalg.inv(c), 4 * p * 80 * 80)}
    for d in dims:
        idx, m, c = pick(d)
        out[f"per_position {d}"] = (idx, m, torch.linalg.inv(c), 4 * p * d * d)
    idx, m, c = pick(80)
    shared = c.mean(0)  # pooled within position (each position keeps its mean)
    sd = torch.diagonal(c, dim1=1, dim2=2).sqrt()  # (P, D)
    corr = (c / sd[:, :, None] / sd[:, None, :]).mean(0)
    out["shared"] = (idx, m, torch.linalg.inv(shared).expand(p, 80, 80), 4 * 80 * 80)
    out["scaled_shared"] = (idx, m, torch.linalg.inv(corr) / sd[:, :, None] / sd[:, None, :], 4 * (p * 80 + 80 * 80))
    out["diagonal"] = (idx, m, torch.diag_embed(1 / sd**2), 4 * p * 80)
    return out


def evaluate(data: str, dims: list[int]) -> list[dict]:
    train = mvtec.read_batch(mvtec.good_images(data), SIZE)
    ts = load_test_set(data, SIZE)
    rows = []
    for stride in (8, 16):
        net = Padim(PadimConfig(feature_dim=ALL, grid_stride=stride)).eval()
        feats = _features(net, ts.frames)
        for name, (idx, mean, prec, nbytes) in _heads(_features(net, train), dims, stride).items():
            with torch.no_grad():
                dist = mahalanobis(feats[:, idx].float(), mean.float(), prec.float().contiguous())
                d = F.interpolate(dist.view(-1, 1, *net.grid), size=net.blur_size, mode="bilinear", align_corners=False)
                maps = F.interpolate(net.blur(d), size=SIZE, mode="bilinear", align_corners=False).squeeze(1).numpy()
            row = {"data": data, "head": name, "head_mb": nbytes / 1e6}
            row["image_auroc"] = auroc(maps.reshape(len(maps), -1).max(1), ts.labels)
            if ts.masks is not None:
                row["pixel_auroc"] = auroc(maps.reshape(-1), ts.masks.reshape(-1).astype(int))
                row["aupro"] = float(aupro(maps, ts.masks))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="MVTec-layout category folders")
    ap.add_argument("--dims", default="80,56,48", help="channel counts of the per_position rows")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = [r for d in args.data for r in evaluate(d, [int(x) for x in args.dims.split(",")])]
    keys = ("data", "head", "head_mb", "image_auroc", "pixel_auroc", "aupro")
    print(table(rows, list(keys)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
