"""PatchCore (Roth et al., 2022): a memory bank of locally aware patch features from good images;
a patch's score is the distance to its nearest neighbour in the bank, inside the graph.

At the default 256x256 input on EfficientNet-Lite0:
  taps after blocks 4 and 10: 40@32x32 + 112@16x16 (upsampled), each averaged over a 3x3
  neighbourhood -> D = 152 per patch, P = 1024 patches per image.
  fit: 160 images -> 163,840 patches -> greedy k-center coreset (1 %: M = 1,638 patches), chosen in a
  64-d random projection (distances there rank like the full ones; 7x cheaper than 128-d here).
  inference: (1024 x 152) @ (152 x M) = 0.25 GFLOP for the nearest-neighbour search (MatMul + Min).
  bank: M * D * 4 B = 1.0 MB.
Image score: the paper's re-weighting w = 1 - softmax(distances of the worst patch to the k nearest
bank neighbours of its match)[0] scales the whole map, so score = max(map) still holds and one
threshold decides both the verdict and the defect pixels.
With peak_score the score is the paper's (and anomalib's) s = w * the worst patch's distance on the
grid, before smoothing, and the smoothed map is scaled per image so that its maximum is s (its shape
unchanged). Smoothing lowers the peak of a defect one thread wide more than a fabric's own noise, so
peak_score wins on regular weaves; on irregular textures it averages away single-patch noise and
keeps thin scratches ahead, so the smoothed maximum stays the default (docs/ZOO.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import ClassVar, Iterable

import numpy as np
import torch

from edgesdk.progress import bar as bar_of
from edgesdk.stream.heads import coreset_draws
from edgesdk.zoo.components import AnomalyModel, ModelConfig, nearest_sq_dist

DEFAULT_TAPS = {"efficientnet_lite0": (4, 10), "resnet18": (1, 2), "wide_resnet50_2": (1, 2)}


@dataclass(frozen=True)
class PatchcoreConfig(ModelConfig):
    default_taps: ClassVar[dict] = DEFAULT_TAPS

    input_size: tuple[int, int] = (256, 256)
    backbone: str = "efficientnet_lite0"
    taps: tuple[int, ...] = ()  # () = DEFAULT_TAPS[backbone]
    pool: int = 3  # local neighbourhood averaged into each patch feature
    feature_dim: int = 0  # 0 = every channel; else a fixed random subset (big backbones)
    grid_stride: int = 8
    sigma: float = 4.0
    coreset_ratio: float = 0.01  # share of the fit patches kept in the memory bank
    projection_dim: int = 64  # random projection the greedy coreset runs in
    num_neighbors: int = 9  # re-weighting support (1 = plain max patch distance)
    bank_size: int = 0  # set by fit(); sizes the bank buffer when a run is loaded
    seed: int = 0
    peak_score: bool = False  # True: score = re-weighted worst patch distance on the grid (map scaled to it)


def greedy_coreset(x: torch.Tensor, n: int, projection_dim: int, seed: int, progress=None) -> torch.Tensor:
    """Indices of N rows of X (K, D) chosen by greedy k-center: each pick is the row farthest from
    all picks so far. Runs in a Gaussian random projection; |z|^2 - 2 z.c + |c|^2 as one GEMV per pick.
    stream/heads.py greedy_coreset is the same in numpy (`edgesdk adapt` on the device)."""
    proj_np, i = coreset_draws(len(x), x.shape[1], projection_dim, seed)  # numpy's draws: the device's too
    z = (x @ torch.from_numpy(proj_np)).contiguous()  # (K, d)
    zz = (z * z).sum(1)
    mind = torch.full((len(z),), float("inf"))
    picks = torch.empty(n, dtype=torch.long)
    for k in range(n):
        picks[k] = i
        torch.minimum(mind, zz - 2 * (z @ z[i]) + zz[i], out=mind)
        i = int(mind.argmax())
        if progress is not None and (k + 1) % 64 == 0:
            progress(64)
    return picks


class Patchcore(AnomalyModel):
    name = "patchcore"
    channel_idx: torch.Tensor  # buffers: (D,) long, (M, D), (M,), (M, k) long
    bank: torch.Tensor
    bank_sq: torch.Tensor
    support: torch.Tensor

    def __init__(self, cfg: PatchcoreConfig = PatchcoreConfig(), weights: str | None = "imagenet"):
        super().__init__(cfg, weights)
        taps = self.taps
        total = sum(self.backbone.tap_info[t][0] for t in taps)
        if not 0 <= cfg.feature_dim <= total:
            raise ValueError(f"feature_dim {cfg.feature_dim} must be in 0..{total} (0 = all)")
        if not 0 < cfg.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio {cfg.coreset_ratio} must be in (0, 1]")
        d = cfg.feature_dim or total
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(total, generator=gen)[:d].sort().values if cfg.feature_dim else torch.arange(total)
        m, k = cfg.bank_size, max(1, cfg.num_neighbors)
        self.register_buffer("channel_idx", idx)
        self.register_buffer("bank", torch.zeros(m, d))  # (M, D) coreset patch features
        self.register_buffer("bank_sq", torch.zeros(m))  # (M,) |bank|^2, precomputed
        self.register_buffer("support", torch.zeros(m, k, dtype=torch.long))  # (M, k) bank kNN of each row

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, P, D) patch features."""
        e = self.grid_features(frames, self.taps, self.cfg.pool)
        if self.cfg.feature_dim:
            e = e.index_select(1, self.channel_idx)
        return e.flatten(2).transpose(1, 2)

    def adapt_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, P, D) patch features: what `edgesdk adapt` adds to the bank."""
        return self.embed(frames)

    def adapt_head(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank, "bank_sq": self.bank_sq, "support": self.support}

    def distance_map(self, frames: torch.Tensor) -> torch.Tensor:
        return self.scored_grid(frames)[0]

    def scored_grid(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, h, w) re-weighted patch distances, and (B,) the paper's image score w * s*. s*, the
        worst patch's distance to its nearest bank row m*, is taken again as |q* - m*| from the
        difference: the MatMul form loses digits to cancellation, and the score is one patch's value."""
        q = self.embed(frames)  # (B, P, D)
        d2, nn_idx = nearest_sq_dist(q, self.bank, self.bank_sq)  # (B, P), (B, P)
        dist = d2.sqrt()
        worst = dist.argmax(1, keepdim=True)  # (B, 1) the paper's m_test*
        q_star = torch.gather(q, 1, worst.unsqueeze(-1).expand(-1, 1, q.shape[-1]))  # (B, 1, D)
        m_star = torch.gather(nn_idx, 1, worst).squeeze(1)  # (B,) its nearest bank row m*
        s_star = ((q_star.squeeze(1) - self.bank[m_star]) ** 2).sum(-1).clamp_min(0).sqrt()  # (B,)
        if self.cfg.num_neighbors > 1:
            near = self.bank[self.support[m_star]]  # (B, k, D) N_b(m*)
            d_near = ((q_star - near) ** 2).sum(-1).clamp_min(0).sqrt()  # (B, k)
            w = 1 - torch.softmax(d_near, 1)[:, :1]  # (B, 1)
            dist, s_star = dist * w, s_star * w.squeeze(1)
        return dist.view(-1, 1, *self.grid), s_star

    def full_map(self, frames: torch.Tensor) -> torch.Tensor:
        d, score = self.scored_grid(frames)  # (B, 1, h, w), (B,)
        m = self.smooth(d)  # (B, 1, H, W)
        if not self.cfg.peak_score:
            return m
        lift = score / m.flatten(1).amax(1).clamp_min(1e-12)  # (B,) ~ max(d) / max(m) >= 1: smoothing lowers peaks
        return m * lift.view(-1, 1, 1, 1)

    @torch.no_grad()
    def fit(self, batches: Iterable[np.ndarray], progress=None) -> dict:
        """Memory bank from batches of (B, H, W, 3) uint8 good frames; returns fit statistics."""
        feats, n = [], 0
        for batch in batches:
            e = self.embed(torch.from_numpy(np.ascontiguousarray(batch)))
            feats.append(e.reshape(-1, e.shape[-1]))
            n += len(batch)
            if progress is not None:
                progress(len(batch))
        if n < 1:
            raise ValueError("PatchCore needs at least 1 good image to fit")
        x = torch.cat(feats)  # (N * P, D)
        m = max(1, int(round(self.cfg.coreset_ratio * len(x))))
        t0 = time.perf_counter()
        bar = bar_of(total=m, desc="coreset", unit="patch", enabled=progress is not None, leave=False)
        picks = greedy_coreset(x, m, self.cfg.projection_dim, self.cfg.seed, bar.update)
        bar.close()
        bank = x[picks].contiguous()
        t_coreset = time.perf_counter() - t0
        k = min(max(1, self.cfg.num_neighbors), m)
        bank_sq = (bank * bank).sum(1)
        support = torch.cat(
            [
                (bank_sq[i : i + 1024, None] - 2 * bank[i : i + 1024] @ bank.t() + bank_sq)
                .topk(k, largest=False)
                .indices
                for i in range(0, m, 1024)
            ]
        )
        if k < max(1, self.cfg.num_neighbors):  # tiny banks: pad the support with the nearest
            support = torch.cat([support, support[:, :1].expand(-1, self.cfg.num_neighbors - k)], 1)
        self.bank, self.bank_sq, self.support = bank, bank_sq, support
        self.cfg = replace(self.cfg, bank_size=m)
        return {
            "n_images": n,
            "n_patches": int(len(x)),
            "bank_size": m,
            "feature_dim": int(bank.shape[1]),
            "bank_mb": round(bank.numel() * 4 / 1e6, 3),
            "coreset_s": round(t_coreset, 3),
        }
