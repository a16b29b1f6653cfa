"""Frozen dataclasses for what crosses a file boundary (the bundle manifest), with loaders that say
which file is wrong and how. Standard library only: the device runtime imports this."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class SpecError(ValueError):
    """A file the user gave us is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    height: int
    width: int
    dtype: str = "uint8"
    layout: str = "NHWC"   # raw frames as OpenCV returns them
    color: str = "BGR"


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple  # e.g. ("batch",) or ("batch", 256, 256)
    dtype: str = "float32"
    meaning: str = ""


@dataclass(frozen=True)
class Threshold:
    """One threshold decides both the image verdict (score > value) and the defect pixels
    (anomaly_map > value): the graph outputs the image score as the max of the map."""
    value: float
    source: str            # "good_holdout_k_sigma" or "val_f1"
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    model: dict            # name, backbone and the model's own hyper-parameters
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    threshold: Threshold
    normalization: dict    # how raw distances became scores (done inside the graph)
    precision: str
    files: dict[str, FileEntry]
    metrics: dict = field(default_factory=dict)       # measured at export (parity, holdout)
    calibration: dict | None = None
    provenance: dict = field(default_factory=dict)
    edgesdk_version: str = ""
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(f"{where}: schema_version {version!r} is not supported "
                            f"(this edgesdk reads schema_version {SCHEMA_VERSION}); "
                            "re-export the bundle with this edgesdk version")
        try:
            return cls(
                model=dict(d["model"]),
                input=InputSpec(**d["input"]),
                outputs=tuple(OutputSpec(**{**o, "shape": tuple(o["shape"])}) for o in d["outputs"]),
                threshold=Threshold(**d["threshold"]),
                normalization=dict(d["normalization"]),
                precision=str(d["precision"]),
                files={k: FileEntry(**v) for k, v in d["files"].items()},
                metrics=dict(d.get("metrics", {})),
                calibration=d.get("calibration"),
                provenance=dict(d.get("provenance", {})),
                edgesdk_version=str(d.get("edgesdk_version", "")),
                created_utc=str(d.get("created_utc", "")),
                schema_version=version,
            )
        except KeyError as e:
            raise SpecError(f"{where}: missing field {e.args[0]!r}") from None
        except TypeError as e:
            raise SpecError(f"{where}: malformed field ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path}: manifest not found (a bundle is a folder with {MANIFEST} "
                            "and the files it lists)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, where=str(path))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=os.path.getsize(path))
