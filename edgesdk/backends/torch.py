"""Torch eager runner over a run folder (host only): the reference that bundles are compared and
timed against. torch is imported in load(), never at module import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgesdk.backends.base import Runner, TensorMeta

if TYPE_CHECKING:
    from edgesdk.zoo.components import AnomalyModel


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, run_dir: str | Path, threads: int = 0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.threads = threads
        self.net: AnomalyModel | None = None

    def load(self) -> "TorchRunner":
        import torch

        from edgesdk.train import load_run

        if self.threads:
            torch.set_num_threads(self.threads)
        self.net, _ = load_run(self.run_dir)
        self._torch = torch
        self.loaded = True
        return self

    def _live(self) -> AnomalyModel:
        if self.net is None:
            raise self.not_loaded()
        return self.net

    @property
    def inputs(self) -> list[TensorMeta]:
        h, w = self._live().cfg.input_size
        return [TensorMeta("image", ("batch", h, w, 3), "uint8")]

    @property
    def outputs(self) -> list[TensorMeta]:
        h, w = self._live().cfg.input_size
        return [TensorMeta("score", ("batch",), "float32"), TensorMeta("anomaly_map", ("batch", h, w), "float32")]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        net = self._live()
        with self._torch.inference_mode():
            score, amap = net(self._torch.from_numpy(feeds["image"]))
        return {"score": score.numpy(), "anomaly_map": amap.numpy()}

    def close(self) -> None:
        self.net = None
        super().close()
