"""A fleet on one machine: a real mosquitto on loopback, six `edgesdk agent` processes (each its own
root and device id; one has a golden set its model fails) and `edgesdk rollout` in waves. The broker is
stopped and restarted mid-rollout; no device installs twice and no report is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading

import pytest

from deploy_util import golden_set, keypair, pkgs  # noqa: F401
from edgesdk.deploy.slots import install
from edgesdk.fleet import topics
from fleet_util import (
    GROUP,
    ROOT,
    FleetBroker,
    bad_golden,
    cli_args,
    env,
    read_json_lines,
    retained,
    start_agent,
    states,
    stop_all,
    wait_until,
)
from mqtt_broker import mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs Debian's mosquitto broker (apt-get install mosquitto; .ci/run does)"
)
DEVICES = [f"{GROUP}-{c}" for c in "abcdef"]
FAILING = f"{GROUP}-e"


def test_waves_install_the_healthy_devices_and_halt_at_the_failing_one_across_a_broker_restart(
    bundle, tiny_data, keypair, pkgs, tmp_path
):
    key, pub = keypair
    broker = FleetBroker(tmp_path / "broker").start()
    uri = f"mqtt://127.0.0.1:{broker.port}"
    # Every device runs 1.0.0 (installed once, then the same root tree copied for each device).
    base = tmp_path / "base"
    old_slot = install(pkgs["1.0.0"], pub, base).slot
    roots = {d: tmp_path / "devices" / d for d in DEVICES}
    for r in roots.values():
        shutil.copytree(base, r, symlinks=True)
    golden = bad_golden(golden_set(bundle, tiny_data / "brick", tmp_path / "golden"), tmp_path / "wrong-golden")
    procs = {
        d: start_agent(uri, d, roots[d], pub, tmp_path / "logs", golden=golden if d == FAILING else None)
        for d in DEVICES
    }
    rollout = None
    try:
        wait_until(lambda: len(states(broker.port)) == len(DEVICES), 60, "every agent's retained state")
        # Waves 1, 50%, 100% of six sorted ids: a | b c | d e f. The package comes over http from a file
        # server... here file://, the same fetch path a shared folder takes.
        report_path = tmp_path / "rollout.json"
        rollout = subprocess.Popen(
            cli_args(
                "rollout",
                pkgs["1.1.0"],
                "--broker",
                uri,
                "--group",
                GROUP,
                "--key",
                key,
                "--waves",
                "1,50%,100%",
                "--timeout",
                "90",
                "--url",
                f"file://{pkgs['1.1.0']}",
                "--rollback-on-halt",
                "--discover",
                "2",
                "--report",
                report_path,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env(),
        )
        lines: list[str] = []
        wave2 = threading.Event()

        def read():
            for line in rollout.stdout:
                lines.append(line)
                if line.startswith("-- wave 2/3"):
                    wave2.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # The broker goes down as wave 2 goes out: b and c install while it is away and report after.
        assert wave2.wait(90), "".join(lines) + rollout.stderr.read()
        broker.stop()
        threading.Event().wait(2.0)
        broker.start()
        assert rollout.wait(180) == 2
        reader.join(10)
        err = rollout.stderr.read()
        out = "".join(lines)
        assert "halted at wave 3 of 3: 1 device(s) failed" in err and FAILING in err and "golden" in err, err + out
        assert re.search(r"device +wave +state +version +health +seconds", out)  # the live table
        assert re.search(rf"{DEVICES[0]} +1 +installed +1\.1\.0 +passed", out)

        rep = json.loads(report_path.read_text())
        rid = rep["release_id"]
        assert rep["result"] == "halted"
        assert [(w["devices"], w["ok"], w["failed"]) for w in rep["waves"]] == [
            (DEVICES[:1], DEVICES[:1], []),
            (DEVICES[1:3], DEVICES[1:3], []),
            (DEVICES[3:], [DEVICES[3], DEVICES[5]], [FAILING]),
        ]
        rows = {r["device"]: r for r in rep["devices"]}
        assert all(rows[d]["state"] == "installed" for d in DEVICES if d != FAILING)  # no report lost
        assert rows[FAILING]["state"] == "failed" and "golden" in rows[FAILING]["health"]
        # --rollback-on-halt: the halted wave's devices that switched go back to 1.0.0.
        assert {r["device"]: r["state"] for r in rep["rollback"]} == {
            DEVICES[3]: "rolled back",
            DEVICES[5]: "rolled back",
        }
        assert rep["messages"]["devices"] == 6 and rep["messages"]["connects"] >= 2  # it reconnected
        # Halted: the release is withdrawn (no late device starts it); acknowledged commands are cleared.
        assert retained(broker.port, topics.release(GROUP)) is None
        assert all(retained(broker.port, topics.device(GROUP, d, "cmd")) is None for d in DEVICES)

        # On the devices: one install each, never two (the release was redelivered after the restart,
        # and again with each wave); the failing device kept its old model, with the health report.
        for d in DEVICES:
            events = [(h["event"], h["version"]) for h in read_json_lines(roots[d] / "history.jsonl")]
            cur = os.readlink(roots[d] / "current")
            if d in DEVICES[:3]:
                assert events == [("install", "1.0.0"), ("install", "1.1.0")] and "1.1.0-" in cur, d
            elif d == FAILING:
                assert events == [("install", "1.0.0"), ("health-failed", "1.1.0")], d
                assert cur == f"slots/{old_slot}"
            else:
                assert events == [("install", "1.0.0"), ("install", "1.1.0"), ("rollback", "1.0.0")], d
                assert cur == f"slots/{old_slot}"
            record = json.loads((roots[d] / "fleet" / "agent.json").read_text())
            assert record["releases"][rid]["attempts"] == 1 and record["releases"][rid]["state"] == "done"

        st = states(broker.port)
        failed = st[FAILING]["releases"][rid]
        assert failed["result"] == "failed" and not failed["health"]["passed"]
        assert [c["check"] for c in failed["health"]["checks"] if not c["passed"]] == ["golden"]
        assert "must pass" in failed["why"]

        # fleet status shows all of it; an agent killed without a goodbye shows as silent (the will).
        procs[DEVICES[1]].send_signal(signal.SIGKILL)
        procs[DEVICES[1]].wait(10)
        r = subprocess.run(
            cli_args("fleet", "status", "--broker", uri, "--group", GROUP, "--json"),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env(),
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        by = {d["device"]: d for d in json.loads(r.stdout)["devices"]}
        assert {d: by[d]["version"] for d in DEVICES} == {
            **{d: "1.1.0" for d in DEVICES[:3]},
            **{d: "1.0.0" for d in DEVICES[3:]},
        }
        assert by[FAILING]["result"] == "failed" and "golden" in by[FAILING]["why"]
        assert by[DEVICES[1]]["silent"] and by[DEVICES[1]]["online"] is False
        assert not any(by[d]["silent"] for d in DEVICES if d != DEVICES[1])
        text = subprocess.run(
            cli_args("fleet", "status", "--broker", uri),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env(),
            timeout=60,
        ).stdout
        assert f"{FAILING}: failed: health check failed: golden" in text and f"{DEVICES[1]}: silent" in text
    finally:
        if rollout is not None and rollout.poll() is None:
            rollout.kill()
        stop_all(procs.values())
        broker.stop()
