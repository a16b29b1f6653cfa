"""What a rollout (fleet/rollout.py) plans and watches: the waves as cumulative device counts, the
group's retained device states as they arrive, and each device's row for a release (its result, or
how long it has been installing or silent)."""

from __future__ import annotations

import json
import math
import threading
import time

from edgesdk.errors import OptionError
from edgesdk.fleet import topics
from edgesdk.fleet.broker import Link

OK, BAD = ("installed", "current"), ("failed", "refused", "error", "expired", "timeout")


def plan_waves(spec: str, n: int) -> list[int]:
    """Cumulative device counts per wave: "1,10%,50%,100%" of N; a wave that adds nobody is dropped."""
    out: list[int] = []
    for item in spec.split(","):
        item = item.strip()
        try:
            k = math.ceil(float(item[:-1]) * n / 100 - 1e-9) if item.endswith("%") else int(item)
        except ValueError:
            raise OptionError(f"--waves {spec!r}: {item!r} is neither a device count nor a percentage") from None
        pct = item.endswith("%")
        if (pct and not 0 < float(item[:-1]) <= 100) or (not pct and k < 1):
            raise OptionError(f"--waves {spec!r}: {item!r} must be a count >= 1 or a percentage in (0, 100]")
        k = max(min(k, n), 1)
        if out and k < out[-1]:
            raise OptionError(
                f"--waves {spec!r}: waves are cumulative; {item!r} is fewer devices than the wave before it"
            )
        if not out or k > out[-1]:
            out.append(k)
    return out


class Watch:
    """The group's retained device states (newest per device) and the release retained now."""

    def __init__(self, group: str):
        self.group, self.release = group, b""
        self.states: dict[str, dict] = {}
        self.lock, self.seen = threading.Lock(), threading.Event()

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == topics.release(self.group):
            self.release = payload
            return
        parts = topics.parse_device(topic)
        if parts is None or parts[2] != "state" or parts[0] != self.group:
            return
        with self.lock:
            if not payload:
                self.states.pop(parts[1], None)
                return
            try:
                st = json.loads(payload)
            except ValueError:
                return
            old = self.states.get(parts[1])
            if isinstance(st, dict) and (old is None or st.get("time", 0) >= old.get("time", 0)):
                self.states[parts[1]] = st
        self.seen.set()

    def get(self, device: str) -> dict | None:
        with self.lock:
            return self.states.get(device)


def row(device: str, wave: int, st: dict | None, rid: str, t_wave: float) -> dict:
    res = ((st or {}).get("releases") or {}).get(rid)
    busy = (st or {}).get("busy") or {}
    version = ((st or {}).get("current") or {}).get("version")
    if res:
        h = res.get("health") or {}
        health = (
            ("passed" if h.get("passed") else f"FAILED {h.get('why', '')}")
            if h
            else ("-" if res["result"] in OK else res.get("why", ""))
        )
        return {
            "device": device,
            "wave": wave,
            "state": res["result"],
            "version": version,
            "health": health,
            "seconds": res.get("seconds"),
            "why": res.get("why", ""),
        }
    state = "installing" if busy.get("release") == rid else "sent"
    since = busy.get("since", 0) if state == "installing" else 0
    secs = time.time() - since if since else time.monotonic() - t_wave
    return {
        "device": device,
        "wave": wave,
        "state": state,
        "version": version,
        "health": "",
        "seconds": round(secs, 1),
        "why": "",
    }


def discover(watch: Watch, link: Link, seconds: float) -> None:
    """Retained states come right after the subscription; wait until they stop coming."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        watch.seen.clear()
        if not watch.seen.wait(min(0.5, max(deadline - time.monotonic(), 0))) and watch.states:
            return
