"""The woven sample categories (data/weave.py): rendered deterministically, thread defects painted
where the threads are, masks exact and inside the image, every fabric defect kind in the data set."""

import cv2
import numpy as np
import pytest

from edgesdk.data.synth import FABRIC_DEFECTS, SynthConfig, defect_image, defects, synth_dataset, texture
from edgesdk.data.weave import WEAVES, Edit, render

CFG = SynthConfig(size=128)


@pytest.mark.parametrize("category", sorted(WEAVES))
def test_weave_texture_is_deterministic_and_woven(category):
    tex = texture(category)
    assert tex.shape == (512, 512, 3) and tex.dtype == np.uint8
    np.testing.assert_array_equal(tex, texture(category))
    # A weave is periodic: the luminance's strongest spatial frequency sits at the thread period.
    gray = tex.mean(2) - tex.mean()
    spectrum = np.abs(np.fft.rfft(gray.mean(0)))  # warp threads: columns
    period = 512 / (1 + int(np.argmax(spectrum[1:])))
    assert abs(period - WEAVES[category].period) < 1.0 or abs(period - 2 * WEAVES[category].period) < 2.0


@pytest.mark.parametrize("category", sorted(WEAVES))
@pytest.mark.parametrize("kind", FABRIC_DEFECTS)
def test_fabric_defect_masks_are_exact_and_inside(category, kind):
    tex = texture(category)
    img, mask = defect_image(category, tex, kind, np.random.default_rng(3), CFG)
    again, mask2 = defect_image(category, tex, kind, np.random.default_rng(3), CFG)
    np.testing.assert_array_equal(img, again)
    np.testing.assert_array_equal(mask, mask2)
    assert img.shape == (128, 128, 3) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert (mask > 0).sum() > 10
    x, y, w, h = cv2.boundingRect(mask)
    assert x > 0 and y > 0 and x + w < 128 and y + h < 128  # the whole defect is in view


def test_thread_edits_change_only_their_thread():
    w = WEAVES["weave"]
    clean = render(w).astype(int)
    for kind in ("broken", "float", "slub"):
        diff = np.any(render(w, Edit(kind, j=10, i0=8, i1=12)).astype(int) != clean, axis=2)
        ys, xs = np.nonzero(diff)
        assert len(ys), kind
        # weft thread 10 lies at y = (10 - 2) * period; the run covers warp threads 8..11 (x = 6..9 periods).
        assert np.all(np.abs(ys - 8 * w.period) <= w.period), kind
        assert xs.min() >= 5.5 * w.period - 2 and xs.max() <= 9.5 * w.period + 2, kind  # + the cloth's bow
    with pytest.raises(ValueError, match="unknown thread defect 'tear'"):
        render(w, Edit("tear", 10, 8, 12))


def test_weave_category_holds_every_fabric_defect(tmp_path):
    cfg = SynthConfig(size=64, n_train=2, n_test_good=1, n_test_per_defect=2, n_labelled_per_defect=1)
    counts = synth_dataset(tmp_path, ["weave"], cfg, video=False)["weave"]
    assert defects("weave") == FABRIC_DEFECTS and defects("brick") != FABRIC_DEFECTS
    for kind in FABRIC_DEFECTS:
        assert counts[f"test/{kind}"] == 2
        for i in range(2):
            img = cv2.imread(str(tmp_path / f"weave/test/{kind}/{i:03d}.png"))
            mask = cv2.imread(str(tmp_path / f"weave/ground_truth/{kind}/{i:03d}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert img.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.any(), (kind, i)
        assert (tmp_path / f"weave/labels/ground_truth/{kind}/000_mask.png").is_file()
    with pytest.raises(ValueError, match="needs a woven category"):
        defect_image("brick", texture("brick"), "float", np.random.default_rng(0), CFG)
