import itertools
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgesdk import images
from edgesdk.data import mvtec, synth
from edgesdk.data.synth import DEFECTS, SynthConfig, good_image, paint_defect, synth_dataset, texture


def test_synth_is_deterministic_per_seed(tmp_path):
    cfg = SynthConfig(size=64, n_train=3, n_test_good=1, n_test_per_defect=1, seed=7)
    synth_dataset(tmp_path / "a", ["grass"], cfg, video=False)
    synth_dataset(tmp_path / "b", ["grass"], cfg, video=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 3 + 1 + 2 * len(DEFECTS) + 5 + 2 * 5 * len(DEFECTS)  # + labels/
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    synth_dataset(tmp_path / "c", ["grass"], SynthConfig(**{**vars(cfg), "seed": 8}), video=False)
    assert (tmp_path / "a/grass/train/good/000.png").read_bytes() != (
        tmp_path / "c/grass/train/good/000.png"
    ).read_bytes()


@pytest.mark.parametrize("kind", DEFECTS)
def test_defect_masks_are_exact(kind):
    rng = np.random.default_rng(1)
    base = good_image(texture("gravel"), rng, SynthConfig(size=128))
    img, mask = paint_defect(base, kind, rng)
    changed = np.any(img != base, axis=2)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert changed.sum() > 10
    np.testing.assert_array_equal(changed, mask > 0)


def test_conveyor_video_and_truth(tiny_data):
    truth = (tiny_data / "conveyor_brick.json").read_text()
    import json

    t = json.loads(truth)
    cap = cv2.VideoCapture(str(tiny_data / "conveyor_brick.mkv"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == len(t["frames"]) == 60
    bad = [f for f in t["frames"] if f["is_anomalous"]]
    assert 0 < len(bad) < 60 and all(f["bbox"] for f in bad)


def test_a_conveyor_video_cut_short_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    # cv2.VideoWriter reports no failed write; a file-size limit (EFBIG) stands in for a full disk.
    out = tmp_path / "d"
    script = f"""
import resource, signal
from edgesdk.data.synth import SynthConfig, write_conveyor
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    write_conveyor({str(out / "conveyor.mkv")!r}, "brick", SynthConfig(size=128), n_frames=60)
except OSError as e:
    print(e.filename, "|", e.strerror)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"{out / 'conveyor.mkv'} \| only \d+ of 60 frames written could be read back .*\n", r.stdout)
    assert list(out.iterdir()) == []  # no video, no ground truth, no temporary file

    conveyor = synth.Conveyor

    def interrupted(*args):  # Ctrl-C while frames are being written
        yield from itertools.islice(conveyor(*args), 3)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "Conveyor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth.write_conveyor(out / "conveyor.mkv", "brick", SynthConfig(size=64))
    assert list(out.iterdir()) == []


def test_mvtec_layout_is_read(tiny_data):
    items = mvtec.test_items(tiny_data / "brick")
    assert sum(i.label for i in items) == 3 * len(DEFECTS)
    assert all(i.mask is not None for i in items if i.label)
    img, m = mvtec.read_item(next(i for i in items if i.label), (64, 64))
    assert img.shape == (64, 64, 3) and m.shape == (64, 64) and m.any()


def test_bad_folders_name_the_path(tmp_path, tiny_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(mvtec.DataError, match="empty: no images"):
        mvtec.good_images(tmp_path / "empty")
    with pytest.raises(mvtec.DataError, match="missing: not found"):
        mvtec.good_images(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(mvtec.DataError, match="x.png: not a readable image"):
        images.read_image(mvtec.good_images(tmp_path / "broken")[0])


def test_inconsistent_masks_are_errors(tmp_path, tiny_data):
    import shutil

    cat = tmp_path / "cat"
    shutil.copytree(tiny_data / "brick", cat)
    extra = cat / "ground_truth" / "hole" / "099_mask.png"
    shutil.copy(cat / "ground_truth" / "hole" / "000_mask.png", extra)
    with pytest.raises(mvtec.DataError, match="099_mask.png: mask without a test image"):
        mvtec.test_items(cat)
    extra.unlink()
    (cat / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(mvtec.DataError, match="hole/000.png: defective test image has no mask"):
        mvtec.test_items(cat)
    m = cat / "ground_truth" / "scratch" / "000_mask.png"
    cv2.imwrite(str(m), np.zeros((10, 10), np.uint8))
    item = next(i for i in mvtec.labelled_items(cat / "test") if i.mask == m)
    with pytest.raises(mvtec.DataError, match="mask is 10x10 but its image"):
        mvtec.read_item(item, (64, 64))
