"""CPU time of the drift statistics per frame (stream/drift.py), at camera resolutions.

    python benchmarks/drift_cost.py [--frames 1000]

A DriftMonitor with a reference whose view is checked (the costliest case) updates on random BGR
frames of each size, after its windows are full; process CPU time per frame, in ms (the statistics
run in the sink thread, so CPU time, not wall time on a busy machine, is what they take from the loop),
with the share of grey_small (the frame to its 64 x 64 grey copy)."""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from edgesdk.stream.drift import DriftMonitor, DriftOptions
from edgesdk.stream.drift_ref import ReferenceBuilder, grey_small


def cpu_ms(fn, n: int) -> float:
    t = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    n = ap.parse_args().frames
    rng = np.random.default_rng(0)
    print("| frame | update, ms CPU | of which grey_small |\n|---|---|---|")
    for h, w in ((256, 256), (720, 1280), (1080, 1920)):
        frames = [rng.integers(0, 255, (h, w, 3), np.uint8) for _ in range(8)]
        b = ReferenceBuilder()
        for i in range(100):
            b.add_image(frames[i % 8])
        ref = dataclasses.replace(b.reference(rng.normal(size=100), "random"), view_noise=0.0)
        mon = DriftMonitor(DriftOptions(), ref)
        for i in range(200):  # fill every window
            mon.update(i, frames[i % 8], 0.0, True)
        total = cpu_ms(lambda i: mon.update(i, frames[i % 8], float(rng.normal()), True), n)
        grey = cpu_ms(lambda i: grey_small(frames[i % 8]), n)
        print(f"| {w}x{h} | {total:.3f} | {grey:.3f} |")


if __name__ == "__main__":
    main()
