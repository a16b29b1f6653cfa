"""The wheelhouse a packed runtime carries (docs/DEPLOY.md, "The runtime"), built on the workstation:
`target` names the platform (a device profile's runtime_* fields, or --platform/--python),
`edgesdk_wheel` builds a wheel of the running edgesdk's own files, `wheelhouse` downloads the rest
with pip for that platform. pip evaluates environment markers against the Python running it, not the
target, so the wheelhouse is then closed over the target's markers (each wheel's requirements
evaluated for the target Python and machine; what is missing is downloaded in another round).
deploy/runtime.py packs the result and installs it on the device. Never imports torch."""

from __future__ import annotations

import base64
import email.parser
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.spec import RUNTIME_PLATFORM

PYTHON = re.compile(r"3\.\d{1,2}")
PLATFORM = RUNTIME_PLATFORM  # (base, machine) of a Linux wheel platform tag
ARCHES = PLATFORM.pattern.rsplit("_(", 1)[1].rstrip(")")
LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}  # aliases of manylinux_2_<n>


class RuntimeSetupError(EdgesdkError):
    """The runtime cannot be packed or installed; the message says why."""


@dataclass(frozen=True)
class Target:
    """The platform a runtime is packed for."""

    python: str  # "3.10": the target's system Python, major.minor
    platforms: tuple[str, ...]  # wheel platform tags as given, e.g. manylinux_2_35_aarch64
    source: str  # "device profile orin-nx" or "--platform/--python"
    system_site_packages: bool = False  # the venv also sees the system's packages (JetPack's tensorrt)

    @property
    def machine(self) -> str:
        return PLATFORM.fullmatch(self.platforms[0]).group(2)  # type: ignore[union-attr]


