"""The device-side detector: bundle in, per-frame verdicts out. No torch, no model Python.

Stages, each timed: preprocess (resize to the model's input; normalization is in the graph),
infer (the runner), postprocess (threshold the anomaly map into boxes in frame coordinates).
With a TileSpec (DetectorOptions.tile), a frame is scored tile by tile instead (stream/tiling.py):
preprocess cuts the tiles, infer scores them as one batch (chunked to a TensorRT engine's profile
maximum), postprocess stitches their maps into one map in frame pixels and finds the regions there."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgesdk.backends import Runner, open_runner
from edgesdk.bundle import Bundle
from edgesdk.errors import finite
from edgesdk.images import read_image, resize
from edgesdk.stream import tiling
from edgesdk.stream.tiling import TileSpec


@dataclass(frozen=True)
class Region:
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in the caller's frame, x1/y1 exclusive
    area: int  # pixels above threshold, in the map's resolution (the model's input; tiled: the frame's)
    peak: float  # highest score inside the region
    kind: str | None = None  # a supervised model's defect kind: the majority over the region's pixels; a
    # hybrid's region that only its anomaly head found: "unknown"

    def to_dict(self) -> dict:
        d = {"bbox": list(self.bbox), "area": self.area, "peak": round(self.peak, 4)}
        return {**d, "kind": self.kind} if self.kind is not None else d


@dataclass
class Result:
    score: float
    is_anomalous: bool
    anomaly_map: np.ndarray  # (H, W) float32 at model resolution (tiled: frame resolution), threshold units
    regions: list[Region]
    latency_ms: dict = field(default_factory=dict)
    tiles: int = 0  # tiles scored; 0: the whole frame, resized to the model's input
    kind_map: np.ndarray | None = None  # (H, W) int index into the bundle's kinds, when it has kinds (tiled: frame)


@dataclass(frozen=True)
class DetectorOptions:
    backend: str = "onnxruntime"  # or "tensorrt" (an engine from `edgesdk build`)
    providers: str | list[str] = "auto"
    engine: str | None = None  # tensorrt: plan path; None finds BUNDLE/engines/<match>.plan
    threads: int = 0
    spin: bool = True  # onnxruntime: spinning pool threads (off in the stream loop)
    threshold: float | None = None  # None: the bundle's threshold
    min_region_area: int = 4  # ignore specks smaller than this (map pixels: model's, tiled: frame's)
    verify: bool = True  # check the hashes of the files inference reads when opening the bundle
    tile: TileSpec | None = None  # score tile by tile (stream/tiling.py); None: the whole frame, resized
    batch: int = (
        1  # the most frames one call scores (a run of N cameras: N); a TensorRT engine's profile must take them
    )


def _stages_ms(t0: float, t1: float, t2: float, t3: float) -> dict:
    return {
        "preprocess": (t1 - t0) * 1e3,
        "infer": (t2 - t1) * 1e3,
        "postprocess": (t3 - t2) * 1e3,
        "total": (t3 - t0) * 1e3,
    }


class Detector:
    """Scores frames with a bundle. Use as a context manager, or call close()."""

    def __init__(self, bundle: str | Path | Bundle, opts: DetectorOptions = DetectorOptions()):
        self.bundle = (
            bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify="runtime" if opts.verify else False)
        )
        self.opts = opts
        # A NaN threshold flags nothing (every comparison with NaN is false): refuse it.
        self.threshold = (
            finite(self.bundle.threshold, "threshold.value", str(self.bundle.path / "manifest.json"))
            if opts.threshold is None
            else finite(opts.threshold, "threshold")
        )
        self.size = self.bundle.input_size
        self.input_name = self.bundle.manifest.input.name
        self.tile_hw = opts.tile.resolve(self.size) if opts.tile is not None else None  # (th, tw) frame pixels
        self.kinds = self.bundle.manifest.kinds  # () for the anomaly models: no kind_map output
        # A hybrid (spec/heads.py): the output holding the map of the head that names kinds; a region it
        # does not fire on was found by the anomaly head alone and is of kind "unknown".
        self.known_output = next((h.output for h in self.bundle.manifest.heads if h.kinds), None)
        self.runner: Runner = open_runner(
            opts.backend, self.bundle, opts.providers, opts.threads, opts.engine, opts.spin, opts.batch
        )

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.runner.close()

    @staticmethod
    def check_frame(frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (h, w, 3) uint8 BGR frame, got {frame.shape} {frame.dtype}")

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """Any (h, w, 3) uint8 BGR frame -> (1, H, W, 3) at the model's size."""
        self.check_frame(frame)
        return np.ascontiguousarray(resize(frame, self.size))[None]

    def infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(B, H, W, 3) uint8 at model size -> the graph's outputs: score (B,), anomaly_map (B, H, W) and,
        when the bundle has kinds, kind_map (B, H, W). One runner call, or one per chunk of a TensorRT
        engine's profile maximum batch (ONNX Runtime takes any batch)."""
        cap = getattr(self.runner, "max_batch", None) or len(batch)
        if len(batch) <= cap:
            return self.runner.infer({self.input_name: batch})
        parts = [self.runner.infer({self.input_name: batch[i : i + cap]}) for i in range(0, len(batch), cap)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W, 3) uint8 at model size -> scores (B,), maps (B, H, W)."""
        out = self.infer_outputs(batch)
        return out["score"], out["anomaly_map"]

    def kind_of(self, kind_map: np.ndarray, where: np.ndarray) -> str:
        """The kind most of the pixels WHERE ((h, w) bool over KIND_MAP (h, w)) have; an index outside
        the bundle's kinds (a corrupt graph output) reads as "unknown", never as another kind."""
        votes = np.bincount(
            kind_map[where].astype(np.int64).clip(-1, len(self.kinds)) + 1, minlength=len(self.kinds) + 2
        )
        k = int(votes.argmax()) - 1
        return self.kinds[k] if 0 <= k < len(self.kinds) else "unknown"

    def regions(
        self,
        amap: np.ndarray,
        frame_shape: tuple[int, ...],
        threshold: float | None = None,
        kind_map: np.ndarray | None = None,
        known_map: np.ndarray | None = None,
    ) -> list[Region]:
        """Connected components of `amap > threshold` (None: the detector's), boxes scaled to the caller's
        frame; with KIND_MAP ((H, W) kind indices) each region names its majority kind. With KNOWN_MAP (a
        hybrid's kind-naming head, (H, W) in amap's units) a region names the majority kind of its pixels
        that head passes the threshold on, if at least min_region_area do, else "unknown". A camera of
        a multi-source run may carry its own threshold (stream/multi.py)."""
        thr = self.threshold if threshold is None else threshold
        if not amap.max() > thr:  # a good frame (most of them): one pass
            return []
        binary = (amap > thr).view(np.uint8)  # bool -> {0, 1} without a copy
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        # Label only the box around the pixels above threshold: a defect is small, and labelling the
        # whole map costs ~0.5 ms a frame at 256x256, time taken from inference on a small CPU.
        oy, ox = int(rows[0]), int(cols[0])
        sub = binary[oy : rows[-1] + 1, ox : cols[-1] + 1]
        n, labels, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
        sy, sx = frame_shape[0] / amap.shape[0], frame_shape[1] / amap.shape[1]
        out = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < self.opts.min_region_area:
                continue
            inside = labels[y : y + h, x : x + w] == i
            peak = float(amap[oy + y : oy + y + h, ox + x : ox + x + w][inside].max())
            kind = None
            if kind_map is not None:
                box = (slice(oy + y, oy + y + h), slice(ox + x, ox + x + w))
                named = inside if known_map is None else inside & (known_map[box] > thr)
                enough = known_map is None or int(named.sum()) >= max(1, self.opts.min_region_area)
                kind = self.kind_of(kind_map[box], named) if enough else "unknown"
            x, y = x + ox, y + oy
            out.append(
                Region(
                    (int(x * sx), int(y * sy), int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))), area, peak, kind
                )
            )
        return sorted(out, key=lambda r: -r.peak)

    def predict(self, frame: np.ndarray) -> Result:
        if self.tile_hw is not None:
            return self.predict_tiled(frame)
        t0 = time.perf_counter()
        batch = self.preprocess(frame)
        t1 = time.perf_counter()
        out = self.infer_outputs(batch)
        t2 = time.perf_counter()
        score, amap = float(out["score"][0]), out["anomaly_map"][0]
        kind_map = out["kind_map"][0] if self.kinds else None
        known = out[self.known_output][0] if self.known_output else None
        regions = self.regions(amap, frame.shape, kind_map=kind_map, known_map=known)
        t3 = time.perf_counter()
        lat = _stages_ms(t0, t1, t2, t3)
        return Result(score, score > self.threshold, amap, regions, lat, kind_map=kind_map)

    def predict_tiled(self, frame: np.ndarray) -> Result:
        """The frame scored tile by tile: score = the max over the tiles' scores (each the max of its
        map, the bundle's rule), map (H, W) in frame pixels, regions in frame pixels."""
        assert self.tile_hw is not None and self.opts.tile is not None
        t0 = time.perf_counter()
        self.check_frame(frame)
        origins = tiling.grid(frame.shape[:2], self.tile_hw, self.opts.tile.overlap)  # (N, 2) y, x
        batch = tiling.cut(frame, origins, self.tile_hw, self.size)  # (N, mh, mw, 3)
        t1 = time.perf_counter()
        out = self.infer_outputs(batch)  # score (N,), anomaly_map (N, mh, mw), kind_map (N, mh, mw)
        t2 = time.perf_counter()
        kind_map = None
        if self.kinds:  # (H, W) each: a pixel's kind from the tile its stitched value came from
            amap, kind_map = tiling.stitch_kinds(
                out["anomaly_map"], out["kind_map"], origins, self.tile_hw, frame.shape[:2]
            )
        else:
            amap = tiling.stitch(out["anomaly_map"], origins, self.tile_hw, frame.shape[:2])  # (H, W)
        score = float(out["score"].max())
        known = (  # a hybrid's kind-naming head, stitched like the map: (H, W)
            tiling.stitch(out[self.known_output], origins, self.tile_hw, frame.shape[:2]) if self.known_output else None
        )
        regions = self.regions(amap, frame.shape, kind_map=kind_map, known_map=known)
        t3 = time.perf_counter()
        lat = _stages_ms(t0, t1, t2, t3)
        return Result(score, score > self.threshold, amap, regions, lat, len(origins), kind_map)


