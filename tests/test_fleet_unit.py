"""`edgesdk service --agent`: the fleet agent's hardened unit, checked by `systemd-analyze verify` and its
offline security review; its ExecStart, decoded as systemd does, is the agent's own command line: the
CLI's parser reaches the same options, and run as it stands it logs in to a real mosquitto over TLS with
the password from its file (which neither the unit nor the command line carries). Bad input is refused
naming the flag, and nothing is written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy_util import cli, keypair  # noqa: F401
from fleet_util import ROOT, FleetBroker, env, make_tls, states, stop_all, wait_until
from mqtt_broker import mosquitto_binary
from test_service import ANALYZE, exec_argv, needs_analyze, verify

PASSWORD = "s3cret-cam3 %i $HOME"  # a specifier and a variable: neither may reach systemd


def _files(tmp_path: Path, pub: Path) -> dict:
    """A device's files, every path with a space, a % and a $ in it."""
    top = tmp_path / "dev 1 %n $USER"
    (top / "golden" / "good").mkdir(parents=True)
    cv2.imwrite(str(top / "golden" / "good" / "000.png"), np.zeros((8, 8, 3), np.uint8))
    ca, cert, key = make_tls(top / "tls")
    pw = top / "broker.pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    shutil.copy(pub, top / "edgesdk.pub")
    return {
        "top": top,
        "root": top / "opt edgesdk",
        "pub": top / "edgesdk.pub",
        "golden": top / "golden",
        "ca": ca,
        "cert": cert,
        "key": key,
        "pw": pw,
    }


def _agent_flags(f: dict, broker: str) -> list:
    return [
        "--broker",
        broker,
        "--group",
        "line1",
        "--device-id",
        "cam3",
        "--pubkey",
        f["pub"],
        "--golden",
        f["golden"],
        "--cafile",
        f["ca"],
        "--certfile",
        f["cert"],
        "--keyfile",
        f["key"],
        "--broker-user",
        "cam3",
        "--broker-password-file",
        f["pw"],
        "--device",
        "cpu",
        "--heartbeat",
        "1",
        "--keep",
        "2",
        "--max-latency-ms",
        "250",
        "--fetch-timeout",
        "60",
    ]


