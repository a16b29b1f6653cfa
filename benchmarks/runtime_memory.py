"""The device process's own cost: the detector's import, and the per-frame cost of a fixed mmap
threshold, the option the runner's heap trim after each load replaced (docs/BENCHMARKS.md, issue 23 §3).

  python benchmarks/runtime_memory.py imports [--rounds 10]
  python benchmarks/runtime_memory.py latency BUNDLE... [--rounds 100]

imports: fresh interpreters import numpy, OpenCV and ONNX Runtime, then the detector; VmRSS and time
around the detector's import alone (edgesdk's own modules), median and range over --rounds. Run it
with PYTHONPATH at two trees, alternating, to compare them.
latency: one Detector per bundle, frames twice the model's input (--frame WxH: that size, each call
on a fresh copy, as a camera source hands over a new buffer per frame). Each round scores 5 frames with
glibc's mmap threshold at 128 KiB (the option's) and 5 at 32 MiB (where glibc's dynamic threshold ends
up; its trim threshold at twice that, as glibc's rule sets it), in alternating order, so that the
machine's load falls on both alike; the ratio is the median over rounds of (median at 128 KiB /
median at 32 MiB), quartiles beside it. glibc only."""

from __future__ import annotations

import argparse
import ctypes
import statistics as st
import subprocess
import sys
import tempfile
import time

import numpy as np

IMPORT = """
import time
def rss(): return [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
import numpy, cv2, onnxruntime
a, t = rss(), time.perf_counter()
from edgesdk.stream.detector import Detector
print(f"{(time.perf_counter() - t) * 1e3:.1f} {rss() - a:.2f}")
"""
LOW, HIGH, PER_SIDE = 128 << 10, 32 << 20, 5
TRIM = {LOW: 128 << 10, HIGH: 64 << 20}  # glibc's default; twice the threshold, as its dynamic rule sets


def imports(rounds: int) -> None:
    # cwd: a folder without edgesdk in it, so that `-c` (which puts the cwd first on sys.path) imports
    # the tree PYTHONPATH names.
    runs = [
        subprocess.run(
            [sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()
        )
        for _ in range(rounds)
    ]
    ms, mb = zip(*(map(float, r.stdout.split()) for r in runs))
    print(f"detector import: {st.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}), {st.median(mb):.2f} MB")


def latency(bundles: list[str], rounds: int, frame_size: str = "") -> None:
    from edgesdk.stream.detector import Detector

    mallopt = ctypes.CDLL(None).mallopt
    for b in bundles:
        with Detector(b) as d:
            w, h = map(int, frame_size.split("x")) if frame_size else (d.size[1] * 2, d.size[0] * 2)
            frame = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
            fresh = frame.copy if frame_size else lambda: frame
            for _ in range(10):
                d.predict(frame)
            ratios, ms = [], {LOW: [], HIGH: []}
            for r in range(rounds):
                med = {}
                for threshold in (LOW, HIGH) if r % 2 == 0 else (HIGH, LOW):
                    mallopt(-3, threshold)  # M_MMAP_THRESHOLD
                    mallopt(-1, TRIM[threshold])  # M_TRIM_THRESHOLD
                    xs = []
                    for _ in range(PER_SIDE):
                        t0 = time.perf_counter()
                        d.predict(fresh())
                        xs.append(time.perf_counter() - t0)
                    med[threshold] = st.median(xs)
                    ms[threshold].append(med[threshold] * 1e3)
                ratios.append(med[LOW] / med[HIGH])
            q = st.quantiles(ratios, n=4)
            print(
                f"{b}: ratio {st.median(ratios):.3f} ({q[0]:.3f}-{q[2]:.3f}), "
                f"median ms {st.median(ms[LOW]):.1f} at 128 KiB, {st.median(ms[HIGH]):.1f} at 32 MiB"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["imports", "latency"])
    ap.add_argument("bundles", nargs="*")
    ap.add_argument("--rounds", type=int, default=0, help="default: 10 (imports), 100 (latency)")
    ap.add_argument("--frame", default="", help="latency: frame size WxH, a fresh copy per call")
    a = ap.parse_args()
    if a.what == "imports":
        imports(a.rounds or 10)
    else:
        latency(a.bundles, a.rounds or 100, a.frame)
