"""The health check a slot passes before `current` points at it; the result goes to SLOT/health.json.

Checks, in order (the first failure is the reason the report gives):
  bundle    SLOT/bundle opens and every file's sha256 matches its manifest
  runtime   the runtime (ONNX Runtime, or TensorRT with the slot's engine) loads it
  parity    its own parity frames score within the package's tolerance of the reference scores
            recorded at pack time
  latency   p50 over those frames within --max-latency-ms (device mode; skipped without a budget)
  golden    every golden image's verdict is right: good/ passes, <kind>/ is flagged (the packaged set,
            or --golden DIR, which wins)
Staged mode (edgesdk stage: a root filesystem on another machine) runs the same checks on this host's
ONNX Runtime CPU, minus latency: it proves the files and the model, not the target's speed."""

from __future__ import annotations

import datetime as dt
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesdk.bundle import Bundle
from edgesdk.deploy.manifest import PackageManifest
from edgesdk.errors import EdgesdkError
from edgesdk.fsutil import write_json

HEALTH = "health.json"


@dataclass(frozen=True)
class HealthOptions:
    golden: str | None = None  # folder (good/, <kind>/) that replaces the packaged golden set
    max_latency_ms: float | None = None  # p50 budget; None: not checked
    backend: str = "onnxruntime"  # or "tensorrt" with ENGINE
    engine: str | None = None
    staged: bool = False  # host check of a staged root filesystem: CPU ONNX Runtime, no latency


def _golden(slot: Path, m: PackageManifest, opts: HealthOptions) -> tuple[dict[str, list[Path]], str]:
    from edgesdk.deploy.package import golden_files

    if opts.golden:
        return golden_files(opts.golden), f"--golden {opts.golden}"
    packed = m.golden_members()
    return ({k: [slot / n for n in v] for k, v in packed.items()}, "the package's golden set") if packed else ({}, "")


def check(slot: Path, m: PackageManifest, opts: HealthOptions = HealthOptions()) -> dict:
    """Run every check on SLOT (extracted package M); returns the report (see the module doc)."""
    report: dict[str, Any] = {
        "passed": False,
        "mode": "staged" if opts.staged else "device",
        "checked_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": opts.backend,
        "engine": Path(opts.engine).name if opts.engine else None,
        "checks": [],
    }

    def done(name: str, ok: bool, detail: str) -> bool:
        report["checks"].append({"check": name, "passed": ok, "detail": detail})
        return ok

    try:
        b = Bundle.open(slot / "bundle")
    except EdgesdkError as e:
        done("bundle", False, str(e))
        return finish(report)
    done("bundle", True, f"{len(b.manifest.files)} files verified")
    from edgesdk.stream.detector import Detector, DetectorOptions

    providers = "CPUExecutionProvider" if opts.staged else "auto"
    try:
        det = Detector(b, DetectorOptions(backend=opts.backend, engine=opts.engine, providers=providers))
    except Exception as e:  # any failure to load the model on this runtime fails the check, with its message
        done("runtime", False, f"{opts.backend} could not load {b.path}: {e}")
        return finish(report)
    with det:
        done("runtime", True, opts.backend + (f" ({report['engine']})" if opts.engine else ""))
        try:
            _score(det, b, slot, m, opts, report, done)
        except Exception as e:  # a model that cannot score its own frames fails, with the runtime's message
            done("scoring", False, f"{type(e).__name__}: {e}")
    return finish(report)


def _score(det, b: Bundle, slot: Path, m: PackageManifest, opts: HealthOptions, report: dict, done) -> None:
    """The parity, latency and golden checks, in that order; stops at the first that fails."""
    frames = b.parity_frames()  # (N, H, W, 3) uint8
    ref, tol = m.health["reference_scores"], float(m.health["tolerance"])
    det.predict(frames[0])  # warm-up: first-call allocations
    results = [det.predict(f) for f in frames]
    if len(results) != len(ref):
        done("parity", False, f"{len(results)} parity frames, the package records {len(ref)} reference scores")
        return
    errs = [abs(r.score - s) for r, s in zip(results, ref)]
    report["parity"] = {"frames": len(errs), "max_abs_err": max(errs), "tolerance": tol}
    if not done(
        "parity", max(errs) <= tol, f"{len(errs)} frames, max |score - reference| {max(errs):.2e} (tolerance {tol:g})"
    ):
        return
    p50 = statistics.median(r.latency_ms["total"] for r in results)
    report["latency_ms"] = {"p50": p50, "frames": len(results), "budget": opts.max_latency_ms}
    if opts.staged:
        done("latency", True, "not measured: staged on another machine")
    elif opts.max_latency_ms is None:
        done("latency", True, f"p50 {p50:.1f} ms (no budget given)")
    elif not done("latency", p50 <= opts.max_latency_ms, f"p50 {p50:.1f} ms, budget {opts.max_latency_ms:g} ms"):
        return
    files, source = _golden(slot, m, opts)
    if not files:
        done("golden", True, "no golden set")
        return
    from edgesdk.deploy.package import golden_verdicts

    rows = golden_verdicts(det, files)
    wrong = [r for r in rows if not r["right"]]
    report["golden"] = {"source": source, "images": len(rows), "wrong": wrong}
    detail = f"{len(rows) - len(wrong)}/{len(rows)} verdicts right ({source})"
    if wrong:
        said = [
            f"{r['file']} scored {r['score']:.2f} "
            f"({'flagged, must pass' if r['flagged'] else 'passed, must be flagged'})"
            for r in wrong[:4]
        ]
        detail += (
            "; wrong: "
            + ", ".join(said)
            + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
            + f" [threshold {det.threshold:.2f}]"
        )
    done("golden", not wrong, detail)


def finish(report: dict) -> dict:
    failed = [c for c in report["checks"] if not c["passed"]]
    report["passed"] = not failed
    report["why"] = f"{failed[0]['check']}: {failed[0]['detail']}" if failed else ""
    return report


def write(slot: Path, report: dict) -> None:
    """SLOT/health.json, durable before the pointer moves (atomic write, then fsync)."""
    write_json(slot / HEALTH, report)
    fd = os.open(slot / HEALTH, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