@needs_analyze
@pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None,
    reason="needs Debian's mosquitto and mosquitto_passwd (apt-get install mosquitto)",
)
def test_the_agent_unit_verifies_and_its_command_line_is_the_agents(keypair, tmp_path):
    from edgesdk.cli import build_parser
    from edgesdk.fleet.broker import broker_from_args

    f = _files(tmp_path, keypair[1])
    f["root"].mkdir()
    ca, cert, key = f["ca"], f["cert"], f["key"]
    broker = FleetBroker(tmp_path / "broker", users={"cam3": PASSWORD}, tls=(ca, cert, key)).start()
    uri = f"mqtts://127.0.0.1:{broker.tls_port}"
    unit = tmp_path / "edgesdk-agent.service"
    r = cli("service", "--agent", "--root", f["root"], "--out", unit, *_agent_flags(f, uri), "--json", check=True)
    rep, text = json.loads(r.stdout), unit.read_text()
    assert verify(unit) == []
    assert PASSWORD not in text and "s3cret" not in r.stdout + r.stderr
    lines = set(text.splitlines())
    pct = lambda p: str(p).replace("%", "%%")  # noqa: E731
    for want in [
        "Type=simple",
        "Restart=on-failure",
        "User=edgesdk",
        "Group=edgesdk",
        "StateDirectory=edgesdk-agent",
        "SyslogIdentifier=edgesdk-agent",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        f'ReadWritePaths="{pct(f["root"])}"',
        "After=network-online.target",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "DevicePolicy=closed",
        'DeviceAllow="/dev/nvmap" rw',
        "CapabilityBoundingSet=",
        "WantedBy=multi-user.target",
    ]:
        assert want in lines, want
    assert [x for x in lines if x.startswith("ReadWritePaths=")] == [f'ReadWritePaths="{pct(f["root"])}"']
    assert not any(x.startswith(("WatchdogSec", "ReadOnlyPaths", "DynamicUser")) for x in lines)
    sec = subprocess.run([ANALYZE, "security", "--offline=yes", "--man=no", str(unit)], capture_output=True, text=True)
    assert "Overall exposure level" in sec.stdout and float(sec.stdout.split("level for ")[1].split()[1]) < 4.0

    # ExecStart, decoded as systemd decodes it, parsed by the CLI: the agent, with every option given.
    argv = exec_argv(text)
    assert argv[0] == rep["executable"] and argv[1] == "agent"
    args = build_parser().parse_args(argv[1:])
    assert args.fn.__name__ == "cmd_agent" and args.fn.__module__.startswith("edgesdk.")
    got = {
        k: getattr(args, k)
        for k in (
            "broker",
            "group",
            "device_id",
            "root",
            "pubkey",
            "golden",
            "cafile",
            "certfile",
            "keyfile",
            "user",
            "password_file",
            "device",
            "heartbeat",
            "keep",
            "max_latency_ms",
            "fetch_timeout",
            "run_for",
        )
    }
    assert got == {
        "broker": uri,
        "group": "line1",
        "device_id": "cam3",
        "root": str(f["root"]),
        "pubkey": str(f["pub"]),
        "golden": str(f["golden"]),
        "cafile": str(ca),
        "certfile": str(cert),
        "keyfile": str(key),
        "user": "cam3",
        "password_file": str(f["pw"]),
        "device": "cpu",
        "heartbeat": 1.0,
        "keep": 2,
        "max_latency_ms": 250.0,
        "fetch_timeout": 60.0,
        "run_for": None,
    }
    assert broker_from_args(args).password == PASSWORD

    # The command line as it stands (bounded by --run-for) logs in over TLS and reports its state.
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([*argv, "--run-for", "60"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env())
    try:
        found = wait_until(
            lambda: states(broker.port, username="cam3", password=PASSWORD).get("cam3"),
            60,
            f"the agent's state ({log})",
        )
        assert found["profile"] == "cpu" and found["heartbeat_s"] == 1.0 and found["group"] == "line1"
    finally:
        stop_all([p])
        broker.stop()
    assert p.returncode == 0, log.read_text()

    # A unit this command wrote is replaced (the run service's too); any other file is not.
    cli("service", "--agent", "--root", f["root"], "--out", unit, *_agent_flags(f, "mqtt://127.0.0.1:1883"), check=True)
    assert '"--broker" "mqtt://127.0.0.1:1883"' in unit.read_text()
    other = tmp_path / "other.service"
    other.write_text("[Service]\nExecStart=/bin/true\n")
    r = cli("service", "--agent", "--root", f["root"], "--out", other, *_agent_flags(f, uri))
    assert r.returncode == 2 and "not written by `edgesdk service`; not replaced" in r.stderr
    assert other.read_text() == "[Service]\nExecStart=/bin/true\n"


@needs_analyze
def test_only_what_is_given_reaches_the_unit_and_the_agents_defaults_apply(keypair, tmp_path):
    from edgesdk.cli import build_parser

    root, unit = tmp_path / "root", tmp_path / "a.service"
    root.mkdir()
    cli(
        "service",
        "--agent",
        "--root",
        root,
        "--out",
        unit,
        "--broker",
        "mqtt://broker.plant:1883",
        "--group",
        "g",
        "--device-id",
        "d1",
        "--pubkey",
        keypair[1],
        "--name",
        "agent-g",
        "--user",
        "vision",
        check=True,
    )
    text = unit.read_text()
    assert verify(unit) == []
    argv = exec_argv(text)
    assert argv[1:] == [
        "agent",
        "--broker",
        "mqtt://broker.plant:1883",
        "--group",
        "g",
        "--device-id",
        "d1",
        "--root",
        str(root),
        "--pubkey",
        str(keypair[1]),
    ]
    args = build_parser().parse_args(argv[1:])
    assert (args.keep, args.heartbeat, args.fetch_timeout, args.user, args.password_file) == (
        3,
        30.0,
        300.0,
        None,
        None,
    )
    assert {"User=vision", "StateDirectory=agent-g", "SyslogIdentifier=agent-g"} <= set(text.splitlines())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device-id", "cam/3"], "--device-id 'cam/3': 1-64 letters"),
        (["--group", "line+1"], "--group 'line+1': 1-64 letters"),
        (["--pubkey", "keys/edgesdk.pub"], "--pubkey 'keys/edgesdk.pub': the service needs an absolute path"),
        (["--pubkey", "/nonexistent/edgesdk.pub"], "--pubkey /nonexistent/edgesdk.pub: file not found"),
        (["--pubkey", "PW"], "PW: "),  # not a public key
        (["--golden", "/nonexistent/golden"], "--golden /nonexistent/golden: folder not found"),
        (["--cafile", "/nonexistent/ca.pem"], "--cafile /nonexistent/ca.pem: file not found"),
        (["--broker-password-file", "PW"], "--broker-password-file: give --broker-user too"),
        (["--broker-user", "u", "--broker-password-file", "EMPTY"], "--broker-password-file EMPTY: the first line"),
        (["--broker-user", "u\nExecStartPre=/bin/sh"], "--broker-user 'u\\nExecStartPre=/bin/sh': contains a control"),
        (["--broker", "http://broker:1883"], "--broker 'http://broker:1883': give mqtt://HOST:PORT"),
        (["--broker", "mqtt://u:pw@broker:1883"], "a user goes in --user"),
        (["--certfile", "PW"], "--certfile and --keyfile: give both"),
        (["--device", "no-such-device"], "--device no-such-device: 'no-such-device': no such device profile"),
        (["--keep", "0"], "--keep 0: keep at least 1 slot"),
        (["--user", "root"], "--user 'root'"),
        (["--name", "a/b"], "--name 'a/b'"),
        (["--name", ".."], "--name '..'"),  # StateDirectory=.. and HOME=/var/lib/..: /var itself
        (["--name=-x"], "--name '-x'"),
        (["--source", "synth://conveyor"], "--source is for `edgesdk run`'s unit"),
        (["--root", "/"], "--root /: the agent writes its deployment root"),
    ],
)
def test_bad_agent_unit_input_is_refused_naming_the_flag(keypair, tmp_path, flags, message):
    pw, empty = tmp_path / "pw", tmp_path / "empty"
    pw.write_text("x\n")
    empty.write_text("\n")
    base = {
        "--root": str(tmp_path / "root"),
        "--broker": "mqtt://127.0.0.1:1883",
        "--group": "line1",
        "--device-id": "cam3",
        "--pubkey": str(keypair[1]),
    }
    sub = {"PW": str(pw), "EMPTY": str(empty)}
    flags = [sub.get(x, x) for x in flags]
    for k in list(base):
        if k in flags:
            del base[k]
    unit = tmp_path / "u.service"
    r = cli("service", "--agent", "--out", unit, *(x for kv in base.items() for x in kv), *flags)
    assert r.returncode == 2 and message.replace("PW", str(pw)).replace("EMPTY", str(empty)) in r.stderr, r.stderr
    assert not unit.exists()


def test_a_missing_agent_option_and_the_run_units_own_are_named(keypair, tmp_path):
    unit = tmp_path / "u.service"
    r = cli(
        "service",
        "--agent",
        "--root",
        tmp_path,
        "--out",
        unit,
        "--group",
        "g",
        "--device-id",
        "d",
        "--pubkey",
        keypair[1],
    )
    assert r.returncode == 2 and "service --agent: --broker is required" in r.stderr, r.stderr
    r = cli("service", "--root", tmp_path, "--out", unit, "--sink", "jsonl:///srv/v.jsonl")
    assert r.returncode == 2 and "--source and --sink are required (or --agent" in r.stderr, r.stderr
    r = cli(
        "service",
        "--root",
        tmp_path,
        "--out",
        unit,
        "--source",
        "synth://conveyor",
        "--sink",
        "jsonl:///srv/v.jsonl",
        "--broker",
        "mqtt://127.0.0.1:1883",
    )
    assert r.returncode == 2 and "--broker is for the agent's unit (--agent)" in r.stderr, r.stderr
    assert not unit.exists()
