"""Every zoo model runs the whole path: train -> export (ONNX vs torch parity gate) -> eval on the
torch-free runtime, and its graph builds in TensorRT. Plus the models' own algorithms."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ZOO_CONFIGS

MODELS = sorted(ZOO_CONFIGS)


@pytest.mark.parametrize("model", MODELS)
def test_each_model_exports_with_parity_and_scores_without_torch(zoo, tiny_data, model):
    run, bundle = zoo[model]
    par = json.loads((bundle / "parity.json").read_text())
    assert par["passed"] and par["score_max_rel_err"] <= 1e-4 and par["map_max_rel_err"] <= 1e-4
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from edgesdk.measure.evaluate import evaluate\n"
        "r = evaluate(sys.argv[1], sys.argv[2]); print(json.dumps([r['image_auroc'], r['pixel_auroc']]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(tiny_data / "brick")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    img, px = json.loads(r.stdout)
    assert img > 0.9 and px > 0.9, (model, img, px)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"]["name"] == model and m["model"]["backbone"] == "efficientnet_lite0"


@pytest.mark.parametrize("model", MODELS)
def test_each_models_bundle_builds_a_tensorrt_engine(zoo, model, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX is in the dev extra")
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile

    r = build_engine(zoo[model][1], load_profile("rtx"), out=tmp_path)
    assert r.plan.stat().st_size > 500_000 and r.sidecar.model == model and r.sidecar.strongly_typed


def test_patchcore_reports_its_memory_bank(zoo):
    run, _ = zoo["patchcore"]
    meta = json.loads((run / "run.json").read_text())
    fit = meta["fit"]
    assert fit["n_patches"] == 80 * 16 * 16 and fit["bank_size"] == round(0.02 * 80 * 256)
    assert meta["config"]["bank_size"] == fit["bank_size"] and fit["feature_dim"] == 152


def test_stfpm_stops_at_its_budget(zoo):
    fit = json.loads((zoo["stfpm"][0] / "run.json").read_text())["fit"]
    assert fit["steps"] == 400 and fit["stopped_by"] == "steps"
    from edgesdk.zoo.stfpm import Stfpm, StfpmConfig

    net = Stfpm(StfpmConfig(input_size=(64, 64), steps=10_000, seconds=1.0, penalty=0.0))
    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    out = net.fit([frames])
    assert out["stopped_by"] == "time budget" and out["steps"] < 10_000


def test_greedy_coreset_takes_one_point_per_far_cluster():
    from edgesdk.zoo.patchcore import greedy_coreset

    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0] * 8, [50.0] * 8, [-50.0] * 8, [50.0] * 4 + [-50.0] * 4])
    x = torch.cat([c + 0.1 * torch.randn(100, 8, generator=g) for c in centers])
    picks = greedy_coreset(x, 4, projection_dim=4, seed=0)
    assert sorted(int(p) // 100 for p in picks) == [0, 1, 2, 3]


def test_nearest_distance_matches_brute_force():
    from edgesdk.zoo.components import nearest_sq_dist

    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(2, 30, 16, generator=g), torch.randn(50, 16, generator=g)
    d2, idx = nearest_sq_dist(q, bank, (bank * bank).sum(1))
    brute = ((q[:, :, None, :] - bank[None, None]) ** 2).sum(-1)
    assert torch.allclose(d2, brute.min(-1).values, atol=1e-4) and torch.equal(idx, brute.argmin(-1))


def test_patchcore_reweighting_scales_the_whole_map(zoo, tiny_data):
    """score = max(map) still holds, and the re-weighting factor lies in (0, 1]."""
    from dataclasses import replace

    from edgesdk.data import mvtec
    from edgesdk.train import load_run

    net, _ = load_run(zoo["patchcore"][0])
    x = torch.from_numpy(mvtec.read_batch(mvtec.good_images(tiny_data / "brick")[:2], (128, 128)))
    with torch.no_grad():
        weighted = net.distance_map(x)
        score, amap = net(x)
        net.cfg = replace(net.cfg, num_neighbors=1)
        plain = net.distance_map(x)
    w = weighted.flatten(1).amax(1) / plain.flatten(1).amax(1)  # (B,) one factor per image
    assert torch.allclose(weighted, plain * w.view(-1, 1, 1, 1), atol=1e-4 * float(plain.max()))
    assert ((w > 0) & (w <= 1)).all()  # 1 - softmax(...)[0]: (0, 1]
    assert torch.allclose(score, amap.flatten(1).amax(1))


def test_patchcore_score_is_the_papers_reweighted_patch_distance(tiny_data):
    """With peak_score, score = w * s* (Roth et al. eq. 7, anomalib's pred_score), from a numpy reference:
    s* the worst patch's nearest-bank distance on the grid, before smoothing; w = 1 - softmax of its
    distances to the k bank neighbours of its match, first entry. score = max(map) still holds."""
    from dataclasses import replace

    from edgesdk.data import mvtec
    from edgesdk.zoo.patchcore import Patchcore, PatchcoreConfig

    assert not PatchcoreConfig().peak_score  # the smoothed maximum by default
    net = Patchcore(PatchcoreConfig(input_size=(64, 64), coreset_ratio=0.1)).eval()
    good = mvtec.good_images(tiny_data / "brick")
    net.fit([mvtec.read_batch(good[:12], (64, 64))])
    paths = good[-2:] + [i.path for i in mvtec.test_items(tiny_data / "brick") if i.label][:2]
    x = torch.from_numpy(mvtec.read_batch(paths, (64, 64)))
    with torch.no_grad():
        q = net.embed(x).double().numpy()  # (B, P, D)
        smoothed = net.full_map(x).flatten(1).amax(1).double().numpy()
        net.cfg = replace(net.cfg, peak_score=True)
        raw = net.full_map(x).flatten(1).amax(1).double().numpy()
        score, amap = net(x)
    bank, support = net.bank.double().numpy(), net.support.numpy()
    for b in range(len(q)):
        d2 = ((q[b][:, None, :] - bank[None]) ** 2).sum(-1)  # (P, M)
        dist = np.sqrt(d2.min(1))
        worst = int(dist.argmax())
        near = np.sqrt(((q[b, worst] - bank[support[int(d2[worst].argmin())]]) ** 2).sum(-1))  # (k,)
        w = 1 - np.exp(near[0] - near.max()) / np.exp(near - near.max()).sum()
        assert raw[b] == pytest.approx(w * dist[worst], rel=1e-4), b
        assert smoothed[b] < raw[b] * (1 - 1e-3), b  # the smoothing lowers the peak
    assert torch.allclose(score, amap.flatten(1).amax(1))
