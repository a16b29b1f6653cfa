"""Stage a package into a target root filesystem (a folder that becomes a device's image; never run
here): the very install of slots.py, rooted at ROOTFS/PREFIX, plus the device's config.

  ROOTFS/opt/edgesdk/           slots/, current, previous, history.jsonl (as `edgesdk install` makes them)
  ROOTFS/etc/edgesdk/edgesdk.pub   the key the device verifies packages with
  ROOTFS/etc/edgesdk/config.toml   root, pubkey, device
  ROOTFS/etc/systemd/system/UNIT + multi-user.target.wants/UNIT   only when unit text is given

No engine is built (the target's TensorRT builds it when it installs). The health check verifies the
files and scores the parity frames (and the golden set) with this host's ONNX Runtime CPU: it proves the
slot is intact and the model right, not the target's speed. A packed runtime is only extracted (its
wheels and bootstrap.py): the target builds runtime/venv at first boot with runtime.bootstrap_command().
stage_with_unit adds the service unit of `edgesdk service` for the target (`edgesdk stage --source/--sink`).
Works as a normal user on a plain folder."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from edgesdk.deploy import keys, runtime
from edgesdk.deploy.service import executable, render
from edgesdk.deploy.service_plan import ServiceOptions, plan
from edgesdk.deploy.slots import InstallError, InstallOptions, Report, install
from edgesdk.fsutil import atomic_write_text

DEFAULT_PREFIX = "/opt/edgesdk"
UNIT_NAME = "edgesdk.service"


def _inside(rootfs: Path, prefix: str, what: str) -> Path:
    p = PurePosixPath(prefix)
    if not p.is_absolute() or ".." in p.parts:
        raise InstallError(f"{what} {prefix!r}: must be an absolute path without '..' (a path on the target)")
    return rootfs.joinpath(*p.parts[1:])


def stage(
    package: str | Path,
    pubkey: str | Path,
    rootfs: str | Path,
    prefix: str = DEFAULT_PREFIX,
    device: str | None = None,
    golden: str | None = None,
    keep: int = 3,
    allow_downgrade: bool = False,
    unit_text: str | None = None,
    unit_name: str = UNIT_NAME,
) -> tuple[Report, dict]:
    """Install PACKAGE into ROOTFS/PREFIX for DEVICE (required when the package names devices) and
    write the device's config; with UNIT_TEXT, also the systemd unit and its multi-user.target.wants
    link (the hook `edgesdk service` fills). Returns the install report and the files written."""
    rootfs = Path(rootfs)
    if not rootfs.is_dir():
        raise InstallError(f"{rootfs}: root filesystem folder not found")
    root = _inside(rootfs, prefix, "--prefix")
    pub = keys.load_public(pubkey)
    if unit_text is not None and (not unit_name.endswith(".service") or "/" in unit_name):
        raise InstallError(f"unit name {unit_name!r}: a file name ending in .service")
    opts = InstallOptions(golden=golden, allow_downgrade=allow_downgrade, keep=keep, device=device, staged=True)
    rep = install(package, pubkey, root, opts)
    written = {}
    if rep.ok:
        etc = rootfs / "etc" / "edgesdk"
        atomic_write_text(etc / keys.PUB_FILE, pub.text())
        config = (
            f"# written by `edgesdk stage`: where the device finds its model and key\n"
            f'root = "{prefix}"\npubkey = "/etc/edgesdk/{keys.PUB_FILE}"\ndevice = "{rep.device}"\n'
        )
        atomic_write_text(etc / "config.toml", config)
        written = {"pubkey": str(etc / keys.PUB_FILE), "config": str(etc / "config.toml")}
        if unit_text is not None:
            written.update(write_unit(rootfs, unit_text, unit_name))
        written.update(_runtime_note(rootfs, root / "slots" / rep.slot, prefix))
    return rep, written


def _runtime_note(rootfs: Path, slot: Path, prefix: str) -> dict:
    """The command that builds the staged runtime on the target, and whether ROOTFS has its Python."""
    from edgesdk.deploy.layout import slot_manifest

    rt = slot_manifest(slot).runtime
    if not rt:
        return {}
    out = {"runtime": " ".join(runtime.bootstrap_command(prefix))}
    if not (rootfs / "usr" / "bin" / f"python{rt['python']}").exists():
        out["runtime_warning"] = (
            f"{rootfs}/usr/bin/python{rt['python']} not found: the packed runtime needs "
            f"Python {rt['python']} on the target"
        )
    return out


def write_unit(rootfs: Path, unit_text: str, unit_name: str = UNIT_NAME) -> dict:
    """ROOTFS/etc/systemd/system/UNIT_NAME and its multi-user.target.wants link (what `systemctl enable`
    makes; relative, so it resolves inside the image and on the device)."""
    system = rootfs / "etc" / "systemd" / "system"
    atomic_write_text(system / unit_name, unit_text)
    wants = system / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit_name
    tmp = wants / f".{unit_name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"../{unit_name}", tmp)
    os.replace(tmp, link)
    return {"unit": str(system / unit_name), "wants": str(link)}


def stage_with_unit(
    package: str | Path,
    pubkey: str | Path,
    rootfs: str | Path,
    prefix: str = DEFAULT_PREFIX,
    service: ServiceOptions | None = None,
    unit_name: str = UNIT_NAME,
    device: str | None = None,
    golden: str | None = None,
    keep: int = 3,
    allow_downgrade: bool = False,
) -> tuple[Report, dict, list[str]]:
    """`edgesdk stage`: stage(), and with SERVICE the unit that runs `edgesdk run` on the target, with its
    sysusers.d entry. SERVICE is checked against PREFIX before anything is installed and the unit is
    written after the install, so that --runtime auto finds the runtime of the slot that is now current.
    Returns the install report, the files written, and notes for the person preparing the image."""
    if service is not None:
        plan(prefix, service, "--prefix")
    rep, written = stage(
        package, pubkey, rootfs, prefix, device=device, golden=golden, keep=keep, allow_downgrade=allow_downgrade
    )
    notes: list[str] = []
    if service is not None and rep.ok:
        u = _unit(rootfs, prefix, service, unit_name)
        written.update({k: u[k] for k in ("unit", "wants", "sysusers", "executable")})
        notes = u["notes"]
    return rep, written, notes


def _unit(rootfs: str | Path, prefix: str, opts: ServiceOptions, unit_name: str) -> dict:
    """After `stage` installed into ROOTFS/PREFIX: the unit for the target (PREFIX, not the host path)
    under ROOTFS/etc/systemd/system with its multi-user.target.wants link (write_unit), and a
    sysusers.d entry that makes the user on the target's first boot."""
    p = plan(prefix, opts, "--prefix")
    root_here = Path(rootfs).joinpath(*PurePosixPath(prefix).parts[1:])
    exe, kind = executable(opts.runtime, root_here, prefix, staged=True)
    written = write_unit(Path(rootfs), render(prefix, exe, opts, p), unit_name)
    users = Path(rootfs) / "etc" / "sysusers.d" / f"{opts.name}.conf"
    atomic_write_text(
        users,
        f"# written by `edgesdk stage`: the user {unit_name} runs as (systemd-sysusers)\n"
        f'u {opts.user} - "edgesdk" /var/lib/{opts.name} -\n',
    )
    return {**written, "sysusers": str(users), "executable": exe, "runtime": kind, "notes": p.notes}
