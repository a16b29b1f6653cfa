"""The runner interface (after Polygraphy's runners): heavy objects are made in load()."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple  # ints, or strings for dynamic axes ("batch")
    dtype: str


class Runner(abc.ABC):
    name = "runner"

    def __init__(self) -> None:
        self.loaded = False

    @abc.abstractmethod
    def load(self) -> "Runner": ...

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        self.loaded = False

    def not_loaded(self) -> RuntimeError:
        """The error for a runner used before load() (or after close())."""
        return RuntimeError(f"{self.name} runner: not loaded; call load() first, or use it in a `with` block")

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorMeta]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorMeta]: ...

    def __enter__(self) -> "Runner":
        if not self.loaded:
            self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
