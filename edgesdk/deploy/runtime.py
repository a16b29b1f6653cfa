"""The runtime that travels with a model: a wheelhouse of edgesdk and its base dependencies for the
target's platform and Python, packed as runtime/wheels/*.whl with runtime/bootstrap.py, installed
into SLOT/runtime/venv offline (docs/DEPLOY.md, "The runtime").

Pack side (the workstation): `target` names the platform (a device profile's runtime_* fields, or
--platform/--python), `edgesdk_wheel` builds a wheel of the running edgesdk's own files, `wheelhouse`
downloads the rest with pip for that platform. pip evaluates environment markers against the Python
running it, not the target, so the wheelhouse is then closed over the target's markers (each
wheel's requirements evaluated for the target Python and machine; what is missing is downloaded in
another round). Device side: `host_python` says whether this machine can build the venv,
`install_runtime` runs bootstrap.py and has the new venv's own edgesdk score the parity frames.
Never imports torch."""
from __future__ import annotations

import base64
import email.parser
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgesdk.deploy import bootstrap
from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.spec import RUNTIME_PLATFORM

WHEELS, BOOTSTRAP = "runtime/wheels", "runtime/bootstrap.py"
PYTHON = re.compile(r"3\.\d{1,2}")
PLATFORM = RUNTIME_PLATFORM                  # (base, machine) of a Linux wheel platform tag
ARCHES = PLATFORM.pattern.rsplit("_(", 1)[1].rstrip(")")
LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}     # aliases of manylinux_2_<n>
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


class RuntimeSetupError(EdgesdkError):
    """The runtime cannot be packed or installed; the message says why."""


@dataclass(frozen=True)
class Target:
    """The platform a runtime is packed for."""
    python: str                         # "3.10": the target's system Python, major.minor
    platforms: tuple[str, ...]          # wheel platform tags as given, e.g. manylinux_2_35_aarch64
    source: str                         # "device profile orin-nx" or "--platform/--python"
    system_site_packages: bool = False  # the venv also sees the system's packages (JetPack's tensorrt)

    @property
    def machine(self) -> str:
        return PLATFORM.fullmatch(self.platforms[0]).group(2)   # type: ignore[union-attr]


def target(profile: str | None = None, platforms: tuple[str, ...] = (), python: str | None = None) -> Target | None:
    """The Target of `pack --runtime PROFILE` or `--platform P... --python X.Y`; None when neither."""
    if profile and (platforms or python):
        raise OptionError("--runtime names a device profile's platform; give it or --platform/--python, not both")
    if profile:
        from edgesdk.devices import load_profile

        prof = load_profile(profile)
        if not prof.runtime_python:
            raise OptionError(f"--runtime {profile}: the device profile {prof.name} names no runtime platform "
                              "(runtime_python, runtime_platforms); give --platform and --python")
        platforms, python, source = prof.runtime_platforms, prof.runtime_python, f"device profile {prof.name}"
        # JetPack's TensorRT Python bindings are system packages: the venv must see them.
        ssp = prof.kind == "jetson"
    elif platforms or python:
        if not platforms or not python:
            raise OptionError("--platform and --python go together (e.g. --platform manylinux_2_35_aarch64 "
                              "--python 3.10)")
        source, ssp = "--platform/--python", False
    else:
        return None
    if not PYTHON.fullmatch(python):
        raise OptionError(f"--python {python!r}: major.minor of the target's Python, e.g. 3.10")
    for p in platforms:
        if not PLATFORM.fullmatch(p):
            raise OptionError(f"--platform {p!r}: a Linux wheel platform tag, e.g. manylinux_2_35_aarch64, "
                              f"manylinux2014_x86_64 or linux_aarch64 (machines: {ARCHES.replace('|', ', ')})")
    arches = {PLATFORM.fullmatch(p).group(2) for p in platforms}        # type: ignore[union-attr]
    if len(arches) > 1:
        raise OptionError(f"--platform: {', '.join(platforms)} name more than one machine "
                          f"({', '.join(sorted(arches))})")
    return Target(python, tuple(platforms), source, ssp)


