"""The one timing loop: every latency this project reports per call of a runner (eval's model-only
rows, the demo, `edgesdk bench`, `edgesdk compare` and the export gate's float-vs-quantized speed)
is measured by `timed_calls`, and summarized by `summarize` (percentiles, FPS, variance warning).
numpy only: the device runs it.

`edgesdk bench` itself (rows over bundles x backends x batches, interleaved in rounds, provenance,
cold start) is measure/benchmark.py."""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np

from edgesdk.backends.base import Runner
from edgesdk.measure.metrics import latency_stats

HIGH_VARIANCE = 0.10  # trtexec warns when the coefficient of variation exceeds 10%


def timed_calls(
    runner: Runner,
    feeds: Sequence[dict[str, np.ndarray]],
    n: int,
    start: int = 0,
    untimed: int = 0,
    out: list[float] | None = None,
) -> list[float]:
    """N calls of runner.infer on feeds[(start + i) % len(feeds)]; the first UNTIMED calls are not
    timed (warm-up, or caches refilling after another runner ran). Each timed call's milliseconds
    are appended to OUT (a new list by default), which is returned."""
    out = [] if out is None else out
    for i in range(n):
        feed = feeds[(start + i) % len(feeds)]
        if i < untimed:
            runner.infer(feed)
            continue
        t0 = time.perf_counter()
        runner.infer(feed)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_runner(runner: Runner, feeds: Iterable[dict[str, np.ndarray]], warmup: int = 5) -> dict:
    """Per-call latency of runner.infer over `feeds` (after `warmup` untimed calls on the first)."""
    feeds = list(feeds)
    timed_calls(runner, feeds[:1], warmup, untimed=warmup)
    return summarize(timed_calls(runner, feeds, len(feeds)))


def summarize(ms: list[float], batch: int = 1) -> dict:
    stats = latency_stats(ms)
    a = np.asarray(ms)
    stats["cv"] = float(a.std() / a.mean()) if a.size > 1 else 0.0
    stats["high_variance"] = stats["cv"] > HIGH_VARIANCE
    stats["fps"] = float(batch * 1000.0 / a.mean()) if a.size else 0.0
    return stats


class NullRunner(Runner):
    """Returns its input: timing it measures the harness itself."""

    name = "null"

    def load(self) -> "NullRunner":
        self.loaded = True
        return self

    def infer(self, feeds):
        return feeds

    inputs = outputs = property(lambda self: [])


def harness_overhead_ms(n: int = 2000) -> float:
    """Median time the timing loop adds per call (a runner that does nothing)."""
    r, feed = NullRunner().load(), {"image": np.zeros((1, 8, 8, 3), np.uint8)}
    return float(np.median(timed_calls(r, [feed], n)))
