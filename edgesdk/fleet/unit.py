"""`edgesdk service --agent`: the hardened systemd unit that runs `edgesdk agent` (docs/FLEET.md). It
takes the run service's sandbox, user, quoting and device list from edgesdk.deploy.service and
service_plan, and differs where the agent does: it writes the deployment root (slots, current, the
fleet record), talks to the broker, sends no readiness (it reconnects by itself, so a broker that is
down at boot is not a failed start), and may take minutes to stop (the install under way finishes).

The broker password never enters the unit or the command line: the unit names the password file,
whose first line the agent reads. Every path is checked here, on the device, before the unit is
written: absolute (a unit has no current folder) and present."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgesdk.deploy.service import HEADER, SANDBOX, device_allow, executable, user_notes, write_own
from edgesdk.deploy.service_plan import (
    RUNTIMES,
    Plan,
    _absolute,
    check_user_and_name,
    free_text,
    hidden,
    plain,
    word,
)
from edgesdk.errors import OptionError, finite
from edgesdk.fleet import topics


@dataclass(frozen=True)
class AgentUnitOptions:
    """The agent's own options (`edgesdk agent --help`); None leaves the agent's default. The broker
    login is broker_user / broker_password_file (`service` has a --user of its own: the system user)."""

    broker: str
    group: str
    device_id: str
    pubkey: str
    golden: str | None = None
    tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    broker_user: str | None = None
    broker_password_file: str | None = None
    device: str | None = None  # device profile: a shipped name, or an absolute path to a .toml
    keep: int | None = None
    max_latency_ms: float | None = None
    heartbeat_s: float | None = None
    fetch_timeout_s: float | None = None
    user: str = "edgesdk"  # the system user: the run service's, so both read the same slots
    name: str = "edgesdk-agent"  # SyslogIdentifier, StateDirectory (/var/lib/NAME)
    runtime: str = "auto"  # auto | system | slot, as for the run service


def _file(path: str, flag: str, plan: Plan, folder: bool = False) -> str:
    _absolute(plain(path, flag), flag)
    if not (Path(path).is_dir() if folder else Path(path).is_file()):
        raise OptionError(f"{flag} {path}: {'folder' if folder else 'file'} not found")
    hidden(path, flag, plan)
    return path


def _positive(value: float | None, flag: str) -> None:
    if value is not None and not finite(value, flag) > 0:
        raise OptionError(f"{flag} {value!r}: must be positive")


def check(root: str, o: AgentUnitOptions) -> Plan:
    """Check O as the agent will (names, broker, key, golden set, profile) and against what a unit can
    carry; an OptionError (or the agent's own error) names the flag. The Plan's writable is ROOT."""
    from edgesdk.deploy.keys import load_public
    from edgesdk.fleet.broker import parse_broker, read_password

    for flag, value in (
        ("--broker", o.broker),
        ("--group", o.group),
        ("--device-id", o.device_id),
        ("--pubkey", o.pubkey),
    ):
        if not value:
            raise OptionError(f"service --agent: {flag} is required (the agent's own {flag})")
    topics.check_name(o.group, "--group")
    topics.check_name(o.device_id, "--device-id")
    _absolute(plain(root, "--root"), "--root")
    if PurePosixPath(root) == PurePosixPath("/"):
        raise OptionError("--root /: the agent writes its deployment root; give a folder of its own")
    check_user_and_name(o.user, o.name)
    p = Plan(writable=[str(PurePosixPath(root))], network=True)
    hidden(root, "--root", p)
    load_public(_file(o.pubkey, "--pubkey", p))
    if o.golden is not None:
        from edgesdk.deploy.package import golden_files

        golden_files(_file(o.golden, "--golden", p, folder=True))
    for flag, path in (("--cafile", o.cafile), ("--certfile", o.certfile), ("--keyfile", o.keyfile)):
        if path is not None:
            _file(path, flag, p)
    if o.broker_user is not None:
        plain(o.broker_user, "--broker-user")
    if o.broker_password_file is not None:
        if o.broker_user is None:
            raise OptionError("--broker-password-file: give --broker-user too")
        pw = _file(o.broker_password_file, "--broker-password-file", p)
        try:
            read_password(pw)
        except OptionError as e:
            raise OptionError(str(e).replace("--password-file", "--broker-password-file", 1)) from None
        if os.stat(pw).st_mode & 0o004:
            p.notes.append(f"--broker-password-file {pw}: every user can read it; chown root:{o.user} and chmod 0640")
    parse_broker(
        plain(o.broker, "--broker"),
        cafile=o.cafile,
        certfile=o.certfile,
        keyfile=o.keyfile,
        user=o.broker_user,
        tls=o.tls,
    )
    if o.device is not None:
        from edgesdk.devices import load_profile

        dev = plain(o.device, "--device")
        if "/" in dev or dev.endswith(".toml"):
            _file(dev, "--device", p)
        try:
            load_profile(dev)
        except FileNotFoundError as e:
            raise OptionError(f"--device {dev}: {e}") from None
    if o.keep is not None and (isinstance(o.keep, bool) or not isinstance(o.keep, int) or o.keep < 1):
        raise OptionError(f"--keep {o.keep!r}: keep at least 1 slot")
    for flag, number in (
        ("--max-latency-ms", o.max_latency_ms),
        ("--heartbeat", o.heartbeat_s),
        ("--fetch-timeout", o.fetch_timeout_s),
    ):
        _positive(number, flag)
    return p


def argv(root: str, exe: str, o: AgentUnitOptions) -> list[str]:
    """The agent's command line as the unit runs it (check() first)."""
    out = [
        exe,
        "agent",
        "--broker",
        o.broker,
        "--group",
        o.group,
        "--device-id",
        o.device_id,
        "--root",
        root,
        "--pubkey",
        o.pubkey,
    ]
    flags: list[tuple[str, object]] = [
        ("--golden", o.golden),
        ("--cafile", o.cafile),
        ("--certfile", o.certfile),
        ("--keyfile", o.keyfile),
        ("--user", o.broker_user),
        ("--password-file", o.broker_password_file),
        ("--device", o.device),
        ("--keep", o.keep),
        ("--max-latency-ms", o.max_latency_ms),
        ("--heartbeat", o.heartbeat_s),
        ("--fetch-timeout", o.fetch_timeout_s),
    ]
    out += ["--tls"] if o.tls else []
    for flag, value in flags:
        if value is not None:
            out += [flag, str(value if isinstance(value, (str, int)) else finite(value, flag))]
    return out


def render(root: str, exe: str, o: AgentUnitOptions, p: Plan) -> str:
    """The unit's text (check() first)."""
    from edgesdk import __version__

    root = str(PurePosixPath(root))
    args = argv(root, exe, o)
    lines = [
        f"{HEADER} --agent (edgesdk {__version__}); regenerate it rather than edit it, and put",
        f"# local changes in a drop-in (systemctl edit {o.name}). docs/FLEET.md explains the agent.",
        "[Unit]",
        f"Description={free_text(f'edgesdk agent: {o.group}/{o.device_id}, signed releases into {root}')}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "# No readiness to wait for: the agent reconnects to the broker by itself (1 to 8 s apart), so a",
        "# broker that is down at boot is not a failed start.",
        "Type=simple",
        f"ExecStart={' '.join([word(args[0]), *(word(a, command=True) for a in args[1:])])}",
        "Restart=on-failure",
        "RestartSec=5s",
        "# SIGTERM: the install under way finishes (a TensorRT engine build takes minutes), then the agent",
        "# publishes online: false and its state. Killed after this, it resumes that install when it starts.",
        "TimeoutStopSec=5min",
        f"SyslogIdentifier={o.name}",
        f'Environment={word("HOME=/var/lib/" + o.name)} "PYTHONUNBUFFERED=1" "PYTHONFAULTHANDLER=1"',
        "",
        "# The run service's user: the slots the agent installs are the ones `edgesdk run` reads. The broker",
        "# password stays in --password-file (its first line), which this user reads: chown root:USER, chmod",
        "# 0640. StateDirectory= gives it /var/lib/NAME (HOME). The health check runs the model on the GPU,",
        "# whose Jetson nodes belong to group video.",
        f"User={o.user}",
        f"Group={o.user}",
        "SupplementaryGroups=video",
        f"StateDirectory={o.name}",
        "StateDirectoryMode=0750",
        "UMask=0027",
        "",
        "# Read-only everywhere but the deployment root: install writes slots, current and the fleet record.",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        f"ReadWritePaths={' '.join(word(x) for x in p.writable)}",
        "",
        "# No camera: only the Jetson GPU, DLA and VIC nodes the health check needs (absent ones are skipped).",
        "DevicePolicy=closed",
        *device_allow(p.devices),
        "",
        *SANDBOX,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def agent_service(root: str | Path, out: str | Path, o: AgentUnitOptions) -> dict:
    """`edgesdk service --agent`: the agent's unit for ROOT (a deployment root on this machine) written to
    OUT, replacing OUT only when this project wrote it."""
    root = os.path.abspath(plain(str(root), "--root"))
    if o.runtime not in RUNTIMES:
        raise OptionError(f"--runtime {o.runtime!r}: one of {', '.join(RUNTIMES)}")
    p = check(root, o)
    exe, kind = executable(o.runtime, Path(root), root)
    hidden(exe, "edgesdk", p)
    if kind == "slot":
        p.notes.append(
            f"the agent runs the current slot's runtime ({exe}); after it installs a release it "
            "keeps running the old one until it restarts"
        )
    user_notes(o.user, o.name, p)
    text = render(root, exe, o, p)
    out = Path(out)
    write_own(out, text)
    return {"unit": str(out), "executable": exe, "runtime": kind, "root": root, "notes": p.notes, "text": text}
