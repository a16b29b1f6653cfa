"""The drift alarms' reference: what the line looked like at calibration, as drift.json in the bundle.

  score   mean, std and quantiles (p10, p50, p90, p99) of the good calibration frames' scores
  image   mean and std over the calibration frames of each image statistic (image_stats)
  view    the mean of the calibration frames' SIDE x SIDE grey copies: the fixed scene; view_noise,
          the largest shift of the mean of VIEW_WINDOW calibration frames against it (1.0 when a peak
          is too weak to measure: a view whose every part moves, such as a belt filling the frame)

`edgesdk calibrate` writes it (listed in the manifest with its sha256, so Bundle.open verifies it);
`load_reference` reads it back with every number checked finite and in range, and errors naming the
file and the field. The image statistics are measured here, one way for calibration and the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgesdk.spec import SpecError, source_name_problem
from edgesdk.spec.typed import load_json

DRIFT_FILE = "drift.json"
SOURCES_FILE = "drift_sources.json"  # one reference per camera: `calibrate --source A --source B`
SCHEMA = 1
SIDE = 64  # the grey copy every image statistic is taken on: (SIDE, SIDE) float32
IMAGE_STATS = ("brightness", "contrast", "sharpness")
# The smallest std an image statistic's alarm divides by: a camera steadier than this would otherwise
# alarm on changes no one can see (grey levels; natural-log units for contrast and sharpness).
FLOORS = {"brightness": 2.0, "contrast": 0.02, "sharpness": 0.05}
SCORE_KEYS = ("mean", "std", "p10", "p50", "p90", "p99")
VIEW_WINDOW = 60  # frames averaged into one view: at least the time a part takes to cross the frame
MIN_RESPONSE = 0.1  # phase correlation peak below which two views share too little to measure a shift


def grey_small(image: np.ndarray) -> np.ndarray:
    """(SIDE, SIDE) float64 grey copy of a (H, W, 3) BGR or (H, W) grey uint8 frame."""
    if max(image.shape[:2]) > 2 * SIDE:
        # a camera frame first goes to (2 SIDE, 2 SIDE) by bilinear sampling, whose cost is the output's, not
        # the frame's (an area average reads every pixel: at full HD it would cost more than the rest of the
        # drift statistics together); calibration and the loop both take this path, so their statistics agree
        image = cv2.resize(image, (2 * SIDE, 2 * SIDE), interpolation=cv2.INTER_LINEAR)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float64)


def image_stats(small: np.ndarray) -> dict[str, float]:
    """Brightness (mean grey), contrast (log of the grey std) and sharpness (log of the variance of
    the Laplacian: falls when the lens is dusty or out of focus) of a grey_small copy."""
    lap = cv2.Laplacian(small, cv2.CV_64F)
    return {
        "brightness": float(small.mean()),
        "contrast": math.log1p(float(small.std())),
        "sharpness": math.log1p(float(lap.var())),
    }


def shift_of(reference: np.ndarray, view: np.ndarray) -> tuple[float, float]:
    """How far VIEW (SIDE, SIDE) sits from REFERENCE, as a fraction of the side (phase correlation),
    and the correlation peak's height (near 0: the two share no structure, the shift means nothing)."""
    # no Hann taper: it would hide what is fixed near the borders (belt edges, rails)
    (dx, dy), response = cv2.phaseCorrelate(reference, np.asarray(view, np.float64))
    return math.hypot(dx, dy) / SIDE, float(response)


