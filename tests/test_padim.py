import numpy as np
import torch

from edgesdk.zoo.components import GaussianBlur, mahalanobis
from edgesdk.zoo.padim import Padim, PadimConfig


def test_mahalanobis_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 5, 7, generator=g)  # (B, D, P)
    mean = torch.randn(7, 5, generator=g)
    a = torch.randn(7, 5, 5, generator=g)
    prec = a @ a.transpose(1, 2) + torch.eye(5)
    got = mahalanobis(emb, mean, prec)
    for b in range(3):
        for p in range(7):
            d = emb[b, :, p] - mean[p]
            assert torch.allclose(got[b, p], torch.sqrt(d @ prec[p] @ d), rtol=1e-5)


def test_blur_preserves_constant_maps_and_mass():
    blur = GaussianBlur(2.0)
    x = torch.full((1, 1, 32, 32), 3.0)
    assert torch.allclose(blur(x), x, atol=1e-5)  # reflect padding: no dark borders
    spike = torch.zeros(1, 1, 33, 33)
    spike[..., 16, 16] = 1
    assert abs(float(blur(spike).sum()) - 1.0) < 1e-4


def test_fit_recovers_gaussian_statistics(tiny_data):
    from edgesdk.data import mvtec

    cfg = PadimConfig(input_size=(128, 128), feature_dim=16)
    net = Padim(cfg)
    frames = mvtec.read_batch(mvtec.good_images(tiny_data / "brick")[:24], (128, 128))
    assert net.fit([frames[:10], frames[10:]]) == {"n_images": 24}
    emb = net.embed(torch.from_numpy(frames)).permute(2, 0, 1).double()  # (P, N, D)
    np.testing.assert_allclose(net.mean.numpy(), emb.mean(1).numpy(), rtol=1e-4, atol=1e-4)
    cov = torch.stack([torch.cov(e.T) for e in emb[:3]]) + 0.01 * torch.eye(16, dtype=torch.float64)
    np.testing.assert_allclose(net.precision[:3].double().numpy(), torch.linalg.inv(cov).numpy(), rtol=1e-3, atol=1e-3)


def test_defects_score_higher_than_good(run_dir, tiny_data):
    from edgesdk.data import mvtec
    from edgesdk.measure.metrics import auroc
    from edgesdk.train import load_run

    net, meta = load_run(run_dir)
    items = mvtec.test_items(tiny_data / "brick")
    frames = mvtec.read_batch([i.path for i in items], (128, 128))
    with torch.no_grad():
        scores = net(torch.from_numpy(frames))[0].numpy()
    assert auroc(scores, np.array([i.label for i in items])) > 0.9
    assert meta["threshold"]["value"] == 3.0 and meta["data"]["n_holdout"] == 20
