"""Sign a bundle into packages, install them on a (temporary) device root, roll back: the whole
deployment round trip on one machine, no torch.

    python samples/deploy_roundtrip.py BUNDLE [--root DIR]

A real device runs the install half (`edgesdk install PKG --pubkey edgesdk.pub --root /opt/edgesdk`);
the workstation keeps edgesdk.key and runs `edgesdk pack`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgesdk.deploy.keys import keygen
from edgesdk.deploy.package import PackOptions, pack
from edgesdk.deploy.slots import install, rollback, status
from edgesdk.table import table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--root", type=Path, help="device root to install into (default: a temporary folder)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = args.root or work / "device"
        key, pub = keygen(work / "keys")  # workstation: edgesdk.key stays here
        packages = []
        for version in ("1.0.0", "1.1.0"):  # two releases of the same model
            r = pack(args.bundle, key, work / f"model-{version}.tgz", PackOptions(version=version))
            packages.append(r["package"])
            print(f"packed {r['package']}: {r['bytes'] / 1e6:.1f} MB, package.json sha256 {r['sha256'][:12]}")

        for pkg in packages:  # device: verify, slot, health check, switch
            rep = install(pkg, pub, root)
            print(table(rep.steps, ["step", "result", "detail"], title=f"install {Path(pkg).name}: {rep.status}"))
            if not rep.ok:
                raise SystemExit(f"health check failed: {rep.health['why']}")

        back = rollback(root)  # the older release is current again
        print(f"rolled back: current {back['current']}, previous {back['previous']}")

        st = status(root)
        print(
            table(
                [
                    {k: s[k] for k in ("slot", "version", "state", "current", "previous", "verifies")}
                    for s in st["slots"]
                ],
                title=f"status of {root}",
            )
        )
        print("history:", ", ".join(f"{h['event']} {h['version']}" for h in st["history"]))
        assert st["current"].startswith("1.0.0-") and st["previous"].startswith("1.1.0-")


if __name__ == "__main__":
    main()