@dataclass(frozen=True)
class Reference:
    frames: int
    source: str  # what the reference was measured on
    score: dict | None  # SCORE_KEYS -> float; None: score drift not checked
    image: dict  # IMAGE_STATS -> (mean, std floored at FLOORS)
    view: np.ndarray  # (SIDE, SIDE) float64 mean grey frame
    view_noise: float  # fraction of the side; see the module's notes

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "frames": self.frames,
            "source": self.source,
            "side": SIDE,
            "score": self.score,
            "image": {k: {"mean": m, "std": s} for k, (m, s) in self.image.items()},
            "view": np.round(self.view, 2).tolist(),
            "view_noise": self.view_noise,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Reference":
        if not isinstance(d, dict):
            raise SpecError(f"{where}: not a JSON object")
        if d.get("schema") != SCHEMA:
            raise SpecError(f"{where}: field schema is {d.get('schema')!r}; this edgesdk reads {SCHEMA}")
        if d.get("side") != SIDE:
            raise SpecError(f"{where}: field side is {d.get('side')!r}; expected {SIDE}")
        frames = d.get("frames")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise SpecError(f"{where}: field frames must be a whole number >= 1, got {frames!r}")
        if not isinstance(d.get("source"), str):
            raise SpecError(f"{where}: field source must be a string")
        score = None
        if d.get("score") is not None:
            score = {k: _number(_get(d["score"], k, where, "score"), where, f"score.{k}") for k in SCORE_KEYS}
            if score["std"] <= 0:
                raise SpecError(f"{where}: field score.std must be > 0, got {score['std']!r}")
        image = {}
        for k in IMAGE_STATS:
            entry = _get(d.get("image"), k, where, "image")
            mean = _number(_get(entry, "mean", where, f"image.{k}"), where, f"image.{k}.mean")
            std = _number(_get(entry, "std", where, f"image.{k}"), where, f"image.{k}.std")
            if std < FLOORS[k]:
                raise SpecError(f"{where}: field image.{k}.std must be >= {FLOORS[k]}, got {std!r}")
            image[k] = (mean, std)
        view = d.get("view")
        rows = view if isinstance(view, list) and len(view) == SIDE else []
        ok = bool(rows) and all(isinstance(r, list) and len(r) == SIDE for r in rows)
        if not ok or not all(type(x) in (int, float) for r in rows for x in r):
            raise SpecError(f"{where}: field view must be {SIDE} lists of {SIDE} numbers")
        arr = np.asarray(view, np.float64)
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255:
            raise SpecError(f"{where}: field view must hold grey levels from 0 to 255")
        noise = _number(d.get("view_noise"), where, "view_noise")
        if noise < 0:
            raise SpecError(f"{where}: field view_noise must be >= 0, got {noise!r}")
        return cls(frames, d["source"], score, image, arr, noise)


def _get(d: Any, key: str, where: str, parent: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise SpecError(f"{where}: field {parent}.{key} is missing")
    return d[key]


def _number(x: Any, where: str, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise SpecError(f"{where}: field {name} must be a finite number, got {x!r}")
    return float(x)


def load_reference(bundle) -> Reference | None:
    """The bundle's drift reference, or None when its manifest lists no DRIFT_FILE. The file's sha256
    was verified by Bundle.open; its content is checked here."""
    if DRIFT_FILE not in bundle.manifest.files:
        return None
    path = Path(bundle.path) / DRIFT_FILE
    return Reference.from_dict(load_json(path, "drift reference listed in the manifest but missing"), str(path))


def load_source_references(bundle) -> dict[str, Reference]:
    """Each camera's reference by source name (SOURCES_FILE: {"schema", "sources": {name: reference}}), or
    {} when the manifest lists no SOURCES_FILE. Checked like load_reference."""
    if SOURCES_FILE not in bundle.manifest.files:
        return {}
    path = Path(bundle.path) / SOURCES_FILE
    d = load_json(path, "per-source drift references listed in the manifest but missing")
    if not isinstance(d, dict) or d.get("schema") != SCHEMA or not isinstance(d.get("sources"), dict):
        raise SpecError(f"{path}: expected {{'schema': {SCHEMA}, 'sources': {{name: reference}}}}")
    out = {}
    for name, ref in d["sources"].items():
        if why := source_name_problem(name):
            raise SpecError(f"{path}: field sources has a source name that {why}")
        out[name] = Reference.from_dict(ref, f"{path}: sources[{name!r}]")
    return out


class ReferenceBuilder:
    """Accumulates frames (grey_small copies and their image_stats) into a Reference."""

    def __init__(self) -> None:
        self.n = 0
        self.views: list[np.ndarray] = []
        self.stats: dict[str, list[float]] = {k: [] for k in IMAGE_STATS}

    def add(self, small: np.ndarray, stats: dict[str, float] | None = None) -> None:
        stats = stats or image_stats(small)
        self.n += 1
        self.views.append(small)
        for k in IMAGE_STATS:
            self.stats[k].append(stats[k])

    def add_image(self, image: np.ndarray) -> None:
        self.add(grey_small(image))

    def reference(self, scores: np.ndarray | None, source: str) -> Reference:
        if not self.n:
            raise ValueError(f"{source}: no frames to make a drift reference from")
        image = {k: (float(np.mean(v)), max(FLOORS[k], float(np.std(v)))) for k, v in self.stats.items()}
        score = None
        if scores is not None:
            s = np.asarray(scores, np.float64)
            q = np.percentile(s, [10, 50, 90, 99])
            score = {
                "mean": float(s.mean()),
                "std": max(float(s.std(ddof=1)), 1e-6),
                **{f"p{p}": float(v) for p, v in zip((10, 50, 90, 99), q)},
            }
        views = np.stack(self.views)
        mean = views.mean(0)
        noise = 1.0 if self.n < VIEW_WINDOW else 0.0
        for start in range(0, self.n - VIEW_WINDOW + 1, max(1, VIEW_WINDOW // 6)):
            shift, response = shift_of(mean, views[start : start + VIEW_WINDOW].mean(0))
            noise = max(noise, shift if response >= MIN_RESPONSE else 1.0)
        return Reference(self.n, source, score, image, mean, round(min(noise, 1.0), 5))
