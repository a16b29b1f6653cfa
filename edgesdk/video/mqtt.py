"""MQTT sink: every verdict to a broker with QoS 1, through an on-disk outbox, so verdicts produced
while the broker (or the network) is down are delivered when it returns, even across a restart of
this process.

  mqtt://host:port/topic[?qos=1&outbox=FILE&health=10&client_id=ID&drain=5]

Each record goes into the outbox (SQLite, committed) before it is published; the row is deleted
once the broker has acknowledged it (PUBACK), in batches (a crash between the two re-sends it,
which QoS 1 allows). The outbox survives a crash of this process (WAL, synchronous=NORMAL: a
power cut can lose the last commits, as it can the JSONL's last lines); full fsync per verdict
cost 0.2 ms of CPU a frame, taken from inference on a small device. On (re)connect every row that
is not already in flight is published again, oldest first. Delivery is QoS 1's at-least-once: a
record whose PUBACK was lost is sent again, so consumers de-duplicate on `frame_id` (+ `timestamp`).
Health (frames, anomalies, outbox depth, reconnects, the stream's sink errors) goes to TOPIC/health
every `health` seconds, QoS 0, retained. An outbox that is not a readable SQLite database (garbage,
truncated) is moved aside to NAME.corrupt-<time>, never deleted, and a fresh one is started.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from edgesdk.errors import OptionError
from edgesdk.video.base import Sink, query_options
from edgesdk.video.options import Opt, host_port, parse_url

log = logging.getLogger("edgesdk.mqtt")


class Outbox:
    """Records not yet acknowledged by the broker, in a SQLite file (safe across crashes)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as e:
            # Only a damaged file is moved aside: "locked" or "cannot open" (OperationalError) is raised.
            if not _damaged(e):
                raise OSError(f"mqtt outbox {path}: {e}") from e
            aside = self._move_aside()
            log.warning(
                "mqtt outbox %s is damaged (%s): moved it aside to %s, with the verdicts it held, and "
                "started a fresh outbox at %s",
                path,
                e,
                aside,
                path,
            )
            self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, payload TEXT NOT NULL)"
            )
            check = db.execute("PRAGMA quick_check").fetchone()[0]  # reads every page: a short outbox
            if check != "ok":
                # Raised as corrupt: sqlite_errorname is only set by SQLite itself (Python >= 3.11).
                raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {check})")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        """Rename the outbox (and its -wal/-shm, which would be replayed into a fresh file) to
        NAME.corrupt-<time>[-wal, -shm]; a name already taken gets a counter, so nothing is overwritten."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        n = 0
        while True:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}" + (f".{n}" if n else ""))
            if not any(Path(f"{aside}{x}").exists() for x in ("", "-wal", "-shm")):
                break
            n += 1
        for x in ("-wal", "-shm", ""):
            if Path(f"{self.path}{x}").exists():
                os.rename(f"{self.path}{x}", f"{aside}{x}")
        return aside

    def add(self, topic: str, payload: str) -> int:
        with self.lock:
            try:
                return int(
                    self.db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload)).lastrowid
                    or 0
                )
            except sqlite3.Error as e:  # a full disk: name the file, not only "database or disk is full"
                raise OSError(f"mqtt outbox {self.path}: {e}") from e

    def remove(self, seqs: list[int]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(q,) for q in seqs])
            self.db.execute("COMMIT")

    def pending(self) -> list[tuple[int, str, str]]:
        with self.lock:
            return self.db.execute("SELECT seq, topic, payload FROM outbox ORDER BY seq").fetchall()

    def __len__(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.db.close()


class MqttSink(Sink):
    takes_errors = True  # write() reads the record only: records of unreadable frames go out too

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        qos: int = 1,
        outbox: Path | None = None,
        health_s: float = 10.0,
        client_id: str = "",
        drain_s: float = 5.0,
    ):
        import paho.mqtt.client as mqtt

        if not topic:
            raise ValueError(f"mqtt://{host}:{port}/: give a topic, e.g. mqtt://{host}:{port}/line1/verdicts")
        if qos not in (0, 1, 2):
            raise ValueError(f"mqtt qos {qos}: 0, 1 or 2")
        self.topic, self.qos, self.health_s, self.drain_s = topic, qos, health_s, drain_s
        safe = topic.replace("/", "_")
        self.outbox = Outbox(outbox or Path.home() / ".cache" / "edgesdk" / f"mqtt-outbox-{host}-{port}-{safe}.db")
        self.inflight: dict[int, int] = {}  # paho message id -> outbox seq
        self.sending: set[int] = set()  # seqs inside client.publish right now
        self.early_acks: set[int] = set()  # PUBACKs that beat publish() returning
        self.done: list[int] = []  # acknowledged seqs, deleted from the outbox in batches
        self._last_purge = time.monotonic()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.stats = {"published": 0, "acked": 0, "reconnects": 0, "connects": 0, "frames": 0, "anomalous": 0}
        self._last_health = 0.0
        self.pipeline_stats: Callable[[], dict] = lambda: {}  # set by the stream loop: its sinks' errors
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=True)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(min_delay=1, max_delay=8)  # backoff while the broker is down
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=15)
        self.client.loop_start()
        if not self.connected.wait(5.0):
            log.warning(
                "mqtt %s:%d not reachable yet; verdicts are kept in %s until it is", host, port, self.outbox.path
            )

    # paho's network thread -------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused: %s", reason)
            return
        self.stats["connects"] += 1
        self.stats["reconnects"] = self.stats["connects"] - 1
        self.connected.set()
        self._flush()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected.clear()
        log.warning(
            "mqtt disconnected (%s); %d verdicts waiting in the outbox", reason, len(self.outbox) - len(self.done)
        )

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        if self.qos == 0:
            return  # no acknowledgement in QoS 0: done when sent
        with self.lock:
            seq = self.inflight.pop(mid, None)
            if seq is None:
                self.early_acks.add(mid)  # acknowledged before publish() returned its mid
                return
            self.done.append(seq)
        self.stats["acked"] += 1

    # ----------------------------------------------------------------------------------------
    def _publish(self, seq: int, topic: str, payload: str) -> None:
        # Never hold our lock across client.publish: paho's network thread holds its own locks while
        # it runs on_connect (which flushes, taking ours) - the two orders would deadlock.
        with self.lock:
            if seq in self.sending or seq in self.inflight.values():  # the reconnect flush and write()
                return
            self.sending.add(seq)
        info = self.client.publish(topic, payload, qos=self.qos)
        with self.lock:
            self.sending.discard(seq)
            self.stats["published"] += 1
            acked = info.mid in self.early_acks or (self.qos == 0 and info.rc == 0)
            self.early_acks.discard(info.mid)
            if not acked:
                self.inflight[info.mid] = seq  # paho re-sends it after a reconnect until PUBACK
            else:
                self.done.append(seq)
        if acked:
            self.stats["acked"] += 1

    def _purge(self) -> None:
        """Delete acknowledged rows, many in one transaction."""
        with self.lock:
            seqs, self.done = self.done, []
        if seqs:
            self.outbox.remove(seqs)
        self._last_purge = time.monotonic()

    def _flush(self) -> None:
        """Publish every outbox row not already in flight (paho re-sends those itself), oldest first."""
        with self.lock:
            busy = set(self.inflight.values()) | self.sending | set(self.done)
        for seq, topic, payload in self.outbox.pending():
            if seq not in busy and self.connected.is_set():
                self._publish(seq, topic, payload)

    def write(self, record: dict, frame, result) -> None:
        payload = json.dumps(record, separators=(",", ":"))
        seq = self.outbox.add(self.topic, payload)  # on disk before anything else
        if self.connected.is_set():
            self._publish(seq, self.topic, payload)
        self.stats["frames"] += 1
        self.stats["anomalous"] += bool(record.get("is_anomalous"))
        now = time.monotonic()
        if len(self.done) >= 64 or now - self._last_purge >= 1.0:
            self._purge()
        if self.health_s and now - self._last_health >= self.health_s:
            self._last_health = now
            self.publish_health()

    def attach(self, stats_fn) -> None:
        self.pipeline_stats = stats_fn

    def health(self) -> dict:
        self._purge()
        sinks = self.pipeline_stats().get("sinks", {})
        return {
            **self.stats,
            "outbox": len(self.outbox),
            "connected": self.connected.is_set(),
            "sink_errors": {u: h["errors"] for u, h in sinks.items()},
            "sink_degraded": [u for u, h in sinks.items() if h["degraded"]],
            "time": time.time(),
        }

    def publish_health(self) -> None:
        if self.connected.is_set():
            self.client.publish(self.topic + "/health", json.dumps(self.health()), qos=0, retain=True)

    def close(self) -> None:
        """Wait up to drain_s for the outbox to empty; what is left is delivered by the next run."""
        deadline = time.monotonic() + self.drain_s
        self._purge()
        while len(self.outbox) and time.monotonic() < deadline:
            if self.connected.is_set():
                self._flush()  # rows written while disconnected, after the reconnect's flush
            time.sleep(0.05)
            self._purge()
        self.publish_health()
        left = len(self.outbox)
        if left:
            log.warning("mqtt: %d verdicts not acknowledged yet; kept in %s for the next run", left, self.outbox.path)
        self.client.loop_stop()
        self.client.disconnect()
        self.outbox.close()


