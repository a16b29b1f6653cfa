"""The hall bridge of docs/FLEET.md, run as written: a central (plant) mosquitto with TLS and passwords,
a hall mosquitto whose configuration is the doc's own bridge block (only the address, the CA file and
the password swapped for the test's), three agents on the hall broker, and `edgesdk rollout` and
`fleet status` on the central one. Every bridged topic is crossed: the release and its chunks go in,
the states and the wills come out, and the halted wave's rollback command goes in and is answered."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from deploy_util import golden_set, keypair, pkgs  # noqa: F401
from edgesdk.deploy.slots import install
from fleet_util import (
    GROUP,
    ROOT,
    FleetBroker,
    bad_golden,
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
    reason="needs Debian's mosquitto and mosquitto_passwd (apt-get install mosquitto; .ci/run does)",
)
DOC = ROOT / "docs" / "FLEET.md"
# What the doc's block names for the plant's broker; the test puts its own address, CA and password there.
DOC_ADDRESS, DOC_CA = "broker.plant:8883", "/etc/mosquitto/plant-ca.pem"
DOC_USER, DOC_PASSWORD = "hall2-bridge", "HALL2-BRIDGE-PASSWORD"


def doc_bridge_block() -> list[str]:
    """The fenced block of docs/FLEET.md that starts with `connection `, its lines unindented."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.strip().startswith("connection "))
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "```")
    return [x.strip() for x in lines[start:end] if x.strip()]


def hall_bridge(address: str, cafile: Path, password: str) -> str:
    """The doc's block with the plant's address, CA file and password replaced, each exactly once."""
    text = "\n".join(doc_bridge_block()) + "\n"
    for old, new in ((DOC_ADDRESS, address), (DOC_CA, str(cafile)), (DOC_PASSWORD, password)):
        assert text.count(old) == 1, f"docs/FLEET.md's bridge block should name {old} once"
        text = text.replace(old, new)
    return text


def test_the_docs_hall_bridge_carries_a_rollout_and_its_reports(bundle, tiny_data, keypair, pkgs, tmp_path):
    key, pub = keypair
    ca, cert, cert_key = make_tls(tmp_path / "tls")
    central = FleetBroker(
        tmp_path / "central", users={DOC_USER: "bridge-pw", "rollout": "rollout-pw"}, tls=(ca, cert, cert_key)
    ).start()
    hall = FleetBroker(tmp_path / "hall")
    hall.conf.write_text(hall.conf.read_text() + hall_bridge(f"127.0.0.1:{central.tls_port}", ca, "bridge-pw"))
    hall.start()
    (tmp_path / "rollout.pw").write_text("rollout-pw\n")
    plant = ["--broker", f"mqtt://127.0.0.1:{central.port}", "--user", "rollout", "--password-file",
             tmp_path / "rollout.pw"]  # fmt: skip
    devices = [f"{GROUP}-{c}" for c in "abc"]
    failing = devices[2]
    base = tmp_path / "base"
    old_slot = install(pkgs["1.0.0"], pub, base).slot
    roots = {d: tmp_path / "devices" / d for d in devices}
    for r in roots.values():
        shutil.copytree(base, r, symlinks=True)
    wrong = bad_golden(golden_set(bundle, tiny_data / "brick", tmp_path / "golden"), tmp_path / "wrong-golden")
    hall_uri = f"mqtt://127.0.0.1:{hall.port}"
    procs = {
        d: start_agent(hall_uri, d, roots[d], pub, tmp_path / "logs", golden=wrong if d == failing else None)
        for d in devices
    }
    try:
        # The agents talk to the hall broker only; their states reach the plant's through the bridge.
        wait_until(
            lambda: len(states(central.port, username="rollout", password="rollout-pw")) == 3,
            60,
            f"every agent's state on the central broker ({tmp_path / 'hall' / 'mosquitto.log'})",
        )
        # Waves a | b c, the package in chunks over MQTT (the chunk topics cross the bridge too); c's
        # golden set fails the model, so the rollout halts and b, which switched, is told to roll back.
        report = tmp_path / "rollout.json"
        r = subprocess.run(
            cli_args("rollout", pkgs["1.1.0"], *plant, "--group", GROUP, "--key", key, "--waves", "1,100%",
                     "--timeout", "90", "--discover", "2", "--rollback-on-halt", "--report", report),
            capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300,
        )  # fmt: skip
        assert r.returncode == 2 and "halted at wave 2 of 2" in r.stderr, r.stderr + r.stdout
        rep = json.loads(report.read_text())
        assert rep["release"]["package"]["url"] == "mqtt:chunks"
        assert [(w["devices"], w["ok"], w["failed"]) for w in rep["waves"]] == [
            (devices[:1], devices[:1], []),
            (devices[1:], devices[1:2], [failing]),
        ]
        assert {x["device"]: x["state"] for x in rep["rollback"]} == {devices[1]: "rolled back"}
        for d, events in (
            (devices[0], [("install", "1.0.0"), ("install", "1.1.0")]),
            (devices[1], [("install", "1.0.0"), ("install", "1.1.0"), ("rollback", "1.0.0")]),
            (failing, [("install", "1.0.0"), ("health-failed", "1.1.0")]),
        ):
            assert [(h["event"], h["version"]) for h in read_json_lines(roots[d] / "history.jsonl")] == events, d
        assert os.readlink(roots[devices[1]] / "current") == f"slots/{old_slot}"

        # An agent killed without a goodbye: the hall broker's will for it crosses the bridge as well.
        procs[devices[0]].send_signal(signal.SIGKILL)
        procs[devices[0]].wait(10)
        r = subprocess.run(cli_args("fleet", "status", *plant, "--group", GROUP, "--json"), capture_output=True,
                           text=True, cwd=ROOT, env=env(), timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        by = {x["device"]: x for x in json.loads(r.stdout)["devices"]}
        assert {d: (by[d]["version"], by[d]["result"]) for d in devices} == {
            devices[0]: ("1.1.0", "installed"),
            devices[1]: ("1.0.0", "installed"),
            failing: ("1.0.0", "failed"),
        }
        assert by[devices[0]]["online"] is False and by[devices[0]]["silent"]
        assert by[devices[1]]["online"] is True and not by[devices[1]]["silent"]
    finally:
        stop_all(procs.values())
        hall.stop()
        central.stop()
