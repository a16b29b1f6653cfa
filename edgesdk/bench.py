"""Latency measurement shared by eval, the demo and benchmarks (numpy only, no torch)."""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from edgesdk.backends.base import Runner
from edgesdk.metrics import latency_stats

HIGH_VARIANCE = 0.10   # trtexec warns when the coefficient of variation exceeds 10%


def time_runner(runner: Runner, feeds: Iterable[dict[str, np.ndarray]], warmup: int = 5) -> dict:
    """Per-call latency of runner.infer over `feeds` (after `warmup` untimed calls on the first)."""
    feeds = list(feeds)
    for _ in range(warmup):
        runner.infer(feeds[0])
    ms = []
    for f in feeds:
        t0 = time.perf_counter()
        runner.infer(f)
        ms.append((time.perf_counter() - t0) * 1e3)
    stats = latency_stats(ms)
    a = np.asarray(ms)
    stats["cv"] = float(a.std() / a.mean()) if a.size > 1 else 0.0
    stats["high_variance"] = stats["cv"] > HIGH_VARIANCE
    return stats