def target(profile: str | None = None, platforms: tuple[str, ...] = (), python: str | None = None) -> Target | None:
    """The Target of `pack --runtime PROFILE` or `--platform P... --python X.Y`; None when neither."""
    if profile and (platforms or python):
        raise OptionError("--runtime names a device profile's platform; give it or --platform/--python, not both")
    if profile:
        from edgesdk.devices import load_profile

        prof = load_profile(profile)
        if not prof.runtime_python:
            raise OptionError(
                f"--runtime {profile}: the device profile {prof.name} names no runtime platform "
                "(runtime_python, runtime_platforms); give --platform and --python"
            )
        platforms, python, source = prof.runtime_platforms, prof.runtime_python, f"device profile {prof.name}"
        # JetPack's TensorRT Python bindings are system packages: the venv must see them.
        ssp = prof.kind == "jetson"
    elif platforms or python:
        if not platforms or not python:
            raise OptionError(
                "--platform and --python go together (e.g. --platform manylinux_2_35_aarch64 --python 3.10)"
            )
        source, ssp = "--platform/--python", False
    else:
        return None
    if not PYTHON.fullmatch(python):
        raise OptionError(f"--python {python!r}: major.minor of the target's Python, e.g. 3.10")
    for p in platforms:
        if not PLATFORM.fullmatch(p):
            raise OptionError(
                f"--platform {p!r}: a Linux wheel platform tag, e.g. manylinux_2_35_aarch64, "
                f"manylinux2014_x86_64 or linux_aarch64 (machines: {ARCHES.replace('|', ', ')})"
            )
    arches = {PLATFORM.fullmatch(p).group(2) for p in platforms}  # type: ignore[union-attr]
    if len(arches) > 1:
        raise OptionError(
            f"--platform: {', '.join(platforms)} name more than one machine ({', '.join(sorted(arches))})"
        )
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
    return {
        "python_version": t.python,
        "python_full_version": f"{t.python}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{t.python}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_machine": t.machine,
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def packaging():
    """(Requirement, canonicalize_name) from packaging, else from pip's vendored copy."""
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # pip always carries a copy
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
            return {
                "name": "edgesdk",
                "version": edgesdk.__version__,
                "src": src,
                "requires_python": d.get("requires-python", ""),
                "dependencies": list(d.get("dependencies", [])),
                "scripts": dict(d.get("scripts", {})),
            }
    from importlib import metadata

    md = metadata.metadata("edgesdk")
    deps = [r for r in md.get_all("Requires-Dist") or [] if "extra" not in (r.split(";", 1) + [""])[1]]
    scripts = {
        e.name: e.value for e in metadata.entry_points(group="console_scripts") if e.value.startswith("edgesdk.")
    }
    return {
        "name": "edgesdk",
        "version": edgesdk.__version__,
        "src": src,
        "requires_python": (md.get_all("Requires-Python") or [""])[0],
        "dependencies": deps,
        "scripts": scripts,
    }


def _wheel_files(src: Path) -> list[tuple[str, Path]]:
    from edgesdk.resources import data_dir

    out = []
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and not f.endswith((".pyc", ".pyo")):
                p = Path(dirpath) / f
                out.append((f"edgesdk/{p.relative_to(src).as_posix()}", p))
    for name in ("devices", "export"):  # a checkout keeps them beside the package (resources.py)
        d = data_dir(name)
        if src not in d.resolve().parents:
            out += [
                (f"edgesdk/_data/{name}/{p.relative_to(d).as_posix()}", p)
                for p in sorted(d.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts
            ]
    return sorted(out)  # a checkout and an installed edgesdk give the same order


def edgesdk_wheel(dest: Path) -> Path:
    """DEST/edgesdk-<version>-py3-none-any.whl of the running edgesdk's files (its package, device
    profiles and recipes), with its base dependencies; the same files give the same bytes."""
    p = project()
    name = f"edgesdk-{p['version']}"
    info = f"{name}.dist-info"
    meta = (
        f"Metadata-Version: 2.1\nName: edgesdk\nVersion: {p['version']}\n"
        "Summary: edgesdk device runtime (packed by edgesdk pack --runtime)\n"
        + (f"Requires-Python: {p['requires_python']}\n" if p["requires_python"] else "")
        + "".join(f"Requires-Dist: {d}\n" for d in p["dependencies"])
    )
    entries: list[tuple[str, bytes]] = [(arc, f.read_bytes()) for arc, f in _wheel_files(p["src"])]
    entries += [
        (f"{info}/METADATA", meta.encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: edgesdk pack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (
            f"{info}/entry_points.txt",
            ("[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(p["scripts"].items()))).encode(),
        ),
    ]
    record = (
        "".join(
            f"{arc},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}\n"
            for arc, b in entries
        )
        + f"{info}/RECORD,,\n"
    )
    entries.append((f"{info}/RECORD", record.encode()))
    out = dest / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, b in entries:
            zi = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr, zi.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            z.writestr(zi, b)
    return out


# -- the wheelhouse --------------------------------------------------------------------------------
def wheel_meta(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist) of a wheel file."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise RuntimeSetupError(f"{path}: not a wheel (no single *.dist-info/METADATA)")
        msg = email.parser.BytesHeaderParser().parsebytes(z.read(names[0]))
    return str(msg["Name"]), str(msg["Version"]), list(msg.get_all("Requires-Dist") or [])


def _pip_download(t: Target, dest: Path, reqs: list[str], find_links: tuple[str, ...], no_index: bool) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        t.python,
        "--dest",
        str(dest),
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
    ]
    for p in pip_platforms(t.platforms):
        cmd += ["--platform", p]
    for f in find_links:
        cmd += ["--find-links", str(f)]
    cmd += ["--no-index"] if no_index else []
    r = subprocess.run(cmd + reqs, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-8:])
        raise RuntimeSetupError(
            f"pip download for Python {t.python} on {', '.join(t.platforms)} failed "
            f"({' '.join(reqs[:4])}{' ...' if len(reqs) > 4 else ''}):\n{tail}"
        )


def wheelhouse(
    t: Target, dest: Path, roots: list[str], find_links: tuple[str, ...] = (), no_index: bool = False, rounds: int = 8
) -> list[Path]:
    """Download ROOTS (requirements or wheel paths) and everything they need on T into DEST; returns
    the wheels. Refuses a wheelhouse that is not closed over T's markers or holds two versions of one
    project (one pip resolution per round cannot see T's markers)."""
    Requirement, canon = packaging()
    env = marker_env(t)
    pending = list(roots)
    for _ in range(rounds):
        _pip_download(t, dest, pending, find_links, no_index)
        have: dict[str, tuple[str, Path]] = {}
        for w in sorted(dest.glob("*.whl")):
            name, version, _ = wheel_meta(w)
            if canon(name) in have:
                raise RuntimeSetupError(
                    f"{dest}: two versions of {name} ({have[canon(name)][0]}, {version}); the "
                    "target's requirements pull different versions"
                )
            have[canon(name)] = (version, w)
        reqs = {name: [Requirement(t) for t in wheel_meta(w)[2]] for name, (_, w) in have.items()}
        extras: dict[str, set[str]] = {}  # extras some requirement asks of a project: its deps count too
        for rs in reqs.values():
            for req in rs:
                extras.setdefault(canon(req.name), set()).update(req.extras)
        missing = []
        for name, (_version, w) in have.items():
            for req in reqs[name]:
                if req.marker is not None and not any(
                    req.marker.evaluate({**env, "extra": e}) for e in {"", *extras.get(name, ())}
                ):
                    continue
                got = have.get(canon(req.name))
                if got is None:
                    missing.append(
                        str(req.name) + (f"[{','.join(sorted(req.extras))}]" if req.extras else "") + str(req.specifier)
                    )
                elif req.specifier and not req.specifier.contains(got[0], prereleases=True):
                    raise RuntimeSetupError(
                        f"{w.name} needs {req} on the target; the wheelhouse has {req.name} {got[0]}"
                    )
        if not missing:
            return [w for _, w in sorted(have.values(), key=lambda vw: vw[1].name)]
        pending = sorted(set(missing))
    raise RuntimeSetupError(
        f"the wheelhouse for Python {t.python} is still missing {', '.join(pending)} after "
        f"{rounds} rounds of pip download"
    )
