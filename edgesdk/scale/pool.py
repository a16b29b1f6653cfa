"""The default engine: shards scored by a process pool on this machine, one ScoreBatch (one ONNX
Runtime session) per worker process. workers=1 scores in this process, no pool."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from threading import Barrier
from typing import Iterator

from edgesdk.errors import EdgesdkError
from edgesdk.scale.score import ScoreBatch

_WORKER: list[ScoreBatch] = []  # the worker process's scorer, made once by _init
_FAILED: list[str] = []  # or why it could not be made: each shard this worker takes raises it
START_S = 300.0  # how long every worker may take to load the bundle before the run fails
ORPHAN_S = 0.5  # how often a worker checks that the score process is still alive


def _exit_with(parent: int) -> None:
    """A worker whose score process died (SIGKILL, SIGTERM: no cleanup runs there) would wait on the
    pool's queue forever, holding its session's memory: it exits instead."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_S)
    os._exit(1)


def _init(bundle: str, batch: int, threads: int, max_pixels: int | None, ready: Barrier, parent: int) -> None:
    # Ctrl-C reaches the whole process group; the parent alone handles it. A worker interrupted while
    # it holds the pool's call-queue lock would leave the parent waiting on the pool forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    try:
        _WORKER.append(ScoreBatch(bundle, batch, threads, max_pixels=max_pixels))
    except Exception as e:  # noqa: BLE001 - a failed initializer breaks the pool as "a worker died": say why instead
        _FAILED.append(f"a scoring worker could not load the bundle {bundle}: {type(e).__name__}: {e}")
    # No worker takes a shard until all have loaded the bundle: otherwise the first one ready takes
    # every queued shard while the others are still importing ONNX Runtime, and a small run uses one.
    # Broken by a timeout or by the parent (a sibling that never started): each shard this worker
    # takes then says why, instead of a failed initializer's "a worker process died".
    try:
        ready.wait(START_S)
    except threading.BrokenBarrierError:
        _FAILED.append(f"the scoring workers did not all start and load the bundle {bundle} within {START_S:.0f} s")


def _score(shard: int, paths: list[str]) -> tuple[int, list[dict]]:
    if _FAILED:
        raise EdgesdkError(_FAILED[0])
    return shard, _WORKER[0](paths)


def run_pool(
    bundle: str,
    jobs: list[tuple[int, list[str]]],
    batch: int,
    workers: int,
    threads: int,
    max_pixels: int | None = None,
) -> Iterator[tuple[int, list[dict]]]:
    """(shard, rows) for each job, in completion order. A worker that dies (killed, out of memory)
    ends the run with a RuntimeError instead of a hang; the parts written so far stay, so a rerun
    resumes."""
    workers = min(workers, len(jobs))  # the pool starts a process per queued shard: never more than those
    if workers <= 1:
        scorer = ScoreBatch(bundle, batch, threads, max_pixels=max_pixels)
        try:
            for shard, paths in jobs:
                yield shard, scorer(paths)
        finally:
            scorer.close()
        return
    # spawn, not fork: a forked child would inherit the parent's threads (tqdm, ONNX Runtime) mid-state.
    ctx = mp.get_context("spawn")
    todo = iter(jobs)
    ready = ctx.Barrier(workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init, initargs=(bundle, batch, threads, max_pixels, ready, os.getpid())
    ) as ex:
        running: set[Future] = set()
        try:
            while True:
                while len(running) < 4 * workers:  # a few shards queued per worker, not the whole archive
                    job = next(todo, None)
                    if job is None:
                        break
                    running.add(ex.submit(_score, *job))
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        except KeyboardInterrupt:  # no new shard starts; the `with` waits only for those being scored
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        except BrokenProcessPool:
            raise RuntimeError(
                "a scoring worker process died (killed or out of memory?); the parts written so far are kept: "
                "rerun the same command to resume, with fewer --workers or a smaller --batch"
            ) from None
        finally:
            for f in running:
                f.cancel()
            # A worker that failed to start (fork: EAGAIN, ENOMEM) or an interrupt between submits
            # leaves the started ones at the barrier, and the `with` would wait START_S for them.
            ready.abort()