def pip_platforms(platforms: tuple[str, ...]) -> list[str]:
    """The tags pip must accept for PLATFORMS: a glibc 2.N manylinux tag runs wheels of every older
    glibc (pip expands only the legacy aliases itself), so each is listed down to manylinux2014."""
    out: list[str] = []
    for p in platforms:
        m = PLATFORM.fullmatch(p)
        assert m is not None
        base, arch = m.groups()
        minor = LEGACY.get(base) or (int(base.rsplit("_", 1)[1]) if base.startswith("manylinux_2_") else None)
        if minor is None:
            out.append(p)
            continue
        low = 5 if arch in ("x86_64", "i686") else 17
        for n in range(minor, low - 1, -1):
            out.append(f"manylinux_2_{n}_{arch}")
            out += [f"{k}_{arch}" for k, v in LEGACY.items() if v == n and (k == "manylinux2014" or low == 5)]
    return list(dict.fromkeys(out))


def marker_env(t: Target) -> dict[str, str]:
    """Environment-marker values of the target (a Linux CPython of T.python on T.machine)."""
    return {"python_version": t.python, "python_full_version": f"{t.python}.0", "implementation_name": "cpython",
            "implementation_version": f"{t.python}.0", "platform_python_implementation": "CPython",
            "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix", "platform_machine": t.machine,
            "platform_release": "", "platform_version": "", "extra": ""}


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:       # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef, unused-ignore]
        from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef, unused-ignore]
    return Requirement, canonicalize_name


# -- the edgesdk wheel -----------------------------------------------------------------------------
def project() -> dict:
    """name, version, requires_python, dependencies (base only) and scripts of the running edgesdk:
    from pyproject.toml beside its source, else from its installed metadata."""
    import edgesdk

    src = Path(edgesdk.__file__).resolve().parent
    py = src.parent / "pyproject.toml"
    if py.is_file():
        from edgesdk.spec import load_toml

        d = load_toml(py).get("project", {})
        if d.get("name") == "edgesdk":
            return {"name": "edgesdk", "version": edgesdk.__version__, "src": src,
                    "requires_python": d.get("requires-python", ""), "dependencies": list(d.get("dependencies", [])),
                    "scripts": dict(d.get("scripts", {}))}
    from importlib import metadata

    md = metadata.metadata("edgesdk")
    deps = [r for r in md.get_all("Requires-Dist") or [] if "extra" not in (r.split(";", 1) + [""])[1]]
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")
               if e.value.startswith("edgesdk.")}
    return {"name": "edgesdk", "version": edgesdk.__version__, "src": src,
            "requires_python": (md.get_all("Requires-Python") or [""])[0], "dependencies": deps,
            "scripts": scripts}


