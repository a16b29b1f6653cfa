"""100 simulated device agents against one local mosquitto: rollout wall time and broker messages per
device (docs/FLEET.md quotes the numbers).

    python benchmarks/fleet_100.py BUNDLE [--agents 100] [--waves 1,10%,50%,100%] [--install-s 0.5]
                                         [--modes file,chunks] [--json OUT]

Each simulated agent is the real edgesdk.fleet.agent.Agent (its own MQTT connection, signature checks,
fetch with the size and sha256 checks, the on-disk record, the retained state), one thread each, with
deploy's install replaced by a stand-in that waits --install-s: what is measured is the fleet protocol
and the broker, not the health check (its cost per device is in docs/DEPLOY.md). Message counts are
the broker's own ($SYS/broker/publish/messages/*, every second), so they include every heartbeat,
state, release, chunk and acknowledgement-driven retry of the run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from edgesdk.deploy.keys import keygen
from edgesdk.deploy.package import PackOptions, pack
from edgesdk.deploy.slots import Report
from edgesdk.fleet.agent import Agent, AgentOptions
from edgesdk.fleet.broker import BrokerOptions, Link
from edgesdk.fleet.rollout import RolloutOptions, rollout
from edgesdk.fleet.status import collect
from edgesdk.table import table

SYS = (
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/bytes/sent",
)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )


def broker(work: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\nmax_queued_messages 10000\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


class SysCounters:
    def __init__(self, opts: BrokerOptions):
        self.values: dict[str, float] = {}
        self.link = Link(opts, "bench-sys", self._on, SYS).start(wait=10)

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        self.values[topic] = float(payload)

    def read(self) -> dict[str, float]:
        """The counters once they include everything so far (two $SYS periods), and how many $SYS
        messages this monitor itself has been sent (they are not the fleet's)."""
        time.sleep(2.2)
        return {**self.values, "monitor": self.link.stats["received"]}


def fake_install(seconds: float):
    def install(package, pubkey, root, opts):
        time.sleep(seconds)
        return Report(
            "installed", str(package), "1.0.0", "1.0.0-sim", "cpu", health={"passed": True, "why": "", "checks": []}
        )

    return install


def run_mode(mode: str, args, pkg: Path, key: Path, pub: Path, work: Path) -> dict:
    proc, port = broker(work)
    opts = BrokerOptions("127.0.0.1", port)
    stop, threads, agents, group = threading.Event(), [], [], f"bench-{mode}"
    try:
        for i in range(args.agents):
            a = Agent(
                opts,
                AgentOptions(
                    group=group,
                    device_id=f"dev-{i:03d}",
                    root=work / mode / f"dev-{i:03d}",
                    pubkey=pub,
                    device="cpu",
                    heartbeat_s=30,
                ),
                installer=fake_install(args.install_s),
            )
            agents.append(a)
            threads.append(threading.Thread(target=a.run, kwargs={"stop": stop}, daemon=True))
            threads[-1].start()
        deadline = time.monotonic() + 60
        while len(collect(opts, group, wait_s=1)) < args.agents and time.monotonic() < deadline:
            time.sleep(0.5)
        counters = SysCounters(opts)
        before = counters.read()
        mine = [dict(a.link.stats) for a in agents]
        t0 = time.perf_counter()
        rep = rollout(
            pkg,
            key,
            opts,
            RolloutOptions(
                group=group,
                waves=args.waves,
                timeout_s=120,
                discover_s=3,
                url=f"file://{pkg}" if mode == "file" else None,
            ),
        )
        wall = time.perf_counter() - t0
        after = counters.read()
        mine = [{k: a.link.stats[k] - m[k] for k in m} for a, m in zip(agents, mine)]
        counters.link.close()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        proc.terminate()
        proc.wait(10)
    n = args.agents
    d = {k.removeprefix("$SYS/broker/"): after.get(k, 0) - before.get(k, 0) for k in (*SYS, "monitor")}
    return {
        "mode": mode,
        "agents": n,
        "result": rep["result"],
        "waves": len(rep["waves"]),
        "wall_s": round(wall, 2),
        "wave_s": [w["seconds"] for w in rep["waves"]],
        "package_mb": round(pkg.stat().st_size / 1e6, 2),
        "agent_published": round(sum(m["published"] for m in mine) / n, 1),
        "agent_received": round(sum(m["received"] for m in mine) / n, 1),
        "rollout_published": rep["messages"]["published"],
        "rollout_received": rep["messages"]["received"],
        "broker_publish_out_per_device": round((d["publish/messages/sent"] - d["monitor"]) / n, 1),
        "broker_packets_in_per_device": round(d["messages/received"] / n, 1),
        "broker_packets_out_per_device": round((d["messages/sent"] - d["monitor"]) / n, 1),
        "broker_mb_out_per_device": round(d["bytes/sent"] / n / 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--waves", default="1,10%,50%,100%")
    ap.add_argument("--install-s", type=float, default=0.5, help="the stand-in install's duration")
    ap.add_argument("--modes", default="file,chunks", help="file (file:// URL) and/or chunks (over MQTT)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if mosquitto_binary() is None:
        raise SystemExit("needs mosquitto (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub = keygen(work / "keys")
        pkg = Path(pack(args.bundle, key, work / "model-1.0.0.tgz", PackOptions(version="1.0.0"))["package"])
        rows = [run_mode(m, args, pkg, key, pub, work) for m in args.modes.split(",")]
    cols = [
        "mode",
        "agents",
        "result",
        "waves",
        "wall_s",
        "package_mb",
        "agent_published",
        "agent_received",
        "rollout_published",
        "broker_packets_in_per_device",
        "broker_packets_out_per_device",
        "broker_mb_out_per_device",
    ]
    print(
        table(
            rows,
            cols,
            title=f"rollout to {args.agents} simulated agents, waves {args.waves}, install "
            f"stand-in {args.install_s} s; per device unless named (wall includes discovery)",
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
