"""ONNX Runtime session options against resident memory and latency, per bundle (docs/BENCHMARKS.md, issue 23).

  python benchmarks/ort_memory.py BUNDLE... [--calls 20,200] [--rounds 200]

Memory: one fresh interpreter per bundle and variant (numpy + ONNX Runtime imported, no OpenCV), VmRSS
after the session loads, after the first call and after each count of --calls; VmHWM is the peak.
Variants: `pattern` (ONNX Runtime's default memory patterns), `nopattern` (the runner's default),
`shrink` (patterns off, every run asks the arena to shrink: RunOptions
memory.enable_memory_arena_shrinkage = cpu:0), `ort` (the model saved in ORT format, loaded with
session.use_ort_model_bytes_directly and session.use_ort_model_bytes_for_initializers).
Latency: pattern vs nopattern in one process, calls interleaved in alternating order, so that the
machine's load falls on both alike; the ratio is the median of per-round ratios."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, sys, time, numpy as np, onnxruntime as ort
def vm():
    d = {l.split(":")[0]: float(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("Vm")}
    return round(d["VmRSS"], 1), round(d["VmHWM"], 1)
model, variant, calls = sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3].split(",")]
out = {"before_load": vm()[0]}
o = ort.SessionOptions(); o.log_severity_level = 3
o.enable_mem_pattern = variant == "pattern"
run = ort.RunOptions()
if variant == "shrink":
    run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
if variant == "convert":  # ORT format next to the model (a copy of the bundle's; the bundle is not changed)
    o.optimized_model_filepath = sys.argv[4]
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # ALL would bake in x86 layouts
    o.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
    sys.exit()
if variant == "ort":
    o.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
    o.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
t = time.perf_counter()
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
out["load_s"] = round(time.perf_counter() - t, 3)
out["after_load"] = vm()[0]
i = s.get_inputs()[0]
x = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.uint8 if "uint8" in i.type else np.float32)
done = 0
for c in [1] + calls:
    while done < c:
        s.run(None, {i.name: x}, run); done += 1
    out[f"after_{c}"] = vm()[0]
out["peak"] = vm()[1]
print(json.dumps(out))
"""


def memory(model: Path, variant: str, calls: str, tmp: Path) -> dict:
    if variant == "ort":
        ort_model = tmp / "model.ort"
        subprocess.run([sys.executable, "-c", CHILD, str(model), "convert", calls, str(ort_model)], check=True)
        model = ort_model
    r = subprocess.run([sys.executable, "-c", CHILD, str(model), variant, calls], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": (r.stderr.strip().splitlines() or [""])[-1]}


def latency(model: Path, rounds: int) -> dict:
    import onnxruntime as ort

    sessions = {}
    for k in ("pattern", "nopattern"):
        o = ort.SessionOptions()
        o.log_severity_level, o.enable_mem_pattern = 3, k == "pattern"
        sessions[k] = ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])
    i = sessions["pattern"].get_inputs()[0]
    x = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.uint8 if "uint8" in i.type else np.float32)
    ms: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds + 5):
        for k in list(sessions)[:: 1 if r % 2 else -1]:
            t = time.perf_counter()
            sessions[k].run(None, {i.name: x})
            if r >= 5:  # warm-up rounds are not counted
                ms[k].append((time.perf_counter() - t) * 1e3)
    ratio = float(np.median(np.array(ms["nopattern"]) / np.array(ms["pattern"])))
    return {f"{k}_p50_ms": round(float(np.median(v)), 2) for k, v in ms.items()} | {"ratio_nopattern": round(ratio, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--calls", default="20,200")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--variants", default="pattern,nopattern,shrink,ort")
    a = ap.parse_args()
    for b in a.bundles:
        row: dict = {"bundle": str(b)}
        for v in filter(None, a.variants.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                row[v] = memory(b / "model.onnx", v, a.calls, Path(tmp))
        if a.rounds:
            row["latency"] = latency(b / "model.onnx", a.rounds)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
