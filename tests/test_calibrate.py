"""`edgesdk calibrate`: the threshold re-derived on known-good frames of the line's own source (an
mp4v clip, a codec the training PNGs never saw), into a new verified bundle; the original intact."""

import json

import cv2
import numpy as np
import pytest

from edgesdk.bundle import Bundle
from edgesdk.images import list_images, read_image
from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.detector import Detector
from test_device_no_torch import run as run_without_torch


def write_mp4(path, images, size=(160, 160)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    assert w.isOpened(), "OpenCV's FFmpeg cannot write mp4v here"
    for p in images:
        w.write(cv2.resize(read_image(p), size))
    w.release()
    return path


@pytest.fixture(scope="module")
def good_mp4(tiny_data, tmp_path_factory):
    # The last 40 training images: known-good parts, through a lossy codec at another resolution.
    return write_mp4(tmp_path_factory.mktemp("line") / "good.mp4", list_images(tiny_data / "brick/train/good")[-40:])


def test_calibrate_writes_a_new_bundle_with_the_lines_own_threshold(bundle, good_mp4, tmp_path):
    before = (bundle / "manifest.json").read_bytes()
    out = tmp_path / "calibrated"
    st = calibrate(bundle, str(good_mp4), out, frames=40, progress=False)
    assert (bundle / "manifest.json").read_bytes() == before  # the original stays as exported
    b = Bundle.open(out)  # every file hash verified
    thr = b.manifest.threshold
    assert thr.source == "line_good_k_sigma" and thr.value == st["threshold"]
    assert b.manifest.provenance["line_calibration"]["source"] == str(good_mp4)
    # Recompute independently: decode the clip, score each frame with the original bundle.
    cap, z = cv2.VideoCapture(str(good_mp4)), []
    with Detector(bundle) as det:
        while (f := cap.read())[0]:
            z.append(det.predict(f[1]).score)
    z = np.array(z)
    assert len(z) == st["frames"] == 40
    assert thr.value == pytest.approx(z.mean() + st["k_sigma"] * z.std(ddof=1), rel=1e-5)
    assert st["flagged_at_new_threshold"] == int((z > thr.value).sum()) <= 2
    assert st["suspect_frames"] == 0  # a clean clip raises no alarm
    with Detector(out) as det:  # the runtime uses the new value
        assert det.threshold == thr.value


def test_calibrate_refuses_too_few_frames_and_overwriting_the_original(bundle, tiny_data, tmp_path):
    short = write_mp4(tmp_path / "short.mp4", list_images(tiny_data / "brick/train/good")[:10])
    with pytest.raises(ValueError, match=r"short\.mp4: gave 10 frames.*at least 30"):
        calibrate(bundle, str(short), tmp_path / "c", frames=40, progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="give a new folder"):
        calibrate(bundle, str(short), bundle, frames=40, progress=False)
    with pytest.raises(ValueError, match="at least 30"):
        calibrate(bundle, str(short), tmp_path / "c", frames=5, progress=False)


def test_calibrate_cli_runs_on_the_device_without_torch(bundle, good_mp4, tmp_path):
    code = "from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run_without_torch(
        code, "calibrate", bundle, "--source", good_mp4, "--frames", 40, "--out", tmp_path / "cal", "--json"
    )
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["frames"] == 40 and Bundle.open(tmp_path / "cal").threshold == pytest.approx(st["threshold"])


def test_calibrate_warns_when_the_good_clip_holds_defects(bundle, tiny_data, tmp_path, caplog):
    """Defect frames mixed into a "known-good" clip would lift the threshold over the defects it should
    catch: the frames far above the rest of the clip (and the bundle's threshold) are counted and warned."""
    goods = list_images(tiny_data / "brick/train/good")[-40:]
    bad = [p for kind in ("hole", "stain", "scratch", "smudge") for p in list_images(tiny_data / f"brick/test/{kind}")]
    seq = goods[:10] + bad[0:2] + goods[10:25] + bad[3:5] + goods[25:] + bad[6:8]
    clip = write_mp4(tmp_path / "mixed.mp4", seq)
    st = calibrate(bundle, str(clip), tmp_path / "c", frames=len(seq), progress=False)
    defect_at = {i for i, p in enumerate(seq) if p in bad}
    assert st["suspect_frames"] == len(st["suspect_frame_indices"]) >= 2
    assert set(st["suspect_frame_indices"]) <= defect_at  # never a good frame
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{st['suspect_frames']} of {len(seq)} frames" in w and "look like defects" in w for w in warned)
    assert Bundle.open(tmp_path / "c").manifest.threshold.detail["suspect_frames"] == st["suspect_frames"]


@pytest.mark.parametrize("k", ["nan", "inf", "-1"])
def test_calibrate_refuses_a_non_finite_or_negative_k_sigma(bundle, good_mp4, tmp_path, k, capsys):
    from edgesdk.cli import main

    with pytest.raises(ValueError, match="--k-sigma"):
        calibrate(bundle, str(good_mp4), tmp_path / "c", frames=40, k_sigma=float(k), progress=False)
    assert (
        main(
            [
                "calibrate",
                str(bundle),
                "--source",
                str(good_mp4),
                "--frames",
                "40",
                "--out",
                str(tmp_path / "c"),
                "--k-sigma",
                k,
            ]
        )
        == 2
    )
    assert "--k-sigma" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_calibrate_refuses_a_negative_k_sigma_from_the_bundle(bundle, good_mp4, tmp_path):
    import shutil

    b = shutil.copytree(bundle, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["threshold"]["detail"]["k_sigma"] = -2.0
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"manifest\.json: threshold\.detail\.k_sigma must be >= 0"):
        calibrate(b, str(good_mp4), tmp_path / "c", frames=40, progress=False)
    assert not (tmp_path / "c").exists()
