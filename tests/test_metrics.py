import numpy as np
import pytest

from edgesdk.measure.metrics import auroc, best_f1_threshold, f1_at, latency_stats


def brute_auroc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 200).astype(float)  # many ties
    y = (rng.random(200) < 0.3).astype(int)
    assert abs(auroc(s, y) - brute_auroc(s, y)) < 1e-12


def test_auroc_extremes_and_degenerate():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_f1_and_best_threshold():
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.35])
    y = np.array([0, 0, 0, 1, 1, 1])
    r = f1_at(s, y, 0.5)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 0, 1, 3)
    t, f1 = best_f1_threshold(s, y)
    assert 0.3 < t < 0.35 and f1 == 1.0


def test_latency_stats_percentiles():
    st = latency_stats(list(range(1, 101)))
    assert st["n"] == 100 and st["min"] == 1 and st["max"] == 100
    assert abs(st["p50"] - 50.5) < 1e-9 and abs(st["p99"] - 99.01) < 1e-9


def test_latency_window_keeps_fixed_memory_and_exact_totals():
    from edgesdk.measure.metrics import LatencyWindow

    w = LatencyWindow(size=100)
    for i in range(1000):
        w.add(float(i))
    s = w.stats()
    assert s["n"] == 1000 and s["mean"] == pytest.approx(499.5) and s["min"] == 0 and s["max"] == 999
    assert s["p50"] == pytest.approx(949.5)  # percentiles over the last 100 samples
    assert w.ring.nbytes == 400 and LatencyWindow().stats() == {"n": 0}
