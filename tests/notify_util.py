"""A stand-in for systemd's notification socket (tests of sd_notify in edgesdk/notify.py)."""

from __future__ import annotations

import socket
import threading
import time


class NotifySocket:
    """A bound Unix datagram socket standing in for systemd's: every message, with its arrival time."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), dict(line.split("=", 1) for line in data.decode().splitlines())))

    def keys(self, key: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if key in m]

    def wait(self, key: str, n: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.keys(key)) < n:
            assert time.monotonic() < deadline, f"no {n} x {key} in {timeout} s: {self.messages}"
            time.sleep(0.05)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.sock.close()
