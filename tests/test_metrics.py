import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- localization: AUPRO (MVTec AD), pixel F1/IoU, recall per defect kind ---


def brute_aupro(maps, masks, limit=0.3):
    """MVTec AD's definition written out: regions by scikit-image (8-connected), one (FPR, PRO) point
    per threshold of a grid fine enough to hold every distinct score, trapezoids cut at LIMIT."""
    from skimage.measure import label

    regions = []
    for i, m in enumerate(masks):
        lab = label(m, connectivity=2)
        regions += [(i, lab == r) for r in range(1, lab.max() + 1)]
    normal = ~masks
    pts = [(0.0, 0.0)]
    for t in np.arange(maps.max() + 0.5, maps.min() - 0.5, -1 / 64):  # scores are multiples of 1/8
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions])
        pts.append((fpr, pro))
    pts.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(3, 12), st.floats(0.05, 1.0))
@settings(max_examples=60, deadline=None)
def test_aupro_matches_the_brute_force_definition(seed, n, size, limit):
    from edgesdk.measure.metrics import aupro

    rng = np.random.default_rng(seed)
    masks = rng.random((n, size, size)) < rng.uniform(0.05, 0.5)
    masks[0, 0, 0] = True  # at least one region ...
    masks[-1, -1, -1] = False  # ... and one normal pixel
    maps = rng.integers(0, 9, (n, size, size)) / 8 + masks * rng.integers(0, 3)  # ties, and some signal
    assert aupro(maps, masks, limit) == pytest.approx(brute_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_by_hand():
    from edgesdk.measure.metrics import aupro

    masks = np.zeros((1, 5, 5), bool)
    masks[0, 0, 0] = True  # region A: 1 pixel
    masks[0, 3:, 3:] = True  # region B: 4 pixels; 20 normal pixels
    maps = np.zeros((1, 5, 5))
    maps[0, 0, 0] = 0.9  # t = 0.9:  FPR 0,    PRO (1 + 0) / 2
    maps[0, 0, 4] = 0.85  # t = 0.85: FPR 1/20, PRO 1/2
    maps[0, 3, 3:] = 0.8  # t = 0.8:  FPR 1/20, PRO (1 + 1/2) / 2; then (1, 1)
    # 0.05 * 0.5 + the trapezoid from (0.05, 0.75) to (0.3, 0.75 + 0.25 * 0.25 / 0.95)
    want = (0.05 * 0.5 + 0.25 * (0.75 + 0.75 + 0.25 * 0.25 / 0.95) / 2) / 0.3
    assert aupro(maps, masks) == pytest.approx(want, abs=1e-12)
    assert aupro(masks * 1.0, masks) == 1.0  # perfect map
    assert aupro(np.full(masks.shape, 0.5), masks) == pytest.approx(0.15)  # constant: PRO = FPR
    diag = np.zeros((1, 4, 4), bool)
    diag[0, 0, 0] = diag[0, 1, 1] = True  # touching at a corner: one region (8-connected), so
    half = diag * 1.0  # flagging one of its two pixels gives PRO 1/2, not 1
    half[0, 1, 1] = 0.0
    assert aupro(half, diag, 1.0) == pytest.approx((0.5 + 1.0) / 2)
    assert np.isnan(aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool)))  # no defect region


def test_aupro_of_a_map_independent_of_the_masks_is_about_0_15():
    from edgesdk.measure.metrics import aupro

    rng = np.random.default_rng(1)
    masks = np.zeros((20, 64, 64), bool)
    for m in masks:
        y, x = rng.integers(0, 54, 2)
        m[y : y + 10, x : x + 10] = True
    assert aupro(rng.random(masks.shape).astype(np.float32), masks) == pytest.approx(0.15, abs=0.01)


def test_pixel_f1_iou_counts_and_the_empty_convention():
    from edgesdk.measure.metrics import pixel_f1_iou

    masks = np.zeros((2, 3, 3), bool)
    masks[0, 0, :] = True  # 3 true defect pixels
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0, 0, :2] = 1.0  # 2 of them found
    maps[1, 2, 2] = 1.0  # 1 false alarm; 0.5 itself is not > 0.5
    maps[1, 1, 1] = 0.5
    r = pixel_f1_iou(maps, masks, 0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["f1"] == pytest.approx(4 / 6) and r["iou"] == pytest.approx(2 / 4)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    none = pixel_f1_iou(np.zeros((1, 3, 3)), np.zeros((1, 3, 3), bool), 0.5)  # nothing to find, nothing flagged
    assert none["f1"] == none["iou"] == none["precision"] == none["recall"] == 1.0
    missed = pixel_f1_iou(np.zeros((1, 3, 3)), masks[:1], 0.5)  # defects, nothing flagged
    assert missed["f1"] == missed["iou"] == missed["precision"] == missed["recall"] == 0.0
    alarm = pixel_f1_iou(maps[1:], np.zeros((1, 3, 3), bool), 0.5)  # no defects, a false alarm
    assert alarm["f1"] == alarm["iou"] == alarm["recall"] == 0.0 and alarm["fp"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_maps_and_thresholds_are_refused(bad):
    from edgesdk.errors import EdgesdkError
    from edgesdk.measure.metrics import aupro, pixel_f1_iou

    masks = np.zeros((3, 4, 4), bool)
    masks[:, 1, 1] = True
    maps = np.zeros((3, 4, 4), np.float32)
    maps[2, 3, 0] = bad
    with pytest.raises(EdgesdkError, match=r"aupro: anomaly map 2 has 1 non-finite"):
        aupro(maps, masks)
    with pytest.raises(EdgesdkError, match=r"pixel_f1_iou: anomaly map 2 has 1 non-finite"):
        pixel_f1_iou(maps, masks, 0.5)
    with pytest.raises(EdgesdkError, match="threshold must be a finite number"):
        pixel_f1_iou(np.zeros((3, 4, 4)), masks, bad)
    with pytest.raises(EdgesdkError, match=r"masks \(3, 4, 5\)"):
        aupro(np.zeros((3, 4, 4)), np.zeros((3, 4, 5), bool))
    with pytest.raises(EdgesdkError, match="fpr_limit"):
        aupro(np.zeros((3, 4, 4)), masks, 0.0)


def test_recall_by_kind_is_image_level_at_the_threshold():
    from edgesdk.measure.metrics import recall_by_kind

    r = recall_by_kind(np.array([0.1, 0.9, 0.6, 0.2, 0.7]), ["good", "good", "hole", "hole", "crack"], 0.5)
    assert r == {"crack": 1.0, "hole": 0.5}
