"""One shard of paths -> one row per path, with one detector (one ONNX Runtime session) per worker.

The row schema both engines (pool.py, ray_data.py) produce and shards.py writes:
  path str, score float64 (null on error), verdict str ("NG" | "good" | null), threshold float64,
  regions str (a JSON list of {bbox, area, peak[, kind]}, as the jsonl:// sink records them; bbox in
  the image's own pixels), bundle_id str, bundle_version str, worker str, error str (null when scored).
Images are read and resized exactly as `edgesdk eval` does (images.read_image, then the detector's
resize), so the scores are eval's."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.images import read_image
from edgesdk.spec import MANIFEST, sha256_file
from edgesdk.stream.detector import Detector, DetectorOptions

COLUMNS = ("path", "score", "verdict", "threshold", "regions", "bundle_id", "bundle_version", "worker", "error")


def bundle_identity(bundle: str | Path) -> tuple[str, str]:
    """(id, version) of a bundle: id = sha256 of its manifest.json (which holds the sha256 of every
    file, so it names the whole bundle), version = the model name, precision and export time."""
    b = Bundle.open(bundle, verify=False)
    m = b.manifest
    return sha256_file(b.path / MANIFEST), f"{m.model.get('name', '?')}-{m.precision}-{m.created_utc or '?'}"


class ScoreBatch:
    """Loads the bundle once (per process or Ray actor); each call scores a shard of paths.
    THREADS: ONNX Runtime intra-op threads of this worker (0: every core). WORKER_ID: what the
    worker column says (None: host:pid; Ray passes its node id). MAX_PIXELS: a larger image is an
    error row, never decoded (None: images.max_pixels())."""

    def __init__(
        self,
        bundle: str,
        batch: int = 16,
        threads: int = 0,
        worker_id: str | None = None,
        max_pixels: int | None = None,
    ):
        opts = DetectorOptions(providers="CPUExecutionProvider", threads=threads, spin=False)
        self.det = Detector(bundle, opts)
        self.batch = max(1, batch)
        self.bundle_id, self.bundle_version = bundle_identity(bundle)
        self.worker = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.max_pixels = max_pixels

    def _row(self, path: str, **values) -> dict:
        base = dict.fromkeys(COLUMNS)
        base.update(path=path, threshold=self.det.threshold, bundle_id=self.bundle_id)
        base.update(bundle_version=self.bundle_version, worker=self.worker)
        return {**base, **values}

    def __call__(self, paths: list[str]) -> list[dict]:
        rows: dict[int, dict] = {}
        for start in range(0, len(paths), self.batch):
            frames, where = [], []
            for i in range(start, min(start + self.batch, len(paths))):
                try:
                    img = read_image(paths[i], limit=self.max_pixels)
                    frames.append((img.shape, self.det.preprocess(img)[0]))
                    where.append(i)
                except (ValueError, OSError) as e:  # unreadable: a row with the reason, never fatal
                    rows[i] = self._row(paths[i], error=str(e))
            if not frames:
                continue
            out = self.det.infer_outputs(np.stack([f for _, f in frames]))  # (B, H, W, 3) -> score (B,), maps
            for j, i in enumerate(where):
                score = float(out["score"][j])
                if not np.isfinite(score):  # a NaN would compare as "good": record it as an error
                    rows[i] = self._row(paths[i], error=f"the model scored {score!r}, not a finite number")
                    continue
                kinds = out["kind_map"][j] if self.det.kinds else None
                regions = self.det.regions(out["anomaly_map"][j], frames[j][0], kind_map=kinds)
                rows[i] = self._row(
                    paths[i],
                    score=score,
                    verdict="NG" if score > self.det.threshold else "good",
                    regions=json.dumps([r.to_dict() for r in regions]),
                )
        return [rows[i] for i in range(len(paths))]

    def close(self) -> None:
        self.det.close()