def _wheel_files(src: Path) -> list[tuple[str, Path]]:
    from edgesdk.resources import data_dir

    out = []
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and not f.endswith((".pyc", ".pyo")):
                p = Path(dirpath) / f
                out.append((f"edgesdk/{p.relative_to(src).as_posix()}", p))
    for name in ("devices", "export"):           # a checkout keeps them beside the package (resources.py)
        d = data_dir(name)
        if src not in d.resolve().parents:
            out += [(f"edgesdk/_data/{name}/{p.relative_to(d).as_posix()}", p)
                    for p in sorted(d.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return sorted(out)        # a checkout and an installed edgesdk give the same order


def edgesdk_wheel(dest: Path) -> Path:
    """DEST/edgesdk-<version>-py3-none-any.whl of the running edgesdk's files (its package, device
    profiles and recipes), with its base dependencies; the same files give the same bytes."""
    p = project()
    name = f"edgesdk-{p['version']}"
    info = f"{name}.dist-info"
    meta = (f"Metadata-Version: 2.1\nName: edgesdk\nVersion: {p['version']}\n"
            "Summary: edgesdk device runtime (packed by edgesdk pack --runtime)\n"
            + (f"Requires-Python: {p['requires_python']}\n" if p["requires_python"] else "")
            + "".join(f"Requires-Dist: {d}\n" for d in p["dependencies"]))
    entries: list[tuple[str, bytes]] = [(arc, f.read_bytes()) for arc, f in _wheel_files(p["src"])]
    entries += [(f"{info}/METADATA", meta.encode()),
                (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: edgesdk pack\nRoot-Is-Purelib: true\n"
                                  b"Tag: py3-none-any\n"),
                (f"{info}/entry_points.txt", ("[console_scripts]\n" + "".join(
                    f"{k} = {v}\n" for k, v in sorted(p["scripts"].items()))).encode())]
    record = "".join(f"{arc},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},"
                     f"{len(b)}\n" for arc, b in entries) + f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    out = dest / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, b in entries:
            zi = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr, zi.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            z.writestr(zi, b)
    return out


# -- the wheelhouse --------------------------------------------------------------------------------
def _wheel_meta(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist) of a wheel file."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise RuntimeSetupError(f"{path}: not a wheel (no single *.dist-info/METADATA)")
        msg = email.parser.BytesHeaderParser().parsebytes(z.read(names[0]))
    return str(msg["Name"]), str(msg["Version"]), list(msg.get_all("Requires-Dist") or [])


def _pip_download(t: Target, dest: Path, reqs: list[str], find_links: tuple[str, ...], no_index: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", t.python, "--dest", str(dest), "--disable-pip-version-check", "--progress-bar", "off"]
    for p in pip_platforms(t.platforms):
        cmd += ["--platform", p]
    for f in find_links:
        cmd += ["--find-links", str(f)]
    cmd += ["--no-index"] if no_index else []
    r = subprocess.run(cmd + reqs, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-8:])
        raise RuntimeSetupError(f"pip download for Python {t.python} on {', '.join(t.platforms)} failed "
                            f"({' '.join(reqs[:4])}{' ...' if len(reqs) > 4 else ''}):\n{tail}")


def wheelhouse(t: Target, dest: Path, roots: list[str], find_links: tuple[str, ...] = (), no_index: bool = False,
               rounds: int = 8) -> list[Path]:
    """Download ROOTS (requirements or wheel paths) and everything they need on T into DEST; returns
    the wheels. Refuses a wheelhouse that is not closed over T's markers or holds two versions of one
    project (one pip resolution per round cannot see T's markers)."""
    Requirement, canon = _packaging()
    env = marker_env(t)
    pending = list(roots)
    for _ in range(rounds):
        _pip_download(t, dest, pending, find_links, no_index)
        have: dict[str, tuple[str, Path]] = {}
        for w in sorted(dest.glob("*.whl")):
            name, version, _ = _wheel_meta(w)
            if canon(name) in have:
                raise RuntimeSetupError(f"{dest}: two versions of {name} ({have[canon(name)][0]}, {version}); the "
                                    "target's requirements pull different versions")
            have[canon(name)] = (version, w)
        reqs = {name: [Requirement(t) for t in _wheel_meta(w)[2]] for name, (_, w) in have.items()}
        extras: dict[str, set[str]] = {}          # extras some requirement asks of a project: its deps count too
        for rs in reqs.values():
            for req in rs:
                extras.setdefault(canon(req.name), set()).update(req.extras)
        missing = []
        for name, (_version, w) in have.items():
            for req in reqs[name]:
                if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e})
                                                      for e in {"", *extras.get(name, ())}):
                    continue
                got = have.get(canon(req.name))
                if got is None:
                    missing.append(str(req.name) + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
                                   + str(req.specifier))
                elif req.specifier and not req.specifier.contains(got[0], prereleases=True):
                    raise RuntimeSetupError(f"{w.name} needs {req} on the target; the wheelhouse has "
                                            f"{req.name} {got[0]}")
        if not missing:
            return [w for _, w in sorted(have.values(), key=lambda vw: vw[1].name)]
        pending = sorted(set(missing))
    raise RuntimeSetupError(f"the wheelhouse for Python {t.python} is still missing {', '.join(pending)} after "
                        f"{rounds} rounds of pip download")


def pack_runtime(t: Target, work: Path, find_links: tuple[str, ...] = (), no_index: bool = False
                 ) -> tuple[list[tuple[str, Path]], dict, dict]:
    """(members, manifest description, report) of the runtime for T, built in WORK."""
    t0 = time.perf_counter()
    dest = work / "wheels"
    dest.mkdir()
    ours = edgesdk_wheel(work)
    shutil.copy2(ours, dest / ours.name)
    wheels = wheelhouse(t, dest, [str(dest / ours.name), "pip"], find_links, no_index)
    _, canon = _packaging()
    pip = [w for w in wheels if canon(_wheel_meta(w)[0]) == "pip"]
    members = [(f"{WHEELS}/{w.name}", w) for w in wheels] + [(BOOTSTRAP, Path(bootstrap.__file__))]
    desc = {"python": t.python, "platforms": list(t.platforms), "machine": t.machine, "source": t.source,
            "system_site_packages": t.system_site_packages, "bootstrap": BOOTSTRAP,
            "edgesdk": f"{WHEELS}/{ours.name}", "pip": f"{WHEELS}/{pip[0].name}",
            "wheels": [m for m, _ in members if m.startswith(WHEELS + "/")],
            "requirements": project()["dependencies"]}
    report = {"python": t.python, "platforms": list(t.platforms), "machine": t.machine,
              "wheels": [{"wheel": w.name, "bytes": w.stat().st_size} for w in wheels],
              "bytes": sum(w.stat().st_size for w in wheels), "seconds": time.perf_counter() - t0}
    return members, desc, report


