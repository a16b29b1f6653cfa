"""The heads `adapt` rewrites on the device, in numpy: PaDiM's per-position Gaussians from their
sufficient statistics (full inverse covariances, or the low-rank head's factors), and PatchCore's
memory bank re-thinned by the greedy coreset. No torch: the zoo's torch code (zoo/padim.py fit,
zoo/patchcore.py greedy_coreset) does the same arithmetic, and the tests hold the two to the same numbers.

The head tensors live inside model.onnx as raw little-endian bytes at offsets the export recorded
(manifest `adapt.tensors`, checked there with onnx). New values of the same dtype and shape are
written over them: the graph, its shapes and ops stay as exported and verified, and model.onnx's
sha256, by which engines are cached, changes with the weights."""

from __future__ import annotations

import numpy as np

from edgesdk.spec.adapt import AdaptSpec, HeadTensor
from edgesdk.spec.typed import SpecError


def coreset_draws(k: int, d: int, projection_dim: int, seed: int) -> tuple[np.ndarray, int]:
    """The greedy coreset's random choices for K rows of D features: a Gaussian projection
    (D, projection_dim) float32 scaled by 1/sqrt(projection_dim), and the first pick. numpy's
    generator on both sides, so torch (zoo) and numpy (device) pick the same rows."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((d, projection_dim), dtype=np.float32) / np.float32(projection_dim**0.5)
    return proj, int(rng.integers(k))


def greedy_coreset(x: np.ndarray, n: int, projection_dim: int, seed: int) -> np.ndarray:
    """Indices (N,) of N rows of X (K, D) float32 by greedy k-center, as zoo/patchcore.py does in torch:
    each pick is the row farthest from all picks so far, in the random projection; |z|^2 - 2 z.c + |c|^2
    as one GEMV per pick."""
    proj, i = coreset_draws(len(x), x.shape[1], projection_dim, seed)
    z = np.ascontiguousarray(x, np.float32) @ proj  # (K, d)
    zz = (z * z).sum(1)
    mind = np.full(len(z), np.inf, np.float32)
    picks = np.empty(n, np.int64)
    for k in range(n):
        picks[k] = i
        np.minimum(mind, zz - 2 * (z @ z[i]) + zz[i], out=mind)
        i = int(mind.argmax())
    return picks


def bank_support(bank: np.ndarray, num_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """(|bank|^2 (M,), support (M, k) int64): each row's k nearest bank rows, itself first; padded
    with the nearest when the bank has fewer than k rows (as zoo/patchcore.py fit)."""
    m = len(bank)
    k = min(max(1, num_neighbors), m)
    bank_sq = (bank * bank).sum(1)
    rows = []
    for i in range(0, m, 1024):  # (1024, M) distances at a time
        d2 = bank_sq[i : i + 1024, None] - 2 * bank[i : i + 1024] @ bank.T + bank_sq
        rows.append(np.argsort(d2, axis=1, kind="stable")[:, :k])
    support = np.concatenate(rows).astype(np.int64)
    if k < max(1, num_neighbors):
        support = np.concatenate([support, np.repeat(support[:, :1], num_neighbors - k, 1)], 1)
    return bank_sq.astype(np.float32), support


def patchcore_head(bank: np.ndarray, feats: np.ndarray, spec: AdaptSpec) -> tuple[dict[str, np.ndarray], dict]:
    """The bank (M, D) joined by the new patches FEATS (N, P, D) and thinned back to M rows: the
    graph's bank size is its memory and latency budget. Returns the head tensors and what changed."""
    x = np.concatenate([bank, feats.reshape(-1, bank.shape[1])]).astype(np.float32)  # (M + N * P, D)
    picks = greedy_coreset(x, len(bank), spec.projection_dim, spec.seed)
    new = x[picks]
    bank_sq, support = bank_support(new, spec.num_neighbors)
    kept = int((picks < len(bank)).sum())
    return (
        {"bank": new, "bank_sq": bank_sq, "support": support},
        {"bank_size": len(bank), "candidates": len(x), "kept_from_bank": kept, "new_patches": len(bank) - kept},
    )


