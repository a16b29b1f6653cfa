"""Building blocks shared by zoo models, all written to export cleanly to ONNX/TensorRT:
static shapes except batch, no cdist, no data-dependent control flow."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F


class FramePreprocess(nn.Module):
    """Raw camera frames -> network input, inside the graph so the device runs no model Python.

    (B, H, W, 3) uint8 BGR  ->  (B, 3, H, W) float32 RGB, (x - mean) / std.
    """

    mean: torch.Tensor  # buffers: (1, 3, 1, 1) BGR, mean a () scalar once folded if uniform
    inv_std: torch.Tensor

    def __init__(self, mean_rgb: tuple[float, ...], std_rgb: tuple[float, ...]):
        super().__init__()
        # Stored in BGR order so the channel flip can happen after normalization as one gather.
        self.register_buffer("mean", torch.tensor(mean_rgb[::-1]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std_rgb[::-1]).view(1, 3, 1, 1), persistent=False)

        self.folded = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes a uint8 network input only straight into a Cast.
        x = frames.float().permute(0, 3, 1, 2)  # (B, 3, H, W) BGR
        if self.folded:
            return x - self.mean  # scale and flip live in the first convs
        x = (x - self.mean) * self.inv_std
        return x.flip(1)  # BGR -> RGB

    @torch.no_grad()
    def fold_into(self, convs: list[nn.Conv2d]) -> None:
        """Move 1/std and the BGR->RGB flip into the weights of CONVS (every conv that reads this
        module's output), leaving x - mean. Exact: a convolution is linear in its input, and its zero
        padding pads x - mean with 0 as it padded the normalized image with 0. conv(W, flip((x-m)*s))
        = conv(W', x-m) with W'[:, j] = W[:, 2-j] * s[j]. Saves two full-frame passes; with INT8 in
        ONNX Runtime (NHWC kernels) the per-channel Mul and the channel flip on a (B, H, W, 3) tensor
        cost ~0.5 ms each. A uniform mean (EfficientNet-Lite's 127.5) becomes a scalar."""
        for conv in convs:
            conv.weight.copy_(conv.weight.flip(1) * self.inv_std.view(1, 3, 1, 1))
        if bool(torch.all(self.mean == self.mean.flatten()[0])):
            self.mean = self.mean.flatten()[0].clone()  # () scalar: the fast broadcast in any layout
        self.folded = True


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing of a (B, 1, H, W) map with reflect padding (no dark borders).

    anomalib uses sigma=4 at 256 px; two 1-D convolutions cost 2*k MACs per pixel instead of k*k."""

    kx: torch.Tensor  # buffers: (1, 1, 1, k) and (1, 1, k, 1)
    ky: torch.Tensor

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
    diff = emb.permute(2, 0, 1) - mean.unsqueeze(1)  # (P, B, D)
    proj = torch.matmul(diff, precision)  # (P, B, D)
    d2 = (proj * diff).sum(-1)  # (P, B)
    return d2.clamp_min(0).sqrt().transpose(0, 1)  # (B, P)


def lowrank_mahalanobis(
    emb: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    """Per-position low-rank Mahalanobis distance: d^2 = c_p |delta|^2 + sum_i w_pi (u_pi . delta)^2.

    emb: (B, D, P) features; mean: (P, D); basis: (P, D, k) eigen-directions u_pi; weight: (P, k)
    w_pi = 1/lam_pi - c_p; ref: (P,) reference precision c_p. Returns (B, P) distances. One batched
    MatMul (P, B, D) x (P, D, k), then Mul, ReduceSum, Add: ops every runtime parses."""
    diff = emb.permute(2, 0, 1) - mean.unsqueeze(1)  # (P, B, D)
    proj = torch.matmul(diff, basis)  # (P, B, k)
    d2 = ref.unsqueeze(1) * (diff * diff).sum(-1) + (proj * proj * weight.unsqueeze(1)).sum(-1)  # (P, B)
    return d2.clamp_min(0).sqrt().transpose(0, 1)


def lowrank_factors(cov: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(basis (P, D, k), weight (P, k), ref (P,)) of covariances COV (P, D, D) float64: per position the
    k/2 smallest and k/2 largest eigen-directions, and c_p = 1 / mean of the other D - k eigenvalues
    (PPCA's maximum-likelihood precision of the discarded directions); weight = 1/lam - c_p.
    stream/heads.py lowrank_factors is the same rule in numpy."""
    lam, u = torch.linalg.eigh(cov)  # ascending (P, D), columns (P, D, D)
    d = lam.shape[1]
    keep = torch.cat([torch.arange(k // 2), torch.arange(d - k // 2, d)])
    ref = 1 / lam[:, k // 2 : d - k // 2].mean(1)  # (P,)
    return u[:, :, keep], 1 / lam[:, keep] - ref[:, None], ref


def nearest_sq_dist(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance of each query to its nearest bank row, and that row's index, as one MatMul
    (|q|^2 - 2 q.b + |b|^2; exports to ONNX/TensorRT, no cdist).

    |b|^2 rides in the MatMul as an extra column ([q, 1] @ [-2b, |b|^2]^T) and |q|^2, constant per
    query, is added after the min: no elementwise pass over the (B, P, M) matrix (~0.5 ms of PatchCore).
    q: (B, P, D); bank: (M, D); bank_sq: (M,) = |bank|^2. Returns (B, P) distances, (B, P) indices."""
    q1 = torch.cat([q, torch.ones_like(q[..., :1])], -1)  # (B, P, D + 1)
    bank1 = torch.cat([-2 * bank, bank_sq.unsqueeze(1)], 1)  # (M, D + 1)
    d2, idx = torch.matmul(q1, bank1.t()).min(-1)  # (B, P)
    return (d2 + (q * q).sum(-1)).clamp_min(0), idx


class ModelConfig:
    """Shared by the zoo's frozen config dataclasses (fields: input_size, backbone, taps, grid_stride,
    sigma, ...): JSON round trip, and taps () resolved to the model's default for the backbone."""

    default_taps: ClassVar[dict[str, tuple[int, ...]]] = {}

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["taps"] = tuple(d.get("taps") or cls.default_taps[d.get("backbone", "efficientnet_lite0")])
        return cls(**d)


class AnomalyModel(nn.Module):
    """What every zoo model shares: uint8 frames in, multi-scale backbone features on a grid, a raw
    distance map (the model's own), upsampling + Gaussian smoothing, and z units out.

    forward: (B, H, W, 3) uint8 BGR -> score (B,) = max of anomaly_map, anomaly_map (B, H, W), in
    standard deviations above the held-out good images' mean score (set by set_score_normalization)."""

    name = "model"
    score_shift: torch.Tensor  # () buffers
    score_scale: torch.Tensor

    def __init__(self, cfg, weights: str | None):
        super().__init__()
        from edgesdk.zoo.backbones import build_backbone

        h, w = cfg.input_size
        if h % 32 or w % 32:
            raise ValueError(f"input_size {cfg.input_size}: height and width must be multiples of 32")
        self.cfg, self.input_size = cfg, (h, w)
        self.taps = cfg.taps or type(cfg).default_taps[cfg.backbone]
        self.backbone = build_backbone(cfg.backbone, weights)
        self.backbone.requires_grad_(False)
        self.pre = FramePreprocess(self.backbone.pixel_mean_rgb, self.backbone.pixel_std_rgb)
        self.grid = (h // cfg.grid_stride, w // cfg.grid_stride)
        # Smoothing runs at a quarter of the frame size (sigma / 4) and the result is upsampled:
        # 64x fewer MACs than a sigma-4 blur at 256x256 (which took ~1 ms of an 8 ms PaDiM), the same
        # smoothing to within the bilinear kernel's own width.
        self.blur_size = (h // 4, w // 4)
        self.blur = GaussianBlur(cfg.sigma / 4)
        # z = (distance - shift) * scale; set from held-out good images.
        self.register_buffer("score_shift", torch.tensor(0.0))
        self.register_buffer("score_scale", torch.tensor(1.0))

    def grid_features(self, frames: torch.Tensor, taps: tuple[int, ...], pool: int = 1) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, h, w) backbone taps resampled to the grid and concatenated.
        pool > 1 averages each tap over a pool x pool neighbourhood first (PatchCore's local awareness)."""
        return self.to_grid(self.backbone.features(self.pre(frames), taps), pool)

    def to_grid(self, feats: list[torch.Tensor], pool: int = 1) -> torch.Tensor:
        """Backbone taps [(B, C_i, h_i, w_i)] -> (B, sum C_i, h, w) on the grid, as grid_features."""
        out = []
        for f in feats:
            if pool > 1:
                f = F.avg_pool2d(f, pool, 1, pool // 2)
            if f.shape[-1] > self.grid[1]:
                f = F.adaptive_avg_pool2d(f, self.grid)
            elif f.shape[-1] < self.grid[1]:
                f = F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, 1)

    def distance_map(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 1, h, w) raw distances on the grid. Each model defines it."""
        raise NotImplementedError

    def input_convs(self) -> list[nn.Conv2d]:
        """Every convolution that reads self.pre's output (the backbone's stem; models add theirs)."""
        return [self.backbone.stem]

    def for_export(self) -> "AnomalyModel":
        """A copy with the input normalization folded into the first convolutions (same outputs to
        float rounding; the export's parity gate compares it with this model)."""
        import copy

        net = copy.deepcopy(self).eval()
        net.pre.fold_into(net.input_convs())
        return net

    def full_map(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): the grid map smoothed at a quarter of the frame size, then upsampled (raw units)."""
        return self.smooth(self.distance_map(frames))

    def smooth(self, d: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) grid map -> (B, 1, H, W): smoothed at a quarter of the frame size, then upsampled."""
        if d.shape[-2:] != self.blur_size:
            d = F.interpolate(d, size=self.blur_size, mode="bilinear", align_corners=False)
        d = self.blur(d)  # (B, 1, H/4, W/4)
        return F.interpolate(d, size=self.input_size, mode="bilinear", align_corners=False)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = ((self.full_map(frames) - self.score_shift) * self.score_scale).squeeze(1)
        return amap.flatten(1).amax(1), amap

    @torch.no_grad()
    def raw_scores(self, frames, batch: int = 16):
        """(N,) float64 numpy image scores in raw units (max of the smoothed map)."""
        import numpy as np

        out = [
            self.full_map(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch]))).flatten(1).amax(1)
            for i in range(0, len(frames), batch)
        ]
        return torch.cat(out).double().numpy()

    def set_score_normalization(self, shift: float, scale: float) -> None:
        self.score_shift.fill_(float(shift))
        self.score_scale.fill_(float(scale))
