"""The device agent: waits for its group's signed release, fetches the package, installs it with
deploy's install (verify, slot, health check, switch: no second way to install), and keeps its state
retained on the broker. docs/FLEET.md has the whole protocol.

On disk, ROOT/fleet/agent.json (atomic, fsynced) records every release and command handled, with the
verified message itself. A release is marked "started" before anything is fetched and "done" with its
result after install returns, so:
  - a release seen again (QoS 1 redelivery, the retained message after a reconnect or a broker
    restart, the next wave's copy) is never installed twice;
  - an agent killed mid-install finds "started" when it starts again and runs the same install once
    more from the recorded message: install's own state machine converges ("already current" when
    the switch had happened, the verified slot reused when it had been written), and the result is
    reported. After MAX_ATTEMPTS interrupted runs it gives up and reports an error;
  - the retained state is rebuilt from this record and the slots, and published again on every
    (re)connect, so a result produced while the broker was away is reported when it returns.
The state is never lost; a message that fails its signature or checks is ignored and listed in the
state's `rejected`."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgesdk import __version__
from edgesdk.deploy import keys, slots
from edgesdk.errors import EdgesdkError
from edgesdk.fleet import messages, topics
from edgesdk.fleet.broker import BrokerOptions, Link
from edgesdk.fleet.fetch import FetchError, fetch
from edgesdk.fleet.record import FLEET_DIR, KEEP_IN_STATE, KEEP_REJECTED, Record, summary

log = logging.getLogger("edgesdk.fleet")


@dataclass(frozen=True)
class AgentOptions:
    group: str
    device_id: str
    root: Path
    pubkey: Path
    golden: str | None = None  # the line's golden set: replaces the package's in the health check
    device: str | None = None  # device profile; None: detect this machine
    keep: int = 3
    max_latency_ms: float | None = None
    heartbeat_s: float = 30.0
    fetch_timeout_s: float = 300.0
    max_attempts: int = 3


class Agent:
    def __init__(
        self,
        broker: BrokerOptions,
        opts: AgentOptions,
        installer: Callable = slots.install,
        rollbacker: Callable = slots.rollback,
    ):
        topics.check_name(opts.group, "--group")
        topics.check_name(opts.device_id, "--device-id")
        if opts.keep < 1:
            raise EdgesdkError(f"--keep {opts.keep}: keep at least 1 slot")
        self.opts, self.install, self.rollback = opts, installer, rollbacker
        self.pub = keys.load_public(opts.pubkey)
        if opts.golden:
            from edgesdk.deploy.package import golden_files

            golden_files(opts.golden)  # a bad --golden is refused at start, not per release
        if opts.device:
            from edgesdk.devices import load_profile

            self.profile = load_profile(opts.device).name
        else:
            from edgesdk.devices import detect

            self.profile = detect()["profile"]
        self.root = Path(opts.root)
        self.record = Record(self.root)
        self.t_release = topics.release(opts.group)
        self.t_cmd = topics.device(opts.group, opts.device_id, "cmd")
        self.t_state = topics.device(opts.group, opts.device_id, "state")
        self.t_online = topics.device(opts.group, opts.device_id, "online")
        self.q: queue.Queue = queue.Queue()
        self.chunk_q: queue.Queue | None = None
        self.chunk_release = ""
        self.busy: dict | None = None
        self.dirty = True
        self.started = time.time()
        self.state_lock = threading.Lock()
        self.snapshot: dict | None = None
        self.slots_now = self._slots()
        self.link = Link(
            broker,
            f"edgesdk-agent-{opts.group}-{opts.device_id}",
            self._on_message,
            (self.t_release, self.t_cmd),
            will=(self.t_online, self._online(False, "connection lost")),
            on_connect=self._on_connect,
        )

    # paho's network thread: queue, never work ----------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic in (self.t_release, self.t_cmd):
            self.q.put((topic, payload))
            return
        q, rid = self.chunk_q, self.chunk_release  # read once: the download may end meanwhile
        i = topics.chunk_index(topic, self.opts.group, rid) if q is not None else None
        if q is not None and i is not None:
            q.put((i, payload))

    def _on_connect(self) -> None:
        self.link.send(self.t_online, self._online(True, ""))
        self.beat()  # the last state now (an install may hold the worker for minutes)
        self.dirty = True

    # state -----------------------------------------------------------------------------------------
    def _online(self, online: bool, why: str) -> bytes:
        return json.dumps({"online": online, "why": why, "time": time.time()}).encode()

    def _slots(self) -> dict:
        try:
            st = slots.status(self.root, self.opts.pubkey)
        except (EdgesdkError, OSError):
            return {"current": None, "previous": None}
        by = {s["slot"]: s for s in st["slots"]}

        def one(name):
            return (
                {"slot": name, "version": by[name]["version"], "verifies": by[name]["verifies"]} if name in by else None
            )

        return {"current": one(st["current"]), "previous": one(st["previous"])}

    def state(self) -> dict:
        rel, cmd = self.record.data["releases"], self.record.data["commands"]
        results = {k: v["result"] for k, v in rel.items() if "result" in v}
        last = next(reversed(results.values()), None)
        return {
            "schema": messages.SCHEMA,
            "device": self.opts.device_id,
            "group": self.opts.group,
            "profile": self.profile,
            "edgesdk": __version__,
            "time": time.time(),
            "heartbeat_s": self.opts.heartbeat_s,
            "started": self.started,
            "busy": self.busy,
            **self.slots_now,
            "last": last,
            "releases": dict(list(results.items())[-KEEP_IN_STATE:]),
            "commands": {k: v["result"] for k, v in list(cmd.items())[-KEEP_IN_STATE:] if "result" in v},
            "rejected": self.record.data["rejected"][-KEEP_REJECTED:],
            "link": dict(self.link.stats),
        }

    def publish_state(self) -> None:
        """The worker's fresh state: kept as the snapshot heartbeats re-send, and sent when connected."""
        self.dirty = False  # cleared first: a reconnect while sending marks it again
        with self.state_lock:
            self.snapshot = self.state()
        self.beat()

    def beat(self) -> None:
        """Re-send the last snapshot with the time now (the heartbeat thread, and every connect)."""
        with self.state_lock:
            st = dict(self.snapshot) if self.snapshot else None
        if st is not None and self.link.connected.is_set():
            st["time"] = time.time()
            self.link.send(self.t_state, json.dumps(st))

    def _heartbeats(self, stop: threading.Event) -> None:
        while not stop.wait(self.opts.heartbeat_s):
            self.beat()

    def _reject(self, topic: str, why: str) -> None:
        log.warning("ignored a message on %s: %s", topic, why)
        entry = {"topic": topic, "why": why}
        rej = self.record.data["rejected"]
        if not any({k: r.get(k) for k in entry} == entry for r in rej):
            rej.append({**entry, "time": time.time()})
            self.record.save()
        self.dirty = True

    # work --------------------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        if not payload:  # a retained message cleared by the rollout tool
            return
        try:
            if topic == self.t_release:
                body = messages.open_release(payload, self.pub, topic, self.opts.group)
            else:
                body = messages.open_command(payload, self.pub, topic, self.opts.group, self.opts.device_id)
        except EdgesdkError as e:
            self._reject(topic, str(e))
            return
        if body["kind"] == "release":
            self._release(body, payload)
        else:
            self._command(body)

    def _release(self, body: dict, payload: bytes) -> None:
        rid = body["release"]
        if self.opts.device_id not in body["devices"]:
            return  # not (yet) in a wave
        entry = self.record.data["releases"].get(rid)
        if entry is not None and entry.get("state") == "done":
            return  # never twice
        if entry is not None and entry.get("state") == "started":
            return  # being resumed by run(); a redelivery changes nothing
        if messages.expired(body):
            self._done(
                rid,
                {
                    "result": "expired",
                    "why": f"release {rid} expired before this device saw it",
                    "version": body["package"]["version"],
                },
            )
            return
        self._install(body, payload, attempts=0)

    def _install(self, body: dict, payload: bytes, attempts: int) -> None:
        rid, pkg = body["release"], body["package"]
        self.record.data["releases"][rid] = {
            "state": "started",
            "attempts": attempts + 1,
            "time": time.time(),
            "message": payload.decode(),
        }
        self.record.save()
        self.busy = {"release": rid, "version": pkg["version"], "since": time.time()}
        self.dirty = True
        self.publish_state()
        t0 = time.monotonic()
        dest = self.root / FLEET_DIR / "incoming" / f"{rid}.tgz"
        log.info("release %s: fetching %s %s from %s", rid, pkg["name"], pkg["version"], pkg["url"])
        try:
            fetch(pkg, dest, self.opts.fetch_timeout_s, chunks=lambda: self._chunks(rid))
            rep = self.install(
                dest,
                self.opts.pubkey,
                self.root,
                slots.InstallOptions(
                    golden=self.opts.golden,
                    device=self.opts.device,
                    keep=self.opts.keep,
                    max_latency_ms=self.opts.max_latency_ms,
                    allow_downgrade=body.get("allow_downgrade") is True,
                ),
            )
            result = summary(rep)
        except FetchError as e:
            result = {"result": "error", "why": str(e)}
        except EdgesdkError as e:  # refused by install: signature, members, version, device
            result = {"result": "refused", "why": str(e)}
        except Exception as e:  # anything else: reported, and the agent goes on
            log.exception("release %s", rid)
            result = {"result": "error", "why": f"{type(e).__name__}: {e}"}
        finally:
            dest.unlink(missing_ok=True)
        result.setdefault("version", pkg["version"])
        result["seconds"] = round(time.monotonic() - t0, 3)
        self._done(rid, result)

    def _done(self, rid: str, result: dict) -> None:
        result = {"release": rid, **result, "time": time.time()}
        entry = self.record.data["releases"].setdefault(rid, {})
        entry.update(state="done", result=result)
        self.record.save()
        self.busy = None
        self.slots_now = self._slots()
        log.info("release %s: %s%s", rid, result["result"], f" ({result['why']})" if result.get("why") else "")
        self.dirty = True
        self.publish_state()

    def _chunks(self, rid: str):
        """(index, bytes) of release RID's chunks as the broker delivers them (retained), until the
        fetch timeout; the subscription lasts as long as the download."""
        self.chunk_q, self.chunk_release = queue.Queue(), rid
        topic = topics.chunks(self.opts.group, rid)
        self.link.subscribe(topic)
        deadline = time.monotonic() + self.opts.fetch_timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    yield self.chunk_q.get(timeout=0.5)
                except queue.Empty:
                    continue
        finally:
            self.link.unsubscribe(topic)
            self.chunk_q = None

    def _command(self, body: dict) -> None:
        cid = body["command"]
        if cid in self.record.data["commands"] or messages.expired(body):
            return
        cur = (self.slots_now.get("current") or {}).get("slot")
        if cur != body["slot"]:
            result = {"result": "not needed", "why": f"current is {cur or 'nothing'}, not {body['slot']}"}
        else:
            try:
                r = self.rollback(self.root, self.opts.pubkey)
                result = {"result": "rolled back", "version": r["version"], "slot": r["current"]}
            except EdgesdkError as e:
                result = {"result": "error", "why": str(e)}
        self.record.data["commands"][cid] = {
            "release": body["release"],
            "result": {"command": cid, **result, "time": time.time()},
        }
        self.record.save()
        self.slots_now = self._slots()
        log.info("command %s (rollback of %s): %s", cid, body["slot"], result["result"])
        self.dirty = True
        self.publish_state()

    def _resume(self) -> None:
        """Finish a release a crash interrupted (its verified message is in the record)."""
        for rid, entry in list(self.record.data["releases"].items()):
            if entry.get("state") != "started":
                continue
            if entry.get("attempts", 1) >= self.opts.max_attempts:
                self._done(
                    rid,
                    {
                        "result": "error",
                        "why": f"interrupted {entry['attempts']} times (the agent "
                        "was killed while installing); not tried again",
                    },
                )
                continue
            payload = entry["message"].encode()
            try:
                body = messages.open_release(payload, self.pub, f"{self.record.path} ({rid})", self.opts.group)
            except EdgesdkError as e:
                self._done(rid, {"result": "error", "why": f"recorded release no longer verifies: {e}"})
                continue
            log.info("release %s: resuming the install a restart interrupted", rid)
            self._install(body, payload, attempts=entry.get("attempts", 1))

    def run(self, run_for: float | None = None, stop: threading.Event | None = None) -> None:
        """Serve until STOP is set or RUN_FOR seconds passed; one message at a time, in order."""
        stop = stop or threading.Event()
        (self.root / FLEET_DIR / "incoming").mkdir(parents=True, exist_ok=True)
        for p in (self.root / FLEET_DIR / "incoming").glob(".*.part"):
            p.unlink()  # a download a crash interrupted
        self.publish_state()
        self.link.start()
        beats = threading.Event()
        threading.Thread(target=self._heartbeats, args=(beats,), daemon=True, name="edgesdk-heartbeat").start()
        try:
            self._resume()
            end = None if run_for is None else time.monotonic() + run_for
            while not stop.is_set() and (end is None or time.monotonic() < end):
                if self.dirty:
                    self.publish_state()
                try:
                    topic, payload = self.q.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.handle(topic, payload)
        finally:
            beats.set()
            self.close()

    def close(self) -> None:
        """Say goodbye (offline, retained) when the broker is there; the will covers a crash."""
        if self.link.connected.is_set():
            try:
                self.link.publish(
                    [(self.t_online, self._online(False, "agent stopped")), (self.t_state, json.dumps(self.state()))],
                    timeout=3,
                )
            except EdgesdkError:
                pass
        self.link.close()