def padim_state(state: dict[str, np.ndarray], feats: np.ndarray) -> dict[str, np.ndarray]:
    """Sufficient statistics plus FEATS (N, P, D): n, sum (P, D) and sum_outer (P, D, D), float64,
    accumulated exactly as zoo/padim.py fit accumulates them."""
    e = feats.astype(np.float64).transpose(1, 0, 2)  # (P, N, D)
    return {
        "n": np.asarray(int(state["n"]) + feats.shape[0], np.int64),
        "sum": state["sum"] + e.sum(1),
        "sum_outer": state["sum_outer"] + np.matmul(e.transpose(0, 2, 1), e),
    }


def lowrank_factors(cov: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """basis (P, D, k), weight (P, k), ref (P,) float32 of covariances COV (P, D, D) float64, as
    zoo/components.py lowrank_factors: the k/2 smallest and k/2 largest eigen-directions, c_p = 1 / mean of
    the other eigenvalues, weight = 1/lam - c_p. Eigenvector signs may differ from torch's: the head
    squares every projection, so the scores do not."""
    lam, u = np.linalg.eigh(cov)  # ascending (P, D), columns (P, D, D)
    d = lam.shape[1]
    keep = np.r_[0 : k // 2, d - k // 2 : d]
    ref = 1 / lam[:, k // 2 : d - k // 2].mean(1)
    return {
        "basis": u[:, :, keep].astype(np.float32),
        "weight": (1 / lam[:, keep] - ref[:, None]).astype(np.float32),
        "ref": ref.astype(np.float32),
    }


def padim_head(state: dict[str, np.ndarray], ridge: float, rank: int = 0) -> dict[str, np.ndarray]:
    """mean (P, D) and precision (P, D, D) = inverse of (the unbiased covariance + ridge * I), as fit;
    with RANK k > 0 the low-rank head's basis, weight and ref instead of the precision."""
    n = int(state["n"])
    mean = state["sum"] / n
    cov = (state["sum_outer"] - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
    cov += ridge * np.eye(mean.shape[1])
    if rank:
        return {"mean": mean.astype(np.float32), **lowrank_factors(cov, rank)}
    return {"mean": mean.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}


def check_state(state: dict[str, np.ndarray], spec: AdaptSpec, where: str) -> dict[str, np.ndarray]:
    """The PaDiM statistics file read back: its arrays, shapes that fit the head, finite values."""
    p, d = spec.tensors["mean"].size // spec.tensors["mean"].shape[-1], spec.tensors["mean"].shape[-1]
    want = {"n": (), "sum": (p, d), "sum_outer": (p, d, d)}
    for key, shape in want.items():
        if key not in state:
            raise SpecError(f"{where}: no array {key!r} (expected n, sum, sum_outer)")
        if state[key].shape != shape or not np.all(np.isfinite(state[key])):
            raise SpecError(
                f"{where}: array {key!r} is {state[key].shape} {state[key].dtype}; expected {shape} of finite numbers"
            )
    if int(state["n"]) < 2:
        raise SpecError(f"{where}: n = {int(state['n'])}; the statistics of at least 2 images are needed")
    return {k: state[k] for k in want}


def read_head(model: bytes, name: str, t: HeadTensor) -> np.ndarray:
    """Head tensor NAME as stored in MODEL (the bytes of model.onnx)."""
    if t.offset + t.nbytes > len(model):
        raise SpecError(
            f"manifest adapt.tensors.{name}: bytes {t.offset}..{t.offset + t.nbytes} lie beyond "
            f"model.onnx ({len(model)} bytes)"
        )
    return np.frombuffer(model, np.dtype(t.dtype).newbyteorder("<"), t.size, t.offset).reshape(t.shape)


def write_head(model: bytes, spec: AdaptSpec, values: dict[str, np.ndarray]) -> bytes:
    """MODEL with every head tensor of SPEC replaced by VALUES (same sizes; reshaped to the stored shape)."""
    out = bytearray(model)
    for name, t in spec.tensors.items():
        a = np.asarray(values[name])
        if a.size != t.size:
            raise ValueError(f"head tensor {name}: {a.shape} does not fit the graph's {t.shape}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"head tensor {name}: non-finite values; nothing written")
        out[t.offset : t.offset + t.nbytes] = np.ascontiguousarray(a, np.dtype(t.dtype).newbyteorder("<")).tobytes()
    return bytes(out)
