"""Every device's retained state in one table: who runs which version, who failed and why, who has been
silent (its last heartbeat is older than three heartbeat periods, or the broker sent its will)."""

from __future__ import annotations

import json
import threading
import time

from edgesdk.fleet import topics
from edgesdk.fleet.broker import BrokerOptions, Link

SILENT_BEATS = 3


def collect(broker: BrokerOptions, group: str | None = None, wait_s: float = 3.0) -> dict[tuple[str, str], dict]:
    """{(group, device): {"state": ..., "online": ...}} from the retained messages, gathered until they
    stop coming (at most WAIT_S seconds)."""
    if group is not None:
        topics.check_name(group, "--group")
    found: dict[tuple[str, str], dict] = {}
    lock, seen = threading.Lock(), threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        parts = topics.parse_device(topic)
        if parts is None or parts[2] not in ("state", "online") or not payload:
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = {"unreadable": payload[:80].decode(errors="replace")}
        with lock:
            found.setdefault(parts[:2], {})[parts[2]] = obj
        seen.set()

    link = Link(broker, "", on_message, (topics.devices(group, "state"), topics.devices(group, "online")))
    link.start(wait=10)
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            seen.clear()
            if not seen.wait(min(0.5, max(deadline - time.monotonic(), 0))) and found:
                break
    finally:
        link.close()
    return found


def rows(found: dict[tuple[str, str], dict], now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    out = []
    for (group, device), got in sorted(found.items()):
        st, on = got.get("state") or {}, got.get("online") or {}
        last = st.get("last") or {}
        age = now - st["time"] if isinstance(st.get("time"), (int, float)) else None
        hb = st.get("heartbeat_s")
        beat = hb if isinstance(hb, (int, float)) else 30
        online = on.get("online") if isinstance(on.get("online"), bool) else None
        silent = online is False or age is None or age > SILENT_BEATS * beat
        busy = st.get("busy") or {}
        out.append(
            {
                "group": group,
                "device": device,
                "profile": st.get("profile"),
                "online": online,
                "version": (st.get("current") or {}).get("version"),
                "previous": (st.get("previous") or {}).get("version"),
                "state": f"installing {busy['release']}" if busy.get("release") else "idle" if st else "?",
                "last release": last.get("release"),
                "result": last.get("result"),
                "why": last.get("why", ""),
                "heartbeat s": round(age) if age is not None else None,
                "silent": silent,
                "rejected": len(st.get("rejected") or []),
                "silent_why": (on.get("why") or "offline")
                if online is False
                else (f"no heartbeat for {age:.0f} s" if silent and age is not None else ""),
            }
        )
    return out


def fleet_status(broker: BrokerOptions, group: str | None = None, wait_s: float = 3.0) -> dict:
    found = collect(broker, group, wait_s)
    return {
        "broker": broker.uri,
        "group": group,
        "time": time.time(),
        "devices": rows(found),
        "states": {f"{g}/{d}": v for (g, d), v in sorted(found.items())},
    }


def forget(broker: BrokerOptions, group: str, device: str) -> None:
    """Clear a retired device's retained topics (state, online, cmd) so rollouts stop waiting for it."""
    topics.check_name(group, "--group")
    topics.check_name(device, "device")
    link = Link(broker, "", lambda *a: None).start(wait=10)
    try:
        link.publish([(topics.device(group, device, leaf), b"") for leaf in ("state", "online", "cmd")])
    finally:
        link.close()
