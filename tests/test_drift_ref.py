"""The drift reference's image statistics (stream/drift_ref.py) on frames of any size and layout, and
the references it makes of hostile streams."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.drift import DriftMonitor, DriftOptions
from edgesdk.stream.drift_ref import SIDE, ReferenceBuilder, grey_small, image_stats
from edgesdk.video import open_source


def test_a_camera_frame_gives_the_grey_copy_of_its_area_average():
    # (1080, 1920, 3): a smooth scene (gradients, a soft disc) and sensor noise; the sampled shortcut
    # must give the statistics the full area average gives, within what no alarm can see
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1080, 0:1920].astype(np.float32)
    grey = 40 + 120 * x / 1920 + 60 * y / 1080 + 30 * np.exp(-((x - 900) ** 2 + (y - 500) ** 2) / 2e5)
    frame = np.clip(grey[..., None] + rng.normal(0, 4, (1080, 1920, 3)), 0, 255).astype(np.uint8)
    full = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    small = grey_small(frame)
    assert small.shape == (SIDE, SIDE) and small.dtype == np.float64
    assert np.abs(small - full).max() < 8 and abs(small.mean() - full.mean()) < 0.5
    a, b = image_stats(small), image_stats(full.astype(np.float64))
    assert abs(a["brightness"] - b["brightness"]) < 0.5 and abs(a["contrast"] - b["contrast"]) < 0.02
    # odd layouts give the same copy: a non-contiguous view, and a 1 x 1 frame
    assert np.array_equal(grey_small(np.ascontiguousarray(frame[::-1, ::-1])), grey_small(frame[::-1, ::-1]))
    assert grey_small(np.full((1, 1, 3), 7, np.uint8)).shape == (SIDE, SIDE)


LINE = "synth://conveyor?defects=0&rails=1"


def _next(src) -> np.ndarray:
    frame = src.read()
    assert frame is not None
    return frame.image


def _reference(n: int = 120):
    b = ReferenceBuilder()
    with open_source(LINE) as src:
        for _ in range(n):
            b.add_image(_next(src))
    return b.reference(np.linspace(-1, 1, n), "calibration")


def test_a_hot_switch_to_a_model_without_reference_keeps_the_cameras_reference():
    """The new model has no drift.json: its scores go unchecked, but the lens blurring after the switch
    is still measured against the calibration, not learnt as the new normal."""
    mon = DriftMonitor(DriftOptions(), _reference())
    with open_source(f"{LINE}&seed=3&drift=blur&drift_at=100") as src:
        events = []
        for i in range(220):
            if i == 90:
                mon.use(None)
            events += mon.update(i, _next(src), 0.0, True)
    assert events and events[0]["kind"] == "sharpness" and events[0]["frame_id"] >= 100, events  # blur: also contrast
    assert mon.stats()["reference"] == "calibration" and mon.stats()["score_checked"] is False


def test_calibrating_on_a_constant_stream_is_refused(bundle, tmp_path):
    """A covered lens or a frozen camera: every frame scores the same, so the threshold would sit on the
    mean (every line frame above it a defect) and the drift reference would divide by a std of 0."""
    black = tmp_path / "black"
    black.mkdir()
    for i in range(40):
        cv2.imwrite(str(black / f"{i:03d}.png"), np.zeros((128, 128, 3), np.uint8))
    with pytest.raises(ValueError, match=r"black.*every frame scored the same") as e:
        calibrate(bundle, str(black), tmp_path / "out", frames=40, progress=False)
    assert isinstance(e.value, EdgesdkError) and not (tmp_path / "out").exists()


def test_drift_options_hold_numbers_not_the_text_they_were_given():
    """DriftOptions(cusum_k="1") passed the finite() check but kept the text: the loop then failed with a
    TypeError on its first scored frame; enabled="no" was taken as on."""
    o = DriftOptions(cusum_k="1", image_z="3.5")
    assert o.cusum_k == 1.0 and isinstance(o.cusum_k, float) and o.image_z == 3.5
    b = ReferenceBuilder()
    for _ in range(3):
        b.add_image(np.zeros((8, 8, 3), np.uint8))
    mon = DriftMonitor(o, b.reference(np.array([0.0, 1.0, 2.0]), "t"))
    assert mon.update(0, np.zeros((8, 8, 3), np.uint8), 0.5, True) == []
    with pytest.raises(OptionError, match="drift option enabled"):
        DriftOptions(enabled="no")


def test_the_drift_cost_benchmark_runs(tmp_path):
    """benchmarks/drift_cost.py (its numbers are in docs/LINE.md) runs and prints one row per size."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "benchmarks/drift_cost.py"), "--frames", "3"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "x" in ln.split("|")[1]]
    assert [ln.split("|")[1].strip() for ln in rows] == ["256x256", "1280x720", "1920x1080"], r.stdout
