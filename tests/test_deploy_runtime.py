"""The runtime travels with the model (x86, this machine): `pack --platform <this machine> --python
<this Python>` adds a wheelhouse; `install` builds SLOT/runtime/venv from it offline at its final path,
checks it scores the parity frames, and `current/runtime/venv` switches and rolls back with the model;
bootstrap.py killed at each of its steps leaves no half venv behind `venv` and the next run completes.
Wheels come from a cache outside the clone (tests/runtime_util.py), downloaded once."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_util import cli, keypair, pkgs, snapshot  # noqa: F401
from edgesdk.deploy import runtime, wheels
from edgesdk.deploy.slots import FAULT_ENV, InstallError, InstallOptions, install, rollback, status
from runtime_util import pack_with_runtime

OFFLINE = {"PIP_NO_INDEX": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def this_target() -> wheels.Target:
    libc, ver = platform.libc_ver()
    assert libc == "glibc", f"these tests need a glibc Linux, not {libc!r}"
    major, minor = ver.split(".")[:2]
    return wheels.target(
        platforms=(f"manylinux_{major}_{minor}_{platform.machine()}",),
        python=f"{sys.version_info[0]}.{sys.version_info[1]}",
    )


@pytest.fixture(scope="module")
def rt_pkgs(bundle, keypair, tmp_path_factory):
    """The brick bundle with this machine's runtime, as versions 1.0.0 and 2.0.0."""
    out = tmp_path_factory.mktemp("rt_pkgs")
    return {
        v: pack_with_runtime(bundle, keypair[0], out / f"brick-{v}.tgz", v, this_target()) for v in ("1.0.0", "2.0.0")
    }


