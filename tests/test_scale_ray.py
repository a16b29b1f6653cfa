"""`edgesdk score --ray` on a real two-node Ray cluster on this machine (tests/ray_cluster.py): every
image exactly once, eval's scores, both nodes did work, Parquet that pandas and pyarrow read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="Ray Data is the optional extra: pip install 'edgesdk[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

from ray_cluster import Cluster  # noqa: E402
from score_util import ctrl_c, interrupted_parts, long_archive  # noqa: E402
from test_scale import eval_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_score_across_two_ray_nodes(bundle, tiny_data, tmp_path):
    import pandas as pd

    want = eval_scores(bundle, tiny_data / "brick")
    images = tiny_data / "brick" / "test"
    with Cluster(tmp_path) as c:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgesdk",
                "score",
                str(bundle),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "o"),
            ]
            + ["--ray", c.address, "--batch", "3", "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**c.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
            timeout=420,
        )
        assert r.returncode == 0, r.stderr[-4000:] + (tmp_path / "ray-start.log").read_text()[-2000:]
        code = "import ray, json; ray.init(address=%r); print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
        ids = subprocess.run(
            [sys.executable, "-c", code % c.address], capture_output=True, text=True, env=c.env, timeout=120
        )
        assert ids.returncode == 0, ids.stderr
        nodes = set(json.loads(ids.stdout.strip().splitlines()[-1]))  # to check that each node scored
    s = json.loads(r.stdout)
    assert s["engine"] == "ray" and s["workers"] == 2 and s["n_images"] == len(want)
    df = pd.read_parquet(tmp_path / "o")
    paths = pq.read_table(tmp_path / "o").column("path").to_pylist()
    assert len(paths) == len(set(paths)) == len(want) and set(paths) == set(want)
    got = dict(zip(df["path"], df["score"]))
    np.testing.assert_allclose([got[p] for p in want], list(want.values()), rtol=1e-5, atol=1e-5)
    assert len(nodes) == 2 and set(df["worker"]) == nodes  # both nodes scored


def test_ctrl_c_on_a_ray_run_exits_130_keeps_the_parts_and_resumes(bundle, tiny_data, tmp_path):
    """A terminal's Ctrl-C (SIGINT to the command's process group) during `score --ray`: the command ends
    within a bounded time, says what it kept, and the parts written resume (here on the process pool:
    the run record does not depend on the engine)."""
    n = 400
    arch, out, argv = long_archive(bundle, tiny_data, tmp_path, n)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with Cluster(tmp_path) as c:
        p, err = ctrl_c(
            [*argv, "--ray", c.address, "--batch", "2", "-q"], out, "score --ray", {**c.env, **env}, 300, 60
        )
    kept = interrupted_parts(p, err, out, n)
    r = subprocess.run(
        [*argv, "--batch", "2", "--workers", "2", "--json", "-q"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads(r.stdout)
    assert s["resumed"] == 2 * kept and s["scored"] == n - 2 * kept
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n
