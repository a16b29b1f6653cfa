"""PaDiM's head is memory-bound: per frame it reads P * D * D floats of inverse covariances (26 MB at
the default 32x32 grid and 80 channels). Which cheaper head keeps the accuracy? One fit, every variant:

    python benchmarks/padim_head.py data/brick data/grass data/gravel [--json F]

  per_position D   the zoo's head with D of the 176 channels (its own random subset, seed 0)
  stride16         per_position 80 on a 16x16 grid (grid_stride 16): P / 4
  shared           one covariance for every position, pooled within position: (D, D)
  scaled_shared    per-position variances, one pooled correlation: (P, D) + (D, D)
  diagonal         per-position variances alone: (P, D)
  lowrank SEL C k  per position p, Sigma_p = U diag(lam) U^T (80 channels): a reference precision c_p times
                   |delta|^2 plus k eigen-directions corrected to their own 1/lam_i:
                   d^2 = c_p |delta|^2 + sum_{i in S_p} (1/lam_i - c_p) (u_i . delta)^2, (P, k*D + k + 1) floats.
                   SEL: small (the k smallest lam), large (the k largest), both (k/2 of each), both3:1 (3k/4
                   smallest, k/4 largest), far (the k whose 1/lam_i is farthest from c_p; with ppca, c_p and the
                   selection re-derived from each other 5 times).
                   C: ppca (c_p = 1 / mean of the discarded lam, the maximum-likelihood choice), med (c_p = the
                   median 1/lam of all 80), hmean (c_p = the mean of the discarded 1/lam).
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


def _heads(
    train: torch.Tensor, dims: list[int], stride: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
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


def _lowrank(cov: torch.Tensor, ks: list[int]) -> dict[str, tuple[torch.Tensor, int]]:
    """name -> (per-direction weights (P, D) in the eigenbasis of COV (P, D, D), head bytes). A low-rank head is
    d^2 = sum_i w_i (u_i . delta)^2 with w_i = 1/lam_i on S_p and c_p elsewhere (|delta|^2 = sum_i (u_i . delta)^2
    as U is orthonormal), so one projection onto every eigenvector scores every variant exactly."""
    lam = torch.linalg.eigvalsh(cov)  # (P, D) ascending
    inv = 1 / lam
    p, d = lam.shape
    out = {}
    for k in ks:
        nbytes = 4 * p * (k * d + k + 1)
        ends = {"small": torch.arange(k), "large": torch.arange(d - k, d)}
        ends["both"] = torch.cat([torch.arange(k // 2), torch.arange(d - (k - k // 2), d)])
        ends["both3:1"] = torch.cat([torch.arange(k - k // 4), torch.arange(d - k // 4, d)])
        for sel, idx in ends.items():
            keep = torch.zeros(d, dtype=torch.bool)
            keep[idx] = True
            rest = lam[:, ~keep]
            for cname, c in (("ppca", 1 / rest.mean(1)), ("hmean", (1 / rest).mean(1))):
                out[f"lowrank {sel} {cname} {k}"] = (torch.where(keep, inv, c[:, None]), nbytes)
        c = inv.median(1).values[:, None]  # (P, 1)
        far = (inv - c).abs().topk(k, dim=1).indices
        keep = torch.zeros_like(inv, dtype=torch.bool).scatter_(1, far, True)
        out[f"lowrank far med {k}"] = (torch.where(keep, inv, c), nbytes)
        c = 1 / lam.mean(1, keepdim=True)
        for _ in range(5):  # far from a ppca c_p: select, re-derive c_p from the discarded, select again
            far = (inv - c).abs().topk(k, dim=1).indices
            keep = torch.zeros_like(inv, dtype=torch.bool).scatter_(1, far, True)
            c = 1 / torch.where(keep, 0, lam).sum(1, keepdim=True) * (d - k)
        out[f"lowrank far ppca {k}"] = (torch.where(keep, inv, c), nbytes)
    return out


def _lowrank_dists(
    train: torch.Tensor, test: torch.Tensor, ks: list[int], only: list[str]
) -> dict[str, tuple[torch.Tensor, int]]:
    """name -> (distances (N, P) of TEST (N, 176, P), head bytes) for the zoo's 80 channels, full and low-rank
    (those whose name holds one of ONLY, or all); float32 projections as an exported head would compute them."""
    idx = Padim(PadimConfig(feature_dim=80), weights=None).channel_idx
    x = train[:, idx].permute(2, 0, 1)  # (P, N, D)
    mean = x.mean(1)
    cov = torch.matmul((x - mean[:, None]).transpose(1, 2), x - mean[:, None]) / (x.shape[1] - 1)
    cov += RIDGE * torch.eye(len(idx), dtype=torch.float64)
    u = torch.linalg.eigh(cov).eigenvectors  # (P, D, D), columns ascending in lam
    diff = (test[:, idx].permute(2, 0, 1) - mean[:, None]).float()  # (P, N, D)
    proj2 = torch.matmul(diff, u.float()).square()  # (P, N, D)
    out = {
        "per_position 80 (check)": (
            mahalanobis(test[:, idx].float(), mean.float(), torch.linalg.inv(cov).float()),
            4 * mean.shape[0] * 80 * 80,
        )
    }
    for name, (w, nbytes) in _lowrank(cov, ks).items():
        if only and not any(o in name for o in only):
            continue
        out[name] = ((proj2 * w.float()[:, None]).sum(-1).clamp_min(0).sqrt().transpose(0, 1), nbytes)
    return out


def _row(net: Padim, ts, data: str, name: str, dist: torch.Tensor, nbytes: int) -> dict:
    with torch.no_grad():
        d = F.interpolate(dist.view(-1, 1, *net.grid), size=net.blur_size, mode="bilinear", align_corners=False)
        maps = F.interpolate(net.blur(d), size=SIZE, mode="bilinear", align_corners=False).squeeze(1).numpy()
    row = {"data": data, "head": name, "head_mb": nbytes / 1e6}
    row["image_auroc"] = auroc(maps.reshape(len(maps), -1).max(1), ts.labels)
    if ts.masks is not None:
        row["pixel_auroc"] = auroc(maps.reshape(-1), ts.masks.reshape(-1).astype(int))
        row["aupro"] = float(aupro(maps, ts.masks))
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def evaluate_lowrank(data: str, ks: list[int], only: list[str]) -> list[dict]:
    train = mvtec.read_batch(mvtec.good_images(data), SIZE)
    ts = load_test_set(data, SIZE)
    net = Padim(PadimConfig(feature_dim=ALL)).eval()
    dists = _lowrank_dists(_features(net, train), _features(net, ts.frames), ks, only)
    return [_row(net, ts, data, name, dist, nbytes) for name, (dist, nbytes) in dists.items()]


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
            rows.append(_row(net, ts, data, name, dist, nbytes))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="MVTec-layout category folders")
    ap.add_argument("--dims", default="80,56,48", help="channel counts of the per_position rows")
    ap.add_argument("--lowrank", default="", help="ranks k: score only the full head and the low-rank rows")
    ap.add_argument("--only", default="", help="comma-separated: score the low-rank rows whose name holds one")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.lowrank:
        ks, only = [int(x) for x in args.lowrank.split(",")], args.only.split(",") if args.only else []
        rows = [r for d in args.data for r in evaluate_lowrank(d, ks, only)]
    else:
        rows = [r for d in args.data for r in evaluate(d, [int(x) for x in args.dims.split(",")])]
    keys = ("data", "head", "head_mb", "image_auroc", "pixel_auroc", "aupro")
    print(table(rows, list(keys)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
