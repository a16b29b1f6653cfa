"""A real mosquitto broker on loopback for tests (Debian's `mosquitto`, installed by .ci/run), and a
subscriber that records what it receives. Persistence is on and the subscriber's session is durable,
so messages published while the subscriber reconnects after a broker restart wait for it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, workdir: Path):
        self.port, self.dir = free_port(), workdir
        self.conf = workdir / "mosquitto.conf"
        # As root, mosquitto drops to user "mosquitto", which cannot write the test's private folder.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nlog_dest file {workdir}/mosquitto.log\n{user}"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {(self.dir / 'mosquitto.log').read_text()}")

    def stop(self) -> None:
        """SIGTERM: the broker exits (connections drop) and saves its persistent sessions."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class Subscriber:
    """A durable-session QoS 1 subscriber; `messages` is every payload received, duplicates included."""

    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.health: list[dict] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="verifier", clean_session=False)
        self.c.reconnect_delay_set(min_delay=1, max_delay=2)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1), (topic + "/health", 0)])
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(5), "subscriber could not subscribe"

    def _on_message(self, c, u, msg) -> None:
        (self.health if msg.topic.endswith("/health") else self.messages).append(json.loads(msg.payload))

    def wait_for(self, frame_ids: set[int], timeout: float = 30) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not frame_ids <= {m["frame_id"] for m in self.messages}:
            time.sleep(0.05)
        return {m["frame_id"] for m in self.messages}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
