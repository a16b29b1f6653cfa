"""Nothing installs that was not signed by the fleet key, and an agent killed mid-install finishes
consistently when it starts again: real mosquitto, real agent processes, a loopback HTTP file server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from deploy_util import keypair, other_keypair, pkgs, read_members, write_raw  # noqa: F401
from edgesdk.deploy import keys
from edgesdk.deploy.package import read_package
from edgesdk.fleet import messages, topics
from fleet_util import (
    GROUP,
    ROOT,
    FileServer,
    FleetBroker,
    cli_args,
    env,
    publish,
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


def release(key, pkg, url: str, devices: list[str], rid: str, manifest_of=None) -> bytes:
    """A release message for the file PKG (manifest fields from MANIFEST_OF, default PKG), signed with KEY."""
    data = pkg.read_bytes()
    v = read_package(manifest_of or pkg, None)
    now = int(time.time())
    body = {
        "schema": messages.SCHEMA,
        "kind": "release",
        "group": GROUP,
        "release": rid,
        "issued": now,
        "expires": now + 600,
        "wave": 1,
        "devices": devices,
        "package": {
            "name": v.manifest.name,
            "version": v.manifest.version,
            "manifest_sha256": v.sha256,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "url": url,
            "chunks": None,
        },
    }
    return messages.seal(body, keys.load_private(key))


def tampered(pkg, out):
    """PKG with one byte of model.onnx changed (its manifest and signature kept): a man in the middle."""
    members = read_members(pkg)
    for i, (ti, data) in enumerate(members):
        if ti.name == "bundle/model.onnx":
            members[i] = (ti, data[:100] + bytes([data[100] ^ 1]) + data[101:])
    return write_raw(out, members)


def results(port: int, devices, rid: str) -> dict | None:
    st = states(port)
    got = {d: ((st.get(d) or {}).get("releases") or {}).get(rid) for d in devices}
    return got if all(got.values()) else None


def test_a_tampered_package_or_a_release_signed_by_another_key_installs_nowhere(keypair, other_keypair, pkgs, tmp_path):
    key, pub = keypair
    broker = FleetBroker(tmp_path / "broker").start()
    uri = f"mqtt://127.0.0.1:{broker.port}"
    files = tmp_path / "www"
    files.mkdir()
    good = files / "brick-1.1.0.tgz"
    good.write_bytes(pkgs["1.1.0"].read_bytes())
    bad = tampered(pkgs["1.1.0"], files / "brick-1.1.0-tampered.tgz")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 1
    swapped = files / "brick-1.1.0-swapped.tgz"  # same size, another sha256
    swapped.write_bytes(bytes(data))
    server = FileServer(files)
    devices = ["x", "y"]
    roots = {d: tmp_path / d for d in devices}
    procs = [start_agent(uri, d, roots[d], pub, tmp_path / "logs") for d in devices]
    try:
        wait_until(lambda: len(states(broker.port)) == 2, 60, "both agents' states")
        # 1. The rollout tool refuses both a tampered package and signing with a key that is not the
        #    package's: nothing reaches the broker.
        for args, why in (
            ((bad, "--key", key), "changed after signing"),
            ((good, "--key", other_keypair[0]), "signed by another key"),
        ):
            r = subprocess.run(
                cli_args("rollout", *args, "--broker", uri, "--group", GROUP, "--discover", "1"),
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env(),
                timeout=60,
            )
            assert r.returncode == 2 and why in r.stderr, r.stderr
        assert retained(broker.port, topics.release(GROUP)) is None
        # 2. A release signed by another key: ignored and reported by every device.
        publish(
            broker.port,
            topics.release(GROUP),
            release(other_keypair[0], good, f"{server.url}/{good.name}", devices, "r-foreign"),
        )
        wait_until(lambda: all(s.get("rejected") for s in states(broker.port).values()), 30, "rejections")
        for s in states(broker.port).values():
            assert "signed by another key" in s["rejected"][0]["why"] and "r-foreign" not in s["releases"]
        # 3. Signed by the fleet key, but the file was swapped on the server after signing.
        publish(
            broker.port, topics.release(GROUP), release(key, good, f"{server.url}/{swapped.name}", devices, "r-swapped")
        )
        got = wait_until(lambda: results(broker.port, devices, "r-swapped"), 60, "the swapped file's results")
        assert all(g["result"] == "error" and "is not the release's" in g["why"] for g in got.values()), got
        # 4. Signed by the fleet key for the tampered file's own hash: install's verification refuses it.
        publish(
            broker.port, topics.release(GROUP), release(key, bad, f"{server.url}/{bad.name}", devices, "r-tamp", good)
        )
        got = wait_until(lambda: results(broker.port, devices, "r-tamp"), 60, "the tampered package's results")
        assert all(g["result"] == "refused" and "changed after signing" in g["why"] for g in got.values()), got
        for d in devices:
            assert not (roots[d] / "slots").exists() and not (roots[d] / "current").exists()
            assert list((roots[d] / "fleet" / "incoming").iterdir()) == []  # nothing left behind
        # 5. The same release, signed and whole, over http: installs (once, though published twice).
        for _ in range(2):
            publish(
                broker.port, topics.release(GROUP), release(key, good, f"{server.url}/{good.name}", devices, "r-ok")
            )
        got = wait_until(lambda: results(broker.port, devices, "r-ok"), 60, "the good release's results")
        assert all(g["result"] == "installed" for g in got.values()), got
        time.sleep(1.5)
        for d in devices:
            assert [h["event"] for h in read_json_lines(roots[d] / "history.jsonl")] == ["install"]
    finally:
        stop_all(procs)
        server.close()
        broker.stop()


def test_an_agent_killed_mid_install_finishes_it_once_when_it_starts_again(keypair, pkgs, tmp_path):
    key, pub = keypair
    broker = FleetBroker(tmp_path / "broker").start()
    uri = f"mqtt://127.0.0.1:{broker.port}"
    root = tmp_path / "z"
    # install's test hook: the agent's process SIGKILLs itself as the health check begins.
    agent = start_agent(uri, "z", root, pub, tmp_path / "logs", env_extra={"EDGESDK_FAULT_AT": "health"})
    try:
        wait_until(lambda: "z" in states(broker.port), 60, "the agent's state")
        publish(
            broker.port, topics.release(GROUP), release(key, pkgs["1.0.0"], f"file://{pkgs['1.0.0']}", ["z"], "r-crash")
        )
        assert agent.wait(60) == -9
        record = json.loads((root / "fleet" / "agent.json").read_text())
        assert record["releases"]["r-crash"]["state"] == "started" and not (root / "current").exists()
        assert states(broker.port)["z"]["busy"]["release"] == "r-crash"  # the will says offline, too
        agent = start_agent(uri, "z", root, pub, tmp_path / "logs")
        got = wait_until(lambda: results(broker.port, ["z"], "r-crash"), 60, "the resumed install's result")
        assert got["z"]["result"] == "installed", got
        steps = got["z"]
        assert steps["version"] == "1.0.0" and steps["health"]["passed"]
        assert [h["event"] for h in read_json_lines(root / "history.jsonl")] == ["install"]
        record = json.loads((root / "fleet" / "agent.json").read_text())
        assert record["releases"]["r-crash"]["attempts"] == 2 and os.readlink(root / "current").startswith(
            "slots/1.0.0-"
        )
        # The retained release comes again on every reconnect: it is never installed a second time.
        publish(
            broker.port, topics.release(GROUP), release(key, pkgs["1.0.0"], f"file://{pkgs['1.0.0']}", ["z"], "r-crash")
        )
        time.sleep(2)
        assert [h["event"] for h in read_json_lines(root / "history.jsonl")] == ["install"]
    finally:
        stop_all([agent])
        broker.stop()
