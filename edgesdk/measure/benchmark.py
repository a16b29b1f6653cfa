"""`edgesdk bench BUNDLE...`: one table across bundles x backends x batches, with accuracy, memory,
cold start and provenance; bench_report.py shows it as a terminal table, JSON, Markdown and a PNG plot.

JSON: {"rows": [...], "provenance": {...}, "harness_overhead_ms": x}; every row has backend,
precision, status, p50_ms, p90_ms, p99_ms, fps, cold_start_ms, peak_rss_mb, rss_mb, image_auroc (other
scripts read these names); with --data also aupro, pixel_f1, pixel_iou and recall_by_kind (else None).

Every (bundle x backend x batch) is timed in one process, interleaved in rounds of a few calls per
row so that machine drift hits all rows alike (calling two sessions alternately on every frame
evicts each other's caches and inflates both). A backend that cannot run here is a row with its
status and reason, never a crash. numpy + OpenCV, no torch at import: the torch baseline row
imports it only when asked for."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.backends.base import Runner
from edgesdk.bundle import Bundle
from edgesdk.measure.testset import ACCURACY_KEYS, LabelledSet, load_test_set, runner_accuracy
from edgesdk.measure.timing import harness_overhead_ms, summarize, timed_calls

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = BACKEND_NAMES
    batches: tuple[int, ...] = (1,)
    iters: int = 200  # timed calls per row ...
    seconds: float = 0.0  # ... or, when > 0, a time budget for all rows together
    warmup: int = 10
    chunk: int = 10  # calls per row per round
    data: str = ""  # MVTec category: real frames and image AUROC
    run: str = ""  # torch baseline's run folder (default: the one the bundle records)
    cold_start: bool = True
    e2e: str = ""  # a source URI: add the stream pipeline row (ONNX Runtime)

    def __post_init__(self) -> None:
        bad = [b for b in self.backends if b not in BACKEND_NAMES]
        if bad:
            raise ValueError(f"unknown backend {bad[0]!r}; choose from {', '.join(BACKEND_NAMES)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"--batch {','.join(map(str, self.batches))}: every batch must be >= 1")
        if self.iters < 1 and self.seconds <= 0:
            raise ValueError("--iters must be >= 1 (or give --seconds)")


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
    p = {
        "cpu": f["cpu"],
        "cores": f["cores"],
        # A run pinned with taskset (or a cgroup's cpuset) uses fewer cores than the machine has; ONNX
        # Runtime sizes its pool by this affinity, so the result belongs to these cores, not f["cores"].
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else f["cores"],
        "machine": f["machine"],
        "os": f["os"],
        "cpu_flags": f["cpu_flags"],
        "int8_isa": f["int8_isa"],
        "gpus": f["gpus"],
        "versions": versions,
        "device_profile": f["profile"],
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
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


STEADY_RESULTS = 10  # results the cold-start process produces before its memory is read

COLD = """
import resource, sys, time
t0 = time.perf_counter()
backend, bundle, run = sys.argv[1:4]
STEADY = int(sys.argv[4])

def memory():
    # Peak RSS of this process alone: VmHWM resets at exec, while ru_maxrss would include the parent's
    # memory copied by fork (the bench process holds torch and several models). The peak includes the
    # session's load (ONNX Runtime holds the parsed model and its own copy of the weights at once);
    # VmRSS, read while the model is still open, is what a running detector keeps.
    try:
        vm = {l.split(":")[0]: int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("Vm")}
        return vm["VmHWM"], vm["VmRSS"]
    except (OSError, KeyError, ValueError):
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,) * 2

if backend == "torch":
    import numpy as np, torch
    from edgesdk.train import load_run
    net, _ = load_run(run)
    h, w = net.cfg.input_size
    with torch.inference_mode():
        net(torch.zeros(1, h, w, 3, dtype=torch.uint8))
        ms = (time.perf_counter() - t0) * 1e3
        for _ in range(STEADY - 1):
            net(torch.zeros(1, h, w, 3, dtype=torch.uint8))
    peak, now = memory()
else:
    sys.modules["torch"] = None          # the device path: torch must not be needed
    import numpy as np
    from edgesdk.stream.detector import Detector, DetectorOptions
    with Detector(bundle, DetectorOptions(backend=backend)) as det:   # sha256 check, session load
        det.predict(np.zeros((*det.size, 3), np.uint8))
        ms = (time.perf_counter() - t0) * 1e3
        # Resident memory once the detector is running: ONNX Runtime's arena settles from the second
        # call on (with memory patterns it allocated a second block there), so the first result alone
        # would show less than a camera loop keeps.
        for _ in range(STEADY - 1):
            det.predict(np.zeros((*det.size, 3), np.uint8))
        peak, now = memory()
