"""Pictures a person would rather look at than read: heatmap overlays with boxes and the verdict."""
from __future__ import annotations

import cv2
import numpy as np


# The JET colormap as a (256, 3) BGR table.
JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, :]


def overlay(frame: np.ndarray, amap: np.ndarray, threshold: float, regions=(), alpha: float = 0.45) -> np.ndarray:
    """frame (h, w, 3) uint8 BGR + anomaly map (H, W) in threshold units -> annotated BGR image.

    Colours: the threshold sits in the middle of the JET colormap (green); red is 2x threshold."""
    h, w = frame.shape[:2]
    heat = cv2.convertScaleAbs(amap, alpha=255 / (2 * max(threshold, 1e-6)))   # saturating -> uint8
    heat = JET[heat]            # a table lookup: applyColorMap rebuilds its table every call (0.25 ms)
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)
    for r in regions:
        x0, y0, x1, y1 = r.bbox
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 2)
    score = float(amap.max())
    bad = score > threshold
    label = f"{'DEFECT' if bad else 'OK'}  {score:.2f} / {threshold:.2f}"
    cv2.rectangle(out, (0, 0), (w, 22), (0, 0, 180) if bad else (0, 120, 0), -1)
    cv2.putText(out, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out