def predict_files(
    bundle: str | Path | Bundle,
    paths,
    opts: DetectorOptions = DetectorOptions(),
    save: str | Path | None = None,
    only_anomalous: bool = False,
) -> dict:
    """Score each image file of PATHS (any size, read as BGR) at batch 1, in order: `edgesdk predict`
    and samples/score_folder.py. With SAVE, a heatmap overlay per image (only the anomalous ones with
    ONLY_ANOMALOUS) goes to SAVE/<stem>_overlay.png; a row names its overlay once it is written.
    {"threshold", "threshold_source", "results": [{"image", "score", "is_anomalous", "regions",
    "latency_ms" (the whole per-frame path), "overlay"?}]}."""
    from edgesdk.viz import save_overlay

    rows = []
    with Detector(bundle, opts) as det:
        for path in paths:
            img = read_image(path)  # (h, w, 3) uint8 BGR
            r = det.predict(img)
            row = {
                "image": str(path),
                "score": r.score,
                "is_anomalous": r.is_anomalous,
                "regions": [x.to_dict() for x in r.regions],
                "latency_ms": r.latency_ms["total"],
            }
            if save is not None and (r.is_anomalous or not only_anomalous):
                row["overlay"] = str(save_overlay(Path(save) / f"{Path(path).stem}_overlay.png", img, r, det.threshold))
            rows.append(row)
        source = det.bundle.manifest.threshold.source if opts.threshold is None else "option"
        return {"threshold": det.threshold, "threshold_source": source, "results": rows}
