"""`edgesdk score` attacked: part files that are not what their names say must not be trusted on resume
or counted (every image exactly once); Ctrl-C on the pool ends the run with a message, resumable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="edgesdk score writes Parquet: pip install 'edgesdk[scale]'")

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True, cwd=ROOT)


def _scored(bundle, tiny_data, tmp_path, n: int = 4) -> tuple[Path, Path, list[str]]:
    """N test images scored into OUT in shards of 2; (images folder, OUT, the sorted paths)."""
    arch = tmp_path / "archive"
    arch.mkdir()
    for p in sorted((tiny_data / "brick" / "test").rglob("*.png"))[:n]:
        shutil.copy(p, arch / f"{p.parent.name}-{p.name}")
    out = tmp_path / "o"
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    return arch, out, sorted(str(p) for p in arch.iterdir())


def test_resume_rescores_a_part_holding_another_shards_rows(bundle, tiny_data, tmp_path):
    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    shutil.copy(out / "part-000000.parquet", out / "part-000001.parquet")  # right row count, foreign rows
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["scored"] == 2 and s["resumed"] == 2
    assert sorted(pq.read_table(out).column("path").to_pylist()) == paths  # each image once, none lost


def test_a_stray_part_beyond_the_runs_shards_is_not_counted(bundle, tiny_data, tmp_path):
    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    shutil.copy(out / "part-000000.parquet", out / "part-000099.parquet")
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed"] == len(paths) and s["ng"] + s["good"] + s["errors"] == len(paths)
