"""The sample data's labelled folder (none of it in the test set) and the labelled-folder loader."""

import hashlib
import os
import shutil

import cv2
import numpy as np
import pytest

from edgesdk.data.labelled import load_labels
from edgesdk.data.synth import DEFECTS, SynthConfig, seeds
from edgesdk.errors import DataError


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_synth_writes_a_labelled_folder_disjoint_from_the_test_set(tiny_data):
    cat = tiny_data / "brick"
    ls = load_labels(cat / "labels")
    assert ls.kinds == tuple(sorted(DEFECTS))
    assert ls.count() == {"good": 5, **{k: 5 for k in DEFECTS}, "masks": 5 * len(DEFECTS)}
    s = seeds(SynthConfig(), "brick")
    assert s["labels"] != s["dataset"]
    labelled = {digest(p) for p in (cat / "labels").rglob("*.png") if "ground_truth" not in p.parts}
    elsewhere = {digest(p) for d in ("train", "test") for p in (cat / d).rglob("*.png")}
    assert len(labelled) == 5 + 5 * len(DEFECTS) and not labelled & elsewhere
    frames, classes, masks, has = ls.read((64, 64))
    assert frames.shape == (25, 64, 64, 3) and masks.shape == (25, 64, 64) and has.all()
    assert (classes == 0).sum() == 5 and set(classes[classes > 0]) == {1, 2, 3, 4}
    assert all(masks[i].any() == bool(classes[i]) for i in range(len(classes)))


@pytest.fixture
def folder(tiny_data, tmp_path):
    return shutil.copytree(tiny_data / "brick" / "labels", tmp_path / "labels")


def test_a_kind_without_masks_is_an_image_level_label(folder):
    shutil.rmtree(folder / "ground_truth" / "hole")
    ls = load_labels(folder)
    holes = [it for it in ls.items if it.kind == "hole"]
    assert len(holes) == 5 and all(it.mask is None and it.label == 1 for it in holes)
    _, classes, masks, has = ls.read((32, 32))
    sel = classes == ls.kinds.index("hole") + 1
    assert not has[sel].any() and not masks[sel].any() and has[~sel].all()


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda f: (f / "notes.txt").write_text("x"), r"notes\.txt: unknown file"),
        (lambda f: (f / "stain" / "readme.md").write_text("x"), r"readme\.md: not an image"),
        (lambda f: (f / "dent").mkdir(), r"dent: no images"),
        (lambda f: (f / "ground_truth" / "dent").mkdir(), r"ground_truth/dent: not a defect kind"),
        (lambda f: os.remove(f / "hole" / "001.png"), r"hole/001_mask\.png: mask without an image"),
        (lambda f: (f / "ground_truth" / "hole" / "000.png").write_bytes(b""), r"hole/000\.png: not a mask"),
        (lambda f: shutil.copy(f / "hole" / "000.png", f / "hole" / "000.jpg"), r"two images named 000"),
        (lambda f: (f / "bad kind").mkdir(), r"bad kind: cannot name a defect kind: must be letters"),
        (lambda f: (f / "unknown").mkdir(), r"unknown: cannot name a defect kind: 'unknown' is reserved"),
        (lambda f: [shutil.rmtree(f / k) for k in DEFECTS] and shutil.rmtree(f / "ground_truth"), "no defect kind"),
    ],
)
def test_bad_labelled_folders_name_the_file(folder, break_it, message):
    break_it(folder)
    with pytest.raises(DataError, match=message):
        load_labels(folder)


def test_masks_are_checked_when_read(folder):
    mask = folder / "ground_truth" / "stain" / "002_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match=r"002_mask\.png: mask is 12x10 but its image .*stain/002\.png is 128x128"):
        load_labels(folder).read((64, 64))
    cv2.imwrite(str(mask), np.zeros((128, 128), np.uint8))
    with pytest.raises(DataError, match=r"002_mask\.png: no defect pixels.*image-level label"):
        load_labels(folder).read((64, 64))


def test_links_out_of_the_folder_are_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere.png"
    shutil.copy(folder / "good" / "000.png", outside)
    (folder / "good" / "000.png").unlink()
    (folder / "good" / "000.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"good/000\.png: a symbolic link or outside"):
        load_labels(folder)
    (folder / "good" / "000.png").unlink()
    (folder / "scratch2").symlink_to(folder / "scratch", target_is_directory=True)
    with pytest.raises(DataError, match=r"scratch2: a symbolic link or outside"):
        load_labels(folder)
