"""`edgesdk score` and `compare --images` on the process pool: every image once, eval's scores,
Parquet that pandas and pyarrow read, error rows for unreadable images, resume after a kill, refusals
of bad input, and the no-Ray install. The two-node Ray run is tests/test_scale_ray.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="edgesdk score writes Parquet: pip install 'edgesdk[scale]'")

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True, cwd=ROOT, env=env, **kw
    )


def eval_scores(bundle, folder) -> dict[str, float]:
    """{path: score} the way `edgesdk eval` scores a test set: mvtec.read_item, then Detector.predict."""
    from edgesdk.data import mvtec
    from edgesdk.stream.detector import Detector

    out = {}
    with Detector(bundle) as det:
        for it in mvtec.test_items(folder):
            img, _ = mvtec.read_item(it, det.size)
            out[os.path.abspath(it.path)] = det.predict(img).score
    return out


def test_score_on_the_pool_matches_eval_and_writes_parquet(bundle, tiny_data, tmp_path):
    import pandas as pd

    images = tiny_data / "brick" / "test"
    r = cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--batch", 2, "--workers", 2, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    want = eval_scores(bundle, tiny_data / "brick")
    table = pq.read_table(tmp_path / "o")
    df = pd.read_parquet(tmp_path / "o")
    assert sorted(df["path"]) == sorted(want) and table.num_rows == len(want) == summary["n_images"]
    got = dict(zip(df["path"], df["score"]))
    np.testing.assert_allclose([got[p] for p in want], list(want.values()), rtol=1e-5, atol=1e-5)
    assert summary["engine"] == "pool" and df["worker"].nunique() == 2 and df["error"].isna().all()
    from edgesdk.bundle import Bundle

    thr = Bundle.open(bundle).threshold
    assert (df["verdict"] == np.where(df["score"] > thr, "NG", "good")).all() and (df["threshold"] == thr).all()
    ng = df[df["verdict"] == "NG"]
    assert len(ng) == summary["ng"] > 0 and all(json.loads(x) for x in ng["regions"])  # a flagged frame has a region
    assert set(json.loads(ng["regions"].iloc[0])[0]) >= {"bbox", "area", "peak"}
    assert df["bundle_id"].nunique() == 1 and len(df["bundle_id"].iloc[0]) == 64


def test_unreadable_images_are_error_rows_not_fatal(bundle, tiny_data, tmp_path):
    good = sorted((tiny_data / "brick" / "test" / "good").glob("*.png"))[:3]
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*map(str, good), "corrupt.png", "# a comment", "", str(tmp_path / "gone.png")]))
    r = cli("score", bundle, "--images", listing, "--out", tmp_path / "o", "--workers", 1, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["errors"] == 2
    rows = {Path(x["path"]).name: x for x in pq.read_table(tmp_path / "o").to_pylist()}
    assert len(rows) == 5
    for name in ("corrupt.png", "gone.png"):
        assert (
            rows[name]["score"] is None
            and rows[name]["verdict"] is None
            and "not a readable image" in rows[name]["error"]
        )
    assert all(rows[p.name]["error"] is None and rows[p.name]["score"] is not None for p in good)


def _archive(tiny_data, tmp_path, n: int) -> Path:
    """N images (symbolic links to the test set: distinct paths, no disk copies)."""
    src = sorted((tiny_data / "brick" / "test").rglob("*.png"))
    arch = tmp_path / "archive"
    arch.mkdir()
    for i in range(n):
        (arch / f"{i:05d}.png").symlink_to(src[i % len(src)])
    return arch


def test_a_killed_run_resumes_without_rescoring_what_was_written(bundle, tiny_data, tmp_path):
    n = 600
    arch, out = _archive(tiny_data, tmp_path, n), tmp_path / "o"
    argv = [sys.executable, "-m", "edgesdk", "score", str(bundle), "--images", str(arch), "--out", str(out)]
    argv += ["--batch", "1", "--workers", "1", "-q"]
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 20 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(30)
    assert p.returncode == -signal.SIGKILL, "the run ended before it was killed: the test proves nothing"
    before = {q.name: (q.stat().st_ino, q.stat().st_mtime_ns) for q in out.glob("part-*.parquet")}
    assert 20 <= len(before) < n
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 1, "--workers", 1, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed"] == len(before) and s["scored"] == n - len(before) and s["n_images"] == n
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n
    after = {q.name: (q.stat().st_ino, q.stat().st_mtime_ns) for q in out.glob("part-*.parquet")}
    assert {k: after[k] for k in before} == before  # not one written part rewritten
    assert not list(out.glob(".*.tmp"))


def _other_bundle(bundle, tmp_path) -> Path:
    """A copy of BUNDLE with another export time: another manifest, so another bundle id."""
    b = tmp_path / "other"
    shutil.copytree(bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["created_utc"] = "2000-01-01T00:00:00Z"
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_bad_input_is_refused_naming_it(bundle, tiny_data, tmp_path):
    images = tiny_data / "brick" / "test" / "good"
    r = cli("score", bundle, "--images", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert r.returncode == 2 and f"--images {tmp_path / 'nowhere'}: no such folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("score", bundle, "--images", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no images" in r.stderr
    r = cli("score", bundle, "--images", str(tmp_path / "*.jpg"), "--out", tmp_path / "o")
    assert r.returncode == 2 and "matches no image files" in r.stderr
    r = cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--batch", "many")
    assert r.returncode == 2 and "argument --batch: must be a whole number >= 1, got 'many'" in r.stderr
    r = cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--workers", "0")
    assert r.returncode == 2 and "argument --workers: must be a whole number >= 1, got '0'" in r.stderr
    # An --out made for another bundle, or another input list: refused, its files untouched.
    assert cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--workers", 1, "-q").returncode == 0
    snapshot = {q.name: q.read_bytes() for q in (tmp_path / "o").iterdir()}
    r = cli("score", _other_bundle(bundle, tmp_path), "--images", images, "--out", tmp_path / "o")
    assert r.returncode == 2 and f"{tmp_path / 'o' / '_run.json'}: bundle_id is" in r.stderr, r.stderr
    r = cli("score", bundle, "--images", images.parent / "hole", "--out", tmp_path / "o")
    assert r.returncode == 2 and "_run.json: inputs_sha256 is" in r.stderr
    r = cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--batch", 3, "--workers", 1, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["resumed"] == len(list(images.glob("*.png"))), r.stderr
    assert {q.name: q.read_bytes() for q in (tmp_path / "o").iterdir()} == snapshot
    r = cli("compare", bundle, bundle, "--data", tiny_data / "brick", "--out", tmp_path / "c")
    assert r.returncode == 2 and "--out and --labels go with --images" in r.stderr
    # A folder that is not ours is never written into.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = cli("score", bundle, "--images", images, "--out", tmp_path / "mine")
    assert r.returncode == 2 and "not an `edgesdk score` folder" in r.stderr
    assert [q.name for q in (tmp_path / "mine").iterdir()] == ["notes.txt"]


BLOCKED = """
import sys
for name in ("ray", "torch", "torchvision"):
    sys.modules[name] = None  # `import ray` raises ImportError, as where it is not installed
