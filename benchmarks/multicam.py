"""Many cameras, one model: N sources batched in one `edgesdk run` against N separate `edgesdk run`
processes, for N in --cameras (default 1, 2, 4).

    python benchmarks/multicam.py BUNDLE --video V [--frames 300] [--cameras 1,2,4] [--fps 0] [--json F]

Each camera is the video V (`?loop=1`, so FRAMES frames a camera; with --fps R it is paced as a
camera sending R frames a second, else read as fast as the model takes it). Every run is a real
`edgesdk run --json` process with a jsonl sink; the numbers come from its summary (frames, wall,
per-source p50/p99 capture-to-verdict, cpu_s: CPU seconds of the loop, every thread) and from
wait4 (peak resident memory). "frames per CPU-s" is frames scored per second of one core: the
throughput per core, where batching must win. Prints a table and writes JSON."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgesdk.table import table


def start(bundle: str, sources: list[str], frames: int, out: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "edgesdk", "run", bundle, "--json", "-q", "--drift", "off"]
    argv += [a for s in sources for a in ("--source", s)]
    argv += ["--max-frames", str(frames), "--sink", f"jsonl://{out}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_rusage(p: subprocess.Popen) -> tuple[dict, float]:
    """communicate() reaps the child and loses its rusage: read the pipes, then wait4 it ourselves."""
    out = p.stdout.read()  # type: ignore[union-attr]
    err = p.stderr.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"edgesdk run failed: {err.strip()[-2000:]}")
    return json.loads(out), ru.ru_maxrss / 1024


def cam(video: str, i: int, fps: float) -> str:
    return f"{video}?loop=1&name=cam{i}" + (f"&fps={fps:g}" if fps else "")


def row(mode: str, n: int, runs: list[tuple[dict, float]], frames: int) -> dict:
    per = []  # (fps, p50, p99) of each camera
    for s, _ in runs:
        for c in s.get("sources", {}).values() or [None]:
            lat = c["latency_ms"] if c else s["latency_ms"]["total"]
            got = c["frames"] if c else s["frames"]
            per.append((got / s["wall_s"], lat["p50"], lat["p99"]))
    total = sum(s["frames"] for s, _ in runs)
    cpu = sum(s["cpu_s"] for s, _ in runs)
    return {
        "mode": mode,
        "cameras": n,
        "frames": total,
        "fps_per_camera": sum(p[0] for p in per) / len(per),
        "p50_ms": max(p[1] for p in per),
        "p99_ms": max(p[2] for p in per),
        "cpu_s": cpu,
        "frames_per_cpu_s": total / cpu if cpu else 0.0,
        "peak_rss_mb": sum(m for _, m in runs),
        "mean_batch": runs[0][0].get("mean_batch", 1.0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--video", required=True, help="each camera plays this file (looped)")
    ap.add_argument("--frames", type=int, default=300, help="frames per camera")
    ap.add_argument("--cameras", default="1,2,4", help="camera counts, comma-separated")
    ap.add_argument("--fps", type=float, default=0.0, help="pace each camera at this rate (0: as fast as it goes)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in a.cameras.split(",")]:
            t0 = time.perf_counter()
            srcs = [cam(a.video, i, a.fps) for i in range(n)]
            alone = [s.replace(f"&name=cam{i}", "") for i, s in enumerate(srcs)]  # ?name= is for several sources
            batched = [wait_rusage(start(a.bundle, srcs if n > 1 else alone, a.frames, Path(tmp) / f"b{n}.jsonl"))]
            rows.append(row("batched, 1 process", n, batched, a.frames))
            procs = [start(a.bundle, [s], a.frames, Path(tmp) / f"s{n}_{i}.jsonl") for i, s in enumerate(alone)]
            rows.append(row(f"{n} process{'es' * (n > 1)}", n, [wait_rusage(p) for p in procs], a.frames))
            print(f"{n} camera(s): {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(table(rows, title=f"{a.frames} frames a camera, fps {a.fps or 'unpaced'}, {os.cpu_count()} CPUs"))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "cpus": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
