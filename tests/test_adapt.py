"""`edgesdk adapt`: a bundle taught the line's new normal from confirmed-good frames on the device (no
torch), into a new gated bundle; the original stays byte for byte. PaDiM's update is exact (adapt on A
then B = fit on A and B), PatchCore's bank is re-thinned by the same coreset as training."""

import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from edgesdk.bundle import Bundle
from edgesdk.images import list_images, read_image
from edgesdk.spec import Manifest, SpecError
from edgesdk.stream import heads
from edgesdk.stream.adapt import AdaptError, AdaptOptions, adapt, scores
from edgesdk.train import load_run

TINT = (1.25, 1.0, 0.8)  # B, G, R: a new lamp (or material batch): every good part reads bluer


def shifted(paths, folder, tint=TINT):
    """The images of PATHS as the moved line delivers them, saved in FOLDER as the dir:// sink saves frames."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        img = np.clip(read_image(p) * np.float32(tint), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"frame_{i:06d}.png"), img)
    return folder


def digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def line_set(tiny_data, folder):
    """The moved line's parts: the test images (good and defects) and training images adapt does not see."""
    shifted(
        list_images(tiny_data / "brick/test/good") + list_images(tiny_data / "brick/train/good")[30:], folder / "good"
    )
    for kind in ("hole", "stain", "scratch", "smudge"):
        shifted(list_images(tiny_data / f"brick/test/{kind}"), folder / kind)
    return folder


def rates(bundle, folder):
    b = Bundle.open(bundle)
    z_good = scores(b.model_path, np.stack([read_image(p, b.input_size) for p in list_images(folder / "good")]), 8)
    bad = [p for k in ("hole", "stain", "scratch", "smudge") for p in list_images(folder / k)]
    z_bad = scores(b.model_path, np.stack([read_image(p, b.input_size) for p in bad]), 8)
    return float((z_good > b.threshold).mean()), float((z_bad > b.threshold).mean())


def test_numpy_and_torch_coresets_pick_the_same_rows():
    from edgesdk.zoo.patchcore import greedy_coreset

    x = np.random.default_rng(0).standard_normal((3000, 40)).astype(np.float32)
    for n, proj, seed in ((60, 16, 0), (200, 64, 7)):
        picks = heads.greedy_coreset(x, n, proj, seed)
        assert picks.tolist() == greedy_coreset(torch.from_numpy(x), n, proj, seed).tolist()
        assert len(set(picks.tolist())) == n