from edgesdk.cli import main
code = main(sys.argv[1:])
print("torch" in sys.modules and sys.modules["torch"] is not None, "ray" in sys.modules and sys.modules["ray"] is not None)
sys.exit(code)
"""


def test_without_ray_the_pool_scores_and_ray_is_a_clear_error(bundle, tiny_data, tmp_path):
    images = tiny_data / "brick" / "test" / "good"
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-c", BLOCKED, *map(str, a)], capture_output=True, text=True, cwd=ROOT
    )
    r = run("score", bundle, "--images", images, "--out", tmp_path / "o", "--workers", 2, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False"
    assert pq.read_table(tmp_path / "o").num_rows == len(list(images.glob("*.png")))
    r = run("score", bundle, "--images", images, "--out", tmp_path / "o2", "--ray", "127.0.0.1:6379")
    assert r.returncode == 2 and "--ray needs Ray Data: pip install 'edgesdk[ray]'" in r.stderr
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("part-*"))


def test_compare_images_lists_the_flips_and_labels_metrics(bundle, tiny_data, tmp_path):
    images = tiny_data / "brick" / "test"
    want = eval_scores(bundle, tiny_data / "brick")
    b = _other_bundle(bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["threshold"]["value"] = float(np.median(list(want.values())))  # B flags half: NG -> good flips
    (b / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "cmp"
    r = cli("compare", bundle, b, "--images", images, "--out", out, "--workers", 2, "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "c.json").read_text())
    from edgesdk.bundle import Bundle

    ta, tb = Bundle.open(bundle).threshold, m["threshold"]["value"]
    down = sorted(p for p, s in want.items() if s > ta and not s > tb)
    up = sorted(p for p, s in want.items() if s > tb and not s > ta)
    assert c["flips"]["ng_to_good"] == len(down) > 0 and c["flips"]["good_to_ng"] == len(up)
    assert c["flips"]["first_ng_to_good"] == down[:10] and "NG -> good" in r.stdout
    flips = (out / "flips.csv").read_text().splitlines()
    assert len(flips) == 1 + len(down) + len(up) and all(",NG->good," in line for line in flips[1:])
    assert c["shift"]["correlation"] == pytest.approx(1.0) and c["shift"]["median_b_minus_a"] == 0.0
    from edgesdk.measure.metrics import auroc

    labels = np.array([0 if "/good/" in p else 1 for p in want])
    lab = c["labels"]
    assert lab["n_labelled"] == len(want) and lab["n_defective"] == labels.sum()
    assert lab["a"]["image_auroc"] == pytest.approx(auroc(np.array(list(want.values())), labels))
    assert lab["a"]["recall"] == pytest.approx(np.mean([s > ta for s, y in zip(want.values(), labels) if y]))
    assert lab["b"]["recall"] == pytest.approx(np.mean([s > tb for s, y in zip(want.values(), labels) if y]))
    assert pq.read_table(out / "A").num_rows == pq.read_table(out / "B").num_rows == len(want)
    # A CSV of labels instead of the layout: every image called defective -> no AUROC, recall = NG share.
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{p},ng\n" for p in want))
    r = cli(
        "compare",
        bundle,
        b,
        "--images",
        images,
        "--out",
        out,
        "--labels",
        tmp_path / "labels.csv",
        "--json",
        tmp_path / "c2.json",
    )
    assert r.returncode == 0, r.stderr
    c2 = json.loads((tmp_path / "c2.json").read_text())
    assert c2["a"]["resumed"] == len(want) and c2["labels"]["a"]["image_auroc"] is None
    assert c2["labels"]["b"]["recall"] == pytest.approx(np.mean([s > tb for s in want.values()]))


def test_score_archive_benchmark_runs_small(bundle, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/score_archive.py"),
            str(bundle),
            "--n",
            "40",
            "--engines",
            "process,pool",
        ]
        + ["--json", str(tmp_path / "b.json"), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [x["engine"] for x in rows] == ["process", "pool"] and all(
        x["n_images"] == 40 and x["images_per_s"] > 0 for x in rows
    )
    assert "images/s" in r.stdout


def test_segmenter_regions_name_their_kind(seg, tiny_data, tmp_path):
    _, bundle = seg
    images = tiny_data / "brick" / "test" / "hole"
    r = cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--workers", 1, "--json")
    assert r.returncode == 0, r.stderr
    rows = pq.read_table(tmp_path / "o").to_pylist()
    regions = [reg for x in rows for reg in json.loads(x["regions"])]
    assert regions and all(reg["kind"] for reg in regions) and rows[0]["bundle_version"].startswith("segmenter-")


def _workers_of(pid: int) -> list[int]:
    """The pool's worker processes of PID (spawned children running spawn_main; not the resource tracker)."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_a_dead_worker_ends_the_run_with_an_error_and_a_rerun_resumes(bundle, tiny_data, tmp_path):
    n = 300
    arch, out = _archive(tiny_data, tmp_path, n), tmp_path / "o"
    argv = [sys.executable, "-m", "edgesdk", "score", str(bundle), "--images", str(arch), "--out", str(out)]
    p = subprocess.Popen(argv + ["--batch", "1", "--workers", "2"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 5 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = _workers_of(p.pid)
        assert p.poll() is None and workers, "the run ended before a worker could be killed"
        os.kill(workers[0], signal.SIGKILL)
        _, err = p.communicate(timeout=120)  # a pool that hangs on a lost task fails here
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 2 and "a scoring worker process died" in err, err
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 1, "--workers", 2, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed"] >= 5 and s["resumed"] + s["scored"] == n
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n
