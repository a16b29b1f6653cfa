"""Deployment costs per bundle: package size (vs the bundle folder), and the time to pack, to verify
(signature + every member, no writes), to install (verify, extract, fsync, health check, switch) and
the health check alone.

    python benchmarks/deploy_times.py BUNDLE... [--repeat 3] [--json F]

Each time is the median of REPEAT runs, on a fresh key and root in a temporary folder; installs run
with the detected device profile (on a CPU-only machine: ONNX Runtime, no engine). Prints a table and
JSON (stdout, or --json F)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgesdk.bundle import Bundle
from edgesdk.deploy import health, keys
from edgesdk.deploy.package import PackOptions, pack, read_package
from edgesdk.deploy.slots import install, slot_manifest
from edgesdk.table import table


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(bundle: Path, work: Path, key: Path, pub: Path, repeat: int) -> dict:
    b = Bundle.open(bundle)
    bundle_bytes = sum(e.bytes for e in b.manifest.files.values()) + (bundle / "manifest.json").stat().st_size
    t_pack, t_verify, t_install, t_health = [], [], [], []
    public = keys.load_public(pub)
    for i in range(repeat):
        pkg = work / f"{bundle.name}-{i}.tgz"
        t, r = timed(lambda: pack(bundle, key, pkg, PackOptions(version=f"1.0.{i}")))
        t_pack.append(t)
        t_verify.append(timed(lambda: read_package(pkg, public))[0])
        root = work / f"root-{bundle.name}-{i}"
        t, rep = timed(lambda: install(pkg, pub, root))
        if not rep.ok:
            raise SystemExit(f"{bundle}: install failed its health check: {rep.health['why']}")
        t_install.append(t)
        slot = root / "slots" / rep.slot
        t_health.append(timed(lambda: health.check(slot, slot_manifest(slot)))[0])
    ms = lambda xs: round(statistics.median(xs) * 1e3, 1)  # noqa: E731
    return {
        "bundle": str(bundle),
        "model": b.manifest.model.get("name", ""),
        "precision": b.manifest.precision,
        "bundle_MB": round(bundle_bytes / 1e6, 2),
        "package_MB": round(r["bytes"] / 1e6, 2),
        "ratio": round(r["bytes"] / bundle_bytes, 3),
        "members": len(r["manifest"]["members"]),
        "pack_ms": ms(t_pack),
        "verify_ms": ms(t_verify),
        "install_ms": ms(t_install),
        "health_ms": ms(t_health),
        "repeat": repeat,
        "device": rep.device,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the rows here (default: print them)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub = keys.keygen(work / "keys")
        rows = [measure(b, work, key, pub, args.repeat) for b in args.bundles]
    cols = [
        "model",
        "precision",
        "bundle_MB",
        "package_MB",
        "ratio",
        "pack_ms",
        "verify_ms",
        "install_ms",
        "health_ms",
        "device",
    ]
    print(table(rows, cols, title=f"deployment costs (median of {args.repeat}; python benchmarks/deploy_times.py)"))
    doc = {"argv": sys.argv[1:], "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
