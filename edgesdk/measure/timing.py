"""Latency measurement shared by eval, the demo and `edgesdk bench` (numpy + OpenCV, no torch at
import: the torch baseline row imports it only when asked for).

`bench()` times every (bundle x backend x batch) in one process, interleaved in rounds of a few
calls per row so that machine drift hits all rows alike (calling two sessions alternately on every
frame evicts each other's caches and inflates both). A backend that cannot run here is a row with
its status and reason, never a crash."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edgesdk.backends.base import Runner
from edgesdk.measure.metrics import latency_stats

HIGH_VARIANCE = 0.10   # trtexec warns when the coefficient of variation exceeds 10%
BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")


def time_runner(runner: Runner, feeds: Iterable[dict[str, np.ndarray]], warmup: int = 5) -> dict:
    """Per-call latency of runner.infer over `feeds` (after `warmup` untimed calls on the first)."""
    feeds = list(feeds)
    for _ in range(warmup):
        runner.infer(feeds[0])
    ms = []
    for f in feeds:
        t0 = time.perf_counter()
        runner.infer(f)
        ms.append((time.perf_counter() - t0) * 1e3)
    return summarize(ms)


def summarize(ms: list[float], batch: int = 1) -> dict:
    stats = latency_stats(ms)
    a = np.asarray(ms)
    stats["cv"] = float(a.std() / a.mean()) if a.size > 1 else 0.0
    stats["high_variance"] = stats["cv"] > HIGH_VARIANCE
    stats["fps"] = float(batch * 1000.0 / a.mean()) if a.size else 0.0
    return stats


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = BACKEND_NAMES
    batches: tuple[int, ...] = (1,)
    iters: int = 200              # timed calls per row ...
    seconds: float = 0.0          # ... or, when > 0, a time budget for all rows together
    warmup: int = 10
    chunk: int = 10               # calls per row per round
    data: str = ""                # MVTec category: real frames and image AUROC
    run: str = ""                 # torch baseline's run folder (default: the one the bundle records)
    cold_start: bool = True
    e2e: str = ""                 # a source URI: add the stream pipeline row (ONNX Runtime)

    def __post_init__(self) -> None:
        bad = [b for b in self.backends if b not in BACKEND_NAMES]
        if bad:
            raise ValueError(f"unknown backend {bad[0]!r}; choose from {', '.join(BACKEND_NAMES)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"--batch {','.join(map(str, self.batches))}: every batch must be >= 1")
        if self.iters < 1 and self.seconds <= 0:
            raise ValueError("--iters must be >= 1 (or give --seconds)")


class NullRunner(Runner):
    """Returns its input: timing it measures the harness itself."""
    name = "null"

    def load(self) -> "NullRunner":
        self.loaded = True
        return self

    def infer(self, feeds):
        return feeds

    inputs = outputs = property(lambda self: [])


def harness_overhead_ms(n: int = 2000) -> float:
    """Median time the timing loop adds per call (a runner that does nothing)."""
    r, feed = NullRunner().load(), {"image": np.zeros((1, 8, 8, 3), np.uint8)}
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        r.infer(feed)
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ms))


def provenance() -> dict:
    """Machine, software and (on a Jetson) release, power mode and clocks, read-only."""
    from importlib import metadata

    from edgesdk import __version__
    from edgesdk.devices import detect

    f = detect()
    versions = {"edgesdk": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "onnxruntime", "opencv-python-headless", "torch", "tensorrt-rtx-cu12", "tensorrt"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    p = {"cpu": f["cpu"], "cores": f["cores"], "machine": f["machine"], "os": f["os"], "cpu_flags": f["cpu_flags"],
         "gpus": f["gpus"], "versions": versions, "device_profile": f["profile"],
         "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if f["l4t"]:
        p["jetson"] = {"l4t": f["l4t"], "model": f["device_model"], **_jetson_state()}
    return p


def _jetson_state() -> dict:
    out: dict = {}
    try:
        q = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5)
        out["power_mode"] = " ".join(q.stdout.split())
    except (OSError, subprocess.TimeoutExpired):
        pass
    freqs = {}
    for cpu in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        freqs[cpu.parts[-3]] = int(cpu.read_text().strip())
    for gpu in Path("/sys/class/devfreq").glob("*gpu*/cur_freq"):
        freqs[gpu.parent.name] = int(gpu.read_text().strip())
    out["clocks_khz_or_hz"] = freqs
    return out


COLD = """
import resource, sys, time
t0 = time.perf_counter()
backend, bundle, run = sys.argv[1:4]
if backend == "torch":
    import numpy as np, torch
    from edgesdk.train import load_run
    net, _ = load_run(run)
    h, w = net.cfg.input_size
    with torch.inference_mode():
        net(torch.zeros(1, h, w, 3, dtype=torch.uint8))
else:
    sys.modules["torch"] = None          # the device path: torch must not be needed
    import numpy as np
    from edgesdk.stream.detector import Detector, DetectorOptions
    with Detector(bundle, DetectorOptions(backend=backend)) as det:   # sha256 check, session load
        det.predict(np.zeros((*det.size, 3), np.uint8))
ms = (time.perf_counter() - t0) * 1e3
# Peak RSS of this process alone: VmHWM resets at exec, while ru_maxrss would include the parent's
# memory copied by fork (the bench process holds torch and several models).
try:
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    mb = int(hwm.split()[1]) / 1024
except (OSError, StopIteration):
    mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{ms:.1f} {mb:.1f}")
"""


def cold_start(backend: str, bundle: Path, run: str) -> tuple[float | None, float | None]:
    """(ms from a fresh interpreter to the first result, peak RSS MB of that process)."""
    r = subprocess.run([sys.executable, "-c", COLD, backend, str(bundle), run], capture_output=True, text=True)
    if r.returncode != 0:
        return None, None
    ms, mb = r.stdout.split()[-2:]
    return float(ms), float(mb)