def test_padim_adapt_on_a_then_b_equals_a_fit_on_a_and_b(run_dir, bundle, tiny_data, tmp_path):
    before = digests(bundle)
    train = list_images(tiny_data / "brick/train/good")
    b1, b2 = shifted(train[:12], tmp_path / "b1"), shifted(train[12:24], tmp_path / "b2", (0.8, 0.8, 0.8))
    r1 = adapt(bundle, tmp_path / "a1", AdaptOptions(good=str(b1), gate=False), progress=False)
    r2 = adapt(tmp_path / "a1", tmp_path / "a2", AdaptOptions(good=str(b2), gate=False), progress=False)
    assert digests(bundle) == before  # the original, byte for byte
    # The same model fitted by torch on A (the run's fit images) and both adapt sets' fit frames.
    net, meta = load_run(run_dir)
    size = net.cfg.input_size
    hold = set(meta["data"]["holdout_files"])
    a = np.stack([read_image(p, size) for p in train if p.name not in hold])
    new = [read_image(d / n, size) for d, r in ((b1, r1), (b2, r2)) for n in r["fit_frames"]]
    assert len(new) == 18 and r2["n_after"] == len(a) + 18
    ref = type(net)(net.cfg, weights=None)
    ref.load_state_dict(net.state_dict())
    ref.fit([a, np.stack(new)])
    out = Bundle.open(tmp_path / "a2")
    model, spec = out.model_path.read_bytes(), out.manifest.adapt
    mean = heads.read_head(model, "mean", spec.tensors["mean"]).reshape(ref.mean.shape)
    precision = heads.read_head(model, "precision", spec.tensors["precision"])
    np.testing.assert_allclose(mean, ref.mean.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(precision, ref.precision.numpy(), rtol=2e-3, atol=2e-3 * np.abs(precision).max())
    with np.load(out.path / spec.state) as z:
        assert int(z["n"]) == ref.fit_stats["n"]
        s2 = ref.fit_stats["sum_outer"]
        np.testing.assert_allclose(z["sum_outer"], s2, rtol=1e-4, atol=1e-5 * np.abs(s2).max())
    test = np.stack([read_image(p, size) for p in list_images(tiny_data / "brick/test/hole")])
    with torch.no_grad():
        want = ref(torch.from_numpy(test))[0].numpy()
    np.testing.assert_allclose(scores(out.model_path, test, 4), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert out.manifest.threshold.source == "adapt_good_k_sigma"
    assert out.manifest.provenance["adaptation"]["n_after"] == r2["n_after"]


@pytest.mark.parametrize("model", ["padim", "patchcore"])
def test_adapt_cuts_false_alarms_on_a_moved_line(zoo, tiny_data, tmp_path, model):
    _, bundle = zoo[model]
    before = digests(bundle)
    line = line_set(tiny_data, tmp_path / "line")
    fa_old, _ = rates(bundle, line)
    assert fa_old >= 0.9  # the new lamp: nearly every good part flagged
    good = shifted(list_images(tiny_data / "brick/train/good")[:30], tmp_path / "good")
    r = adapt(
        bundle, tmp_path / "adapted", AdaptOptions(good=str(good), val=str(tiny_data / "brick/test")), progress=False
    )
    assert digests(bundle) == before
    fa_new, recall_new = rates(tmp_path / "adapted", line)
    # Recall on the moved line's defects before meant little (every part was flagged); it stays high.
    assert fa_new <= 0.05 and recall_new >= 0.75, (fa_new, recall_new, r)
    assert r["gate"]["recall"]["new"] >= r["gate"]["recall"]["old"] and r["false_alarms"]["new_on_holdout"] == 0
    if model == "padim":
        assert r["n_after"] == r["n_before"] + len(r["fit_frames"])
        return
    assert r["new_patches"] > 0 and r["bank_size"] == Bundle.open(bundle).manifest.adapt.tensors["bank"].shape[0]
    # The new bank is the numpy coreset's pick over the old bank and the new patches.
    out = Bundle.open(tmp_path / "adapted")
    t = out.manifest.adapt.tensors
    bank = heads.read_head(out.model_path.read_bytes(), "bank", t["bank"])
    sq = heads.read_head(out.model_path.read_bytes(), "bank_sq", t["bank_sq"]).reshape(-1)
    np.testing.assert_allclose(sq, (bank * bank).sum(1), rtol=1e-5)
    assert out.onnx_sha256 != Bundle.open(bundle).onnx_sha256  # engines are cached by it


def test_adapt_refuses_what_it_cannot_adapt(zoo, bundle, tiny_data, tmp_path):
    good = shifted(list_images(tiny_data / "brick/train/good")[:10], tmp_path / "good")
    opts = AdaptOptions(good=str(good), gate=False)
    with pytest.raises(AdaptError, match="student-teacher learns its features by training"):
        adapt(zoo["stfpm"][1], tmp_path / "s", opts, progress=False)
    # A bundle exported before the adapt field: it loads, and adapt says to export again.
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    m.pop("adapt")
    for name in ("features.onnx", "adapt_state.npz"):
        del m["files"][name]
        (old / name).unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    assert Bundle.open(old).manifest.adapt is None
    with pytest.raises(AdaptError, match=r"export the run again"):
        adapt(old, tmp_path / "o", opts, progress=False)
    with pytest.raises(ValueError, match="--val DIR is needed"):
        adapt(bundle, tmp_path / "o", AdaptOptions(good=str(good)), progress=False)
    with pytest.raises(ValueError, match="give a new folder"):
        adapt(bundle, bundle, opts, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not replaced"):
        adapt(bundle, tmp_path / "mine", opts, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_the_gate_refuses_a_model_taught_defects(bundle, tiny_data, tmp_path):
    # An operator who confirms defects as good: the model learns them, recall falls, nothing is written.
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in ("hole", "stain", "smudge"):
        for p in list_images(tiny_data / f"brick/test/{k}"):
            shutil.copy(p, bad / f"{k}_{p.name}")
    shutil.copytree(tiny_data / "brick/test", tmp_path / "val")
    with pytest.raises(AdaptError, match="recall .* is below the bundle's"):
        adapt(
            bundle,
            tmp_path / "out",
            AdaptOptions(good=str(bad), val=str(tmp_path / "val"), k_sigma=0.0),
            progress=False,
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.update(kind="stfpm"), r"adapt\.kind must be one of padim, patchcore"),
        (lambda a: a["tensors"]["mean"].update(offset=-1), r"adapt\.tensors\.mean\.offset must be an integer >= 0"),
        (lambda a: a["tensors"]["precision"].update(shape=[0, 2]), r"adapt\.tensors\.precision\.shape must be"),
        (lambda a: a["tensors"].pop("precision"), r"adapt\.tensors must give mean, precision"),
        (lambda a: a.update(features="other.onnx"), r"adapt names 'other\.onnx', which files does not list"),
        (lambda a: a.update(ridge=-1), r"adapt\.ridge must be a finite number >= 0"),
    ],
)
def test_manifest_adapt_field_is_checked(bundle, edit, message):
    d = json.loads((bundle / "manifest.json").read_text())
    edit(d["adapt"])
    with pytest.raises(SpecError, match=message):
        Manifest.from_dict(d, "m.json")


def test_adapt_reads_good_frames_from_a_source_uri(bundle, tiny_data, tmp_path):
    # A folder of images as a source (as `edgesdk run --source` reads it), capped by --frames.
    line = shifted(list_images(tiny_data / "brick/train/good")[:14], tmp_path / "line")
    r = adapt(bundle, tmp_path / "a", AdaptOptions(source=str(line), frames=12, gate=False), progress=False)
    assert r["frames"] == 12 and len(r["fit_frames"]) + len(r["holdout_frames"]) + len(r["suspect_frames"]) == 12
    assert r["fit_frames"][0] == "frame 1 (frame_000001.png)" and Bundle.open(tmp_path / "a").manifest.adapt is not None


def test_adapt_re_measures_the_drift_reference_of_a_calibrated_bundle(bundle, tiny_data, tmp_path):
    # After adapting to a darker lamp, the drift alarms must take the darker line as normal, not ring forever.
    from edgesdk.stream.calibrate import calibrate
    from edgesdk.stream.drift_ref import load_reference

    calibrate(bundle, str(tiny_data / "brick/train/good"), tmp_path / "cal", frames=30, progress=False)
    good = shifted(list_images(tiny_data / "brick/train/good")[:12], tmp_path / "good", (0.6, 0.6, 0.6))
    adapt(tmp_path / "cal", tmp_path / "a", AdaptOptions(good=str(good), gate=False), progress=False)
    old, new = load_reference(Bundle.open(tmp_path / "cal")), load_reference(Bundle.open(tmp_path / "a"))
    assert new.frames == 12 and new.image["brightness"][0] < 0.75 * old.image["brightness"][0]
    assert new.score["mean"] != old.score["mean"]
    np.testing.assert_array_equal(new.view, old.view)  # the camera did not move
