"""`edgesdk soak`: run the stream loop for many frames and watch resident memory, to show it stays
flat (no leak in the source, the runner, the queues or the sinks). Device-side: no torch.

RSS is sampled every `every` frames from /proc/self/status (VmRSS). The verdict compares the
median RSS of the last tenth of the run with that of the second tenth (after warm-up), and fits a
slope in MB per 10,000 frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesdk.stream.detector import DetectorOptions
from edgesdk.stream.pipeline import run_stream


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(
    bundle: str,
    source: str,
    frames: int = 20000,
    sinks: list[str] | None = None,
    every: int = 200,
    opts: DetectorOptions = DetectorOptions(),
    streams: int = 1,
) -> dict:
    samples: list[tuple[int, float]] = []
    seen = [0]  # records delivered; frame ids of a live source skip dropped frames

    def sample(rec: dict) -> None:
        if seen[0] % every == 0:
            samples.append((seen[0], rss_mb()))
        seen[0] += 1

    s = run_stream(bundle, source, sinks or [], opts, max_frames=frames, on_record=sample, streams=streams)
    x = np.array([f for f, _ in samples], float)
    y = np.array([m for _, m in samples], float)
    tenth = max(1, len(y) // 10)
    early, late = float(np.median(y[tenth : 2 * tenth])), float(np.median(y[-tenth:]))
    slope = float(np.polyfit(x[tenth:], y[tenth:], 1)[0] * 1e4) if len(y) > tenth + 2 else float("nan")
    return {
        "frames": s["frames"],
        "fps": s["fps"],
        "dropped_frames": s["dropped_frames"],
        "source": source,
        "streams": streams,
        "rss_mb_start": float(y[0]) if len(y) else None,
        "rss_mb_after_warmup": early,
        "rss_mb_end": late,
        "rss_growth_mb": late - early,
        "slope_mb_per_10k_frames": slope,
        "rss_mb_max": float(y.max()),
        "samples": [[int(f), round(m, 2)] for f, m in samples],
        "latency_ms": s["latency_ms"]["total"],
    }


def plot(result: dict, path: str | Path, width: int = 800, height: int = 300) -> None:
    """RSS over frames, drawn with OpenCV."""
    import cv2

    pts = np.array(result["samples"], float)
    img = np.full((height, width, 3), 255, np.uint8)
    lo, hi = 0.0, pts[:, 1].max() * 1.15
    sx = lambda f: int(60 + (width - 80) * f / max(pts[-1, 0], 1))  # noqa: E731
    sy = lambda m: int(height - 40 - (height - 80) * (m - lo) / (hi - lo))  # noqa: E731
    for m in np.linspace(lo, hi, 5):
        cv2.line(img, (60, sy(m)), (width - 20, sy(m)), (225, 225, 225), 1)
        cv2.putText(img, f"{m:.0f}", (10, sy(m) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.polylines(img, [np.array([(sx(f), sy(m)) for f, m in pts], np.int32)], False, (200, 90, 30), 2, cv2.LINE_AA)
    cv2.putText(
        img,
        f"resident memory (MB) over {int(pts[-1, 0]) + 1} frames: {result['rss_growth_mb']:+.1f} MB after warm-up",
        (60, 24),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    cv2.putText(img, "frames", (width - 80, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: could not write the plot")