def run(*cmd, env=None, **kw) -> subprocess.CompletedProcess:
    """A child process with a bare environment: no PYTHONPATH (the venv must stand alone), no index."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env={**OFFLINE, **(env or {})}, cwd="/", **kw
    )


def venv_of(root: Path) -> Path:
    return (root / "current" / "runtime" / "venv").resolve()


def test_pack_records_the_runtime_and_signs_every_wheel(rt_pkgs, bundle):
    r = rt_pkgs["1.0.0"]
    m = r["manifest"]
    rt = m["runtime"]
    assert rt["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}" and rt["machine"] == platform.machine()
    names = {Path(w).name.split("-")[0].lower() for w in rt["wheels"]}
    assert {"edgesdk", "numpy", "onnxruntime", "opencv_python_headless", "cryptography", "pip"} <= names
    assert all(w in m["members"] for w in rt["wheels"]) and "runtime/bootstrap.py" in m["members"]
    assert r["bytes"] > r["runtime"]["bytes"] * 0.9  # the wheels are in the archive
    # The edgesdk wheel is this source, built the same way twice: the same bytes, the same sha256.
    assert m["members"][rt["edgesdk"]]["sha256"] == rt_pkgs["2.0.0"]["manifest"]["members"][rt["edgesdk"]]["sha256"]


def test_install_builds_the_venv_offline_and_it_runs_the_model(rt_pkgs, keypair, bundle, tiny_data, tmp_path):
    root = tmp_path / "root"
    r = cli("install", rt_pkgs["1.0.0"]["package"], "--pubkey", keypair[1], "--root", root, "--json", check=True)
    rep = json.loads(r.stdout)
    steps = {s["step"]: s for s in rep["steps"]}
    assert steps["runtime"]["result"] == "ok" and "parity frames" in steps["runtime"]["detail"]
    assert rep["health"]["passed"] and rep["health"]["checks"][0]["check"] == runtime.CHECK
    venv = venv_of(root)
    assert venv.parent == root / "slots" / rep["slot"] / "runtime" and venv.name.startswith("venv-")

    # The venv stands alone: no PYTHONPATH, no index, its own edgesdk from the slot.
    edgesdk = root / "current" / "runtime" / "venv" / "bin" / "edgesdk"
    h = run(edgesdk, "--help")
    assert h.returncode == 0 and "install" in h.stdout, h.stderr
    where = run(root / "current/runtime/venv/bin/python", "-c", "import edgesdk, numpy; print(edgesdk.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).resolve().is_relative_to(venv), where
    # ... and scores like the edgesdk that packed it.
    imgs = sorted((tiny_data / "brick" / "test").rglob("*.png"))[:3]
    got = run(edgesdk, "predict", root / "current" / "bundle", *imgs, "--json")
    want = cli("predict", bundle, *imgs, "--json", check=True)
    assert got.returncode == 0, got.stderr
    a, b = json.loads(got.stdout), json.loads(want.stdout)
    assert [x["score"] for x in a["results"]] == pytest.approx([x["score"] for x in b["results"]], abs=1e-4)

    # bootstrap.py again: nothing to do, nothing changed; status says the runtime is ready.
    before = snapshot(root)
    again = run(sys.executable, "-E", root / "current" / "runtime" / "bootstrap.py")
    assert again.returncode == 0 and "nothing to do" in again.stdout and snapshot(root) == before
    assert [s["runtime"] for s in status(root)["slots"]] == ["ready"]


def test_a_killed_bootstrap_never_leaves_a_half_venv_and_the_runtime_rolls_back_with_the_model(
    rt_pkgs, keypair, tmp_path
):
    root, pub = tmp_path / "root", keypair[1]
    # The model only (a staged image's state before its first boot): wheels and bootstrap.py, no venv.
    rep = install(rt_pkgs["1.0.0"]["package"], pub, root, InstallOptions(runtime=False))
    assert [s for s in rep.steps if s["step"] == "runtime"][0]["result"] == "skipped"
    rtdir = root / "slots" / rep.slot / "runtime"
    assert not (rtdir / "venv").exists() and status(root)["slots"][0]["runtime"] == "not installed"
    boot = root / "current" / "runtime" / "bootstrap.py"
    # Killed as each of its steps begins, one after the other; each run first removes the half venv
    # the run before it left (after runtime-pip: an empty venv; after runtime-marker: installed, unmarked).
    for step, leftover in (
        ("runtime-venv", False),
        ("runtime-pip", False),
        ("runtime-marker", True),
        ("runtime-link", True),
    ):
        r = run(sys.executable, boot, env={FAULT_ENV: step})
        assert r.returncode == -signal.SIGKILL, (step, r.returncode, r.stderr)
        assert ("removed venv-" in r.stdout) == leftover, (step, r.stdout)
        # `venv` never names an incomplete venv: here it names none at all.
        assert not os.path.lexists(rtdir / "venv"), step
        assert runtime.state(rtdir.parent) == "not installed"
    # Killed after the marker: the venv is complete, only the link is missing; the next run adopts it.
    r = run(sys.executable, boot)
    assert r.returncode == 0 and "completing venv-" in r.stdout.replace(str(rtdir) + "/", ""), r.stdout + r.stderr
    assert (
        runtime.state(rtdir.parent) == "ready"
        and [p.name for p in rtdir.glob("venv-*")] == [os.readlink(rtdir / "venv")]
        and not list(rtdir.glob(".*"))
    )
    v1_venv = venv_of(root)
    assert run(root / "current/runtime/venv/bin/edgesdk", "--help").returncode == 0

    # bootstrap.py killed inside the install's runtime step: the install fails like a health check
    # and current (and its runtime) stays.
    r = cli("install", rt_pkgs["2.0.0"]["package"], "--pubkey", pub, "--root", root, env={FAULT_ENV: "runtime-pip"})
    assert r.returncode == 2 and "health check failed: packaged runtime" in r.stderr, r.stderr
    assert f"current is still {rep.slot}" in r.stderr and venv_of(root) == v1_venv
    # Killed as the install's runtime step begins: current (and its runtime) untouched.
    r = cli("install", rt_pkgs["2.0.0"]["package"], "--pubkey", pub, "--root", root, env={FAULT_ENV: "runtime"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert os.readlink(root / "current") == f"slots/{rep.slot}" and venv_of(root) == v1_venv
    # The next install reuses the slot, builds its own venv and switches model and runtime together.
    rep2 = install(rt_pkgs["2.0.0"]["package"], pub, root)
    assert rep2.ok and "reused" in rep2.steps[2]["detail"]
    v2_venv = venv_of(root)
    assert v2_venv.parent == root / "slots" / rep2.slot / "runtime"
    assert run(root / "current/runtime/venv/bin/edgesdk", "--help").returncode == 0
    rollback(root)
    assert venv_of(root) == v1_venv and os.readlink(root / "previous") == f"slots/{rep2.slot}"
    h = run(root / "current/runtime/venv/bin/python", "-c", "import edgesdk; print(edgesdk.__file__)")
    assert Path(h.stdout.strip()).resolve().is_relative_to(v1_venv), h


def test_a_runtime_for_another_python_is_refused_before_anything_is_written(rt_pkgs, keypair, tmp_path):
    """The runtime's description is signed, so another Python is a real package of its own; the
    refusal names the remedy and writes nothing (--no-runtime installs the model)."""
    m = rt_pkgs["1.0.0"]["manifest"]["runtime"]
    other = dict(m, python="3.99")
    with pytest.raises(InstallError, match=r"Python 3\.99, which is not installed here.*--no-runtime"):
        runtime.host_python(other, "pkg.tgz")
    with pytest.raises(InstallError, match=r"runtime is for riscv64.*this machine is"):
        runtime.host_python(dict(m, machine="riscv64"), "pkg.tgz")


def test_the_runtime_description_is_checked_like_every_other_field(rt_pkgs, pkgs):
    from edgesdk.deploy.manifest import PackageManifest
    from edgesdk.deploy.package import read_package
    from edgesdk.spec import SpecError

    good = rt_pkgs["1.0.0"]["manifest"]
    for change, msg in (
        (lambda rt: rt["wheels"].append("runtime/wheels/evil-1.0-py3-none-any.whl"), "runtime.wheels"),
        (lambda rt: rt.update(wheels=["../../etc/x.whl"]), "runtime.wheels"),
        (lambda rt: rt.update(pip="runtime/bootstrap.py"), "runtime.pip"),
        (lambda rt: rt.update(python="3"), "runtime.python"),
        (lambda rt: rt.update(machine="aarch64"), "runtime.platforms"),
        (lambda rt: rt.update(bootstrap="bundle/manifest.json"), "runtime.bootstrap"),
    ):
        d = json.loads(json.dumps(good))
        change(d["runtime"])
        with pytest.raises(SpecError, match=msg):
            PackageManifest.from_json(json.dumps(d).encode(), "package.json")
    # A package without a runtime has no runtime field: older devices read it as before.
    assert "runtime" not in json.loads(read_package(pkgs["1.0.0"], None).manifest_bytes)


def test_runtime_flags_and_device_profiles(keypair, bundle, tmp_path):
    t = wheels.target("orin-nx")
    assert (t.python, t.machine, t.system_site_packages) == ("3.10", "aarch64", True)
    assert "manylinux2014_aarch64" in wheels.pip_platforms(t.platforms)  # glibc 2.35 runs 2.17 wheels
    out = tmp_path / "p.tgz"
    for flags, msg in (
        (["--platform", "manylinux_2_35_aarch64"], "--platform and --python go together"),
        (["--runtime", "cpu"], "names no runtime platform"),
        (["--runtime", "orin-nx", "--python", "3.10"], "not both"),
        (["--platform", "win_amd64", "--python", "3.10"], "a Linux wheel platform tag"),
        (
            ["--platform", "manylinux_2_35_aarch64", "--platform", "manylinux_2_35_x86_64", "--python", "3.10"],
            "more than one machine",
        ),
        (["--find-links", str(tmp_path)], "give --runtime or --platform"),
    ):
        r = cli("pack", bundle, "--key", keypair[0], "--version", "1.0.0", "--out", out, *flags)
        assert r.returncode == 2 and msg in r.stderr, (flags, r.stderr)
        assert not out.exists()
    from edgesdk.spec import DeviceProfile, SpecError

    with pytest.raises(SpecError, match="runtime_python and runtime_platforms go together"):
        DeviceProfile(name="x", description="", kind="cpu", tensorrt_module="", runtime_python="3.10")
