"""`edgesdk service`: a hardened systemd unit that runs `edgesdk run` on a deployment root's `current`
model (docs/DEPLOY.md, "The service"). The unit is text; this module derives every path and device it
needs from the source and sink URIs, quotes each value for systemd, and explains its choices in the
unit's own comments. Nothing here starts or enables anything.

Values reach systemd through three parsers: command lines (quotes, C escapes, `%` specifiers, `$`
variables), path lists (quotes, escapes, specifiers) and free text (specifiers). Every value is
written double-quoted with `\\` and `"` escaped, `%` doubled, and `$` doubled in command arguments; a
control character (newline, tab, ...) is refused: no unit syntax can carry it."""
from __future__ import annotations

import os
import pwd
import re
import shlex
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlsplit

from edgesdk.errors import EdgesdkError, OptionError, finite
from edgesdk.fsutil import atomic_write_text

SLOT_EXE = "runtime/venv/bin/edgesdk"      # the packaged runtime inside a slot (`pack --runtime`)
TARGET_SYSTEM_EXE = "/usr/local/bin/edgesdk"   # `pip install edgesdk` as root on JetPack's Ubuntu
HEADER = "# Written by `edgesdk service`"
RUNTIMES = ("auto", "system", "slot")
ARGUS_SOCKET = "/tmp/argus_socket"         # nvargus-daemon's socket: CSI cameras go through it

# Jetson GPU/DLA nodes (L4T): nvmap allocates every CUDA/TensorRT buffer; host1x syncpoints
# (nvhost-ctrl, JetPack 6: host1x-fence); nvgpu's nodes under their legacy names (JetPack 4/5) and
# under /dev/nvgpu/igpu0 (JetPack 5.1+, 6); the DLA cores (TensorRT --dla); VIC (nvvidconv, CSI).
# DeviceAllow= takes no wildcard in a path, so each is named; a node a device lacks is skipped by
# systemd. OpenRM devices (Jetson Thor, discrete GPUs) are the char-nvidia* groups (/proc/devices).
_NVGPU = ("as", "channel", "ctrl", "ctxsw", "dbg", "nvsched", "power", "prof", "prof-ctx", "prof-dev", "sched", "tsg")
JETSON_DEVICES = (
    "/dev/nvmap", "/dev/nvhost-ctrl", "/dev/host1x-fence", "/dev/nvhost-gpu",
    *(f"/dev/nvhost-{n}-gpu" for n in _NVGPU if n != "channel"),
    *(f"/dev/nvgpu/igpu0/{n}" for n in _NVGPU),
    "/dev/nvhost-ctrl-nvdla0", "/dev/nvhost-ctrl-nvdla1", "/dev/nvhost-nvdla0", "/dev/nvhost-nvdla1",
    "/dev/nvhost-vic", "char-nvidia*",
)
# Every unit this project writes (the run service, the fleet agent) runs with these.
SANDBOX = (
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
)
# Hidden from the service by ProtectHome=yes / PrivateTmp=yes: a path there is another, empty folder.
_HIDDEN = {"/home": "ProtectHome=yes", "/root": "ProtectHome=yes", "/run/user": "ProtectHome=yes",
           "/tmp": "PrivateTmp=yes", "/var/tmp": "PrivateTmp=yes"}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ServiceOptions:
    source: str
    sinks: tuple[str, ...]
    user: str = "edgesdk"
    name: str = "edgesdk"              # SyslogIdentifier, StateDirectory (/var/lib/NAME)
    watchdog_s: float = 10.0
    device_allow: tuple[str, ...] = ()
    runtime: str = "auto"              # auto | system | slot


@dataclass
class Plan:
    """What the unit needs, derived from the URIs: writable folders, devices, binds, network."""
    writable: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)
    network: bool = False
    notes: list[str] = field(default_factory=list)    # things to do or know; not errors


