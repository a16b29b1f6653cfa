"""TensorRT INT8 over every zoo model x sample category: float -> int8 image AUROC, INT8/FP16/FP32
convolutions, the attempt that passed the gate (or every attempt of a failure), seconds.

    python benchmarks/trt_int8_matrix.py --data DATA --runs RUNS --bundles BUNDLES \
        [--models padim,patchcore,stfpm,segmenter] [--categories brick,grass,gravel] [--prefix t2-] [--force]

Per cell (CAT, MODEL): trains RUNS/CAT-MODEL with `edgesdk train` if it is missing (default options;
the segmenter with DATA/CAT/labels), then `edgesdk export RUNS/CAT-MODEL --out BUNDLES/PREFIXCAT-MODEL-trt8
--precision int8 --target tensorrt`, its output kept in BUNDLES/PREFIXCAT-MODEL-trt8.log. A passing
cell is read from the bundle's manifest; a failed export writes no bundle, so its attempts are read
back from the GateError's table (edgesdk.table.parse). Every cell records the CPU's 8-bit instruction
sets and the load average before and after (the gate's arithmetic is simulated, so neither changes an
AUROC; both change the seconds).

Resumes: a cell already in the JSON (BUNDLES/PREFIXtrt-int8-matrix.json, or --json F) is skipped
unless --force. It never deletes what it did not create: an existing run is reused, and an existing
bundle it has no record of is only read, never re-exported over."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edgesdk.cpu import cpu_features
from edgesdk.fsutil import atomic_write_text, write_json
from edgesdk.table import parse, table

MODELS = ("padim", "patchcore", "stfpm", "segmenter")
CATEGORIES = ("brick", "grass", "gravel")
N_ATTEMPTS = 6  # all INT8, then 5/10/20/50 % FP16 islands, then 50 % FP32 (compile.gate.TRT_STEPS)
TARGET_SHARE = 0.8  # issue 23: at least 80 % of the convolutions INT8


def edgesdk(*args: str) -> list[str]:
    """The CLI of this checkout's interpreter (the script runs with PYTHONPATH on the tree under test)."""
    return [sys.executable, "-m", "edgesdk", *args]


def run_logged(cmd: list[str], log: Path) -> tuple[int, str, float]:
    """(exit code, output, seconds) of CMD, its stdout and stderr together written to LOG."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    atomic_write_text(log, f"$ {' '.join(cmd)}\n{r.stdout}\n[exit {r.returncode}, {seconds:.1f} s]\n")
    return r.returncode, r.stdout, seconds


def from_bundle(bundle: Path) -> dict:
    """A passing cell from the bundle's manifest (its gate report and attempts)."""
    m = json.loads((bundle / "manifest.json").read_text())
    rep, cal = m["metrics"]["vs_float"], m["calibration"]
    counts = rep.get("conv_counts") or cal["decisions"]["conv_counts"]
    return {
        "passed": True,
        "float_image_auroc": rep["reference"]["image_auroc"],
        "int8_image_auroc": rep["image_auroc"],
        "drop": rep["image_auroc_drop"],
        "pixel_f1": rep.get("pixel_f1"),
        "pixel_f1_float": rep.get("reference", {}).get("pixel_f1"),
        "int8": counts["int8"],
        "fp16": counts["fp16"],
        "fp32": counts["fp32"],
        "attempt": len(cal["attempts"]),
        "attempts": cal["attempts"],
        "sensitivity_sqnr_db": cal["decisions"].get("sensitivity_sqnr_db", []),
        "range_search": {k: v for k, v in cal["decisions"].get("range_search", {}).items() if k != "choices"},
    }


def from_failure(output: str) -> dict:
    """A failed cell from the export's output: the GateError's attempts table (float AUROC = int8 + drop);
    the best attempt (smallest drop) gives the counts. Any other error: its last line."""
    attempts = parse(output, "attempts")
    if not attempts:
        tail = [ln for ln in output.splitlines() if ln.strip()]
        return {"passed": False, "error": tail[-1] if tail else "no output"}
    # a supervised model fails on its pixel F1 too: among equal drops, the best outlines
    best = min(attempts, key=lambda a: (a.get("image_auroc_drop") or 0.0, -(a.get("pixel_f1") or 0.0)))
    drop = best.get("image_auroc_drop")
    return {
        "passed": False,
        "float_image_auroc": None if drop is None else round(best["image_auroc"] + drop, 3),
        "int8_image_auroc": best.get("image_auroc"),
        "drop": drop,
        "pixel_f1": best.get("pixel_f1"),  # the float model's is not in the GateError's text
        "int8": best.get("int8_convs"),
        "fp16": best.get("fp16_convs"),
        "fp32": best.get("fp32_convs"),
        "attempt": len(attempts),
        "attempts": attempts,
        "note": "failed: no bundle; numbers of the attempt with the smallest drop, at printed precision",
    }


