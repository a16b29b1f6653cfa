"""The output folder of `edgesdk score`: `_run.json` (what this folder scores: bundle, inputs, shard
size) and one Parquet part file per shard of paths, `part-NNNNNN.parquet`, each written whole (temp
file + rename). A run picks up where a killed one stopped: a shard whose part file is there with
its row count is done. A folder made for another bundle or input list, or not made by `edgesdk
score`, is refused, never overwritten. `pandas.read_parquet(OUT)` and `pyarrow.parquet.read_table(OUT)`
read the parts as one table (names starting with _ or . are skipped by both)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from edgesdk.errors import EdgesdkError
from edgesdk.fsutil import atomic_write_bytes, write_json

RUN_FILE = "_run.json"
KIND = "edgesdk-score"
# Fields that must match for a run to resume into an existing folder. Not the shard size: a resumed run
# keeps the folder's shards, whatever --batch (images per ONNX Runtime call) it is given now.
SAME = ("bundle_id", "inputs_sha256", "n_images")


def pyarrow_modules() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or an EdgesdkError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EdgesdkError("Parquet output needs pyarrow: pip install 'edgesdk[scale]'") from None
    return pa, pq


def schema() -> Any:
    pa, _ = pyarrow_modules()
    s, f = pa.string(), pa.float64()
    cols = [("path", s), ("score", f), ("verdict", s), ("threshold", f), ("regions", s)]
    cols += [("bundle_id", s), ("bundle_version", s), ("worker", s), ("error", s)]
    return pa.schema(cols)


def part_path(out: Path, shard: int) -> Path:
    return out / f"part-{shard:06d}.parquet"


def shards_of(paths: list[str], size: int) -> list[list[str]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def open_run(out: str | Path, record: dict) -> dict:
    """OUT ready for RECORD's run: created with _run.json when missing or empty; an existing run of
    the same bundle and inputs is resumed; anything else refused, naming the field that differs.
    Returns the folder's run record (its shard_size decides the shards, also on a resume)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgesdkError(f"--out {out}: is a file; give a folder")
    if out.is_symlink() and not out.exists():  # mkdir would say only "File exists"
        raise EdgesdkError(f"--out {out}: a symbolic link to {out.readlink()}, which does not exist; give a folder")
    if out.is_dir() and any(out.iterdir()):
        run_file = out / RUN_FILE
        try:
            old = json.loads(run_file.read_text())
        except FileNotFoundError:
            raise EdgesdkError(
                f"--out {out}: not empty and has no {RUN_FILE}, so it is not an `edgesdk score` folder; "
                "choose a new or empty folder"
            ) from None
        except (OSError, ValueError) as e:
            raise EdgesdkError(f"{run_file}: not readable JSON ({e})") from None
        if not isinstance(old, dict) or old.get("kind") != KIND:
            raise EdgesdkError(f"{run_file}: kind is not {KIND!r}; not an `edgesdk score` folder")
        for key in SAME:
            if old.get(key) != record[key]:
                raise EdgesdkError(
                    f"{run_file}: {key} is {old.get(key)!r} but this run's is {record[key]!r} (a folder made "
                    "for another bundle or input list); choose a new --out to score these"
                )
        size = old.get("shard_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise EdgesdkError(f"{run_file}: shard_size is {size!r}, not a whole number >= 1")
        # a killed run's half-written part (fsutil's temp name for part-NNNNNN.parquet): ours, never renamed in
        for tmp in out.glob(".part-[0-9][0-9][0-9][0-9][0-9][0-9].parquet.*.tmp"):
            tmp.unlink(missing_ok=True)
        return old
    new = {"kind": KIND, **record, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_FILE, new)
    except OSError as e:  # a full disk: the bare "[Errno 28]" would name neither the folder nor the file
        raise EdgesdkError(f"--out {out}: could not write {RUN_FILE} ({e.strerror or e})") from None
    return new


def done_shards(out: Path, shards: list[list[str]]) -> set[int]:
    """Indices of the shards whose part file is complete: readable, holding exactly the shard's paths in
    order (a row count alone would trust a part copied in from another run and lose this shard's images).
    A part holding the shard's paths in other columns (another edgesdk version's) is refused, not rewritten."""
    _, pq = pyarrow_modules()
    done = set()
    for i, shard in enumerate(shards):
        p = part_path(out, i)
        if not p.is_file():
            continue
        try:
            if pq.read_table(p, columns=["path"]).column("path").to_pylist() != shard:
                continue
            odd = _odd_columns(pq.read_schema(p))
        except Exception:  # noqa: BLE001 - a damaged part (pyarrow raises several types) is scored again
            continue
        if odd:  # this shard's rows in another layout: read_table would fail (or cast) later, naming no file
            raise EdgesdkError(
                f"{p}: column(s) {', '.join(odd)} differ from the parts this edgesdk writes (written by another "
                "version?); move the part out of --out to score its images again, or choose a new --out"
            )
        done.add(i)
    return done


def _odd_columns(found: Any) -> list[str]:
    """Our columns that FOUND (a part's schema) lacks or types otherwise, as "name (type)"."""
    types = {f.name: f.type for f in found}
    return [f"{f.name} ({types.get(f.name, 'missing')})" for f in schema() if types.get(f.name) != f.type]


def write_part(out: Path, shard: int, rows: list[dict]) -> None:
    pa, pq = pyarrow_modules()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema()), buf)
    part = part_path(out, shard)
    try:
        atomic_write_bytes(part, buf.getvalue())
    except OSError as e:  # a full disk or a quota: the bare "[Errno 28]" would name neither the file nor a way on
        raise EdgesdkError(
            f"--out {out}: could not write {part.name} ({e.strerror or e}); the parts written so far are kept: "
            "make room and rerun the same command to resume"
        ) from None


def read_table(out: str | Path) -> Any:
    """Every part of OUT as one pyarrow Table, in shard order (= sorted path order)."""
    pa, pq = pyarrow_modules()
    parts = sorted(Path(out).glob("part-*.parquet"))
    try:  # only this run's shards: a stray part-*.parquet beyond them would add rows no image of the run has
        run = json.loads((Path(out) / RUN_FILE).read_text())
        ours = {part_path(Path(out), i) for i in range(-(-int(run["n_images"]) // int(run["shard_size"])))}
        parts = [p for p in parts if p in ours]
    except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError):
        pass  # no readable run record: every part, as pyarrow itself reads the folder
    if not parts:
        raise EdgesdkError(f"{out}: no part-*.parquet files; run `edgesdk score` into it first")
    return pa.concat_tables([pq.read_table(p, schema=schema()) for p in parts])