def mqtt_topic(parsed, uri: str) -> str:
    """The topic URI (PARSED: its urlparse result) publishes to; OptionError naming URI where there
    is none, or where paho would refuse it at the first publish: a wildcard (+ #), a NUL, text that
    is not UTF-8, or more than MQTT's 65535 bytes."""
    topic = parsed.path.lstrip("/")
    if not topic:
        raise OptionError(f"{uri}: give a topic, e.g. mqtt://HOST:PORT/line1/verdicts")
    try:
        size = len(topic.encode())
    except UnicodeEncodeError:
        size = -1
    if set(topic) & set("+#\0") or not 0 < size <= 65535:
        raise OptionError(
            f"{uri}: topic {topic[:80]!r} cannot be published to: no + or # (wildcards), no NUL, "
            "UTF-8, at most 65535 bytes"
        )
    return topic


def open_mqtt(uri) -> MqttSink:
    """The sink for URI: its text (named by every error as typed), or its urlparse result."""
    text = uri if isinstance(uri, str) else uri.geturl()
    parsed = parse_url(text) if isinstance(uri, str) else uri
    q = query_options(
        parsed,
        {
            "qos": Opt(1, choices=(0, 1, 2)),
            "outbox": "",
            "health": Opt(10.0, lo=0),
            "client_id": "",
            "drain": Opt(5.0, lo=0),
        },
        text,
    )
    host, port = host_port(text, 1883)
    return MqttSink(
        host or "127.0.0.1",
        port,
        mqtt_topic(parsed, text),
        qos=q["qos"],
        outbox=Path(q["outbox"]) if q["outbox"] else None,
        health_s=q["health"],
        client_id=q["client_id"],
        drain_s=q["drain"],
    )


def _damaged(e: sqlite3.DatabaseError) -> bool:
    """SQLite says the file is not a database or is corrupt (sqlite_errorname exists from Python 3.11;
    JetPack 6 has 3.10, so the message decides there)."""
    name = getattr(e, "sqlite_errorname", "")
    if name:
        return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT")
    return any(m in str(e) for m in ("file is not a database", "database disk image is malformed"))