def cell(args, cat: str, model: str, done: dict) -> dict:
    run = args.runs / f"{cat}-{model}"
    bundle = args.bundles / f"{args.prefix}{cat}-{model}-trt8"
    log = args.bundles / f"{args.prefix}{cat}-{model}-trt8.log"
    row: dict = {"cell": f"{cat} {model}", "category": cat, "model": model, "run": str(run), "bundle": str(bundle)}
    row["load_before"] = [round(x, 2) for x in os.getloadavg()]
    if not run.exists():
        labels = ["--labels", str(args.data / cat / "labels")] if model == "segmenter" else []
        cmd = edgesdk("-q", "train", "--model", model, "--data", str(args.data / cat), "--out", str(run), *labels)
        rc, out, row["train_seconds"] = run_logged(cmd, args.bundles / f"{args.prefix}{cat}-{model}-train.log")
        if rc:
            return {**row, "passed": False, "error": f"train failed: {out.strip().splitlines()[-1:]}"}
        row["trained_here"] = True
    ours = done.get(row["cell"], {}).get("exported_here", False)
    if bundle.exists() and not ours:  # someone else's bundle (or one from before a lost JSON): read it only
        return {**row, **from_bundle(bundle), "exported_here": False, "seconds": None}
    cmd = edgesdk("export", str(run), "--out", str(bundle), "--precision", "int8", "--target", "tensorrt")
    cmd += [
        f"--{k.replace('_', '-')}={v}"
        for k, v in (("n_calib", args.n_calib), ("max_drop", args.max_drop))
        if v is not None
    ]
    rc, out, seconds = run_logged(cmd + (["--force"] if bundle.exists() else []), log)
    row.update(exported_here=True, seconds=round(seconds, 1), log=str(log))
    row.update(from_bundle(bundle) if rc == 0 else from_failure(out))
    row["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return row


def summary(r: dict) -> dict:
    n = sum(r.get(k) or 0 for k in ("int8", "fp16", "fp32"))
    share = (r.get("int8") or 0) / n if n else None
    gate = ("pass" if r["passed"] else "fail") if "error" not in r else f"error: {r['error'][:60]}"
    if r["passed"] and share is not None and share < TARGET_SHARE:
        gate += f" (< {TARGET_SHARE:.0%} INT8)"
    fa, ia = r.get("float_image_auroc"), r.get("int8_image_auroc")
    return {
        "cell": r["cell"],
        "float -> int8 image AUROC": f"{fa:.3f} -> {ia:.3f}" if fa is not None and ia is not None else "",
        "drop": r.get("drop"),
        "pixel F1": r.get("pixel_f1"),
        "INT8/FP16/FP32": f"{r.get('int8')}/{r.get('fp16')}/{r.get('fp32')}" if n else "",
        "% INT8": f"{share:.0%}" if share is not None else "",
        "attempt": f"{r['attempt']} of {N_ATTEMPTS}" if r.get("attempt") else "",
        "gate": gate,
        "seconds": r.get("seconds"),
        "load 1 min": r.get("load_before", [None])[0],
    }


def markdown(rows: list[dict]) -> str:
    """docs/QUANTIZATION.md's "Measured" table rows: bundle, AUROC, counts, % INT8, attempt, gate."""
    out = []
    for r in rows:
        out.append(
            f"| {r['cell']} | {r['float -> int8 image AUROC'].replace('->', '→')} | "
            f"{r['INT8/FP16/FP32'].replace('/', ' / ')} | {r['% INT8'].replace('%', ' %')} | "
            f"{r['attempt']} | {r['gate']} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="edgesdk data synth's folder: DATA/CAT/{train,test,labels}"
    )
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--prefix", default="", help="bundle and log names start with this")
    ap.add_argument("--force", action="store_true", help="redo cells already in the JSON (only bundles it made)")
    ap.add_argument("--n-calib", type=int, help="passed to edgesdk export (default: its own)")
    ap.add_argument("--max-drop", type=float, help="passed to edgesdk export (default: its own)")
    ap.add_argument("--markdown", action="store_true", help="also print the rows as a Markdown table")
    ap.add_argument("--json", type=Path, help="default: BUNDLES/PREFIXtrt-int8-matrix.json")
    args = ap.parse_args()
    models, cats = args.models.split(","), args.categories.split(",")
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r} (choose from {', '.join(MODELS)})")
    args.bundles.mkdir(parents=True, exist_ok=True)
    out = args.json or args.bundles / f"{args.prefix}trt-int8-matrix.json"
    doc = json.loads(out.read_text()) if out.exists() else {"cells": {}}
    doc["cpu_int8_isa"] = cpu_features()["int8_isa"]
    for cat in cats:
        for model in models:
            name = f"{cat} {model}"
            if name in doc["cells"] and not args.force:
                print(f"{name}: done before, skipped (--force redoes it)", flush=True)
                continue
            print(f"{name}: {time.strftime('%H:%M:%S')} ...", flush=True)
            doc["cells"][name] = cell(args, cat, model, doc["cells"])
            write_json(out, doc)  # after each cell: an interrupted matrix resumes from here
            print(table([summary(doc["cells"][name])]), flush=True)
    rows = [summary(r) for r in doc["cells"].values()]
    print(table(rows, title=f"TensorRT INT8 (CPU int8 ISA: {', '.join(doc['cpu_int8_isa']) or 'none'})"))
    if args.markdown:
        print(markdown(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
