"""Building blocks shared by zoo models, all written to export cleanly to ONNX/TensorRT:
static shapes except batch, no cdist, no data-dependent control flow."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FramePreprocess(nn.Module):
    """Raw camera frames -> network input, inside the graph so the device runs no model Python.

    (B, H, W, 3) uint8 BGR  ->  (B, 3, H, W) float32 RGB, (x - mean) / std.
    """

    def __init__(self, mean_rgb: tuple[float, ...], std_rgb: tuple[float, ...]):
        super().__init__()
        # Stored in BGR order so the channel flip can happen after normalization as one gather.
        self.register_buffer("mean", torch.tensor(mean_rgb[::-1]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std_rgb[::-1]).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes a uint8 network input only straight into a Cast.
        x = frames.float().permute(0, 3, 1, 2)           # (B, 3, H, W) BGR
        x = (x - self.mean) * self.inv_std
        return x.flip(1)                                 # BGR -> RGB


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing of a (B, 1, H, W) map with reflect padding (no dark borders).

    anomalib uses sigma=4 at 256 px; two 1-D convolutions cost 2*k MACs per pixel instead of k*k."""

    def __init__(self, sigma: float):
        super().__init__()
        radius = max(1, int(math.ceil(4 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).float()
        self.radius = radius
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        x = F.conv2d(F.pad(x, [r, r, 0, 0], mode="reflect"), self.kx)
        return F.conv2d(F.pad(x, [0, 0, r, r], mode="reflect"), self.ky)


def mahalanobis(emb: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Per-position Mahalanobis distance as batched matmuls (exports as MatMul; no cdist).

    emb: (B, D, P) features; mean: (P, D); precision: (P, D, D) inverse covariances.
    Returns (B, P) distances.
    """
    diff = emb.permute(2, 0, 1) - mean.unsqueeze(1)         # (P, B, D)
    proj = torch.matmul(diff, precision)                     # (P, B, D)
    d2 = (proj * diff).sum(-1)                               # (P, B)
    return d2.clamp_min(0).sqrt().transpose(0, 1)            # (B, P)
