"""samples/fleet_rollout.py drives a rollout as a user would run it (torch blocked: device-side code),
against a real mosquitto and two agent processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy_util import keypair, pkgs  # noqa: F401
from edgesdk.fleet.broker import BrokerOptions
from edgesdk.fleet.status import collect
from fleet_util import ROOT, FleetBroker, env, start_agent, states, stop_all, wait_until
from mqtt_broker import mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs Debian's mosquitto broker (apt-get install mosquitto; .ci/run does)"
)


def test_fleet_rollout_sample(keypair, pkgs, tmp_path):
    key, pub = keypair
    broker = FleetBroker(tmp_path / "broker").start()
    uri = f"mqtt://127.0.0.1:{broker.port}"
    procs = [start_agent(uri, d, tmp_path / d, pub, tmp_path / "logs") for d in ("cam1", "cam2")]
    try:
        wait_until(lambda: len(states(broker.port)) == 2, 60, "both agents' states")
        code = (
            "import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(ROOT / "samples/fleet_rollout.py"),
                str(pkgs["1.0.0"]),
                "--key",
                str(key),
                "--broker",
                uri,
                "--group",
                "line1",
                "--timeout",
                "90",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env(),
            timeout=180,
        )
        assert r.returncode == 0, r.stderr + r.stdout
        assert "-- wave 1/2: 1 device(s) (cam1)" in r.stdout and "-- wave 2/2: 1 device(s) (cam2)" in r.stdout
        assert "complete in" in r.stdout and "broker messages:" in r.stdout
        fleet = r.stdout.split("fleet line1 on")[1].splitlines()
        assert [ln.split()[:2] for ln in fleet[3:]] == [["cam1", "1.0.0"], ["cam2", "1.0.0"]]
        # systemctl stop (SIGTERM): each agent says goodbye, retained, and exits by itself.
        stop_all(procs)
        assert [p.returncode for p in procs] == [0, 0]
        found = collect(BrokerOptions("127.0.0.1", broker.port), "line1", wait_s=1)
        assert {d: v["online"]["why"] for (g, d), v in found.items()} == {
            "cam1": "agent stopped",
            "cam2": "agent stopped",
        }
    finally:
        stop_all(procs)
        broker.stop()
