"""The manifest's `adapt` field: what a bundle carries so that `edgesdk adapt` can update its model on
the device without torch. Optional: bundles exported before it (or of a model that needs training to
adapt, or at fp16/int8) load as before, and `adapt` on them says what to do instead.

  kind        "padim" or "patchcore"
  features    a bundle file: ONNX graph, (B, H, W, 3) uint8 frames -> "features" (B, P, D) float32,
              the same backbone features the head of model.onnx reads
  tensors     head tensor name -> {offset, shape, dtype}: where its raw little-endian bytes are in
              model.onnx (padim: mean, precision; or its low-rank head mean, basis (P, D, k),
              weight (P, k), ref (P,); patchcore: bank, bank_sq, support)
  state       padim: a bundle file (.npz) of its sufficient statistics n, sum (P, D), sum_outer (P, D, D)
  ridge                                    padim: covariance + ridge * I, as fit
  projection_dim, seed, num_neighbors      patchcore: its greedy coreset and re-weighting support
Standard library only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgesdk.spec.typed import SpecError

HEADS = {"padim": ("mean", "precision"), "patchcore": ("bank", "bank_sq", "support")}
LOWRANK = ("mean", "basis", "weight", "ref")  # PaDiM's low-rank head (zoo PadimConfig.head_rank > 0)
HEAD_SETS = {"padim": (HEADS["padim"], LOWRANK), "patchcore": (HEADS["patchcore"],)}
DTYPES = {"float32": 4, "int64": 8}
FEATURES_OUTPUT = "features"


@dataclass(frozen=True)
class HeadTensor:
    offset: int  # of the tensor's raw bytes in model.onnx
    shape: tuple[int, ...]  # as stored in the graph (folded reshapes included)
    dtype: str  # float32 or int64

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * DTYPES[self.dtype]


@dataclass(frozen=True)
class AdaptSpec:
    kind: str
    features: str
    tensors: dict[str, HeadTensor]
    state: str = ""
    ridge: float = 0.0
    projection_dim: int = 0
    seed: int = 0
    num_neighbors: int = 1

    @property
    def rank(self) -> int:
        """k of a low-rank PaDiM head (its basis is stored (P, D, k), maybe with folded unit axes); 0 if full."""
        t = self.tensors.get("basis")
        return 0 if t is None else t.size // self.tensors["mean"].size

    def bundle_files(self) -> tuple[str, ...]:
        return (self.features,) + ((self.state,) if self.state else ())


KEYS = ("kind", "features", "state", "ridge", "projection_dim", "seed", "num_neighbors", "tensors")


def _int(d: dict, key: str, where: str, lo: int) -> int:
    v = d.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SpecError(f"{where}: field adapt.{key} must be an integer >= {lo}, got {v!r}")
    return v


def adapt_spec(d: Any, where: str) -> AdaptSpec | None:
    """The manifest's adapt field (None when absent or null), every field checked; SpecError names it."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise SpecError(f"{where}: field adapt must be an object or null, got {type(d).__name__}")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown field adapt.{unknown[0]} (known: {', '.join(KEYS)})")
    kind = d.get("kind")
    if kind not in HEADS:
        raise SpecError(f"{where}: field adapt.kind must be one of {', '.join(HEADS)}, got {kind!r}")
    for key in ("features", "state"):
        if not isinstance(d.get(key, ""), str):
            raise SpecError(f"{where}: field adapt.{key} must be a file name of the bundle, got {d.get(key)!r}")
    if not d.get("features"):
        raise SpecError(f"{where}: field adapt.features must name the features graph of the bundle")
    tensors = d.get("tensors")
    if not isinstance(tensors, dict) or sorted(tensors) not in [sorted(h) for h in HEAD_SETS[kind]]:
        raise SpecError(
            f"{where}: field adapt.tensors must give {' or '.join(', '.join(h) for h in HEAD_SETS[kind])} "
            f"for {kind}, got {sorted(tensors) if isinstance(tensors, dict) else tensors!r}"
        )
    ridge = d.get("ridge", 0.0)
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise SpecError(f"{where}: field adapt.ridge must be a finite number >= 0, got {ridge!r}")
    spec = AdaptSpec(
        kind=kind,
        features=d["features"],
        state=d.get("state", ""),
        ridge=float(ridge),
        projection_dim=_int(d, "projection_dim", where, 0),
        seed=_int(d, "seed", where, 0),
        num_neighbors=_int(d, "num_neighbors", where, 0),
        tensors={k: _tensor(v, where, f"adapt.tensors.{k}") for k, v in tensors.items()},
    )
    if kind == "padim" and (not spec.state or spec.ridge <= 0):
        raise SpecError(f"{where}: field adapt: padim needs its statistics file (adapt.state) and adapt.ridge > 0")
    if "basis" in spec.tensors:
        _lowrank_shapes(spec, where)
    if kind == "patchcore" and (spec.projection_dim < 1 or spec.num_neighbors < 1):
        raise SpecError(f"{where}: field adapt: patchcore needs adapt.projection_dim >= 1 and adapt.num_neighbors >= 1")
    return spec


def _tensor(d: Any, where: str, name: str) -> HeadTensor:
    if not isinstance(d, dict) or sorted(d) != ["dtype", "offset", "shape"]:
        raise SpecError(f"{where}: field {name} must be an object with offset, shape and dtype, got {d!r}"[:300])
    offset, shape, dtype = d["offset"], d["shape"], d["dtype"]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise SpecError(f"{where}: field {name}.offset must be an integer >= 0, got {offset!r}")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise SpecError(f"{where}: field {name}.shape must be a list of positive integers, got {shape!r}"[:300])
    if dtype not in DTYPES:
        raise SpecError(f"{where}: field {name}.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return HeadTensor(offset, tuple(shape), dtype)


def _lowrank_shapes(spec: AdaptSpec, where: str) -> None:
    """A low-rank head's tensors agree: mean P * D, basis P * D * k, weight P * k, ref P values, 2 <= k < D even."""
    t = spec.tensors
    d = t["mean"].shape[-1]
    p, k = t["mean"].size // d, spec.rank
    want = {"basis": p * d * k, "weight": p * k, "ref": p}
    if t["basis"].size % t["mean"].size or not (2 <= k < d and k % 2 == 0) or t["basis"].shape[-1] != k:
        raise SpecError(
            f"{where}: field adapt.tensors.basis: shape {list(t['basis'].shape)} is not (P, D, k) for mean "
            f"{list(t['mean'].shape)} with an even k, 2 <= k < D"
        )
    for name, size in want.items():
        if t[name].size != size or t[name].dtype != "float32":
            raise SpecError(
                f"{where}: field adapt.tensors.{name}: {t[name].size} {t[name].dtype} values; a rank-{k} head of "
                f"{p} positions and {d} channels needs {size} float32"
            )
