"""`--ray ADDRESS`: the pending shards scored by Ray Data, on a Ray cluster or (ADDRESS "local") a
Ray instance started on this machine. Each shard is one item; `map_batches` runs ScoreShards, a
callable class, on an actor pool of WORKERS actors (one CPU each, spread over the nodes): each actor
loads the bundle once. The driver (this process) receives the rows and writes the part files, so
only the images need to be readable from every node (the same paths: a shared file system).
Ray is imported here only, when asked for."""

from __future__ import annotations

import json
from typing import Any, Iterator

from edgesdk.errors import EdgesdkError


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the data extra has no ray.data
    except ImportError:
        raise EdgesdkError("--ray needs Ray Data: pip install 'edgesdk[ray]'") from None
    return ray


class ScoreShards:
    """Ray Data's callable class: a batch of shard items ({"shard": [i], "paths": [json list]}) ->
    one output row per path, with the shard index."""

    def __init__(self, bundle: str, batch: int, threads: int, max_pixels: int | None = None):
        import ray

        from edgesdk.scale.score import ScoreBatch

        self.scorer = ScoreBatch(
            bundle, batch, threads, worker_id=ray.get_runtime_context().get_node_id(), max_pixels=max_pixels
        )

    def __call__(self, items: dict) -> dict:
        from edgesdk.scale.score import COLUMNS

        cols: dict[str, list] = {k: [] for k in ("shard", *COLUMNS)}
        for shard, paths in zip(items["shard"], items["paths"]):
            for row in self.scorer(json.loads(paths)):
                cols["shard"].append(int(shard))
                for k in COLUMNS:
                    cols[k].append(row[k])
        return cols


def connect(address: str) -> bool:
    """Ray initialised for ADDRESS; True when this call started it (then the caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == "local":  # a private instance on this machine: small object store (rows are small)
        kw.update(include_dashboard=False, object_store_memory=200 * 2**20)
    ray.init(address=None if address == "local" else address, **kw)
    return True


def cluster_cpus() -> int:
    return max(1, int(import_ray().cluster_resources().get("CPU", 1)))


ACTOR_START_S = 300  # bundle load on a busy node; a cluster short of CPUs fails after this


def run_ray(
    bundle: str,
    jobs: list[tuple[int, list[str]]],
    batch: int,
    workers: int,
    threads: int,
    max_pixels: int | None = None,
) -> Iterator[tuple[int, list[dict]]]:
    """(shard, rows) for each job on WORKERS actors of the connected Ray (see connect); a shard's rows
    may arrive in pieces, so they are gathered until the shard is whole."""
    ray = import_ray()
    from edgesdk.scale.score import COLUMNS

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # edgesdk's own bar counts images
    ctx.print_on_execution_start = False
    ctx.scheduling_strategy = "SPREAD"  # actors over every node, not packed onto the first
    # Work starts once every actor has loaded the bundle, one shard in flight each: otherwise the
    # first actor up takes every queued shard while the others are still loading.
    ctx.wait_for_min_actors_s = ACTOR_START_S
    items = [{"shard": i, "paths": json.dumps(paths)} for i, paths in jobs]
    want = {i: len(paths) for i, paths in jobs}
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * workers)))
    ds = ds.map_batches(
        ScoreShards,
        fn_constructor_args=(bundle, batch, threads, max_pixels),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1,
    )
    pending: dict[int, list[dict]] = {}
    try:
        for part in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for rec in part.to_pylist():
                shard = int(rec["shard"])
                pending.setdefault(shard, []).append({k: rec[k] for k in COLUMNS})
                if len(pending[shard]) == want[shard]:
                    yield shard, sorted(pending.pop(shard), key=lambda r: r["path"])
    except ray.exceptions.GetTimeoutError:
        raise EdgesdkError(
            f"--ray: {workers} scoring actors (1 CPU each) did not start within {ACTOR_START_S} s: "
            "the cluster has fewer free CPUs than --workers"
        ) from None
