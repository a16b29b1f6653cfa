"""The default engine: shards scored by a process pool on this machine, one ScoreBatch (one ONNX
Runtime session) per worker process. workers=1 scores in this process, no pool."""

from __future__ import annotations

import multiprocessing as mp
from typing import Iterator

from edgesdk.scale.score import ScoreBatch

_WORKER: list[ScoreBatch] = []  # the worker process's scorer, made once by _init


def _init(bundle: str, batch: int, threads: int) -> None:
    _WORKER.append(ScoreBatch(bundle, batch, threads))


def _score(job: tuple[int, list[str]]) -> tuple[int, list[dict]]:
    shard, paths = job
    return shard, _WORKER[0](paths)


def run_pool(
    bundle: str, jobs: list[tuple[int, list[str]]], batch: int, workers: int, threads: int
) -> Iterator[tuple[int, list[dict]]]:
    """(shard, rows) for each job, in completion order."""
    if workers == 1:
        scorer = ScoreBatch(bundle, batch, threads)
        try:
            for shard, paths in jobs:
                yield shard, scorer(paths)
        finally:
            scorer.close()
        return
    # spawn, not fork: a forked child would inherit the parent's threads (tqdm, ONNX Runtime) mid-state.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(bundle, batch, threads)) as pool:
        yield from pool.imap_unordered(_score, jobs, chunksize=1)
