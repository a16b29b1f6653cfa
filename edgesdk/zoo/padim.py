"""PaDiM (Defard et al., 2020): a Gaussian per feature-map position, fitted on good images only.

Score of a position = Mahalanobis distance of its feature to that position's Gaussian (raw units;
AnomalyModel turns the map into z units). The cheapest fit of the zoo: one pass of sums.

Sizes at the default 256x256 input, taps after blocks 2/4/10 of EfficientNet-Lite0:
  features 24@64x64 (pooled to 32x32) + 40@32x32 + 112@16x16 (upsampled) = 176 channels @ 32x32
  -> a fixed random subset of `feature_dim` channels (PaDiM's own reduction) -> P = 1024 positions.
  precision matrices: P * D * D floats = 1024 * 80 * 80 * 4 B = 26 MB.

head_rank k > 0 stores a low-rank head instead (components.lowrank_mahalanobis): per position the k/2
smallest and k/2 largest eigen-directions of the covariance, corrected to their own 1/lam, and one
reference precision c_p for the other D - k: P * (D * k + k + 1) floats, 10.6 MB at k = 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable

import numpy as np
import torch

from edgesdk.errors import EdgesdkError
from edgesdk.zoo.components import AnomalyModel, ModelConfig, lowrank_factors, lowrank_mahalanobis, mahalanobis

# Backbone taps per backbone: Lite0 blocks 2/4/10 (strides 4, 8, 16); ResNet layer1..3 (anomalib's).
DEFAULT_TAPS = {"efficientnet_lite0": (2, 4, 10), "resnet18": (0, 1, 2), "wide_resnet50_2": (0, 1, 2)}


@dataclass(frozen=True)
class PadimConfig(ModelConfig):
    default_taps: ClassVar[dict] = DEFAULT_TAPS

    input_size: tuple[int, int] = (256, 256)  # (H, W) of the frames the graph takes
    backbone: str = "efficientnet_lite0"
    taps: tuple[int, ...] = ()  # () = DEFAULT_TAPS[backbone]
    feature_dim: int = 80  # channels kept (a fixed random subset)
    grid_stride: int = 8  # features are resampled to input/8
    sigma: float = 4.0  # smoothing of the full-resolution map, pixels
    ridge: float = 0.01  # covariance + ridge * I, as in the paper
    seed: int = 0  # picks the channel subset
    head_rank: int = 0  # 0: full inverse covariances (P, D, D); k: the low-rank head of k directions

    @classmethod
    def from_dict(cls, d: dict) -> "PadimConfig":
        # A run saved before head_rank existed was fitted with the full head: its state dict holds
        # `precision`, whatever today's default is.
        return super().from_dict({**d, "head_rank": d.get("head_rank", 0)})


class Padim(AnomalyModel):
    name = "padim"
    channel_idx: torch.Tensor  # buffers: (D,) long, (P, D), (P, D, D)
    mean: torch.Tensor
    precision: torch.Tensor  # head_rank 0 only
    basis: torch.Tensor  # head_rank k only: (P, D, k), (P, k), (P,)
    weight: torch.Tensor
    ref: torch.Tensor

    def __init__(self, cfg: PadimConfig = PadimConfig(), weights: str | None = "imagenet"):
        super().__init__(cfg, weights)
        taps = self.taps
        total = sum(self.backbone.tap_info[t][0] for t in taps)
        if not 0 < cfg.feature_dim <= total:
            raise ValueError(f"feature_dim {cfg.feature_dim} must be in 1..{total}")
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(total, generator=gen)[: cfg.feature_dim].sort().values
        p, d = self.grid[0] * self.grid[1], cfg.feature_dim
        self.register_buffer("channel_idx", idx)
        self.register_buffer("mean", torch.zeros(p, d))
        k = cfg.head_rank
        if k == 0:
            self.register_buffer("precision", torch.eye(d).repeat(p, 1, 1))
            return
        if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2 or k >= d:
            raise EdgesdkError(f"config head_rank: {k!r} must be 0 (full head) or even, 2 <= k < feature_dim {d}")
        self.register_buffer("basis", torch.eye(d)[:, :k].repeat(p, 1, 1))
        self.register_buffer("weight", torch.zeros(p, k))
        self.register_buffer("ref", torch.ones(p))

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 BGR -> (B, D, P) features on the grid."""
        return self.grid_features(frames, self.taps).index_select(1, self.channel_idx).flatten(2)

    def adapt_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, P, D): what `edgesdk adapt` adds to the statistics (features.onnx)."""
        return self.embed(frames).transpose(1, 2)

    def adapt_head(self) -> dict[str, torch.Tensor]:
        if self.cfg.head_rank:
            return {"mean": self.mean, "basis": self.basis, "weight": self.weight, "ref": self.ref}
        return {"mean": self.mean, "precision": self.precision}

    def distance_map(self, frames: torch.Tensor) -> torch.Tensor:
        emb = self.embed(frames)
        if self.cfg.head_rank:
            dist = lowrank_mahalanobis(emb, self.mean, self.basis, self.weight, self.ref)  # (B, P)
        else:
            dist = mahalanobis(emb, self.mean, self.precision)
        return dist.view(-1, 1, *self.grid)

    @torch.no_grad()
    def fit(self, batches: Iterable[np.ndarray], progress=None) -> dict:
        """Fit the per-position Gaussians from batches of (B, H, W, 3) uint8 good frames.

        Sums are accumulated in float64 so that the fit never holds all features in memory:
        sum_x (P, D) and sum_xxT (P, D, D). They are kept as self.fit_stats (train.py saves them: the
        bundle carries them so that `edgesdk adapt` adds new frames exactly). Returns {"n_images": N}."""
        p, d = self.mean.shape
        s1 = torch.zeros(p, d, dtype=torch.float64)
        s2 = torch.zeros(p, d, d, dtype=torch.float64)
        n = 0
        for batch in batches:
            e = self.embed(torch.from_numpy(np.ascontiguousarray(batch))).permute(2, 0, 1).double()
            s1 += e.sum(1)
            s2 += torch.matmul(e.transpose(1, 2), e)  # (P, D, B) @ (P, B, D)
            n += e.shape[1]
            if progress is not None:
                progress(e.shape[1])
        if n < 2:
            raise ValueError(f"PaDiM needs at least 2 good images to fit, got {n}")
        mean = s1 / n
        cov = (s2 - n * mean.unsqueeze(2) * mean.unsqueeze(1)) / (n - 1)
        cov += self.cfg.ridge * torch.eye(d, dtype=torch.float64)
        self.mean.copy_(mean.float())
        if self.cfg.head_rank:
            basis, weight, ref = lowrank_factors(cov, self.cfg.head_rank)
            self.basis.copy_(basis.float())
            self.weight.copy_(weight.float())
            self.ref.copy_(ref.float())
        else:
            self.precision.copy_(torch.linalg.inv(cov).float())
        self.fit_stats = {"n": np.asarray(n, np.int64), "sum": s1.numpy(), "sum_outer": s2.numpy()}
        return {"n_images": n}
