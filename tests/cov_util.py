"""Covariances with a known low-rank structure, for the PaDiM head tests (the benchmark's and the zoo's)."""

from __future__ import annotations

import numpy as np


def random_cov(rng: np.random.Generator, p: int, d: int, k: int, ppca: bool) -> np.ndarray:
    """(P, D, D) float64 with random bases: K/2 eigenvalues below 1 and K/2 above, the rest exactly 1 if PPCA
    (so a rank-K head with a PPCA reference is exact), else spread around 1."""
    out = []
    for _ in range(p):
        lam = np.ones(d) if ppca else rng.uniform(0.6, 1.5, d)
        lam[: k // 2] = rng.uniform(0.01, 0.5, k // 2)
        lam[d - k // 2 :] = rng.uniform(2, 9, k // 2)
        q = np.linalg.qr(rng.normal(size=(d, d)))[0]
        out.append((q * lam) @ q.T)
    return np.stack(out)
