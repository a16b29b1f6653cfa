"""sd_notify(3) without libsystemd: the stream loop tells systemd it is ready, alive, reloading a model
or stopping (a `Type=notify` unit, edgesdk/deploy/service.py). Standard library only.

systemd passes NOTIFY_SOCKET, a Unix datagram socket: a file path, or `@name` in the abstract
namespace; with WatchdogSec= also WATCHDOG_USEC (the limit) and WATCHDOG_PID (the process it is
meant for: not us when set to another pid). A message is one datagram of `KEY=VALUE` lines:

  READY=1                        the model is loaded and the source open
  WATCHDOG=1                     still making progress (Heartbeat sends it only then)
  STATUS=text                    one line for `systemctl status`
  RELOADING=1, MONOTONIC_USEC=   a new model is being loaded (READY=1 follows)
  STOPPING=1                     the stream is shutting down

Without NOTIFY_SOCKET every call is a no-op. A failed send is logged once and never stops the stream:
the watchdog (or its absence) decides what happens to a process systemd cannot hear."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping

log = logging.getLogger("edgesdk.notify")


def socket_address(value: str) -> str | None:
    """NOTIFY_SOCKET's value as an AF_UNIX address ("@x" -> "\\0x"); None when unset or of a kind we do
    not speak (systemd 254's vsock:, a relative path)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying systemd", value)
    return None


def watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog limit in seconds when it is meant for this process, else None."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """One datagram socket to systemd's NOTIFY_SOCKET (from ENV, default os.environ)."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = watchdog_seconds(env) if self.address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # several threads notify (loop, heartbeat, model loader)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One message of LINES (each KEY=VALUE, no newline inside); False when not sent."""
        if self.address is None:
            return False
        msg = "\n".join(line.replace("\n", " ") for line in lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(msg, self.address)
                return True
            except OSError as e:
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "cannot notify systemd at %s (%s); carrying on without it", self.address.replace("\0", "@"), e
                    )
                return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str = "") -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self, status: str = "") -> bool:
        return self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Heartbeat:
    """A thread that pings WATCHDOG=1 at most every `interval` s (half the watchdog limit) and only
    while `moving(interval)` says the loop made progress within that window, each ping with STATUS
    from `status()`; without a watchdog it sends STATUS alone every `status_s`. `on_tick()` runs every
    `tick_s` too (the stream loop watches its model there). A loop that stalls stops the pings, and
    systemd restarts the process once the limit passes: at most interval + limit after the stall."""

    def __init__(
        self,
        notifier: Notifier,
        moving: Callable[[float], bool],
        status: Callable[[], str],
        on_tick: Callable[[], None] | None = None,
        tick_s: float = 1.0,
        status_s: float = 5.0,
    ):
        self.notifier, self.moving, self.status, self.on_tick = notifier, moving, status, on_tick
        self.interval = notifier.watchdog_s / 2 if notifier.watchdog_s else None
        # ticks fine enough that a ping is never later than interval + tick < the limit
        self.tick = min(tick_s, self.interval / 4) if self.interval else tick_s
        self.status_s = status_s
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgesdk-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception:  # the loop's own errors are reported by the loop
                    log.exception("heartbeat tick failed")
            now = time.monotonic()
            if self.interval is None:
                if now - last >= self.status_s and self.notifier.enabled:
                    self.notifier.status(self.status())
                    last = now
            elif now - last >= self.interval and self.moving(self.interval):
                self.notifier.watchdog(self.status())
                self.pings += 1
                last = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