def check_description(rt: dict, members: dict, where: str) -> None:
    """A package.json runtime description is well-formed and names members (raises SpecError)."""
    from edgesdk.spec import SpecError

    try:
        bootstrap.describe_dict(rt, members, where)
    except bootstrap.Refused as e:
        raise SpecError(str(e)) from None
    machine, plats = rt.get("machine"), rt.get("platforms")
    if not isinstance(machine, str) or not re.fullmatch(ARCHES, machine) or not isinstance(plats, list) or not plats \
            or not all(isinstance(p, str) and PLATFORM.fullmatch(p) and p.endswith("_" + machine) for p in plats):
        raise SpecError(f"{where}: runtime.platforms must be Linux wheel platform tags of runtime.machine")
    if rt.get("bootstrap") != BOOTSTRAP or BOOTSTRAP not in members:
        raise SpecError(f"{where}: runtime.bootstrap must be the member {BOOTSTRAP}")


# -- the device side -------------------------------------------------------------------------------
def host_python(rt: dict, where: str) -> str:
    """The interpreter that builds runtime RT's venv on this machine; refuses (InstallError) when this
    machine cannot run the runtime (another machine, or no Python X.Y), saying what to do instead."""
    from edgesdk.deploy.errors import InstallError

    want, machine = rt["python"], platform.machine()
    hint = ("install it on the target, stage it into the target's root filesystem (`edgesdk stage`), or give "
            "--no-runtime to install the model without its runtime")
    if rt.get("machine") != machine:
        raise InstallError(f"{where}: its runtime is for {rt.get('machine')} (Python {want}); this machine is "
                           f"{machine}: {hint}")
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == want:
        return sys.executable
    for cand in (shutil.which(f"python{want}"), f"/usr/bin/python{want}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise InstallError(f"{where}: its runtime is for Python {want}, which is not installed here (python{want}): "
                       f"{hint}")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}


def install_runtime(slot: Path, m, python: str, timeout: float = 3600) -> dict:
    """Build SLOT's venv with bootstrap.py under PYTHON, then have the venv's edgesdk score the
    bundle's parity frames: a health check row {"check", "passed", "detail"} (+ "seconds")."""
    t0 = time.perf_counter()

    def row(ok: bool, detail: str) -> dict:
        return {"check": CHECK, "passed": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 1)}

    r = subprocess.run([python, "-E", "-s", str(slot / BOOTSTRAP)], capture_output=True, text=True,
                       env=_clean_env(), timeout=timeout)
    if r.returncode != 0:
        tail = " | ".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-6:])
        return row(False, f"{BOOTSTRAP} exited with status {r.returncode}: {tail}")
    venv = slot / "runtime" / "venv"
    r = subprocess.run([str(venv / "bin" / "python"), "-E", "-s", "-c", SELFCHECK, str(slot / "bundle")],
                       capture_output=True, text=True, env=_clean_env(), timeout=timeout, cwd=slot)
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
        return row(False, f"the runtime's edgesdk scores the parity frames {err:.2e} from the reference "
                          f"(tolerance {tol:g})")
    return row(True, f"venv built from {len(m.runtime['wheels'])} wheels (Python {m.runtime['python']}); its "
                     f"edgesdk {got['edgesdk']} scores the {len(ref)} parity frames within {err:.1e}")


def state(slot: Path) -> str:
    """"none" (no runtime packed), "ready" or "not installed" (see bootstrap.state)."""
    return bootstrap.state(str(slot))


def bootstrap_command(prefix: str = "/opt/edgesdk", python: str = "3") -> list[str]:
    """The command that creates the current slot's runtime on the target (idempotent; the service's
    ExecStartPre=+...): its system Python (/usr/bin/python3, or /usr/bin/python<PYTHON> when a
    version is given) running PREFIX/current/runtime/bootstrap.py."""
    return [f"/usr/bin/python{python}", f"{prefix.rstrip('/')}/current/{BOOTSTRAP}"]
