"""What the unit of `edgesdk service` needs (deploy/service.py writes it): its options, each checked and
quoted for systemd, and the Plan derived from the source and sink URIs: writable folders, devices,
binds, network, and notes for the person installing it.

Values reach systemd through three parsers: command lines (quotes, C escapes, `%` specifiers, `$`
variables), path lists (quotes, escapes, specifiers) and free text (specifiers). Every value is
written double-quoted with `\\` and `"` escaped, `%` doubled, and `$` doubled in command arguments; a
control character (newline, tab, ...) is refused: no unit syntax can carry it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, urlsplit

from edgesdk.errors import OptionError, finite

RUNTIMES = ("auto", "system", "slot")
ARGUS_SOCKET = "/tmp/argus_socket"  # nvargus-daemon's socket: CSI cameras go through it

# Hidden from the service by ProtectHome=yes / PrivateTmp=yes: a path there is another, empty folder.
_HIDDEN = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
}
# a unit name, /var/lib/NAME and HOME: starting with a letter or digit, so never ".", ".." (/var itself) or an option
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ServiceOptions:
    source: str
    sinks: tuple[str, ...]
    user: str = "edgesdk"
    name: str = "edgesdk"  # SyslogIdentifier, StateDirectory (/var/lib/NAME)
    watchdog_s: float = 10.0
    device_allow: tuple[str, ...] = ()
    runtime: str = "auto"  # auto | system | slot


@dataclass
class Plan:
    """What the unit needs, derived from the URIs: writable folders, devices, binds, network."""

    writable: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)
    network: bool = False
    notes: list[str] = field(default_factory=list)  # things to do or know; not errors


def check_user_and_name(user: str, name: str) -> None:
    """--user and --name of a unit: both end up in systemd settings and paths (/var/lib/NAME)."""
    if not _USER.fullmatch(user) or user == "root":
        raise OptionError(
            f"--user {user!r}: an unprivileged system user's name (lower case letters, digits, _ and -; not root)"
        )
    if not _NAME.fullmatch(name):
        raise OptionError(
            f"--name {name!r}: a letter or digit, then letters, digits, '_', '.' and '-' (it names /var/lib/NAME)"
        )


def plain(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise OptionError(f"{what}: a non-empty text is needed")
    if _CTRL.search(value):
        raise OptionError(
            f"{what} {value!r}: contains a control character (newline, tab, ...), which a systemd unit cannot carry"
        )
    return value


def word(value: str, command: bool = False) -> str:
    """VALUE as one double-quoted word of a unit file: `\\` and `"` escaped, `%` doubled (no specifier);
    an argument of a command line (COMMAND; not the executable, which systemd takes as it is) has `$`
    doubled too (no variable)."""
    plain(value, "value")
    v = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (v.replace("$", "$$") if command else v) + '"'


def free_text(value: str) -> str:
    """Free text (Description=): specifiers only."""
    return plain(value, "value").replace("%", "%%")


def _absolute(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts:
        raise OptionError(
            f"{what} {path!r}: the service needs an absolute path without '..' (it has no current folder)"
        )
    return str(p)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def hidden(path: str, what: str, plan: Plan) -> None:
    for top, why in _HIDDEN.items():
        if _under(path, top):
            plan.notes.append(
                f"{what} {path}: the service cannot see it ({why} gives it an empty {top}); move it elsewhere"
            )


def _sink_folder(uri: str, state_dir: str, plan: Plan) -> None:
    from edgesdk.video.options import host_port, scheme_of, split_file_uri
    from edgesdk.video.sinks import SINKS

    scheme = scheme_of(uri)
    if scheme not in SINKS:
        raise OptionError(
            f"--sink {uri}: unsupported sink scheme {scheme!r}; supported: "
            + ", ".join(f"{s}://" for s in sorted(SINKS))
        )
    if scheme in ("jsonl", "dir", "video"):
        path = _absolute(split_file_uri(uri)[0], f"--sink {uri}:")
        # jsonl rotates beside its file, video renames into it; dir writes inside its own folder
        folder = path if scheme == "dir" else str(PurePosixPath(path).parent)
    elif scheme == "mqtt":
        plan.network = True
        outbox = dict(parse_qsl(urlsplit(uri).query)).get("outbox")
        if not outbox:
            return  # the default outbox is under HOME = the state directory
        folder = str(PurePosixPath(_absolute(outbox, f"--sink {uri}: outbox")).parent)  # SQLite adds -wal, -shm
    else:  # http preview
        plan.network = True
        if host_port(uri, 8080)[1] < 1024:
            raise OptionError(
                f"--sink {uri}: the service has no capabilities, so it cannot listen on a port "
                "below 1024; use 1024 or above"
            )
        return
    hidden(folder, f"--sink {uri}: folder", plan)
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
        plan.binds.append(f"-{ARGUS_SOCKET}")  # "-": a machine without nvargus-daemon still starts
        plan.notes.append(
            f"--source {uri}: CSI cameras are read through nvargus-daemon; its socket "
            f"{ARGUS_SOCKET} is bound into the private /tmp (restart the service after "
            "restarting nvargus-daemon)"
        )
    elif scheme in NETWORK:
        plan.network = True
    elif scheme == "file":
        path = _absolute(split_file_uri(uri)[0], f"--source {uri}:")
        hidden(path, f"--source {uri}:", plan)


def _device(spec: str) -> str:
    plain(spec, "--device-allow")
    if not (spec.startswith("/dev/") or re.fullmatch(r"(char|block)-[A-Za-z0-9_.*?:-]+", spec)):
        raise OptionError(
            f"--device-allow {spec!r}: a device node under /dev/, or char-GROUP / block-GROUP as /proc/devices names it"
        )
    if spec.startswith("/dev/"):
        _absolute(spec, "--device-allow")
    return spec


def plan(root: str, opts: ServiceOptions, root_flag: str = "--root") -> Plan:
    """Check OPTS against ROOT (the deployment root as the unit names it, given as ROOT_FLAG) and derive
    what the unit needs; an OptionError names the flag and value that cannot go into a unit."""
    _absolute(plain(root, root_flag), root_flag)
    plain(opts.source, "--source")
    if not opts.sinks:
        raise OptionError("--sink: at least one sink (the verdicts must go somewhere)")
    for s in opts.sinks:
        plain(s, "--sink")
    check_user_and_name(opts.user, opts.name)
    w = finite(opts.watchdog_s, "--watchdog-s")
    if not 1 <= w <= 3600:
        raise OptionError(f"--watchdog-s {opts.watchdog_s!r}: from 1 to 3600 seconds")
    if opts.runtime not in RUNTIMES:
        raise OptionError(f"--runtime {opts.runtime!r}: one of {', '.join(RUNTIMES)}")
    p = Plan()
    hidden(root, root_flag, p)
    _source(opts.source, p)
    for s in opts.sinks:
        _sink_folder(s, f"/var/lib/{opts.name}", p)
    for top in p.writable:
        if _under(top, root) or _under(root, top):
            raise OptionError(
                f"{top}: a sink may not write inside the deployment root {root} (the service keeps it "
                "read-only; install and gc own it)"
            )
    for d in opts.device_allow:
        if _device(d) not in p.devices:
            p.devices.append(d)
    return p