print(f"{ms:.1f} {peak:.1f} {now:.1f}")
"""


def cold_start(backend: str, bundle: Path, run: str) -> tuple[float | None, float | None, float | None]:
    """(ms from a fresh interpreter to the first result, peak RSS MB of that process, its RSS MB after
    STEADY_RESULTS results, the model still open).

    Timed in the second of two fresh interpreters: the first writes the bytecode of every module it
    imports, under a private PYTHONPYCACHEPREFIX (never beside the sources). A device runs compiled
    bytecode (pip compiles it at install), while a checkout run with PYTHONDONTWRITEBYTECODE, as CI
    and these workstations set it, would compile edgesdk's sources again at every start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-pyc-") as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        for steady in (1, STEADY_RESULTS):  # the first child only imports and loads: one result is enough
            r = subprocess.run(
                [sys.executable, "-c", COLD, backend, str(bundle), run, str(steady)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                return None, None, None
    ms, mb, now = r.stdout.split()[-3:]
    return float(ms), float(mb), float(now)


def _frames(bundle: Bundle, data: str) -> tuple[np.ndarray, LabelledSet | None]:
    """Real frames at the model size: the MVTec test set of DATA (with its truth) or the parity frames."""
    if not data:
        return bundle.parity_frames(), None
    ts = load_test_set(data, bundle.input_size)
    return ts.frames, ts


def _open(backend: str, bundle: Bundle, run: str):
    """(runner or None, status, reason)."""
    if backend == "torch":
        run_dir = run or bundle.manifest.provenance.get("run", "")
        if not run_dir or not (Path(run_dir) / "run.json").is_file():
            return None, "skipped", f"no run folder for the torch baseline ({run_dir or 'none recorded'}; --run DIR)"
        try:
            from edgesdk.backends.torch import TorchRunner

            return TorchRunner(run_dir).load(), "ok", ""
        except ImportError as e:
            return None, "skipped", f"torch is not installed here ({e}): host only"
    from edgesdk.backends import open_runner

    try:
        # No spinning ONNX Runtime pool threads: with several sessions interleaved, one session's
        # spinning threads steal the cores of the next (measured: FP32 PaDiM b1 p50 9.6 ms vs 7.0 ms,
        # INT8 9.2 vs 5.5), which no single-model device sees. The stream loop runs the same way.
        return open_runner(backend, bundle, spin=False), "ok", ""
    except Exception as e:  # no GPU, no TensorRT, no engine: a row that says why
        return None, "unavailable", " ".join(str(e).split())[:240]


def _engine_info(bundle: Bundle) -> dict:
    """Where no GPU runs the engine, still report its build (TensorRT for RTX builds without one)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        return {}
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile

    try:
        r = build_engine(bundle, load_profile("rtx"))
    except Exception as e:
        return {"engine_build": f"failed: {e}"}
    return {
        "engine": r.plan.name,
        "engine_build_s": r.sidecar.build_seconds,
        "engine_mb": r.sidecar.plan_bytes / 1e6,
        "engine_reused": r.reused,
    }


def bench(bundles: list[str], opts: BenchOptions = BenchOptions(), progress=print) -> dict:
    rows: list[dict[str, Any]] = []
    live: list[tuple[dict[str, Any], Runner, list[dict[str, np.ndarray]], list[float]]] = []  # row, runner, feeds, ms
    for path in bundles:
        try:
            b = Bundle.open(path)
            frames, truth = _frames(b, opts.data)
        except Exception as e:
            rows.append(
                {
                    "bundle": str(path),
                    "backend": "-",
                    "precision": "-",
                    "batch": None,
                    "status": "error",
                    "reason": " ".join(str(e).split()),
                }
            )
            continue
        run = opts.run or b.manifest.provenance.get("run", "")
        for backend in opts.backends:
            if backend == "torch" and any(r.get("run") == run and r["backend"] == "torch" for r in rows):
                continue  # an INT8/FP16 bundle of a run already measured: one float baseline serves both
            runner, status, reason = _open(backend, b, opts.run)
            extra = _engine_info(b) if backend == "tensorrt" and runner is None else {}
            acc = (
                runner_accuracy(runner, b.manifest.input.name, b.threshold, truth)
                if runner is not None and truth is not None
                else dict.fromkeys(ACCURACY_KEYS)
            )
            cold, peak, rss = (
                cold_start(backend, b.path, run) if opts.cold_start and runner is not None else (None, None, None)
            )
            for batch in opts.batches:
                row = {
                    "bundle": str(b.path),
                    "model": b.manifest.model["name"],
                    "backend": backend,
                    "run": run,
                    # torch eager runs the run's float model, whatever the bundle's precision
                    "precision": "fp32" if backend == "torch" else b.manifest.precision,
                    "batch": batch,
                    "status": status,
                    "reason": reason,
                    "model_mb": b.manifest.files["model.onnx"].bytes / 1e6,
                    **acc,
                    "cold_start_ms": cold,
                    "peak_rss_mb": peak,
                    "rss_mb": rss,
                    "bundle_sha256": b.onnx_sha256,
                    **extra,
                }
                rows.append(row)
                if runner is not None:
                    n = len(frames)
                    feeds = [
                        {b.manifest.input.name: np.stack([frames[(i * batch + j) % n] for j in range(batch)])}
                        for i in range(max(n, 8))
                    ]  # rotated, so caches don't flatter
                    live.append((row, runner, feeds, []))
    # Warm-up, then rounds: each live row runs `chunk` calls per round until all have their iters.
    for _, runner, feeds, _ in live:
        timed_calls(runner, feeds, opts.warmup, untimed=opts.warmup)
    t_end = time.perf_counter() + opts.seconds if opts.seconds > 0 else None
    rounds = 0
    while live and (any(len(ms) < opts.iters for *_, ms in live) if t_end is None else time.perf_counter() < t_end):
        for _, runner, feeds, ms in live:
            timed_calls(runner, feeds, opts.chunk, start=len(ms), out=ms)
        rounds += 1
    for row, _, _, ms in live:
        st = summarize(ms, row["batch"])
        row.update(
            {f"{k}_ms": st[k] for k in ("min", "mean", "p50", "p90", "p95", "p99", "max")},
            fps=st["fps"],
            cv=st["cv"],
            noisy=st["high_variance"],
            n=st["n"],
            _ms=ms,
        )
    for row in rows:  # speed-up against the torch baseline of the same bundle and batch
        base = next(
            (
                r
                for r in rows
                if r.get("run") == row.get("run")
                and r["batch"] == row["batch"]
                and r["backend"] == "torch"
                and r.get("p50_ms")
            ),
            None,
        )
        row["vs_torch"] = base["p50_ms"] / row["p50_ms"] if base and row.get("p50_ms") else None
        for k in ("p50_ms", "p90_ms", "p99_ms", "fps"):
            row.setdefault(k, None)
    for _, runner, _, _ in live:
        runner.close()
    if opts.e2e:
        rows += [
            pipeline_row(row, opts.e2e)
            for row in list(rows)
            if row["backend"] == "onnxruntime" and row["batch"] == 1 and row["status"] == "ok"
        ]
    return {
        "rows": rows,
        "provenance": provenance(),
        "harness_overhead_ms": harness_overhead_ms(),
        "method": {
            "iters": opts.iters,
            "seconds": opts.seconds,
            "warmup": opts.warmup,
            "chunk": opts.chunk,
            "rounds": rounds,
            "frames": "MVTec test set of --data" if opts.data else "bundle parity frames",
        },
    }


def pipeline_row(model_row: dict, source: str) -> dict:
    """The whole stream loop (read, resize, infer, regions) on SOURCE beside the model-only row of
    the same bundle: end-to-end FPS, per-stage p50, and its share of the model-only throughput."""
    from edgesdk.stream.pipeline import run_stream

    s = run_stream(model_row["bundle"], source, [])
    lat = s["latency_ms"]
    return {
        **{k: model_row[k] for k in ("bundle", "model", "precision", "model_mb", "bundle_sha256")},
        "backend": "pipeline (onnxruntime)",
        "batch": 1,
        "status": "ok",
        "reason": "",
        **dict.fromkeys(ACCURACY_KEYS),
        "cold_start_ms": None,
        "peak_rss_mb": None,
        "rss_mb": None,
        "vs_torch": None,
        "source": source,
        "frames": s["frames"],
        "fps": s["fps"],
        "p50_ms": lat["total"]["p50"],
        "p90_ms": lat["total"]["p90"],
        "p99_ms": lat["total"]["p99"],
        "min_ms": lat["total"]["min"],
        "max_ms": lat["total"]["max"],
        "stage_p50_ms": {k: v["p50"] for k, v in lat.items() if v.get("n")},
        "share_of_model_only_fps": s["fps"] / model_row["fps"] if model_row.get("fps") else None,
    }
