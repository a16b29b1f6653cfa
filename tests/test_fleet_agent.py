"""The agent in this process against a real mosquitto, with deploy's install stood in by a slow fake:
heartbeats go on while an install holds the worker (an engine build takes minutes), the state comes
back after a broker restart that lost every retained message, and the release's signed options reach
install."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from deploy_util import keypair  # noqa: F401
from edgesdk.deploy import keys
from edgesdk.deploy.slots import Report
from edgesdk.fleet import messages, topics
from edgesdk.fleet.agent import Agent, AgentOptions
from edgesdk.fleet.broker import BrokerOptions
from edgesdk.fleet.record import Record
from fleet_util import GROUP, FleetBroker, publish, states, wait_until
from mqtt_broker import mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs Debian's mosquitto broker (apt-get install mosquitto; .ci/run does)"
)


def test_heartbeats_during_a_long_install_and_the_state_after_a_broker_that_forgot_everything(keypair, tmp_path):
    broker = FleetBroker(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text().replace("persistence true", "persistence false"))
    broker.start()
    calls, release_install = [], threading.Event()

    def slow_install(package, pubkey, root, opts):
        calls.append(opts)
        release_install.wait(30)
        return Report(
            "installed", str(package), "2.0.0", "2.0.0-fake", "cpu", health={"passed": True, "why": "", "checks": []}
        )

    agent = Agent(
        BrokerOptions("127.0.0.1", broker.port),
        AgentOptions(
            group=GROUP, device_id="slow", root=tmp_path / "root", pubkey=keypair[1], device="cpu", heartbeat_s=0.5
        ),
        installer=slow_install,
    )
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, kwargs={"stop": stop, "run_for": 120})
    worker.start()
    try:
        wait_until(lambda: "slow" in states(broker.port), 30, "the agent's state")
        pkg = tmp_path / "pkg.tgz"
        pkg.write_bytes(b"not really a package: install is stood in")
        now = int(time.time())
        body = {
            "schema": messages.SCHEMA,
            "kind": "release",
            "group": GROUP,
            "release": "r-slow",
            "issued": now,
            "expires": now + 600,
            "wave": 1,
            "devices": ["slow"],
            "allow_downgrade": True,
            "package": {
                "name": "brick",
                "version": "2.0.0",
                "manifest_sha256": "a" * 64,
                "url": f"file://{pkg}",
                "sha256": hashlib.sha256(pkg.read_bytes()).hexdigest(),
                "bytes": pkg.stat().st_size,
                "chunks": None,
            },
        }
        publish(broker.port, topics.release(GROUP), messages.seal(body, keys.load_private(keypair[0])))
        first = wait_until(
            lambda: (states(broker.port).get("slow") or {}).get("busy") and states(broker.port)["slow"],
            30,
            "the busy state",
        )
        assert first["busy"]["release"] == "r-slow" and calls[0].allow_downgrade is True
        # The worker is inside install; the heartbeat thread keeps the state fresh.
        wait_until(lambda: states(broker.port)["slow"]["time"] > first["time"] + 1.0, 10, "a heartbeat while busy")
        # A broker restart without persistence: every retained message is gone; the agent sends its state
        # again as it reconnects, before its install is done.
        broker.stop()
        broker.start()
        again = wait_until(lambda: states(broker.port).get("slow"), 30, "the state after the restart")
        assert again["busy"]["release"] == "r-slow" and not again["releases"]
        release_install.set()
        done = wait_until(lambda: (states(broker.port)["slow"]["releases"] or {}).get("r-slow"), 30, "the result")
        assert done["result"] == "installed" and done["version"] == "2.0.0" and len(calls) == 1
    finally:
        release_install.set()
        stop.set()
        worker.join(30)
        broker.stop()


def test_a_release_interrupted_three_times_is_reported_not_tried_again(keypair, tmp_path):
    """A package whose install kills the agent every time (a crash loop) ends as an error after three
    tries; the agent reports it and goes on."""
    record = Record(tmp_path / "root")
    record.data["releases"]["r-loop"] = {"state": "started", "attempts": 3, "message": "{}"}
    record.save()
    calls = []
    agent = Agent(
        BrokerOptions("127.0.0.1", 1),
        AgentOptions(group=GROUP, device_id="d", root=tmp_path / "root", pubkey=keypair[1], device="cpu"),
        installer=lambda *a: calls.append(a),
    )
    agent._resume()
    entry = Record(tmp_path / "root").data["releases"]["r-loop"]
    assert calls == [] and entry["state"] == "done" and entry["result"]["result"] == "error"
    assert "interrupted 3 times" in entry["result"]["why"]
    assert agent.state()["releases"]["r-loop"]["result"] == "error"
