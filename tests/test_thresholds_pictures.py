"""Detection can never be switched off by a number, and pictures never paint a good part red."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesdk.cli import main
from edgesdk.images import list_images, read_image
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.viz import JET, overlay


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_run_refuses_a_non_finite_threshold(bundle, tiny_data, tmp_path, value, capsys):
    out = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "run",
                str(bundle),
                "--source",
                str(tiny_data / "brick" / "test" / "good"),
                "--sink",
                f"jsonl://{out}",
                f"--threshold={value}",
            ]
        )
    assert e.value.code == 2
    assert "--threshold" in capsys.readouterr().err
    assert not out.exists()


def test_detector_refuses_a_non_finite_threshold(bundle):
    with pytest.raises(ValueError, match="threshold"):
        Detector(bundle, DetectorOptions(threshold=float("nan")))


def test_predict_save_into_an_unwritable_folder_fails(bundle, tiny_data, capsys):
    # /proc/1 exists and cannot hold files, even for root: the overlay cannot be written.
    img = list_images(tiny_data / "brick" / "test" / "good")[0]
    rc = main(["predict", str(bundle), str(img), "--save", "/proc/1", "--json"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "/proc/1" in err and "overlay" in err


def test_predict_save_lists_only_written_overlays(bundle, tiny_data, tmp_path, capsys):
    imgs = list_images(tiny_data / "brick" / "test" / "good")[:2]
    rc = main(["predict", str(bundle), *map(str, imgs), "--save", str(tmp_path / "o"), "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert all(read_image(r["overlay"]).shape[2] == 3 for r in rows)


def _is_alarm_red(px: np.ndarray) -> np.ndarray:
    b, g, r = (px[..., i].astype(int) for i in range(3))
    return (r > 150) & (r - g > 60) & (r - b > 60)


def test_a_good_frame_is_not_painted_in_alarm_colours(bundle, tiny_data):
    with Detector(bundle) as det:
        for path in list_images(tiny_data / "brick" / "test" / "good"):
            frame = read_image(path)
            res = det.predict(frame)
            if res.is_anomalous:
                continue
            assert res.anomaly_map.min() < 0  # a good part's map runs below the good mean
            pic = overlay(frame, res.anomaly_map, det.threshold, res.regions)
            body = slice(24, None)  # below the verdict banner
            new_red = _is_alarm_red(pic[body]) & ~_is_alarm_red(frame[body])
            assert not new_red.any(), f"{path.name}: {int(new_red.sum())} pixels painted red on a good part"
            calm = np.broadcast_to((res.anomaly_map <= 0)[:, :, None], res.anomaly_map.shape + (3,))
            if frame.shape[:2] == res.anomaly_map.shape:
                # Interior of the calm area (away from the resize's blend at edges) keeps the bare frame.
                inner = calm.copy()
                inner[:, 1:] &= calm[:, :-1]
                inner[:, :-1] &= calm[:, 1:]
                inner[1:] &= calm[:-1]
                inner[:-1] &= calm[1:]
                inner[:24] = False
                assert np.array_equal(pic[inner], frame[inner])


def test_the_threshold_has_the_same_colour_in_every_picture():
    frame = np.full((64, 64, 3), 100, np.uint8)
    for thr in (0.5, 3.0, 22.0):
        amap = np.full((64, 64), thr, np.float32)
        a = overlay(frame, amap, thr, alpha=1.0)
        assert np.abs(a[40, 40].astype(int) - JET[127].astype(int)).max() <= 2
        hot = overlay(frame, np.full((64, 64), 5 * thr, np.float32), thr, alpha=1.0)
        assert np.array_equal(hot[40, 40], JET[255])
