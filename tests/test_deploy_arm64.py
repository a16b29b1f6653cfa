"""The runtime on an aarch64 device, emulated: a package with an aarch64 runtime is staged into a
minimal Debian bookworm arm64 root filesystem (built once with debootstrap, cached outside the
clone), and the staged runtime is bootstrapped and run inside it under qemu (chroot through
binfmt_misc): it installs from the package alone (no index) and scores images like x86 (1e-4).

Needs root, debootstrap, qemu-user-static and binfmt-support (.ci/system-deps installs them); skips
with the reason otherwise. Bookworm's Python is 3.11 and its glibc 2.36, so the runtime is packed with
--platform manylinux_2_36_aarch64 --python 3.11. Every mount lives in a private mount namespace
(unshare), so a killed run leaves none behind."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from deploy_util import cli, keypair, snapshot  # noqa: F401
from edgesdk.deploy import runtime, wheels
from edgesdk.deploy.slots import InstallError, InstallOptions, install
from runtime_util import cache_lock, cache_root, pack_with_runtime

pytestmark = pytest.mark.slow

SUITE, INCLUDE = "bookworm", ("python3", "libgomp1")
MIRROR = os.environ.get("EDGESDK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
AARCH64 = wheels.target(platforms=("manylinux_2_36_aarch64",), python="3.11")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PIP_NO_INDEX": "1"}
HOST = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}  # the tools live in sbin


def say(msg: str) -> None:
    print(f"[arm64 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def emulation() -> str:
    """ "" when aarch64 programs can run in a chroot here (registering qemu with binfmt_misc if needed),
    else why not."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mounts in a private namespace)"
    missing = [
        t
        for t in ("debootstrap", "unshare", "chroot", "update-binfmts", "qemu-aarch64-static")
        if shutil.which(t, path=HOST["PATH"]) is None
    ]
    if missing:
        return (
            f"{', '.join(missing)} not installed (apt-get install debootstrap qemu-user-static binfmt-support; "
            ".ci/system-deps does)"
        )
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, env=HOST)
    if not (BINFMT / "status").exists():
        return f"{BINFMT} is not mounted and cannot be (a container without it?)"
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, env=HOST)
    if not entry.exists() or "enabled" not in entry.read_text():
        return "qemu-aarch64 cannot be registered with binfmt_misc here (update-binfmts --enable qemu-aarch64 failed)"
    if "F" not in entry.read_text().split("flags:")[-1].split("\n")[0]:
        return "qemu-aarch64 is registered without the F flag: it cannot run inside a chroot"
    return ""


def _mounts_under(path: Path) -> list[str]:
    p = str(path.resolve())
    return [
        m.split()[1]
        for m in Path("/proc/self/mounts").read_text().splitlines()
        if m.split()[1] == p or m.split()[1].startswith(p + "/")
    ]