def _plain(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise OptionError(f"{what}: a non-empty text is needed")
    if _CTRL.search(value):
        raise OptionError(f"{what} {value!r}: contains a control character (newline, tab, ...), which a systemd "
                          "unit cannot carry")
    return value


def word(value: str, command: bool = False) -> str:
    """VALUE as one double-quoted word of a unit file: `\\` and `"` escaped, `%` doubled (no specifier);
    an argument of a command line (COMMAND; not the executable, which systemd takes as it is) has `$`
    doubled too (no variable)."""
    _plain(value, "value")
    v = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (v.replace("$", "$$") if command else v) + '"'


def _text(value: str) -> str:
    """Free text (Description=): specifiers only."""
    return _plain(value, "value").replace("%", "%%")


def _absolute(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts:
        raise OptionError(f"{what} {path!r}: the service needs an absolute path without '..' (it has no "
                          "current folder)")
    return str(p)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _hidden(path: str, what: str, plan: Plan) -> None:
    for top, why in _HIDDEN.items():
        if _under(path, top):
            plan.notes.append(f"{what} {path}: the service cannot see it ({why} gives it an empty {top}); "
                              "move it elsewhere")


def _sink_folder(uri: str, state_dir: str, plan: Plan) -> None:
    from edgesdk.video.options import host_port, scheme_of, split_file_uri
    from edgesdk.video.sinks import SINKS

    scheme = scheme_of(uri)
    if scheme not in SINKS:
        raise OptionError(f"--sink {uri}: unsupported sink scheme {scheme!r}; supported: "
                          + ", ".join(f"{s}://" for s in sorted(SINKS)))
    if scheme in ("jsonl", "dir", "video"):
        path = _absolute(split_file_uri(uri)[0], f"--sink {uri}:")
        # jsonl rotates beside its file, video renames into it; dir writes inside its own folder
        folder = path if scheme == "dir" else str(PurePosixPath(path).parent)
    elif scheme == "mqtt":
        plan.network = True
        outbox = dict(parse_qsl(urlsplit(uri).query)).get("outbox")
        if not outbox:
            return                         # the default outbox is under HOME = the state directory
        folder = str(PurePosixPath(_absolute(outbox, f"--sink {uri}: outbox")).parent)   # SQLite adds -wal, -shm
    else:                                   # http preview
        plan.network = True
        if host_port(uri, 8080)[1] < 1024:
            raise OptionError(f"--sink {uri}: the service has no capabilities, so it cannot listen on a port "
                              "below 1024; use 1024 or above")
        return
    _hidden(folder, f"--sink {uri}: folder", plan)
    if not _under(folder, state_dir) and folder not in plan.writable:
        plan.writable.append(folder)


def _source(uri: str, plan: Plan) -> None:
    from edgesdk.video.options import scheme_of, split_file_uri
    from edgesdk.video.sources import NETWORK, SOURCES

    scheme = scheme_of(uri) or "file"
    if scheme not in SOURCES:
        raise OptionError(f"--source {uri}: unsupported source scheme {scheme!r}")
    if scheme == "v4l2":
        dev = urlsplit(uri).path or "/dev/video0"
        if not dev.startswith("/dev/"):
            raise OptionError(f"--source {uri}: a V4L2 camera is v4l2:///dev/videoN")
        plan.devices.append(dev)
    elif scheme == "csi":
        plan.binds.append(f"-{ARGUS_SOCKET}")   # "-": a machine without nvargus-daemon still starts
        plan.notes.append(f"--source {uri}: CSI cameras are read through nvargus-daemon; its socket "
                          f"{ARGUS_SOCKET} is bound into the private /tmp (restart the service after "
                          "restarting nvargus-daemon)")
    elif scheme in NETWORK:
        plan.network = True
    elif scheme == "file":
        path = _absolute(split_file_uri(uri)[0], f"--source {uri}:")
        _hidden(path, f"--source {uri}:", plan)


def _device(spec: str) -> str:
    _plain(spec, "--device-allow")
    if not (spec.startswith("/dev/") or re.fullmatch(r"(char|block)-[A-Za-z0-9_.*?:-]+", spec)):
        raise OptionError(f"--device-allow {spec!r}: a device node under /dev/, or char-GROUP / block-GROUP "
                          "as /proc/devices names it")
    if spec.startswith("/dev/"):
        _absolute(spec, "--device-allow")
    return spec


def plan(root: str, opts: ServiceOptions, root_flag: str = "--root") -> Plan:
    """Check OPTS against ROOT (the deployment root as the unit names it, given as ROOT_FLAG) and derive
    what the unit needs; an OptionError names the flag and value that cannot go into a unit."""
    _absolute(_plain(root, root_flag), root_flag)
    _plain(opts.source, "--source")
    if not opts.sinks:
        raise OptionError("--sink: at least one sink (the verdicts must go somewhere)")
    for s in opts.sinks:
        _plain(s, "--sink")
    if not _USER.fullmatch(opts.user) or opts.user == "root":
        raise OptionError(f"--user {opts.user!r}: an unprivileged system user's name (lower case letters, digits, "
                          "_ and -; not root)")
    if not _NAME.fullmatch(opts.name):
        raise OptionError(f"--name {opts.name!r}: letters, digits, '_', '.' and '-' (it names /var/lib/NAME)")
    w = finite(opts.watchdog_s, "--watchdog-s")
    if not 1 <= w <= 3600:
        raise OptionError(f"--watchdog-s {opts.watchdog_s!r}: from 1 to 3600 seconds")
    if opts.runtime not in RUNTIMES:
        raise OptionError(f"--runtime {opts.runtime!r}: one of {', '.join(RUNTIMES)}")
    p = Plan()
    _hidden(root, root_flag, p)
    _source(opts.source, p)
    for s in opts.sinks:
        _sink_folder(s, f"/var/lib/{opts.name}", p)
    for top in p.writable:
        if _under(top, root) or _under(root, top):
            raise OptionError(f"{top}: a sink may not write inside the deployment root {root} (the service keeps it "
                              "read-only; install and gc own it)")
    for d in opts.device_allow:
        if _device(d) not in p.devices:
            p.devices.append(d)
    return p


def device_allow(devices: list[str]) -> list[str]:
    """DeviceAllow= lines: DEVICES, then the Jetson GPU, DLA and VIC nodes."""
    return [f"DeviceAllow={word(d) if d.startswith('/') else d} rw" for d in [*devices, *JETSON_DEVICES]]


def render(root: str, executable: str, opts: ServiceOptions, p: Plan) -> str:
    """The unit's text (plan() first: it checks OPTS)."""
    from edgesdk import __version__

    root = str(PurePosixPath(root))
    state = f"/var/lib/{opts.name}"
    argv = [executable, "run", f"{root}/current", "--source", opts.source,
            *(a for s in opts.sinks for a in ("--sink", s))]
    net = ["After=network-online.target", "Wants=network-online.target"] if p.network else []
    rw = [f"ReadWritePaths={' '.join(word(x) for x in p.writable)}"] if p.writable else []
    binds = [f"BindPaths={' '.join(p.binds)}"] if p.binds else []
    w = finite(opts.watchdog_s, "--watchdog-s")
    lines = [
        f"{HEADER} (edgesdk {__version__}); regenerate it rather than edit it, and put",
        f"# local changes in a drop-in (systemctl edit {opts.name}). docs/DEPLOY.md explains each setting.",
        "[Unit]",
        f"Description={_text(f'edgesdk: anomaly detection with the model at {root}/current')}",
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
        f"Environment={word('HOME=' + state)} \"PYTHONUNBUFFERED=1\" \"PYTHONFAULTHANDLER=1\"",
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
        *device_allow(p.devices),
        "",
        *SANDBOX,
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
            raise EdgesdkError(f"--runtime slot: {slot_here} not found (the current slot has no packaged "
                               "runtime: pack it with --runtime; or nothing is installed yet)")
        return f"{PurePosixPath(root_there)}/current/{SLOT_EXE}", "slot"
    if staged:
        return TARGET_SYSTEM_EXE, "system"
    exe = Path(sysconfig.get_path("scripts")) / "edgesdk"
    if not exe.is_file():
        raise EdgesdkError(f"--runtime system: no edgesdk script at {exe} (this Python's scripts folder); "
                           "install edgesdk there, or use --runtime slot")
    return str(exe), "system"


def user_notes(user: str, name: str, p: Plan) -> None:
    """On the device itself: what must exist before the unit can start."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        p.notes.append(f"user {user} does not exist here: create it (systemd-sysusers with "
                       f"`u {user} - \"edgesdk\" /var/lib/{name}`, or useradd --system --home-dir "
                       f"/var/lib/{name} --shell /usr/sbin/nologin {user})")
    for d in p.writable:
        if not os.path.isdir(d):
            p.notes.append(f"{d}: does not exist; systemd will not start the unit without it: "
                           f"install -d -o {user} -g {user} {shlex.quote(d)}")


def write_own(out: Path, text: str) -> None:
    """TEXT to OUT, replacing OUT only when it is a unit this project wrote (its first line says so)."""
    if out.exists() or out.is_symlink():
        try:
            mine = out.is_file() and not out.is_symlink() and out.read_text().startswith(HEADER)
        except (OSError, UnicodeDecodeError):
            mine = False
        if not mine:
            raise EdgesdkError(f"{out}: exists and was not written by `edgesdk service`; not replaced (move it away)")
    atomic_write_text(out, text)


def service(root: str | Path, out: str | Path, opts: ServiceOptions) -> dict:
    """`edgesdk service`: the unit for ROOT (a deployment root on this machine) written to OUT. OUT is
    replaced only when it is a unit this command wrote (its first line says so)."""
    root = os.path.abspath(_plain(str(root), "--root"))
    p = plan(root, opts)
    exe, kind = executable(opts.runtime, Path(root), root)
    _hidden(exe, "edgesdk", p)
    if not (Path(root) / "current").exists():
        p.notes.append(f"{root}/current: no model installed yet; the unit fails to start until `edgesdk install`")
    user_notes(opts.user, opts.name, p)
    text = render(root, exe, opts, p)
    out = Path(out)
    write_own(out, text)
    return {"unit": str(out), "executable": exe, "runtime": kind, "root": root, "writable": p.writable,
            "devices": p.devices, "notes": p.notes, "text": text}


def stage_unit(rootfs: str | Path, prefix: str, opts: ServiceOptions, unit_name: str) -> dict:
    """After `stage` installed into ROOTFS/PREFIX: the unit for the target (PREFIX, not the host path)
    under ROOTFS/etc/systemd/system with its multi-user.target.wants link (stage.write_unit), and a
    sysusers.d entry that makes the user on the target's first boot."""
    from edgesdk.deploy.stage import write_unit

    p = plan(prefix, opts, "--prefix")
    root_here = Path(rootfs).joinpath(*PurePosixPath(prefix).parts[1:])
    exe, kind = executable(opts.runtime, root_here, prefix, staged=True)
    written = write_unit(Path(rootfs), render(prefix, exe, opts, p), unit_name)
    users = Path(rootfs) / "etc" / "sysusers.d" / f"{opts.name}.conf"
    atomic_write_text(users, f"# written by `edgesdk stage`: the user {unit_name} runs as (systemd-sysusers)\n"
                             f"u {opts.user} - \"edgesdk\" /var/lib/{opts.name} -\n")
    return {**written, "sysusers": str(users), "executable": exe, "runtime": kind, "notes": p.notes}
