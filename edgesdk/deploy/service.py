"""`edgesdk service`: a hardened systemd unit that runs `edgesdk run` on a deployment root's `current`
model (docs/DEPLOY.md, "The service"). The unit is text; service_plan.py derives every path and device
it needs from the source and sink URIs and quotes each value for systemd; this module renders the unit,
explaining its choices in the unit's own comments, and writes it. Nothing here starts or enables
anything."""

from __future__ import annotations

import os
import pwd
import shlex
import sysconfig
from pathlib import Path, PurePosixPath

from edgesdk.deploy.service_plan import Plan, ServiceOptions, free_text, hidden, plain, plan, word
from edgesdk.errors import EdgesdkError, finite
from edgesdk.fsutil import atomic_write_text

SLOT_EXE = "runtime/venv/bin/edgesdk"  # the packaged runtime inside a slot (`pack --runtime`)
TARGET_SYSTEM_EXE = "/usr/local/bin/edgesdk"  # `pip install edgesdk` as root on JetPack's Ubuntu
HEADER = "# Written by `edgesdk service`"

# Jetson GPU/DLA nodes (L4T): nvmap allocates every CUDA/TensorRT buffer; host1x syncpoints
# (nvhost-ctrl, JetPack 6: host1x-fence); nvgpu's nodes under their legacy names (JetPack 4/5) and
# under /dev/nvgpu/igpu0 (JetPack 5.1+, 6); the DLA cores (TensorRT --dla); VIC (nvvidconv, CSI).
# DeviceAllow= takes no wildcard in a path, so each is named; a node a device lacks is skipped by
# systemd. OpenRM devices (Jetson Thor, discrete GPUs) are the char-nvidia* groups (/proc/devices).
_NVGPU = ("as", "channel", "ctrl", "ctxsw", "dbg", "nvsched", "power", "prof", "prof-ctx", "prof-dev", "sched", "tsg")
JETSON_DEVICES = (
    "/dev/nvmap",
    "/dev/nvhost-ctrl",
    "/dev/host1x-fence",
    "/dev/nvhost-gpu",
    *(f"/dev/nvhost-{n}-gpu" for n in _NVGPU if n != "channel"),
    *(f"/dev/nvgpu/igpu0/{n}" for n in _NVGPU),
    "/dev/nvhost-ctrl-nvdla0",
    "/dev/nvhost-ctrl-nvdla1",
    "/dev/nvhost-nvdla0",
    "/dev/nvhost-nvdla1",
    "/dev/nvhost-vic",
    "char-nvidia*",
)


