"""Archive scoring benchmark: `edgesdk score` over N synthetic archive images with one process, the
local process pool, and Ray Data on one node (a private local Ray instance).

    python benchmarks/score_archive.py BUNDLE [--n 20000] [--engines process,pool,ray] [--workers 2]
        [--batch 16] [--size 256] [--work DIR] [--json F]

The images: the bundle's parity frames (or a gradient) at SIZE x SIZE, each copy jittered (a shift,
a brightness offset, sensor noise) and written as JPEG (quality 90) under WORK (a temporary folder,
deleted at the end, unless given). Each engine runs `edgesdk score` as a subprocess into its own
fresh --out; reported per engine: images/s of the scoring loop (the run's own count, after workers
started), images/s of the whole command (start-up included), CPU-seconds of the command and the
workers it waited for (Ray's raylet and actors are not its children: their CPU is not counted), and
the peak resident memory of its largest process. Prints a table and writes JSON with the CPU's
instruction sets."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.cpu import cpu_features
from edgesdk.table import table

ROOT = Path(__file__).resolve().parents[1]


def seeds(bundle: str, size: int) -> list[np.ndarray]:
    """(size, size, 3) uint8 BGR frames to jitter: the bundle's parity frames, else one gradient."""
    try:
        frames = list(Bundle.open(bundle).parity_frames())
    except Exception:  # noqa: BLE001 - a bundle without parity frames still benchmarks
        frames = []
    if not frames:
        ramp = np.linspace(60, 190, size, dtype=np.uint8)
        frames = [np.dstack([np.tile(ramp, (size, 1))] * 3)]
    return [cv2.resize(f, (size, size)) for f in frames]


def make_archive(folder: Path, n: int, size: int, bundle: str) -> float:
    """N jittered JPEGs in 100 sub-folders of FOLDER (an archive nests); seconds taken."""
    t0 = time.perf_counter()
    base = seeds(bundle, size)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 6, (8, size, size, 3)).astype(np.int16)  # reused: drawing per image is slow
    for i in range(n):
        sub = folder / f"{i % 100:03d}"
        if i < 100:
            sub.mkdir(parents=True, exist_ok=True)
        img = np.roll(base[i % len(base)], (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), (0, 1))
        img = np.clip(img.astype(np.int16) + noise[i % 8] + int(rng.integers(-15, 16)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(sub / f"{i:07d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return time.perf_counter() - t0


# Runs the command it is given and prints the resources of the processes it waited for: a fresh
# process per engine, so the peak RSS is this engine's, not the largest of all runs so far.
WRAP = (
    "import json, resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps([u.ru_utime + u.ru_stime, u.ru_maxrss]), file=sys.stderr)\n"
    "sys.exit(r.returncode)\n"
)


def run_engine(bundle: str, images: Path, out: Path, engine: str, workers: int, batch: int) -> dict:
    argv = [sys.executable, "-c", WRAP, sys.executable, "-m", "edgesdk", "score", bundle, "--images", str(images)]
    argv += ["--out", str(out)]
    argv += ["--batch", str(batch), "--json", "-q"]
    argv += {"process": ["--workers", "1"], "pool": ["--workers", str(workers)]}.get(engine, [])
    argv += ["--ray", "local", "--workers", str(workers)] if engine == "ray" else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{engine}: edgesdk score failed:\n{r.stderr[-3000:]}")
    s = json.loads(r.stdout)
    cpu, rss_kib = json.loads(r.stderr.strip().splitlines()[-1])
    return {
        "engine": engine,
        "workers": s["workers"],
        "threads": s["threads"],
        "n_images": s["n_images"],
        "errors": s["errors"],
        "images_per_s": s["images_per_s"],
        "images_per_s_with_startup": s["n_images"] / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": rss_kib / 1024,  # ru_maxrss is KiB on Linux: the largest process of the run
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--engines", default="process,pool,ray")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--work", help="folder for the images and outputs (kept); default: a temporary one")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="score-archive-"))
    try:
        make_s = make_archive(work / "images", a.n, a.size, a.bundle)
        rows = [
            run_engine(a.bundle, work / "images", work / f"out-{e}", e, a.workers, a.batch)
            for e in a.engines.split(",")
        ]
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    feats = cpu_features()
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "bundle": a.bundle,
        "n_images": a.n,
        "size": a.size,
        "batch": a.batch,
        "make_archive_s": make_s,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "int8_isa": feats["int8_isa"],
        "load_avg_at_end": os.getloadavg(),
        "rows": rows,
    }
    print(table(rows, title=f"edgesdk score over {a.n} {a.size}px JPEGs, batch {a.batch} (images/s)"))
    print(
        f"{os.cpu_count()} cores, INT8 instructions: {', '.join(feats['int8_isa']) or 'none'}; load {os.getloadavg()}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
