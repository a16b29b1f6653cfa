"""What the device agent remembers (fleet/agent.py): ROOT/fleet/agent.json, every release and command
handled with the verified message itself, written atomically and fsynced so that it survives a power
cut; and an install Report as the agent's retained state reports it."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from edgesdk.fsutil import temp_beside

log = logging.getLogger("edgesdk.fleet")
FLEET_DIR, RECORD = "fleet", "agent.json"
KEEP_RECORDS, KEEP_IN_STATE, KEEP_REJECTED = 50, 10, 10


def _durable_json(path: Path, obj: dict) -> None:
    """Write beside PATH, fsync, rename over it, fsync the folder: the record survives a power cut."""
    with temp_beside(path) as tmp:  # removed again if a Ctrl-C or an error lands before the rename
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Record:
    """ROOT/fleet/agent.json: {"releases": {id: entry}, "commands": {id: entry}, "rejected": [...]}."""

    def __init__(self, root: Path):
        self.dir = root / FLEET_DIR
        self.path = self.dir / RECORD
        self.data: dict = {"releases": {}, "commands": {}, "rejected": []}
        try:
            self.data.update(json.loads(self.path.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:  # never silently forget what was installed: keep it aside
            aside = self.path.with_name(f"{RECORD}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.warning("%s is unreadable (%s): moved to %s; starting a new record", self.path, e, aside)

    def save(self) -> None:
        for k in ("releases", "commands"):
            items = list(self.data[k].items())
            self.data[k] = dict(items[-KEEP_RECORDS:])
        self.data["rejected"] = self.data["rejected"][-KEEP_REJECTED:]
        self.dir.mkdir(parents=True, exist_ok=True)
        _durable_json(self.path, self.data)


def summary(rep) -> dict:
    """An install Report as the state reports it: result, version, slot, previous, health checks."""
    h = rep.health
    out = {
        "result": rep.status,
        "version": rep.version,
        "slot": rep.slot,
        "previous": rep.previous,
        "health": None
        if h is None
        else {
            "passed": h["passed"],
            "why": h.get("why", ""),
            "checks": [{k: c.get(k) for k in ("check", "passed", "detail")} for c in h.get("checks", [])],
        },
    }
    if not rep.ok:
        out["why"] = f"health check failed: {h['why']}" if h else "failed"
    return out
