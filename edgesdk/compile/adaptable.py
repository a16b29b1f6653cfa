"""What an fp32 bundle carries so that `edgesdk adapt` can update its model on the device without torch
(manifest field `adapt`, spec/adapt.py). Made by `edgesdk export` (host: torch, onnx):

  features.onnx      (B, H, W, 3) uint8 -> features (B, P, D) float32, the backbone features the head of
                     model.onnx reads, checked against torch like model.onnx is
  adapt_state.npz    PaDiM only: its fit's sufficient statistics (run folder, train.py)
  adapt.tensors      where each head tensor's raw bytes lie in model.onnx. torch's exporter names and
                     folds initializers its own way (PaDiM's mean is stored as (P, 1, D), PatchCore's
                     support under a generated name), so each is found by its exact values, and only an
                     initializer that matches one head tensor alone, at one offset alone, is taken."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgesdk.spec.adapt import DTYPES, FEATURES_OUTPUT, HEADS, AdaptSpec, HeadTensor
from edgesdk.zoo.components import AnomalyModel

FEATURES_FILE = "features.onnx"
STATE_FILE = "adapt_state.npz"  # the same name in the run folder (train.ADAPT_STATE) and the bundle
log = logging.getLogger(__name__)


class _Features(torch.nn.Module):
    def __init__(self, net: AnomalyModel):
        super().__init__()
        self.net = net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net.adapt_features(frames)  # type: ignore[operator]


def locate_head(onnx_path: Path, head: dict[str, np.ndarray]) -> dict[str, HeadTensor] | str:
    """Head tensor name -> where its bytes are in ONNX_PATH; or why one cannot be placed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    data = onnx_path.read_bytes()
    out = {}
    for name, value in head.items():
        hits = [
            i
            for i in model.graph.initializer
            if i.raw_data
            and len(i.raw_data) == value.nbytes
            and np.array_equal(numpy_helper.to_array(i).reshape(-1), value.reshape(-1))
            and numpy_helper.to_array(i).dtype == value.dtype
        ]
        if len(hits) != 1:
            return f"{len(hits)} initializers of model.onnx hold the values of the head tensor {name}"
        raw = hits[0].raw_data
        offset = data.find(raw)
        if offset < 0 or data.find(raw, offset + 1) >= 0:
            return f"the bytes of the head tensor {name} are not at one place alone in model.onnx"
        out[name] = HeadTensor(offset, tuple(int(x) for x in hits[0].dims), value.dtype.name)
    return out


def _state(net: AnomalyModel, run_dir: Path) -> dict[str, np.ndarray] | str:
    """The run's PaDiM statistics, checked to be the ones its Gaussians came from."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        return f"{run_dir} has no {STATE_FILE} (trained by an older edgesdk); train again to adapt on the line"
    with np.load(path, allow_pickle=False) as z:
        state = {k: z[k] for k in ("n", "sum", "sum_outer") if k in z}
    mean = net.mean.numpy()  # type: ignore[operator]
    if (
        len(state) != 3
        or state["sum"].shape != mean.shape
        or not np.allclose(state["sum"] / int(state["n"]), mean, rtol=1e-5, atol=1e-5)
    ):
        return f"{path} does not hold the statistics of this run's Gaussians"
    return state


def prepare(
    net: AnomalyModel,
    kind: str,
    run_dir: Path,
    stage: Path,
    frames: np.ndarray,
    rtol: float,
    export: Callable[[torch.nn.Module, Path, str], None],
) -> AdaptSpec | None:
    """Write STAGE/features.onnx (and PaDiM's statistics) and return the manifest's adapt field, or None
    (logged why) when this model or run cannot be adapted. EXPORT(module, path, output_name) runs
    torch's ONNX exporter as export_onnx does; FRAMES (N, H, W, 3) uint8 check features.onnx vs torch."""
    if kind not in HEADS:
        log.info("%s: no on-device adaptation for %s (it needs training); bundle without adapt", run_dir, kind)
        return None
    state = _state(net, run_dir) if kind == "padim" else None
    if isinstance(state, str):
        log.warning("%s; the bundle cannot be adapted on the device", state)
        return None
    head = {k: v.detach().numpy() for k, v in net.adapt_head().items()}  # type: ignore[operator]
    if any(v.dtype.name not in DTYPES for v in head.values()):
        return None
    where = locate_head(stage / "model.onnx", head)
    if isinstance(where, str):
        log.warning("%s; the bundle cannot be adapted on the device", where)
        return None
    export(_Features(net.for_export()).eval(), stage / FEATURES_FILE, FEATURES_OUTPUT)
    from edgesdk.backends.onnxruntime import OnnxRuntimeRunner

    with torch.no_grad():
        want = _Features(net)(torch.from_numpy(frames)).numpy()
    with OnnxRuntimeRunner(stage / FEATURES_FILE, providers="CPUExecutionProvider") as r:
        name = r.inputs[0].name
        got = np.concatenate([r.infer({name: frames[i : i + 1]})[FEATURES_OUTPUT] for i in range(len(frames))])
    err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1.0)
    if not err <= rtol:  # a RuntimeError, as export's own ExportError
        raise RuntimeError(f"{run_dir}: {FEATURES_FILE} disagrees with torch by {err:.3g} (rtol {rtol})")
    cfg = net.cfg
    if state is not None:
        np.savez(stage / STATE_FILE, n=state["n"], sum=state["sum"], sum_outer=state["sum_outer"])
        return AdaptSpec(kind, FEATURES_FILE, where, state=STATE_FILE, ridge=float(cfg.ridge))
    return AdaptSpec(
        kind,
        FEATURES_FILE,
        where,
        projection_dim=int(cfg.projection_dim),
        seed=int(cfg.seed),
        num_neighbors=int(cfg.num_neighbors),
    )
