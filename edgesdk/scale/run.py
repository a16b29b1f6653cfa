"""`edgesdk score BUNDLE --images ... --out DIR`: every image scored once into Parquet parts, on a
process pool (default) or Ray Data (`ray=ADDRESS`); resumable; unreadable images become error rows."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgesdk.errors import OptionError
from edgesdk.images import max_pixels as pixel_limit
from edgesdk.progress import bar
from edgesdk.scale import inputs, shards
from edgesdk.scale.score import bundle_identity


@dataclass(frozen=True)
class ScoreOptions:
    batch: int = 16  # images per ONNX Runtime call, and per part file (a shard) of a new --out
    workers: int | None = None  # processes / Ray actors; None: this machine's cores (Ray: the cluster's CPUs)
    threads: int | None = None  # ORT intra-op threads per worker; None: cores // workers (Ray: 1 per actor)
    ray: str | None = None  # None: the process pool; "local" or a cluster's HEAD:PORT
    progress: bool = True
    max_pixels: int | None = None  # width x height above which an image is an error row; None: images.max_pixels()

    def check(self) -> None:
        for name, value in (("--batch", self.batch), ("--workers", self.workers), ("--threads", self.threads)):
            if value is None and name != "--batch":  # None: automatic
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} {value!r}: a whole number >= 1")
        pixel_limit(self.max_pixels)  # an OptionError naming --max-pixels or $EDGESDK_MAX_PIXELS
        if self.ray is not None and not self.ray.strip():
            raise OptionError("--ray: empty; give HEAD:PORT of a Ray cluster, or local")


@contextlib.contextmanager
def ctrl_c_between_parts() -> Iterator[list[bool]]:
    """While the parts are written, the first Ctrl-C only marks the returned list, which the loop
    checks between parts; a second one interrupts at once. Python's own handler raises wherever the
    main thread is, and there it can land in a finalizer (pyarrow's writer), which swallows it: the
    run then went on to the end and exited 0. Left as it is outside the main thread, or where SIGINT
    is not Python's default handling (ignored, or the caller's own handler)."""
    hit: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield hit
        return

    def mark(signum, frame):
        if hit:
            raise KeyboardInterrupt
        hit.append(True)
        print("score: stopping after the part being written; Ctrl-C again to stop at once", file=sys.stderr)

    try:
        signal.signal(signal.SIGINT, mark)
        yield hit
    finally:
        if signal.getsignal(signal.SIGINT) is mark:  # not one a caller installed meanwhile
            signal.signal(signal.SIGINT, signal.default_int_handler)


def plan(bundle: str | Path, images: str | Path, opts: ScoreOptions) -> tuple[list[str], dict]:
    """(paths, the run record) for scoring IMAGES with BUNDLE."""
    paths = inputs.resolve(images)
    bid, version = bundle_identity(bundle)
    record = {
        "bundle": str(Path(bundle).resolve()),
        "bundle_id": bid,
        "bundle_version": version,
        "images": str(images),
        "inputs_sha256": inputs.fingerprint(paths),
        "n_images": len(paths),
        "shard_size": opts.batch,
    }
    return paths, record


def score_archive(bundle: str | Path, images: str | Path, out: str | Path, opts: ScoreOptions = ScoreOptions()) -> dict:
    """Score IMAGES with BUNDLE into OUT; returns counts (images, scored now, resumed, errors, NG) and
    images per second of this run."""
    opts.check()
    from edgesdk.bundle import Bundle

    Bundle.open(bundle)  # verify every file's sha256 once here, before any worker starts
    paths, record = plan(bundle, images, opts)
    out = Path(out)
    run = shards.open_run(out, record)
    parts = shards.shards_of(paths, run["shard_size"])  # a resumed folder keeps its shards; --batch is per call
    done = shards.done_shards(out, parts)
    jobs = [(i, p) for i, p in enumerate(parts) if i not in done]
    todo = sum(len(p) for _, p in jobs)
    cores = os.cpu_count() or 1
    limit = pixel_limit(opts.max_pixels)  # resolved here: a Ray actor on another node has its own environment
    started = False
    if opts.ray is not None:
        from edgesdk.scale import ray_data

        started = ray_data.connect(opts.ray)
        cpus = ray_data.cluster_cpus()  # each actor takes one CPU: more would never start
        workers, threads = min(opts.workers or cpus, cpus), opts.threads or 1
        results = ray_data.run_ray(str(bundle), jobs, opts.batch, workers, threads, limit) if jobs else iter(())
    else:
        from edgesdk.scale.pool import run_pool

        # capped at the cores: each worker is a process with its own session; more only contend for the CPUs
        workers = min(opts.workers or cores, cores, max(1, len(jobs)))
        threads = opts.threads or max(1, cores // workers)  # workers x threads ~ cores
        results = run_pool(str(bundle), jobs, opts.batch, workers, threads, limit) if jobs else iter(())
    t0 = time.perf_counter()
    try:
        with bar(total=todo, desc="score", unit="img", enabled=opts.progress) as b, ctrl_c_between_parts() as hit:
            written = 0
            try:
                for shard, rows in results:
                    shards.write_part(out, shard, rows)
                    b.update(len(rows))
                    written += len(rows)
                    if hit:
                        raise KeyboardInterrupt
                if hit:  # pressed while the last part was on its way
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                # Ctrl-C may land here, while a part is written, rather than inside the pool's generator:
                # close it now so its workers finish their shard and exit before the command does, instead
                # of whenever the generator is collected (after the message, or never if a frame holds it).
                close = getattr(results, "close", None)
                if close is not None:
                    close()
                raise KeyboardInterrupt(
                    f"{written} of {todo} images scored into {out} before the interrupt; the parts written "
                    "are kept: rerun the same command to resume"
                ) from None
            seconds = time.perf_counter() - t0
            b.set_postfix(img_per_s=f"{todo / seconds:.1f}" if seconds > 0 else "-")
    finally:
        if started:
            import ray

            ray.shutdown()
    table = shards.read_table(out)
    verdicts = table.column("verdict").to_pylist()
    return {
        "out": str(out),
        "engine": "ray" if opts.ray is not None else ("process" if workers == 1 else "pool"),
        "ray": opts.ray,
        "workers": workers,
        "threads": threads,
        "n_images": len(paths),
        "scored": todo,
        "resumed": len(paths) - todo,
        "shards": len(parts),
        "errors": table.num_rows - table.column("error").null_count,
        "ng": sum(v == "NG" for v in verdicts),
        "good": sum(v == "good" for v in verdicts),
        "seconds": seconds,
        "images_per_s": todo / seconds if seconds > 0 and todo else None,
        "bundle_id": record["bundle_id"],
        "bundle_version": record["bundle_version"],
    }
