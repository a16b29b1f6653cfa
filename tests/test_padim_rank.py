"""PaDiM's low-rank head in the zoo (PadimConfig.head_rank): the factors score what the full
eigendecomposition scores with k directions kept, numpy (device adapt) and torch (fit) agree, a rank-k run
trains, exports and adapts, and a run saved before head_rank existed still loads as the full head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cov_util import random_cov
from edgesdk.bundle import Bundle
from edgesdk.errors import EdgesdkError
from edgesdk.images import list_images, read_image
from edgesdk.spec import Manifest, SpecError
from edgesdk.stream import heads
from edgesdk.stream.adapt import AdaptOptions, adapt, scores
from edgesdk.train import load_run
from edgesdk.zoo.components import lowrank_factors, lowrank_mahalanobis, mahalanobis

P, D, K = 5, 12, 4
RANK_CONFIG = {"input_size": [128, 128], "feature_dim": 24, "head_rank": 8}


def _cov(rng: np.random.Generator, ppca: bool) -> np.ndarray:
    return random_cov(rng, P, D, K, ppca)


def _scores(factors, mean: torch.Tensor, emb: torch.Tensor) -> np.ndarray:
    basis, weight, ref = (torch.as_tensor(np.asarray(f)).double() for f in factors)
    return lowrank_mahalanobis(emb, mean, basis, weight, ref).numpy()


def test_lowrank_factors_score_the_kept_directions_and_numpy_agrees_with_torch():
    rng = np.random.default_rng(0)
    cov = _cov(rng, ppca=False)
    emb, mean = torch.from_numpy(rng.normal(size=(3, D, P))), torch.from_numpy(rng.normal(size=(P, D)))
    got = _scores(lowrank_factors(torch.from_numpy(cov), K), mean, emb)  # (B, P)
    # The same head from the full eigendecomposition: 1/lam on the K/2 smallest and K/2 largest, c_p elsewhere.
    lam, u = np.linalg.eigh(cov)
    keep = np.r_[0 : K // 2, D - K // 2 : D]
    c = 1 / np.delete(lam, keep, axis=1).mean(1)
    w = np.repeat(c[:, None], D, 1)
    w[:, keep] = 1 / lam[:, keep]
    delta = emb.numpy().transpose(2, 0, 1) - mean.numpy()[:, None]  # (P, B, D)
    want = np.sqrt((np.matmul(delta, u) ** 2 * w[:, None]).sum(-1)).T
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert not np.allclose(got, mahalanobis(emb, mean, torch.from_numpy(np.linalg.inv(cov))).numpy(), rtol=1e-3)
    f = heads.lowrank_factors(cov, K)  # numpy, float32: eigenvector signs may differ, scores do not
    np.testing.assert_allclose(_scores((f["basis"], f["weight"], f["ref"]), mean, emb), got, rtol=1e-5)
    # Exact where the covariance is a PPCA model: K distinct eigenvalues, the rest equal.
    ppca = _cov(rng, ppca=True)
    exact = mahalanobis(emb, mean, torch.from_numpy(np.linalg.inv(ppca))).numpy()
    np.testing.assert_allclose(_scores(lowrank_factors(torch.from_numpy(ppca), K), mean, emb), exact, rtol=1e-8)


@pytest.mark.parametrize("rank", [1, 3, 24, True])
def test_a_head_rank_that_is_not_even_and_below_the_channels_is_refused(tiny_data, tmp_path, rank):
    from edgesdk.train import train

    with pytest.raises(EdgesdkError, match=rf"config head_rank: {rank!r} must be 0 \(full head\) or even"):
        train(tiny_data / "brick", tmp_path / "run", config={**RANK_CONFIG, "head_rank": rank}, quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def rank_run(tiny_data, tmp_path_factory):
    from edgesdk.compile.onnx import ExportOptions, export_onnx
    from edgesdk.train import train

    root = tmp_path_factory.mktemp("rank")
    run = train(tiny_data / "brick", root / "run", config=RANK_CONFIG, quiet=True)
    return run, export_onnx(run, root / "bundle", ExportOptions(opset=17))


def test_a_low_rank_run_exports_a_smaller_head_and_adapts_exactly(rank_run, tiny_data, tmp_path):
    import onnx

    run, bundle = rank_run
    net, _ = load_run(run)
    assert not hasattr(net, "precision") and net.basis.shape == (256, 24, 8)
    b = Bundle.open(bundle)  # export's parity gate passed: the graph scores as torch does
    spec = b.manifest.adapt
    assert spec is not None and spec.rank == 8 and sorted(spec.tensors) == ["basis", "mean", "ref", "weight"]
    g = onnx.load(str(b.model_path))
    assert g.opset_import[0].version == 17
    assert (
        max(int(np.prod(i.dims)) for i in g.graph.initializer if len(i.dims) == 3 and i.dims[0] == 256) == 256 * 24 * 8
    )
    # adapt (numpy) on new frames = torch's fit on the run's images and those frames.
    train_imgs = list_images(tiny_data / "brick/train/good")
    r = adapt(
        bundle,
        tmp_path / "a",
        AdaptOptions(good=str(tiny_data / "brick/train/good"), frames=12, gate=False),
        progress=False,
    )
    size = net.cfg.input_size
    hold = set(json.loads((run / "run.json").read_text())["data"]["holdout_files"])
    old = np.stack([read_image(p, size) for p in train_imgs if p.name not in hold])
    new = np.stack([read_image(tiny_data / "brick/train/good" / n, size) for n in r["fit_frames"]])
    ref = type(net)(net.cfg, weights=None)
    ref.load_state_dict(net.state_dict())
    ref.fit([old, new])
    out = Bundle.open(tmp_path / "a")
    test = np.stack([read_image(p, size) for p in list_images(tiny_data / "brick/test/hole")])
    with torch.no_grad():
        want = ref(torch.from_numpy(test))[0].numpy()
    np.testing.assert_allclose(scores(out.model_path, test, 4), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert r["n_after"] == r["n_before"] + len(new)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("ref"), r"adapt\.tensors must give mean, precision or mean, basis, weight, ref"),
        (lambda t: t["basis"].update(shape=[256, 24, 7]), r"adapt\.tensors\.basis: shape \[256, 24, 7\] is not"),
        (lambda t: t["weight"].update(shape=[256, 1, 6]), r"adapt\.tensors\.weight: 1536 float32 values; a rank-8"),
        (lambda t: t["ref"].update(dtype="int64"), r"adapt\.tensors\.ref: 256 int64 values"),
    ],
)
def test_a_low_rank_adapt_field_is_checked(rank_run, edit, message):
    d = json.loads((rank_run[1] / "manifest.json").read_text())
    edit(d["adapt"]["tensors"])
    with pytest.raises(SpecError, match=message):
        Manifest.from_dict(d, "m.json")


def test_a_run_saved_before_head_rank_loads_evaluates_and_exports_as_the_full_head(tiny_data, tmp_path):
    """An old run: run.json's config without head_rank, model.pt with `precision` (whatever the default now)."""
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.measure.evaluate import evaluate
    from edgesdk.train import train

    old = train(tiny_data / "brick", tmp_path / "old", config={"input_size": [128, 128], "head_rank": 0}, quiet=True)
    meta = json.loads((old / "run.json").read_text())
    meta["config"].pop("head_rank", None)
    (old / "run.json").write_text(json.dumps(meta))
    assert "precision" in torch.load(old / "model.pt", weights_only=True)
    net, _ = load_run(old)
    assert net.cfg.head_rank == 0 and net.precision.shape == (256, 80, 80)
    b = Bundle.open(export_onnx(old, tmp_path / "bundle"))
    assert b.manifest.adapt is not None and sorted(b.manifest.adapt.tensors) == ["mean", "precision"]
    assert evaluate(b.path, tiny_data / "brick")["image_auroc"] > 0.9


def test_a_recipe_with_an_odd_head_rank_is_refused_naming_the_file(tmp_path):
    from edgesdk.recipe import load_recipe

    f = tmp_path / "mine.toml"
    f.write_text('model = "padim"\n[config]\nhead_rank = 31\n')
    with pytest.raises(SpecError, match=r"mine\.toml \[config\]: head_rank must be 0 \(full head\) or even and >= 2"):
        load_recipe(f)
    f.write_text('model = "padim"\n[config]\nhead_rank = 32\n')
    assert load_recipe(f).config["head_rank"] == 32


def test_adapt_from_good_images_writes_into_the_working_folder(rank_run, tiny_data, tmp_path, monkeypatch):
    """Without --source no input is the working folder: an --out below it is written (it was refused as
    lying inside the input '.')."""
    monkeypatch.chdir(tmp_path)
    opts = AdaptOptions(good=str(tiny_data / "brick/train/good"), frames=8, gate=False)
    r = adapt(rank_run[1], "adapted", opts, progress=False)
    assert r["out"] == "adapted" and Bundle.open(tmp_path / "adapted").manifest.adapt is not None
