"""`edgesdk rollback` (current back to previous, after verifying it) and `edgesdk status` (slots,
versions, health, history; read-only). The install itself is deploy/slots.py. No torch."""

from __future__ import annotations

from pathlib import Path

from edgesdk.deploy import keys, runtime
from edgesdk.deploy.layout import (
    CURRENT,
    PREVIOUS,
    PUBKEY,
    SLOTS,
    InstallError,
    age,
    append_history,
    link_target,
    locked,
    point,
    read_history,
    slot_manifest,
    slot_state,
    verify_slot,
)
from edgesdk.errors import EdgesdkError


def _pub_for(root: Path, pubkey: str | Path | None) -> keys.PublicKey | None:
    if pubkey is not None:
        return keys.load_public(pubkey)
    return keys.load_public(root / PUBKEY) if (root / PUBKEY).is_file() else None


def rollback(root: str | Path, pubkey: str | Path | None = None) -> dict:
    """Point `current` back at `previous` (and `previous` at the slot left), after verifying it.
    Refuses, changing nothing, when there is no previous slot or it does not verify."""
    root = Path(root)
    if not root.is_dir():
        raise InstallError(f"{root}: not found; nothing is installed there")
    with locked(root):
        cur, prev = link_target(root, CURRENT), link_target(root, PREVIOUS)
        if prev is None:
            raise InstallError(f"{root / PREVIOUS}: no previous slot to roll back to")
        if prev == cur:
            raise InstallError(
                f"{root / PREVIOUS}: points at the current slot {prev.name} (an install was "
                "interrupted between its two pointer switches); nothing to roll back to"
            )
        pub = _pub_for(root, pubkey)
        if pub is None:
            raise InstallError(f"{root / PUBKEY}: missing; give --pubkey to verify {prev.name} before using it")
        why = verify_slot(prev, pub)
        if why:
            raise InstallError(f"{root / PREVIOUS}: {prev.name} fails verification ({why}); not rolled back")
        state, _ = slot_state(prev)
        if state != "good":
            raise InstallError(f"{root / PREVIOUS}: {prev.name} has no passed health check ({state}); not rolled back")
        m = slot_manifest(prev)
        # current first: a crash between the two switches leaves previous == current, never a lost model.
        point(root, CURRENT, prev)
        if cur is not None:
            point(root, PREVIOUS, cur)
        append_history(
            root, {"event": "rollback", "slot": prev.name, "version": m.version, "from": cur.name if cur else None}
        )
    return {"root": str(root), "current": prev.name, "version": m.version, "previous": cur.name if cur else None}


def status(root: str | Path, pubkey: str | Path | None = None) -> dict:
    """Slots (version, state, verifies, health), current/previous, history. Read-only."""
    root = Path(root)
    if not root.is_dir():
        raise InstallError(f"{root}: not found; nothing is installed there")
    pub = _pub_for(root, pubkey)
    cur, prev = link_target(root, CURRENT), link_target(root, PREVIOUS)
    rows = []
    sdir = root / SLOTS
    for slot in (
        sorted((p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=age)
        if sdir.is_dir()
        else []
    ):
        state, rep = slot_state(slot)
        try:
            version = slot_manifest(slot).version
        except (OSError, EdgesdkError):
            version = "?"
        why = verify_slot(slot, pub)
        rows.append(
            {
                "slot": slot.name,
                "version": version,
                "state": state,
                "current": slot == cur,
                "previous": slot == prev,
                "verifies": not why,
                "why": why,
                "signature": "checked" if pub else "not checked (no key)",
                "health": (rep.get("why") or "passed") if rep else None,
                "runtime": runtime.state(slot),
                "p50 ms": ((rep or {}).get("latency_ms") or {}).get("p50"),
            }
        )
    leftovers = [p.name for p in sdir.glob(".*")] if sdir.is_dir() else []
    return {
        "root": str(root),
        "current": cur.name if cur else None,
        "previous": prev.name if prev else None,
        "slots": rows,
        "history": read_history(root),
        "leftovers": leftovers,
    }
