"""Pictures a person would rather look at than read: heatmap overlays with boxes and the verdict."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgesdk.fsutil import atomic_write_bytes

# The JET colormap as a (256, 3) BGR table.
JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, :]


def overlay(frame: np.ndarray, amap: np.ndarray, threshold: float, regions=(), alpha: float = 0.45) -> np.ndarray:
    """frame (h, w, 3) uint8 BGR + anomaly map (H, W) in z units -> annotated BGR image.

    Colours follow one fixed scale in every picture: z = 0 (the good parts' mean score) is no colour
    at all, the threshold is the middle of the JET colormap (green), 2x threshold and above is red.
    Below the good mean the frame is left as it is: a good part's map runs far below zero, and
    painting that would show calm patches in alarm colours."""
    h, w = frame.shape[:2]
    scale = max(float(threshold), 1e-6)
    level = np.clip(amap * np.float32(255 / (2 * scale)), 0, 255)  # (H, W) float32 in [0, 255]
    heat = JET[level.astype(np.uint8)]  # a table lookup: applyColorMap rebuilds its table every call
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    # Only pixels above the good mean are tinted; the rest keep the bare frame.
    above = cv2.resize((amap > 0).view(np.uint8) * np.uint8(255), (w, h), interpolation=cv2.INTER_LINEAR)
    out = frame.copy()
    cv2.copyTo(cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0), (above > 127).view(np.uint8), out)
    for r in regions:
        x0, y0, x1, y1 = r.bbox
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 2)
        if getattr(r, "kind", None):  # a supervised model names the defect
            cv2.putText(
                out, r.kind, (x0, max(y0 - 4, 32)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
            )
    score = float(amap.max())
    bad = score > threshold
    label = f"{'DEFECT' if bad else 'OK'}  {score:.2f} / {threshold:.2f}"
    cv2.rectangle(out, (0, 0), (w, 22), (0, 0, 180) if bad else (0, 120, 0), -1)
    cv2.putText(out, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_overlay(path: str | os.PathLike, frame: np.ndarray, result, threshold: float) -> Path:
    """Write the overlay of RESULT (a stream.detector.Result) on FRAME to PATH, encoded by its extension,
    atomically; OSError naming PATH when it cannot be written (never a silent False)."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", overlay(frame, result.anomaly_map, threshold, result.regions))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode a {path.suffix or '.png'} image")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as e:
        raise OSError(f"{path}: cannot write the overlay ({e.strerror or e})") from None
    return path
