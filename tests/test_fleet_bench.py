"""benchmarks/fleet_100.py runs end to end with a few simulated agents (its numbers are for docs/FLEET.md,
not asserted here)."""

import json
import subprocess
import sys

import pytest

from fleet_util import ROOT, env
from mqtt_broker import mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs Debian's mosquitto broker (apt-get install mosquitto; .ci/run does)"
)


def test_fleet_benchmark_reports_wall_time_and_messages_per_device(bundle, tmp_path):
    out = tmp_path / "fleet.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/fleet_100.py"),
            str(bundle),
            "--agents",
            "4",
            "--install-s",
            "0.05",
            "--waves",
            "1,100%",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = {row["mode"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"file", "chunks"} and all(row["result"] == "complete" for row in rows.values())
    # Per device: the state when the install starts and when it ends; one release message per wave
    # (and, over MQTT, every chunk of the package).
    assert all(row["agent_published"] == 2 and row["waves"] == 2 for row in rows.values())
    assert rows["file"]["agent_received"] == 2 and rows["chunks"]["agent_received"] > 2
    assert rows["chunks"]["broker_mb_out_per_device"] >= rows["file"]["package_mb"] - 0.01
    assert "broker_packets_out_per_device" in r.stdout
