"""PaDiM (Defard et al., 2020): a Gaussian per feature-map position, fitted on good images only.

Score of a position = Mahalanobis distance of its feature to that position's Gaussian. The graph
takes raw uint8 BGR frames and returns (score, anomaly_map), both in "z units": standard deviations
above the mean image score of held-out good images, so one manifest threshold decides.

Sizes at the default 256x256 input, taps after blocks 2/4/10 of EfficientNet-Lite0:
  features 24@64x64 (pooled to 32x32) + 40@32x32 + 112@16x16 (upsampled) = 176 channels @ 32x32
  -> a fixed random subset of `feature_dim` channels (PaDiM's own reduction) -> P = 1024 positions.
  precision matrices: P * D * D floats = 1024 * 80 * 80 * 4 B = 26 MB.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgesdk.zoo import backbones
from edgesdk.zoo.components import FramePreprocess, GaussianBlur, mahalanobis


@dataclass(frozen=True)
class PadimConfig:
    input_size: tuple[int, int] = (256, 256)   # (H, W) of the frames the graph takes
    taps: tuple[int, ...] = (2, 4, 10)         # EfficientNet-Lite0 blocks; strides 4, 8, 16
    feature_dim: int = 80                      # channels kept of the 176
    grid_stride: int = 8                       # features are resampled to input/8
    sigma: float = 4.0                         # smoothing of the full-resolution map, pixels
    ridge: float = 0.01                        # covariance + ridge * I, as in the paper
    seed: int = 0                              # picks the channel subset

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PadimConfig":
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["taps"] = tuple(d["taps"])
        return cls(**d)


class Padim(nn.Module):
    name = "padim"

    def __init__(self, cfg: PadimConfig = PadimConfig(), weights: str | None = "imagenet"):
        super().__init__()
        self.cfg = cfg
        h, w = cfg.input_size
        if h % 32 or w % 32:
            raise ValueError(f"input_size {cfg.input_size}: height and width must be multiples of 32")
        self.pre = FramePreprocess(backbones.PIXEL_MEAN_RGB, backbones.PIXEL_STD_RGB)
        self.backbone = backbones.efficientnet_lite0(weights)
        self.backbone.requires_grad_(False)
        total = sum(self.backbone.block_info[t][0] for t in cfg.taps)
        if not 0 < cfg.feature_dim <= total:
            raise ValueError(f"feature_dim {cfg.feature_dim} must be in 1..{total}")
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(total, generator=gen)[: cfg.feature_dim].sort().values
        self.grid = (h // cfg.grid_stride, w // cfg.grid_stride)
        p, d = self.grid[0] * self.grid[1], cfg.feature_dim
        self.register_buffer("channel_idx", idx)
        self.register_buffer("mean", torch.zeros(p, d))
        self.register_buffer("precision", torch.eye(d).repeat(p, 1, 1))
        # z = (distance - shift) * scale; set from held-out good images by `calibrate_scores`.
        self.register_buffer("score_shift", torch.tensor(0.0))
        self.register_buffer("score_scale", torch.tensor(1.0))
        self.blur = GaussianBlur(cfg.sigma)

    # -- features ------------------------------------------------------------------------------
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 BGR -> (B, D, P) features on the grid."""
        feats = self.backbone.features(self.pre(frames), self.cfg.taps)
        grid = [F.adaptive_avg_pool2d(f, self.grid) if f.shape[-1] > self.grid[1]
                else F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False)
                if f.shape[-1] < self.grid[1] else f for f in feats]
        emb = torch.cat(grid, 1).index_select(1, self.channel_idx)   # (B, D, h, w)
        return emb.flatten(2)

    def distance_map(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 1, H, W) smoothed Mahalanobis distances (raw units)."""
        dist = mahalanobis(self.embed(frames), self.mean, self.precision)   # (B, P)
        dist = dist.view(-1, 1, *self.grid)
        dist = F.interpolate(dist, size=self.cfg.input_size, mode="bilinear", align_corners=False)
        return self.blur(dist)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 BGR -> score (B,), anomaly_map (B, H, W), both in z units."""
        amap = (self.distance_map(frames) - self.score_shift) * self.score_scale
        amap = amap.squeeze(1)
        return amap.flatten(1).amax(1), amap

    # -- fitting -------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, batches: Iterable[np.ndarray], progress=None) -> int:
        """Fit the per-position Gaussians from batches of (B, H, W, 3) uint8 good frames.

        Sums are accumulated in float64 so that the fit never holds all features in memory:
        sum_x (P, D) and sum_xxT (P, D, D). Returns the number of images seen."""
        p, d = self.mean.shape
        s1 = torch.zeros(p, d, dtype=torch.float64)
        s2 = torch.zeros(p, d, d, dtype=torch.float64)
        n = 0
        for batch in batches:
            e = self.embed(torch.from_numpy(np.ascontiguousarray(batch))).permute(2, 0, 1).double()
            s1 += e.sum(1)
            s2 += torch.matmul(e.transpose(1, 2), e)        # (P, D, B) @ (P, B, D)
            n += e.shape[1]
            if progress is not None:
                progress(e.shape[1])
        if n < 2:
            raise ValueError(f"PaDiM needs at least 2 good images to fit, got {n}")
        mean = s1 / n
        cov = (s2 - n * mean.unsqueeze(2) * mean.unsqueeze(1)) / (n - 1)
        cov += self.cfg.ridge * torch.eye(d, dtype=torch.float64)
        self.mean.copy_(mean.float())
        self.precision.copy_(torch.linalg.inv(cov).float())
        return n

    @torch.no_grad()
    def raw_scores(self, frames: np.ndarray, batch: int = 16) -> np.ndarray:
        """Image scores in raw distance units (max of the smoothed map), (N,) float64."""
        out = [self.distance_map(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])))
               .flatten(1).amax(1) for i in range(0, len(frames), batch)]
        return torch.cat(out).double().numpy()

    def set_score_normalization(self, shift: float, scale: float) -> None:
        self.score_shift.fill_(float(shift))
        self.score_scale.fill_(float(scale))
