"""The hybrid: a supervised segmenter and a PatchCore head on one backbone pass, in one graph.

The segmenter outlines and names the defect kinds it was taught; PatchCore, fitted on good images
only, flags anything unlike them, a kind nobody labelled included. `edgesdk train --model segmenter
--labels DIR --with-anomaly RUN` composes them (RUN: a PatchCore run on the same backbone, weights
and input size, whose taps the segmenter's include, so the backbone runs once for both).

Units: each head's map is divided by its own threshold (the segmenter's probability threshold, the
PatchCore run's z threshold), so 1.0 is "this head fires" for both and the bundle threshold is 1.0:
  segmenter_map (B, H, W) = P(defect) / t_segmenter
  patchcore_map (B, H, W) = z / t_patchcore
  anomaly_map   (B, H, W) = max(segmenter_map, patchcore_map); score (B,) = its max
  kind_map      (B, H, W) int64 = the segmenter's most likely kind per pixel (index into kinds)
The device runtime names a region by kind_map where segmenter_map passes the threshold in it, and
"unknown" where only the PatchCore head fired (stream/detector.py).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgesdk.spec import SpecError
from edgesdk.spec.heads import Head
from edgesdk.zoo.patchcore import Patchcore, PatchcoreConfig
from edgesdk.zoo.segmenter import Segmenter, SegmenterConfig

HEAD_OUTPUTS = ("segmenter_map", "patchcore_map")  # each head's map, in the bundle threshold's units


@dataclass(frozen=True)
class HybridConfig:
    segmenter: dict  # SegmenterConfig.to_dict()
    patchcore: dict  # PatchcoreConfig.to_dict() of the PatchCore run
    segmenter_threshold: float = 0.5  # its own units (probability): segmenter_map = P(defect) / this
    patchcore_threshold: float = 3.0  # its own units (z): patchcore_map = z / this

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.segmenter["input_size"]
        return (int(h), int(w))

    @property
    def backbone(self) -> str:
        return str(self.segmenter["backbone"])

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.segmenter["kinds"])

    def to_dict(self) -> dict:
        """The fields, and what readers of any run.json look up at its top (backbone, input_size, kinds)."""
        return {
            **asdict(self),
            "backbone": self.backbone,
            "input_size": list(self.input_size),
            "kinds": list(self.kinds),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HybridConfig":
        return cls(**{k: v for k, v in d.items() if k not in ("backbone", "input_size", "kinds")})


class Hybrid(nn.Module):
    """(B, H, W, 3) uint8 BGR -> score (B,), anomaly_map (B, H, W) in units of each head's threshold;
    the exported graph (for_export) adds kind_map and both heads' maps (EXTRA_OUTPUTS)."""

    name = "hybrid"
    units = "threshold"
    EXTRA_OUTPUTS = ("kind_map", *HEAD_OUTPUTS)

    def __init__(
        self, cfg: HybridConfig, weights: str | None = None, seg: Segmenter | None = None, pc: Patchcore | None = None
    ):
        """From CFG (a run's config: both parts built empty, to load model.pt into), or from the fitted SEG
        and PC (compose)."""
        super().__init__()
        self.cfg = cfg
        self.seg = seg if seg is not None else Segmenter(SegmenterConfig.from_dict(cfg.segmenter), weights)
        self.pc = pc if pc is not None else Patchcore(PatchcoreConfig.from_dict(cfg.patchcore), weights)
        self.pc.backbone = self.seg.backbone  # one backbone: the state dict names it twice, one tensor each
        self.taps = tuple(sorted(set(self.seg.taps) | set(self.pc.taps)))  # the one pass's taps
        self.with_extras = False

    @classmethod
    def compose(cls, seg: Segmenter, seg_threshold: float, pc: Patchcore, pc_threshold: float) -> "Hybrid":
        """The hybrid of a fitted segmenter and PatchCore (anomaly_run checked that their backbones match)."""
        cfg = HybridConfig(seg.cfg.to_dict(), pc.cfg.to_dict(), float(seg_threshold), float(pc_threshold))
        return cls(cfg, seg=seg, pc=pc).eval()

    def head_maps(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 -> segmenter_map, patchcore_map (B, H, W) in threshold units, kind_map (B, H, W)."""
        seg, pc = self.seg, self.pc
        feats = seg.backbone.features(seg.pre(frames), self.taps)  # the one backbone pass
        by_tap = dict(zip(self.taps, feats))
        px, _ = seg.decode([by_tap[t] for t in seg.taps], (frames.shape[1], frames.shape[2]))  # (B, K + 1, H, W)
        p_defect = ((1 - torch.softmax(px, 1)[:, 0]) - seg.score_shift) * seg.score_scale
        e = pc.to_grid([by_tap[t] for t in pc.taps], pc.cfg.pool)  # (B, D, h, w), as Patchcore.embed
        if pc.cfg.feature_dim:
            e = e.index_select(1, pc.channel_idx)
        raw = pc.map_of(*pc.patch_scores(e.flatten(2).transpose(1, 2)))  # (B, 1, H, W), as Patchcore.full_map
        z = ((raw - pc.score_shift) * pc.score_scale)[:, 0]
        return p_defect / self.cfg.segmenter_threshold, z / self.cfg.patchcore_threshold, px[:, 1:].argmax(1)

    def forward(self, frames: torch.Tensor):
        s_map, p_map, kinds = self.head_maps(frames)
        amap = torch.maximum(s_map, p_map)
        score = amap.flatten(1).amax(1)
        return (score, amap, kinds, s_map, p_map) if self.with_extras else (score, amap)

    def manifest_heads(self) -> tuple[Head, ...]:
        """The manifest's heads field: which output holds which head's map, and its own threshold."""
        cfg = self.cfg
        return (
            Head("segmenter", "segmenter_map", cfg.segmenter_threshold, "probability", kinds=True),
            Head("patchcore", "patchcore_map", cfg.patchcore_threshold, "z"),
        )

    def extra_outputs(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """EXTRA_OUTPUTS by name, as the exported graph returns them (the parity gate compares each)."""
        s_map, p_map, kinds = self.head_maps(frames)
        return {"kind_map": kinds, "segmenter_map": s_map, "patchcore_map": p_map}

    @torch.no_grad()
    def raw_scores(self, frames, batch: int = 16):
        """(N,) float64 numpy image scores (threshold units: the hybrid has no raw distance)."""
        import numpy as np

        out = [
            self(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])))[0] for i in range(0, len(frames), batch)
        ]
        return torch.cat(out).double().numpy()

    def for_export(self) -> "Hybrid":
        """A copy with the input normalization folded into the backbone's stem, every output on."""
        net = copy.deepcopy(self).eval()
        net.seg.pre.fold_into(net.seg.input_convs())
        net.with_extras = True
        return net


def check_anomaly_run(run_dir: str | Path, meta: dict, seg: Segmenter) -> None:
    """SpecError naming RUN_DIR/run.json and the field when the run (its run.json as META) cannot share
    SEG's backbone pass: not PatchCore, another backbone or input size, taps the segmenter's pass does not
    reach, or no positive threshold to divide by. Checked before the segmenter trains."""
    where = Path(run_dir) / "run.json"
    if meta.get("model") != "patchcore":
        raise SpecError(
            f"{where}: field model is {meta.get('model')!r}; --with-anomaly takes a PatchCore run "
            "(`edgesdk train --model patchcore` on the same category)"
        )
    cfg, own = meta["config"], seg.cfg
    taps = list(cfg.get("taps") or PatchcoreConfig.default_taps.get(cfg.get("backbone"), ()))
    for key, theirs, ours, ok in (
        ("config.backbone", cfg.get("backbone"), own.backbone, cfg.get("backbone") == own.backbone),
        (
            "config.input_size",
            cfg.get("input_size"),
            list(own.input_size),
            cfg.get("input_size") == list(own.input_size),
        ),
        ("config.taps", taps, list(seg.taps), bool(taps) and set(taps) <= set(seg.taps)),
    ):
        if not ok:
            how = "must be among" if key == "config.taps" else "must match"
            raise SpecError(
                f"{where}: field {key} is {theirs!r}; it {how} the segmenter's {ours!r} (one backbone pass)"
            )
    thr = meta["threshold"].get("value") if isinstance(meta.get("threshold"), dict) else None
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not thr > 0:
        raise SpecError(
            f"{where}: field threshold.value must be a number > 0 (the hybrid divides the PatchCore map by it), "
            f"got {thr!r}"
        )


def check_backbone(run_dir: str | Path, pc: Patchcore, seg: Segmenter) -> None:
    """SpecError naming RUN_DIR/model.pt when the fitted PatchCore's backbone weights are not SEG's."""
    mine, theirs = seg.backbone.state_dict(), pc.backbone.state_dict()
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        raise SpecError(
            f"{Path(run_dir) / 'model.pt'}: field backbone holds other weights than the segmenter's "
            "(--backbone-weights): both heads must read one backbone pass"
        )
