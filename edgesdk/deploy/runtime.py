"""The runtime that travels with a model: a wheelhouse of edgesdk and its base dependencies for the
target's platform and Python (deploy/wheels.py builds it), packed as runtime/wheels/*.whl with
runtime/bootstrap.py, installed into SLOT/runtime/venv offline (docs/DEPLOY.md, "The runtime").

Pack side (the workstation): `pack_runtime` lays out the members and the package.json description.
Device side: `host_python` says whether this machine can build the venv, `install_runtime` runs
bootstrap.py and has the new venv's own edgesdk score the parity frames. Never imports torch."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgesdk.deploy import bootstrap
from edgesdk.deploy.wheels import ARCHES, PLATFORM, Target, edgesdk_wheel, packaging, project, wheel_meta, wheelhouse

WHEELS, BOOTSTRAP = "runtime/wheels", "runtime/bootstrap.py"
CHECK = "packaged runtime"
SELFCHECK = """
import json, sys
import edgesdk
from edgesdk.bundle import Bundle
from edgesdk.stream.detector import Detector, DetectorOptions
b = Bundle.open(sys.argv[1], verify=False)
with Detector(b, DetectorOptions(providers="CPUExecutionProvider")) as det:
    scores = [float(det.predict(f).score) for f in b.parity_frames()]
print(json.dumps({"edgesdk": edgesdk.__version__, "file": edgesdk.__file__, "scores": scores}))
"""


def pack_runtime(
    t: Target, work: Path, find_links: tuple[str, ...] = (), no_index: bool = False
) -> tuple[list[tuple[str, Path]], dict, dict]:
    """(members, manifest description, report) of the runtime for T, built in WORK."""
    t0 = time.perf_counter()
    dest = work / "wheels"
    dest.mkdir()
    ours = edgesdk_wheel(work)
    shutil.copy2(ours, dest / ours.name)
    wheels = wheelhouse(t, dest, [str(dest / ours.name), "pip"], find_links, no_index)
    _, canon = packaging()
    pip = [w for w in wheels if canon(wheel_meta(w)[0]) == "pip"]
    members = [(f"{WHEELS}/{w.name}", w) for w in wheels] + [(BOOTSTRAP, Path(bootstrap.__file__))]
    desc = {
        "python": t.python,
        "platforms": list(t.platforms),
        "machine": t.machine,
        "source": t.source,
        "system_site_packages": t.system_site_packages,
        "bootstrap": BOOTSTRAP,
        "edgesdk": f"{WHEELS}/{ours.name}",
        "pip": f"{WHEELS}/{pip[0].name}",
        "wheels": [m for m, _ in members if m.startswith(WHEELS + "/")],
        "requirements": project()["dependencies"],
    }
    report = {
        "python": t.python,
        "platforms": list(t.platforms),
        "machine": t.machine,
        "wheels": [{"wheel": w.name, "bytes": w.stat().st_size} for w in wheels],
        "bytes": sum(w.stat().st_size for w in wheels),
        "seconds": time.perf_counter() - t0,
    }
    return members, desc, report


def check_description(rt: dict, members: dict, where: str) -> None:
    """A package.json runtime description is well-formed and names members (raises SpecError)."""
    from edgesdk.spec import SpecError

    try:
        bootstrap.describe_dict(rt, members, where)
    except bootstrap.Refused as e:
        raise SpecError(str(e)) from None
    machine, plats = rt.get("machine"), rt.get("platforms")
    if (
        not isinstance(machine, str)
        or not re.fullmatch(ARCHES, machine)
        or not isinstance(plats, list)
        or not plats
        or not all(isinstance(p, str) and PLATFORM.fullmatch(p) and p.endswith("_" + machine) for p in plats)
    ):
        raise SpecError(f"{where}: runtime.platforms must be Linux wheel platform tags of runtime.machine")
    if rt.get("bootstrap") != BOOTSTRAP or BOOTSTRAP not in members:
        raise SpecError(f"{where}: runtime.bootstrap must be the member {BOOTSTRAP}")


# -- the device side -------------------------------------------------------------------------------
def host_python(rt: dict, where: str) -> str:
    """The interpreter that builds runtime RT's venv on this machine; refuses (InstallError) when this
    machine cannot run the runtime (another machine, or no Python X.Y), saying what to do instead."""
    from edgesdk.deploy.errors import InstallError

    want, machine = rt["python"], platform.machine()
    hint = (
        "install it on the target, stage it into the target's root filesystem (`edgesdk stage`), or give "
        "--no-runtime to install the model without its runtime"
    )
    if rt.get("machine") != machine:
        raise InstallError(
            f"{where}: its runtime is for {rt.get('machine')} (Python {want}); this machine is {machine}: {hint}"
        )
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == want:
        return sys.executable
    for cand in (shutil.which(f"python{want}"), f"/usr/bin/python{want}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise InstallError(f"{where}: its runtime is for Python {want}, which is not installed here (python{want}): {hint}")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}


def install_runtime(slot: Path, m, python: str, timeout: float = 3600) -> dict:
    """Build SLOT's venv with bootstrap.py under PYTHON, then have the venv's edgesdk score the
    bundle's parity frames: a health check row {"check", "passed", "detail"} (+ "seconds")."""
    t0 = time.perf_counter()

    def row(ok: bool, detail: str) -> dict:
        return {"check": CHECK, "passed": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 1)}

    r = subprocess.run(
        [python, "-E", "-s", str(slot / BOOTSTRAP)], capture_output=True, text=True, env=_clean_env(), timeout=timeout
    )
    if r.returncode != 0:
        tail = " | ".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-6:])
        return row(False, f"{BOOTSTRAP} exited with status {r.returncode}: {tail}")
    venv = slot / "runtime" / "venv"
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-E", "-s", "-c", SELFCHECK, str(slot / "bundle")],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=timeout,
        cwd=slot,
    )
    try:
        got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (ValueError, IndexError):
        got = None
    if got is None:
        tail = " | ".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-4:])
        return row(False, f"the runtime's edgesdk could not score the parity frames: {tail}")
    home = Path(got["file"]).resolve()
    if (slot / "runtime").resolve() not in home.parents:
        return row(False, f"the venv imported edgesdk from {home}, not from the runtime")
    ref, tol = m.health["reference_scores"], float(m.health["tolerance"])
    if len(got["scores"]) != len(ref):
        return row(False, f"{len(got['scores'])} parity scores, the package records {len(ref)}")
    err = max(abs(a - b) for a, b in zip(got["scores"], ref))
    if not err <= tol:
        return row(
            False, f"the runtime's edgesdk scores the parity frames {err:.2e} from the reference (tolerance {tol:g})"
        )
    return row(
        True,
        f"venv built from {len(m.runtime['wheels'])} wheels (Python {m.runtime['python']}); its "
        f"edgesdk {got['edgesdk']} scores the {len(ref)} parity frames within {err:.1e}",
    )


def state(slot: Path) -> str:
    """ "none" (no runtime packed), "ready" or "not installed" (see bootstrap.state)."""
    return bootstrap.state(str(slot))


def bootstrap_command(prefix: str = "/opt/edgesdk", python: str = "3") -> list[str]:
    """The command that creates the current slot's runtime on the target (idempotent; the service's
    ExecStartPre=+...): its system Python (/usr/bin/python3, or /usr/bin/python<PYTHON> when a
    version is given) running PREFIX/current/runtime/bootstrap.py."""
    return [f"/usr/bin/python{python}", f"{prefix.rstrip('/')}/current/{BOOTSTRAP}"]
