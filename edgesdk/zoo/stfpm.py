"""Student-teacher (STFPM's objective, EfficientAD's small student): the fastest model of the zoo.

Teacher: the pretrained backbone cut short (EfficientNet-Lite0 up to block 4), taps 2 and 4 on the
stride-8 grid: 24 + 40 = 64 channels, each normalized by its mean/std over the good images.
Student: a small CNN from the same normalized pixels to the same 64 channels at stride 8, trained on
good images only to imitate the teacher; where it fails to (what it never saw: defects), the
squared discrepancy is the anomaly. At 256x256 the student costs ~90 M MACs; with the truncated
teacher the whole graph is cheaper than PaDiM's backbone alone.
Loss: EfficientAD's penalty (the student must output the teacher's mean on photographs that are not
the product: real images shipped with scikit-image stand in for ImageNet), plus its hard-feature loss
(only errors above the 99.9th percentile train the student), which lowers good images' peak
discrepancy and so raises image-level AUROC.
Training stops at a step or a time budget, whichever comes first, and shows progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Iterable, cast

import numpy as np
import torch
from torch import nn

from edgesdk.progress import bar as bar_of
from edgesdk.zoo.components import AnomalyModel, ModelConfig

DEFAULT_TAPS = {"efficientnet_lite0": (2, 4), "resnet18": (0, 1), "wide_resnet50_2": (0, 1)}


@dataclass(frozen=True)
class StfpmConfig(ModelConfig):
    default_taps: ClassVar[dict] = DEFAULT_TAPS

    input_size: tuple[int, int] = (256, 256)
    backbone: str = "efficientnet_lite0"
    taps: tuple[int, ...] = ()  # () = DEFAULT_TAPS[backbone]
    grid_stride: int = 8
    sigma: float = 4.0
    width: int = 64  # student's widest layer
    steps: int = 1500  # training budget: steps of `batch` images ...
    seconds: float = 300.0  # ... or wall-clock seconds, whichever ends first
    batch: int = 8
    lr: float = 2e-3
    hard_quantile: float = 0.999  # EfficientAD's hard-feature loss: train on the worst errors
    penalty: float = 1.0  # weight of the out-of-distribution penalty (0 = off)
    seed: int = 0


# Real photographs that ship inside scikit-image (no download): the student must NOT imitate the
# teacher on these (EfficientAD uses ImageNet for this), so it does not generalize to defects either.
OOD_IMAGES = (
    "astronaut",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
    "retina",
    "colorwheel",
)


def ood_frames(size: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """(n, H, W, 3) uint8 BGR random crops of OOD_IMAGES, resized to SIZE."""
    import cv2
    import skimage.data

    rng = np.random.default_rng(seed)
    srcs = []
    for name in OOD_IMAGES:
        img = getattr(skimage.data, name)()
        img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
        srcs.append(np.ascontiguousarray(img[..., ::-1]))
    out = []
    for i in range(n):
        img = srcs[i % len(srcs)]
        h, w = img.shape[:2]
        c = int(rng.uniform(0.4, 1.0) * min(h, w))
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        out.append(cv2.resize(img[y : y + c, x : x + c], (size[1], size[0]), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def student_net(channels: int, width: int) -> nn.Sequential:
    """(B, 3, H, W) normalized pixels -> (B, channels, H/8, W/8); receptive field 31 px."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w // 4, 3, 2, 1),
        nn.ReLU(inplace=True),  # H/2
        nn.Conv2d(w // 4, w // 2, 3, 2, 1),
        nn.ReLU(inplace=True),  # H/4
        nn.Conv2d(w // 2, w, 3, 2, 1),
        nn.ReLU(inplace=True),  # H/8
        nn.Conv2d(w, w, 3, 1, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, channels, 1),
    )


class Stfpm(AnomalyModel):
    name = "stfpm"
    t_mean: torch.Tensor  # buffers: (1, C, 1, 1)
    t_inv_std: torch.Tensor

    def __init__(self, cfg: StfpmConfig = StfpmConfig(), weights: str | None = "imagenet"):
        super().__init__(cfg, weights)
        taps = self.taps
        c = sum(self.backbone.tap_info[t][0] for t in taps)
        torch.manual_seed(cfg.seed)
        self.student = student_net(c, cfg.width)
        self.register_buffer("t_mean", torch.zeros(1, c, 1, 1))  # teacher channel statistics
        self.register_buffer("t_inv_std", torch.ones(1, c, 1, 1))

    def input_convs(self) -> list[nn.Conv2d]:
        return [self.backbone.stem, cast(nn.Conv2d, self.student[0])]  # student_net's first layer

    def teacher(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, h, w) normalized teacher features."""
        return (self.grid_features(frames, self.taps) - self.t_mean) * self.t_inv_std

    def distance_map(self, frames: torch.Tensor) -> torch.Tensor:
        s = self.student(self.pre(frames))
        return ((self.teacher(frames) - s) ** 2).mean(1, keepdim=True)  # (B, 1, h, w)

    def fit(self, batches: Iterable[np.ndarray], progress=None) -> dict:
        """Teacher features once (no grad), then the student by Adam on MSE within the budget."""
        frames = np.concatenate(list(batches))
        if len(frames) < 2:
            raise ValueError("the student-teacher model needs at least 2 good images to fit")
        if progress is not None:
            progress(len(frames))
        x = torch.from_numpy(np.ascontiguousarray(frames))
        with torch.no_grad():
            feats = torch.cat([self.grid_features(x[i : i + 16], self.taps) for i in range(0, len(x), 16)])
            self.t_mean.copy_(feats.mean((0, 2, 3), keepdim=True))
            self.t_inv_std.copy_(1.0 / feats.std((0, 2, 3), keepdim=True).clamp_min(1e-6))
            target = (feats - self.t_mean) * self.t_inv_std
            pixels = torch.cat([self.pre(x[i : i + 16]) for i in range(0, len(x), 16)])
            ood = (
                self.pre(torch.from_numpy(ood_frames(self.input_size, 64, self.cfg.seed))) if self.cfg.penalty else None
            )
        gen = torch.Generator().manual_seed(self.cfg.seed)
        opt = torch.optim.Adam(self.student.parameters(), lr=self.cfg.lr, weight_decay=1e-5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.cfg.steps)
        self.student.train()
        t0, losses = time.perf_counter(), []
        bar = bar_of(total=self.cfg.steps, desc="train student", unit="step", enabled=progress is not None, leave=False)
        step = 0
        while step < self.cfg.steps and time.perf_counter() - t0 < self.cfg.seconds:
            idx = torch.randint(len(x), (min(self.cfg.batch, len(x)),), generator=gen)
            err = (self.student(pixels[idx]) - target[idx]) ** 2
            if self.cfg.hard_quantile > 0:
                # Only the elements above this quantile count: the student stops spending its small
                # capacity where it is already right, which keeps good images' peak errors low.
                err = err[err >= torch.quantile(err.flatten()[::4], self.cfg.hard_quantile)]
            loss = err.mean()
            if ood is not None:
                # Penalty: on images that are not the product, push the student to the teacher's mean.
                j = torch.randint(len(ood), (min(4, len(ood)),), generator=gen)
                loss = loss + self.cfg.penalty * (self.student(ood[j]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.close()
        self.student.eval()
        return {
            "n_images": int(len(x)),
            "steps": step,
            "train_s": round(time.perf_counter() - t0, 2),
            "stopped_by": "steps" if step >= self.cfg.steps else "time budget",
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
        }
