"""Accuracy and latency statistics in numpy alone (the device runtime imports this)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from edgesdk.errors import EdgesdkError, OptionError, finite


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


def _maps_and_masks(maps: np.ndarray, masks: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """MAPS (N, H, W) float and MASKS (N, H, W) bool of one shape (an (H, W) pair is one image); a map
    with NaN or inf is refused (NaN compares false with every threshold: it would pass as normal)."""
    maps, masks = np.asarray(maps), np.asarray(masks).astype(bool, copy=False)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None] if masks.ndim == 2 else masks
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise EdgesdkError(f"{where}: anomaly maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    bad = ~np.isfinite(maps)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(len(maps), -1).any(axis=1))[0])
        raise EdgesdkError(
            f"{where}: anomaly map {i} has {int(bad[i].sum())} non-finite values (NaN/inf); "
            "only finite scores can be ranked or thresholded"
        )
    return maps, masks


def pixel_f1_iou(maps: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    """Pixel-level F1 (= Dice) and IoU of the defect pixels `map > threshold` (the detector's own rule)
    against the ground-truth MASKS, counted over all pixels of all N images at once.

    Convention for empty sets: a ratio whose denominator is 0 (no predicted and no true defect pixels
    for precision/F1/IoU's union; no true defect pixels for recall) is 1.0 only when the whole union
    is empty (nothing to find and nothing flagged: perfect), else 0.0."""
    maps, masks = _maps_and_masks(maps, masks, "pixel_f1_iou")
    t = finite(threshold, "threshold", "pixel_f1_iou")
    pred = maps > t
    tp = int(np.count_nonzero(pred & masks))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(masks)) - tp
    empty = 1.0 if tp + fp + fn == 0 else 0.0
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else empty,
        "iou": tp / (tp + fp + fn) if tp + fp + fn else empty,
        "precision": tp / (tp + fp) if tp + fp else empty,
        "recall": tp / (tp + fn) if tp + fn else empty,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to FPR_LIMIT, divided by FPR_LIMIT (MVTec AD's AUPRO).

    At threshold t the defect pixels are `map >= t`; FPR(t) is the share of all normal pixels flagged,
    PRO(t) the mean over every connected region of every mask (8-connected) of the share of that region
    flagged. The curve runs through (0, 0), one point per distinct score, and (1, 1); its trapezoid area
    over [0, FPR_LIMIT] (the last segment cut by linear interpolation) is divided by FPR_LIMIT: a
    perfect map gives 1.0; a map independent of the masks has PRO = FPR on average, so about
    FPR_LIMIT / 2 (0.15). NaN when there is no defect region or no normal pixel."""
    maps, masks = _maps_and_masks(maps, masks, "aupro")
    lim = finite(fpr_limit, "fpr_limit", "aupro")
    if not 0 < lim <= 1:
        raise OptionError(f"aupro: fpr_limit {lim} must be in (0, 1], e.g. 0.3")
    # One label per region across all images, 0 = normal pixel: labels (N, H, W) int32.
    labels = np.zeros(maps.shape, np.int32)
    n_regions = 0
    for i, m in enumerate(masks):
        if m.any():
            n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            labels[i] = np.where(lab > 0, lab + n_regions, 0)
            n_regions += n - 1
    flat, lab_flat = maps.ravel(), labels.ravel()
    normal = lab_flat == 0
    n_ok = int(normal.sum())
    if n_regions == 0 or n_ok == 0:
        return float("nan")
    # Only the top of the ranking reaches FPR <= lim: keep the pixels scoring at least the k-th highest
    # normal score (k one past lim * n_ok), so the first point beyond lim is in, and sort just those.
    k = min(n_ok, math.ceil(lim * n_ok) + 1)
    ok_scores = flat[normal]
    cut = np.partition(ok_scores, n_ok - k)[n_ok - k]
    idx = np.flatnonzero(flat >= cut)
    order = np.argsort(-flat[idx])  # ties: only the last pixel of a run of equal scores is kept
    idx = idx[order]
    s = flat[idx]
    lab = lab_flat[idx]
    inv_size = 1.0 / np.maximum(np.bincount(lab_flat, minlength=n_regions + 1), 1)
    inv_size[0] = 0.0
    fpr = np.cumsum(lab == 0, dtype=np.float64) / n_ok
    pro = np.cumsum(inv_size[lab]) / n_regions
    last = np.append(s[1:] != s[:-1], True)  # one point per distinct score: its last pixel
    x = np.minimum(np.concatenate(([0.0], fpr[last], [1.0])), 1.0)
    y = np.minimum(np.concatenate(([0.0], pro[last], [1.0])), 1.0)
    j = int(np.searchsorted(x, lim, side="right"))  # x[:j] <= lim < x[j] (or j == len(x) at lim 1)
    area = float(np.sum((x[1:j] - x[: j - 1]) * (y[1:j] + y[: j - 1]) / 2))
    if x[j - 1] < lim:
        y_lim = y[j - 1] + (y[j] - y[j - 1]) * (lim - x[j - 1]) / (x[j] - x[j - 1])
        area += (lim - x[j - 1]) * (y[j - 1] + y_lim) / 2
    return area / lim


def localization(maps: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    """The pixel-level numbers eval, compare and bench report: aupro (None without a defect region),
    pixel_f1 and pixel_iou of `map > threshold`."""
    a = aupro(maps, masks)
    px = pixel_f1_iou(maps, masks, threshold)
    return {"aupro": None if math.isnan(a) else a, "pixel_f1": px["f1"], "pixel_iou": px["iou"]}


def recall_by_kind(scores: np.ndarray, kinds: list[str], threshold: float) -> dict[str, float]:
    """{defect kind: share of its images with `score > threshold`} (image level; "good" is left out)."""
    s = np.asarray(scores)
    t = finite(threshold, "threshold", "recall_by_kind")
    k = np.asarray(kinds)
    return {kind: float((s[k == kind] > t).mean()) for kind in sorted(set(kinds) - {"good"})}


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
