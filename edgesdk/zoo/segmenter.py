"""Supervised defect segmentation from a few labelled images: the pretrained backbone, frozen, and a
light FPN decoder trained on CPU (transfer learning). It learns the defect kinds it is shown; the
anomaly models beside it learn "not good" from good images alone.

At the default 256x256 input on EfficientNet-Lite0, taps after blocks 2/4/10/14:
  24@64x64 (stride 4) + 40@32x32 (8) + 112@16x16 (16) + 192@8x8 (32)
  -> 1x1 laterals to `width` channels, top-down sums (FPN) -> two 3x3 convs at stride 4
  -> per-pixel logits (K + 1: background and each kind) at 64x64, upsampled to 256x256.
Outputs keep the zoo's contract: anomaly_map (B, H, W) = P(any defect) per pixel = 1 - P(background),
score (B,) = its max, so one threshold (a probability) decides the verdict and the defect pixels;
the export adds kind_map (B, H, W) int64 = the most likely kind per pixel (index into cfg.kinds).
The image head (pooled decoder features -> one logit) is trained beside the pixels as a second
supervision of the shared decoder, and is what a defective image without a mask trains.

Training (fit): crops of `crop` pixels, half of each batch cropped around a labelled defect
(oversampling the rare defect pixels), augmented (data/augment.py); loss = focal cross-entropy over
the classes + soft Dice on P(defect) (both for the rare positive pixels) + image-level BCE on the
head and on max P(defect) (multiple-instance: a good image must have no defect pixel anywhere).
Stops at a step or a time budget, whichever comes first; deterministic for a seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Iterable, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgesdk.progress import bar as bar_of
from edgesdk.zoo.components import AnomalyModel, ModelConfig

DEFAULT_TAPS = {"efficientnet_lite0": (2, 4, 10, 14), "resnet18": (0, 1, 2, 3), "wide_resnet50_2": (0, 1, 2, 3)}


@dataclass(frozen=True)
class SegmenterConfig(ModelConfig):
    default_taps: ClassVar[dict] = DEFAULT_TAPS

    input_size: tuple[int, int] = (256, 256)
    backbone: str = "efficientnet_lite0"
    taps: tuple[int, ...] = ()  # () = DEFAULT_TAPS[backbone]; the first at stride 4
    kinds: tuple[str, ...] = ()  # defect kind names, set from the labelled folder
    width: int = 32  # decoder channels
    grid_stride: int = 4  # the decoder's output stride
    sigma: float = 4.0  # unused: the decoder's upsampling is the smoothing
    steps: int = 300  # training budget: steps of `batch` crops ...
    seconds: float = 170.0  # ... or wall-clock seconds, whichever ends first
    batch: int = 8
    crop: int = 128  # training crop (the decoder is fully convolutional)
    lr: float = 3e-3
    reuse: int = 3  # steps per fresh augmented batch (the backbone's taps of the others are cached)
    cache: int = 16  # fresh batches kept
    defect_share: float = 0.5  # share of each batch cropped around a labelled defect
    focal_gamma: float = 2.0
    dice: float = 1.0  # weight of the Dice loss
    kind_weight: float = 1.0  # weight of the kind loss: cross-entropy among the kinds on the defect pixels alone
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict):
        return super().from_dict({**d, "kinds": tuple(d.get("kinds") or ())})


class Decoder(nn.Module):
    """FPN over backbone taps [(C_i, stride_i)], first at stride 4 -> (B, width, H/4, W/4) features:
    1x1 laterals, top-down bilinear sums, two 3x3 convs at stride 4 (at width 32 and 256x256 input:
    ~0.15 GMAC a frame, about half the backbone's cost)."""

    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        p = self.lateral[-1](feats[-1])
        for lat, f in zip(list(self.lateral)[-2::-1], feats[-2::-1]):
            p = lat(f) + F.interpolate(p, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(p)


class Segmenter(AnomalyModel):
    name = "segmenter"
    units = "probability"  # score and anomaly_map: edgesdk.train keeps them unnormalized
    EXTRA_OUTPUTS = ("kind_map",)  # the exported graph's outputs after score and anomaly_map

    def __init__(self, cfg: SegmenterConfig = SegmenterConfig(), weights: str | None = "imagenet"):
        super().__init__(cfg, weights)
        if not cfg.kinds:
            raise ValueError("segmenter: config kinds is empty; train it with --labels DIR (defect kinds)")
        torch.manual_seed(cfg.seed)
        self.decoder = Decoder([self.backbone.tap_info[t][0] for t in self.taps], cfg.width)
        self.pixel_head = nn.Conv2d(cfg.width, len(cfg.kinds) + 1, 1)  # background + each kind
        self.image_head = nn.Linear(2 * cfg.width, 1)
        self.with_kinds = False  # the exported graph adds kind_map (for_export)

    def features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """(B, H, W, 3) uint8 -> the frozen backbone's taps (no activations kept for a backward pass)."""
        with torch.no_grad():
            return self.backbone.features(self.pre(frames), self.taps)

    def decode(self, feats: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone taps -> pixel logits (B, K + 1, *SIZE), image logit (B,)."""
        p = self.decoder(feats)
        pooled = torch.cat([p.mean((2, 3)), p.amax((2, 3))], 1)  # (B, 2 * width)
        px = F.interpolate(self.pixel_head(p), size=size, mode="bilinear", align_corners=False)
        return px, self.image_head(pooled).squeeze(1)

    def logits(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 -> pixel logits (B, K + 1, H, W), image logit (B,)."""
        return self.decode(self.features(frames), (frames.shape[1], frames.shape[2]))

    def full_map(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) P(any defect) per pixel."""
        px, _ = self.logits(frames)
        return 1 - torch.softmax(px, 1)[:, :1]

    def kind_map(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64: index into cfg.kinds of each pixel's most likely kind."""
        px, _ = self.logits(frames)
        return px[:, 1:].argmax(1)

    def extra_outputs(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exported graph's outputs after score and anomaly_map, by name (the parity gate compares each)."""
        return {"kind_map": self.kind_map(frames)}

    def image_probability(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,) P(defective) from the image head."""
        return torch.sigmoid(self.logits(frames)[1])

    def forward(self, frames: torch.Tensor):
        px, _ = self.logits(frames)
        amap = ((1 - torch.softmax(px, 1)[:, 0]) - self.score_shift) * self.score_scale  # (B, H, W)
        if self.with_kinds:
            return amap.flatten(1).amax(1), amap, px[:, 1:].argmax(1)
        return amap.flatten(1).amax(1), amap

    def for_export(self) -> "Segmenter":
        net = cast(Segmenter, super().for_export())
        net.with_kinds = True
        return net

    def loss(self, feats: list[torch.Tensor], target: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """FEATS: backbone taps of (B, S, S) crops, TARGET (B, S, S) int64 (-1 = unknown), LABEL (B,) 0/1."""
        px, img_logit = self.decode(feats, (target.shape[1], target.shape[2]))
        cfg = self.cfg
        ce = F.cross_entropy(px, target.clamp_min(0), reduction="none")  # (B, S, S)
        known = (target >= 0).float()
        focal = ((1 - torch.exp(-ce)) ** cfg.focal_gamma * ce * known).sum() / known.sum().clamp_min(1)
        p = 1 - torch.softmax(px, 1)[:, 0]  # (B, S, S) P(defect)
        m = (target > 0).float()
        inter, total = (p * m * known).sum(), ((p + m) * known).sum()
        dice = 1 - (2 * inter + 1) / (total + 1)
        pmax = p.flatten(1).amax(1).clamp(1e-6, 1 - 1e-6)
        mil = F.binary_cross_entropy(pmax, label)
        head = F.binary_cross_entropy_with_logits(img_logit, label)
        # The focal term averages over every pixel, so the defect pixels' choice among the kinds weighs
        # little in it (the decoder could separate defect from background and still name every defect
        # one kind): the kind term averages over the defect pixels alone.
        d = target > 0  # (B, S, S)
        kind = F.cross_entropy(px[:, 1:].permute(0, 2, 3, 1)[d], target[d] - 1) if bool(d.any()) else px.sum() * 0
        total_loss = focal + cfg.dice * dice + 0.5 * (mil + head) + cfg.kind_weight * kind
        parts = {"focal": focal, "dice": dice, "mil": mil, "head": head, "kind": kind}
        return total_loss, {k: float(v.detach()) for k, v in parts.items()}

    def fit(self, batches: Iterable[np.ndarray], progress=None, labelled=None, camera: tuple[str, ...] = ()) -> dict:
        """Train the decoder and heads from the good frames of BATCHES ((B, H, W, 3) uint8) and LABELLED
        (an edgesdk.data.labelled.LabelledSet with cfg.kinds) within the step and time budgets."""
        from edgesdk.data import augment

        if labelled is None:
            raise ValueError("segmenter: fit needs labelled images (--labels DIR)")
        if tuple(labelled.kinds) != tuple(self.cfg.kinds):
            raise ValueError(f"segmenter: labelled kinds {labelled.kinds} differ from the config's {self.cfg.kinds}")
        cfg = self.cfg
        good = np.concatenate(list(batches))
        if progress is not None:
            progress(len(good))
        frames, classes, masks, has = labelled.read(cfg.input_size)
        pool = augment.Pool(
            np.concatenate([good, frames]),
            np.concatenate([np.zeros(len(good), np.int64), classes]),
            np.concatenate([np.zeros((len(good), *cfg.input_size), bool), masks]),
            np.concatenate([np.ones(len(good), bool), has]),
        )
        goods = np.flatnonzero(pool.classes == 0)
        strong = np.flatnonzero((pool.classes > 0) & pool.has_mask)  # defects with masks: pixel labels
        weak = np.flatnonzero((pool.classes > 0) & ~pool.has_mask)  # defects without: image labels only
        if not len(strong) and not len(weak):
            raise ValueError(f"{labelled.root}: no defective images to learn from")
        rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        params = [*self.decoder.parameters(), *self.pixel_head.parameters(), *self.image_head.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
        self.train()
        self.backbone.eval()  # frozen, BatchNorm statistics included
        n_def = max(1, round(cfg.defect_share * cfg.batch)) if len(strong) else 0
        # The backbone is most of a step's cost and frozen: each fresh augmented batch's taps are kept
        # in a ring of `cache` batches, and each step trains on one of them drawn at random, so the
        # backbone runs once every `reuse` steps.
        cache: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = []
        t0, step, log = time.perf_counter(), 0, []
        bar = bar_of(total=cfg.steps, desc="train segmenter", unit="step", enabled=progress is not None, leave=False)
        while step < cfg.steps and time.perf_counter() - t0 < cfg.seconds:
            if step % cfg.reuse == 0:
                picks = np.concatenate(
                    [rng.choice(strong, n_def) if n_def else [], rng.choice(goods, cfg.batch - n_def)]
                )
                picks = picks.astype(int)
                x, t = augment.batch(pool, picks, cfg.crop, rng, camera)
                label = torch.from_numpy((pool.classes[picks] > 0).astype(np.float32))
                fresh = (self.features(torch.from_numpy(x)), torch.from_numpy(t), label)
                cache = cache[-(cfg.cache - 1) :] + [fresh] if cfg.cache > 1 else [fresh]
            loss, parts = self.loss(*cache[int(rng.integers(len(cache)))])
            if len(weak):  # image-level labels at full size: the defect may lie anywhere
                wp = np.concatenate([rng.choice(weak, 2), rng.choice(goods, 2)])
                wx, wt = augment.batch(pool, wp, max(cfg.input_size), rng, camera)
                wl, _ = self.loss(
                    self.features(torch.from_numpy(wx)), torch.from_numpy(wt), torch.tensor([1.0, 1.0, 0.0, 0.0])
                )
                loss = loss + wl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            log.append([float(loss.detach()), *parts.values()])
            step += 1
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{np.mean([r[0] for r in log[-25:]]):.3f}")
        bar.close()
        self.eval()
        last = np.mean(log[-50:], 0) if log else [None] * 6
        return {
            "n_images": int(len(good)),
            "n_labelled": labelled.count(),
            "kinds": list(cfg.kinds),
            "steps": step,
            "train_s": round(time.perf_counter() - t0, 2),
            "stopped_by": "steps" if step >= cfg.steps else "time budget",
            "final_loss": {
                k: (round(float(v), 4) if v is not None else None)
                for k, v in zip(("total", "focal", "dice", "mil", "head", "kind"), last)
            },
        }
