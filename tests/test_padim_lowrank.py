"""benchmarks/padim_head.py's low-rank heads: the per-direction weights it scores with are the stored
form c_p |delta|^2 + sum_{i in S_p} (1/lam_i - c_p) (u_i . delta)^2, and exact where the covariance is
a PPCA model (k distinct eigenvalues, the rest equal)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from cov_util import random_cov

ROOT = Path(__file__).resolve().parents[1]
P, D, K = 3, 12, 4


def _bench():
    spec = importlib.util.spec_from_file_location("padim_head", ROOT / "benchmarks/padim_head.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cov(rng: np.random.Generator, ppca: bool) -> torch.Tensor:
    return torch.from_numpy(random_cov(rng, P, D, K, ppca))


def _score(weights: torch.Tensor, cov: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(P, N) squared distances of DELTA (P, N, D) as the benchmark scores them: weights (P, D) per eigenvector."""
    return (torch.matmul(delta, torch.linalg.eigh(cov).eigenvectors).square() * weights[:, None]).sum(-1)


def _stored(cov: torch.Tensor, delta: torch.Tensor, sel: torch.Tensor, how: str) -> torch.Tensor:
    """(P, N) from the factors a head would store: U_S (P, D, k), 1/lam_S - c_p (P, k), c_p (P,)."""
    lam, u = torch.linalg.eigh(cov)
    rest = torch.ones(D, dtype=torch.bool)
    rest[sel] = False
    c = 1 / lam[:, rest].mean(1) if how == "ppca" else (1 / lam[:, rest]).mean(1)
    corr = torch.matmul(delta, u[:, :, sel]).square() * (1 / lam[:, sel] - c[:, None])[:, None]
    return c[:, None] * delta.square().sum(-1) + corr.sum(-1)


def test_lowrank_weights_are_the_stored_form():
    mod = _bench()
    rng = np.random.default_rng(0)
    cov = _cov(rng, ppca=False)
    heads = mod._lowrank(cov, [K])
    delta = torch.from_numpy(rng.normal(size=(P, 5, D)))
    ends = {"small": torch.arange(K), "large": torch.arange(D - K, D)}
    ends["both"] = torch.cat([torch.arange(K // 2), torch.arange(D - K // 2, D)])
    for sel, idx in ends.items():
        for how in ("ppca", "hmean"):
            w, nbytes = heads[f"lowrank {sel} {how} {K}"]
            torch.testing.assert_close(_score(w, cov, delta), _stored(cov, delta, idx, how), msg=f"{sel} {how}")
            assert nbytes == 4 * P * (K * D + K + 1)


def test_lowrank_head_is_exact_on_a_ppca_covariance():
    rng = np.random.default_rng(1)
    cov = _cov(rng, ppca=True)
    heads = _bench()._lowrank(cov, [K])
    delta = torch.from_numpy(rng.normal(size=(P, 5, D)))
    exact = (torch.matmul(delta, torch.linalg.inv(cov)) * delta).sum(-1)  # (P, N)
    torch.testing.assert_close(_score(heads[f"lowrank both ppca {K}"][0], cov, delta), exact)
    torch.testing.assert_close(_score(heads[f"lowrank far ppca {K}"][0], cov, delta), exact)
    small = _score(heads[f"lowrank small ppca {K}"][0], cov, delta)
    assert not torch.allclose(small, exact, rtol=1e-3)  # the large-variance directions were discarded
