"""Parity of two runners on the same frames: score and map differences and verdict flips at the
threshold. numpy only (the device runs `edgesdk verify` with it)."""
from __future__ import annotations

import numpy as np

from edgesdk.backends.base import Runner


def compare_runners(ref: Runner, test: Runner, frames: np.ndarray, threshold: float,
                    input_name: str = "image") -> dict:
    """Run both on each frame of (N, H, W, 3) uint8 at batch 1; REF is the reference."""
    rs, ts, map_err, map_scale = [], [], 0.0, 1.0
    for i in range(len(frames)):
        feed = {input_name: frames[i:i + 1]}
        a, b = ref.infer(feed), test.infer(feed)
        rs.append(float(a["score"][0]))
        ts.append(float(b["score"][0]))
        map_err = max(map_err, float(np.abs(a["anomaly_map"] - b["anomaly_map"]).max()))
        map_scale = max(map_scale, float(np.abs(a["anomaly_map"]).max()))
    r, t = np.array(rs), np.array(ts)
    flips = int(((r > threshold) != (t > threshold)).sum())
    return {"n_frames": int(len(frames)), "threshold": threshold,
            "score_max_abs_err": float(np.abs(r - t).max()), "score_mean_abs_err": float(np.abs(r - t).mean()),
            "map_max_abs_err": map_err, "map_max_rel_err": map_err / map_scale,
            "verdict_flips": flips, "ref_scores": r.tolist(), "test_scores": t.tolist()}