def bookworm_arm64() -> Path:
    """The cached root filesystem (debootstrap --variant=minbase, INCLUDE), built when missing; it only
    ever appears complete (built beside, complete.json written, renamed), so a killed build is redone."""
    root = cache_root()
    entry = root / f"{SUITE}-arm64"
    want = {"suite": SUITE, "include": list(INCLUDE)}

    def ok() -> bool:
        try:
            return json.loads((entry / "complete.json").read_text()) == want
        except (OSError, ValueError):
            return False

    if ok():
        return entry / "rootfs"
    with cache_lock(root):
        if ok():
            return entry / "rootfs"
        for old in [*root.glob(f".{entry.name}.tmp-*"), *([entry] if entry.exists() else [])]:
            if _mounts_under(old):  # never rmtree across a mount (debootstrap runs unshared; be sure)
                pytest.fail(f"{old}: mounts under it ({', '.join(_mounts_under(old))}); unmount them first")
            shutil.rmtree(old)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}.tmp-"))
        say(f"building the {SUITE} arm64 root filesystem once (debootstrap from {MIRROR}; minutes) in {tmp}")
        t0 = time.time()
        r = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "debootstrap",
                "--arch=arm64",
                "--variant=minbase",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(tmp / "rootfs"),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            env=HOST,
        )
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.fail(f"debootstrap failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        (tmp / "complete.json").write_text(json.dumps(want))
        os.rename(tmp, entry)
        say(f"root filesystem built in {time.time() - t0:.0f} s: {entry}")
    return entry / "rootfs"


def chroot(rootfs: Path, *cmd, timeout: float = 1200) -> subprocess.CompletedProcess:
    """CMD inside ROOTFS (aarch64, through binfmt_misc) with /proc mounted in a private namespace."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, str(rootfs), *map(str, cmd)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def arm64_pkg(bundle, keypair, tmp_path_factory) -> dict:
    say("packing the bundle with the aarch64 runtime (wheels cached after the first run)")
    t0 = time.time()
    r = pack_with_runtime(bundle, keypair[0], tmp_path_factory.mktemp("arm64") / "brick-1.0.0.tgz", "1.0.0", AARCH64)
    say(f"package {r['bytes'] / 1e6:.1f} MB ({len(r['runtime']['wheels'])} wheels) in {time.time() - t0:.0f} s")
    return r


def test_staged_aarch64_runtime_installs_offline_and_scores_like_x86_under_qemu(
    arm64_pkg, keypair, bundle, tiny_data, tmp_path
):
    why = emulation()
    if why:
        pytest.skip(f"aarch64 emulation unavailable: {why}")
    t0 = time.time()
    cached = bookworm_arm64()
    rootfs = tmp_path / "rootfs"
    tc = time.time()
    subprocess.run(["cp", "-a", str(cached), str(rootfs)], check=True)  # the cache stays pristine
    say(f"root filesystem copied in {time.time() - tc:.0f} s")

    r = cli("stage", arm64_pkg["package"], "--pubkey", keypair[1], "--rootfs", rootfs, "--json", check=True)
    staged = json.loads(r.stdout)
    assert staged["written"]["runtime"] == " ".join(runtime.bootstrap_command("/opt/edgesdk"))
    assert "runtime_warning" not in staged["written"]  # the image has the runtime's Python
    assert not (rootfs / "opt/edgesdk/current/runtime/venv").exists()  # stage never runs target code

    t1 = time.time()
    boot = chroot(rootfs, *runtime.bootstrap_command("/opt/edgesdk"))
    say(f"bootstrap.py under qemu: {time.time() - t1:.0f} s\n{boot.stdout.strip()}")
    assert boot.returncode == 0, boot.stdout + boot.stderr
    venv = "/opt/edgesdk/current/runtime/venv"
    probe = chroot(
        rootfs,
        f"{venv}/bin/python",
        "-c",
        "import platform, edgesdk, onnxruntime; print(platform.machine(), edgesdk.__file__, onnxruntime.__version__)",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(f"aarch64 {venv}/lib/python3.11/site-packages/edgesdk/"), probe.stdout

    imgs = [sorted((tiny_data / "brick/test/good").glob("*.png"))[0]] + sorted(
        p for p in (tiny_data / "brick/test").rglob("*.png") if p.parent.name != "good"
    )[:2]
    (rootfs / "tmp/imgs").mkdir(parents=True)
    inside = []
    for i, p in enumerate(imgs):
        shutil.copy(p, rootfs / "tmp/imgs" / f"{i}-{p.parent.name}.png")
        inside.append(f"/tmp/imgs/{i}-{p.parent.name}.png")
    t2 = time.time()
    got = chroot(rootfs, f"{venv}/bin/edgesdk", "predict", "/opt/edgesdk/current/bundle", *inside, "--json")
    say(f"predict of {len(inside)} images under qemu: {time.time() - t2:.0f} s")
    assert got.returncode == 0, got.stdout + got.stderr
    want = json.loads(cli("predict", bundle, *imgs, "--json", check=True).stdout)["results"]
    arm = json.loads(got.stdout)["results"]
    for a, x in zip(arm, want):
        say(f"{x['image']}: x86 {x['score']:.6f} aarch64 {a['score']:.6f} |diff| {abs(a['score'] - x['score']):.1e}")
    assert [a["score"] for a in arm] == pytest.approx([x["score"] for x in want], abs=1e-4)
    assert [a["is_anomalous"] for a in arm] == [x["is_anomalous"] for x in want]
    assert any(x["is_anomalous"] for x in want) and not all(x["is_anomalous"] for x in want)

    before = snapshot(rootfs / "opt/edgesdk")  # first boot again: the runtime is there, nothing to do
    again = chroot(rootfs, *runtime.bootstrap_command("/opt/edgesdk"))
    assert again.returncode == 0 and "nothing to do" in again.stdout and snapshot(rootfs / "opt/edgesdk") == before
    say(f"whole test {time.time() - t0:.0f} s")


def test_an_aarch64_runtime_is_refused_on_this_x86_machine_unless_no_runtime(arm64_pkg, keypair, tmp_path):
    if platform.machine() == "aarch64":
        pytest.skip("this machine is aarch64: the runtime is for it")
    root = tmp_path / "root"
    r = cli("install", arm64_pkg["package"], "--pubkey", keypair[1], "--root", root)
    assert r.returncode == 2 and "runtime is for aarch64" in r.stderr and "--no-runtime" in r.stderr
    assert not root.exists()
    with pytest.raises(InstallError, match="runtime is for aarch64"):
        install(arm64_pkg["package"], keypair[1], root, InstallOptions())
    rep = install(arm64_pkg["package"], keypair[1], root, InstallOptions(runtime=False))
    assert rep.ok and [s["result"] for s in rep.steps if s["step"] == "runtime"] == ["skipped"]
    assert (root / "current/runtime/wheels").is_dir() and not (root / "current/runtime/venv").exists()
