"""Broker authentication against a mosquitto that requires it: a password file (mosquitto_passwd) on a
plain listener and on a TLS listener whose certificate a test CA signed. An agent and a rollout with
the package in chunks over MQTT (no file server) go through TLS; the wrong password, no password and
the wrong CA are each refused with a message that says so."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from deploy_util import keypair, pkgs  # noqa: F401
from fleet_util import (
    GROUP,
    ROOT,
    FleetBroker,
    cli_args,
    env,
    make_tls,
    read_json_lines,
    start_agent,
    states,
    stop_all,
    wait_until,
)
from mqtt_broker import mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None,
    reason="needs Debian's mosquitto and mosquitto_passwd (apt-get install mosquitto)",
)


def test_password_and_tls_are_required_and_a_chunked_rollout_goes_through_them(keypair, pkgs, tmp_path):
    key, pub = keypair
    ca, cert, cert_key = make_tls(tmp_path / "tls")
    broker = FleetBroker(tmp_path / "broker", users={"plant": "s3cret-line1"}, tls=(ca, cert, cert_key)).start()
    pw, wrong = tmp_path / "broker.pw", tmp_path / "wrong.pw"
    pw.write_text("s3cret-line1\n")
    wrong.write_text("guess\n")
    plain, tls = f"mqtt://127.0.0.1:{broker.port}", f"mqtts://127.0.0.1:{broker.tls_port}"
    auth = ("--user", "plant", "--password-file", pw)

    def status(*args):
        return subprocess.run(
            cli_args("fleet", "status", "--wait", "1", *args),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env(),
            timeout=60,
        )

    for args, why in (
        ((plain,), "Not authorized"),
        ((plain, "--user", "plant", "--password-file", wrong), "Not authorized"),
        ((tls, *auth), "TLS failed"),  # the system's CAs never signed it
        ((tls, "--cafile", ca), "Not authorized"),
    ):
        r = status("--broker", *args)
        assert r.returncode == 2 and why in r.stderr and args[0].split("//")[1] in r.stderr, (args, r.stderr)
    assert "check --user and --password-file" in status("--broker", plain).stderr

    agent = start_agent(tls, "t1", tmp_path / "t1", pub, tmp_path / "logs", "--cafile", ca, *auth)
    try:
        wait_until(
            lambda: "t1" in states(broker.port, username="plant", password="s3cret-line1"),
            60,
            "the agent's state over TLS",
        )
        report = tmp_path / "rollout.json"
        r = subprocess.run(
            cli_args(
                "rollout",
                pkgs["1.0.0"],
                "--broker",
                tls,
                "--cafile",
                ca,
                *auth,
                "--group",
                GROUP,
                "--key",
                key,
                "--waves",
                "100%",
                "--timeout",
                "90",
                "--discover",
                "1",
                "--chunk-kb",
                "512",
                "--report",
                report,
                "--json",
            ),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env(),
            timeout=180,
        )
        assert r.returncode == 0, r.stderr
        rep = json.loads(report.read_text())
        assert rep == json.loads(r.stdout) and rep["result"] == "complete"
        assert rep["release"]["package"]["url"] == "mqtt:chunks"
        assert len(rep["release"]["package"]["chunks"]["sha256"]) == -(-pkgs["1.0.0"].stat().st_size // (512 << 10))
        assert [(d["device"], d["state"], d["version"]) for d in rep["devices"]] == [("t1", "installed", "1.0.0")]
        assert [h["event"] for h in read_json_lines(tmp_path / "t1" / "history.jsonl")] == ["install"]
        r = status("--broker", plain, *auth, "--json")  # the password on the plain listener
        assert r.returncode == 0, r.stderr
        assert [(d["device"], d["version"], d["result"]) for d in json.loads(r.stdout)["devices"]] == [
            ("t1", "1.0.0", "installed")
        ]
    finally:
        stop_all([agent])
        broker.stop()