def render(root: str, executable: str, opts: ServiceOptions, p: Plan) -> str:
    """The unit's text (plan() first: it checks OPTS)."""
    from edgesdk import __version__

    root = str(PurePosixPath(root))
    state = f"/var/lib/{opts.name}"
    argv = [
        executable,
        "run",
        f"{root}/current",
        "--source",
        opts.source,
        *(a for s in opts.sinks for a in ("--sink", s)),
    ]
    net = ["After=network-online.target", "Wants=network-online.target"] if p.network else []
    rw = [f"ReadWritePaths={' '.join(word(x) for x in p.writable)}"] if p.writable else []
    binds = [f"BindPaths={' '.join(p.binds)}"] if p.binds else []
    devices = [f"DeviceAllow={word(d) if d.startswith('/') else d} rw" for d in [*p.devices, *JETSON_DEVICES]]
    w = finite(opts.watchdog_s, "--watchdog-s")
    lines = [
        f"{HEADER} (edgesdk {__version__}); regenerate it rather than edit it, and put",
        f"# local changes in a drop-in (systemctl edit {opts.name}). docs/DEPLOY.md explains each setting.",
        "[Unit]",
        f"Description={free_text(f'edgesdk: anomaly detection with the model at {root}/current')}",
        *net,
        "",
        "[Service]",
        "# READY=1 once the model is loaded and the source open; WATCHDOG=1 from the stream loop only while",
        "# frames move through the sinks (or nothing is in flight and the source is waiting), so a stalled",
        "# inference or sink thread stops it and systemd restarts the service; RELOADING=1 on a model switch.",
        "Type=notify",
        f"ExecStart={' '.join([word(argv[0]), *(word(a, command=True) for a in argv[1:])])}",
        "# The loop re-opens current by itself when install or rollback switch it; reload does so now.",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WatchdogSec={w:g}s",
        "Restart=on-failure",
        "RestartSec=5s",
        "# Loading a model, and building or deserializing a TensorRT engine, can take minutes on a Jetson.",
        "TimeoutStartSec=5min",
        "# SIGTERM: frames already read are scored and written, then sinks close (MQTT drains its outbox).",
        "TimeoutStopSec=30s",
        f"SyslogIdentifier={opts.name}",
        f'Environment={word("HOME=" + state)} "PYTHONUNBUFFERED=1" "PYTHONFAULTHANDLER=1"',
        "",
        "# A fixed unprivileged user, not DynamicUser=: the verdicts (JSONL, dir, video sinks) and the MQTT",
        "# outbox must outlive the process and stay owned by one uid across restarts, reboots and upgrades,",
        "# in folders an administrator prepares for that user. StateDirectory= gives it /var/lib/NAME",
        "# (HOME, where the MQTT outbox lives unless outbox= says otherwise). Cameras and the Jetson GPU",
        "# nodes belong to group video.",
        f"User={opts.user}",
        f"Group={opts.user}",
        "SupplementaryGroups=video",
        f"StateDirectory={opts.name}",
        "StateDirectoryMode=0750",
        "UMask=0027",
        "",
        "# Read-only everywhere but the sinks' folders; the deployment root explicitly so.",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        f"ReadOnlyPaths={word(root)}",
        *rw,
        *binds,
        "",
        "# No device but the camera(s) and the Jetson GPU, DLA and VIC nodes (absent ones are skipped).",
        "DevicePolicy=closed",
        *devices,
        "",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "SystemCallArchitectures=native",
        "LockPersonality=yes",
        "# Not MemoryDenyWriteExecute=yes: ONNX Runtime's CPU kernels need no JIT, but on a Jetson the",
        "# NVIDIA user-space stack does (CUDA's driver, and libglvnd's dispatch stubs, mapped writable and",
        "# executable, which EGL loads for CSI cameras: NVIDIA/libglvnd#208); the filter would kill it.",
        "MemoryDenyWriteExecute=no",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "RemoveIPC=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def executable(runtime: str, root_here: Path, root_there: str, staged: bool = False) -> tuple[str, str]:
    """(path of edgesdk in the unit, "slot" | "system"). slot: ROOT/current/runtime/venv/bin/edgesdk, the
    packaged runtime (must exist under ROOT_HERE); system: this interpreter's edgesdk script (staged:
    TARGET_SYSTEM_EXE on the target); auto: slot when the current slot has a runtime, else system."""
    slot_here = root_here / "current" / SLOT_EXE
    if runtime == "slot" or (runtime == "auto" and slot_here.is_file()):
        if not slot_here.is_file():
            raise EdgesdkError(
                f"--runtime slot: {slot_here} not found (the current slot has no packaged "
                "runtime: pack it with --runtime; or nothing is installed yet)"
            )
        return f"{PurePosixPath(root_there)}/current/{SLOT_EXE}", "slot"
    if staged:
        return TARGET_SYSTEM_EXE, "system"
    exe = Path(sysconfig.get_path("scripts")) / "edgesdk"
    if not exe.is_file():
        raise EdgesdkError(
            f"--runtime system: no edgesdk script at {exe} (this Python's scripts folder); "
            "install edgesdk there, or use --runtime slot"
        )
    return str(exe), "system"


def _user_notes(opts: ServiceOptions, p: Plan) -> None:
    """On the device itself: what must exist before the unit can start."""
    try:
        pwd.getpwnam(opts.user)
    except KeyError:
        p.notes.append(
            f"user {opts.user} does not exist here: create it (systemd-sysusers with "
            f'`u {opts.user} - "edgesdk" /var/lib/{opts.name}`, or useradd --system --home-dir '
            f"/var/lib/{opts.name} --shell /usr/sbin/nologin {opts.user})"
        )
    for d in p.writable:
        if not os.path.isdir(d):
            p.notes.append(
                f"{d}: does not exist; systemd will not start the unit without it: "
                f"install -d -o {opts.user} -g {opts.user} {shlex.quote(d)}"
            )


def service(root: str | Path, out: str | Path, opts: ServiceOptions) -> dict:
    """`edgesdk service`: the unit for ROOT (a deployment root on this machine) written to OUT. OUT is
    replaced only when it is a unit this command wrote (its first line says so)."""
    root = os.path.abspath(plain(str(root), "--root"))
    p = plan(root, opts)
    exe, kind = executable(opts.runtime, Path(root), root)
    hidden(exe, "edgesdk", p)
    if not (Path(root) / "current").exists():
        p.notes.append(f"{root}/current: no model installed yet; the unit fails to start until `edgesdk install`")
    _user_notes(opts, p)
    text = render(root, exe, opts, p)
    out = Path(out)
    if out.exists() or out.is_symlink():
        try:
            mine = out.is_file() and not out.is_symlink() and out.read_text().startswith(HEADER)
        except (OSError, UnicodeDecodeError):
            mine = False
        if not mine:
            raise EdgesdkError(f"{out}: exists and was not written by `edgesdk service`; not replaced (move it away)")
    atomic_write_text(out, text)
    return {
        "unit": str(out),
        "executable": exe,
        "runtime": kind,
        "root": root,
        "writable": p.writable,
        "devices": p.devices,
        "notes": p.notes,
        "text": text,
    }
