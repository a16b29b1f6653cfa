"""Accuracy and latency statistics in numpy alone (the device runtime imports this)."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count 1/2.

    Rank-based (Mann-Whitney U), O(n log n), exact with ties; works on millions of pixels."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    # Average ranks over runs of equal scores.
    bounds = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(s)]))
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks[order] = ranks_sorted
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Precision/recall/F1 of the verdict `score > threshold`."""
    pred = np.asarray(scores) > threshold
    labels = np.asarray(labels).astype(bool)
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": int((~pred & ~labels).sum()),
    }


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold (midway between neighbouring scores) that maximises F1 of `score > t`."""
    s = np.unique(np.asarray(scores, np.float64))
    cands = np.concatenate(([s[0] - 1.0], (s[:-1] + s[1:]) / 2))
    f1s = [f1_at(scores, labels, t)["f1"] for t in cands]
    i = int(np.argmax(f1s))
    return float(cands[i]), float(f1s[i])


def latency_stats(ms: list[float] | np.ndarray) -> dict:
    """trtexec-style summary of per-call latencies in milliseconds."""
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"n": 0}
    p = np.percentile(a, [50, 90, 95, 99])
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "p50": float(p[0]),
        "p90": float(p[1]),
        "p95": float(p[2]),
        "p99": float(p[3]),
        "fps": float(1000.0 / a.mean()) if a.mean() > 0 else float("inf"),
    }


class LatencyWindow:
    """Latency samples of a stream that runs all day, in fixed memory: the last `size` samples (a
    float32 ring) for percentiles, plus an exact count, mean, min and max over the whole run."""

    def __init__(self, size: int = 10000):
        self.ring = np.zeros(size, np.float32)
        self.n, self.total, self.lo, self.hi = 0, 0.0, float("inf"), float("-inf")

    def add(self, ms: float) -> None:
        self.ring[self.n % len(self.ring)] = ms
        self.n += 1
        self.total += ms
        self.lo, self.hi = min(self.lo, ms), max(self.hi, ms)

    def stats(self) -> dict:
        if self.n == 0:
            return {"n": 0}
        s = latency_stats(self.ring[: min(self.n, len(self.ring))])  # percentiles: the recent window
        mean = self.total / self.n
        return {
            **s,
            "n": self.n,
            "mean": mean,
            "min": self.lo,
            "max": self.hi,
            "window": int(len(self.ring)),
            "fps": 1000.0 / mean if mean > 0 else float("inf"),
        }
