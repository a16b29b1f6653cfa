"""The broker: its URI, authentication (username + password file) and TLS (a CA file, optionally a
client certificate), and Link, one paho-mqtt 2.x client that reconnects by itself.

  mqtt://HOST[:PORT]     plain TCP (default port 1883)
  mqtts://HOST[:PORT]    TLS (default port 8883); --cafile names the CA that signed the broker's
                         certificate (default: the system's CAs); the host name is checked
Every message of the fleet is QoS 1 and every topic a device reads is retained, so a client with a
clean session loses nothing while it is away: on (re)connect it subscribes again and the broker sends
the latest retained message of each topic."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlsplit

from edgesdk.errors import EdgesdkError, OptionError

log = logging.getLogger("edgesdk.fleet")


class BrokerError(EdgesdkError):
    """The broker cannot be reached, refused us, or did not acknowledge in time."""


@dataclass(frozen=True)
class BrokerOptions:
    host: str
    port: int
    tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def read_password(path: str | os.PathLike) -> str:
    """The first line of PATH, without its newline (a password file readable by the agent only)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"--password-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not lines or not lines[0]:
        raise OptionError(f"--password-file {path}: the first line (the password) is empty")
    return lines[0]


def parse_broker(
    uri: str,
    *,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    tls: bool = False,
) -> BrokerOptions:
    """--broker URI and its authentication options; OptionError names the option and what is wrong."""
    parts = urlsplit(uri)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise OptionError(f"--broker {uri!r}: give mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise OptionError(
            f"--broker {uri!r}: only mqtt[s]://HOST[:PORT] (a user goes in --user, its password in --password-file)"
        )
    try:
        port = parts.port
    except ValueError:
        raise OptionError(f"--broker {uri!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise OptionError(f"--broker {uri!r}: no host")
    tls = tls or parts.scheme == "mqtts" or bool(cafile)
    for opt, path in (("--cafile", cafile), ("--certfile", certfile), ("--keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise OptionError(f"{opt} {path}: not found")
    if (certfile is None) != (keyfile is None):
        raise OptionError("--certfile and --keyfile: give both (a client certificate and its key) or neither")
    if password_file is not None and user is None:
        raise OptionError("--password-file: give --user too")
    return BrokerOptions(
        parts.hostname,
        port or (8883 if tls else 1883),
        tls,
        cafile,
        certfile,
        keyfile,
        user,
        read_password(password_file) if password_file is not None else None,
    )


def add_broker_args(s) -> None:
    """The broker options every fleet command takes."""
    s.add_argument("--broker", required=True, help="mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS")
    s.add_argument("--tls", action="store_true", help="TLS with the system's CAs (implied by mqtts:// or --cafile)")
    s.add_argument("--cafile", help="CA certificate that signed the broker's certificate (TLS)")
    s.add_argument("--certfile", help="client certificate, for a broker that requires one (with --keyfile)")
    s.add_argument("--keyfile", help="the client certificate's private key")
    s.add_argument("--user", help="broker username")
    s.add_argument("--password-file", help="file whose first line is the broker password")


def broker_from_args(args) -> BrokerOptions:
    return parse_broker(
        args.broker,
        cafile=args.cafile,
        certfile=args.certfile,
        keyfile=args.keyfile,
        user=args.user,
        password_file=args.password_file,
        tls=args.tls,
    )


class Link:
    """One paho client: subscriptions renewed on every connect, QoS 1 publishes that wait for the
    broker's PUBACK across reconnects, messages handed to ON_MESSAGE(topic, payload, retained) on
    paho's network thread (keep it short: queue the work)."""

    def __init__(
        self,
        opts: BrokerOptions,
        client_id: str,
        on_message: Callable[[str, bytes, bool], None],
        subscriptions: tuple[str, ...] = (),
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
        keepalive: int = 15,
    ):
        import paho.mqtt.client as mqtt

        self.opts, self.on_message, self.user_on_connect = opts, on_message, on_connect
        self.subs: dict[str, int] = {t: 1 for t in subscriptions}
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.refused = ""  # the broker's reason, when it refused us
        self.stats = {"connects": 0, "published": 0, "received": 0}
        self.lock = threading.Lock()
        self.keepalive = keepalive
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgesdk-{uuid.uuid4()}",
            clean_session=True,
            reconnect_on_failure=True,
        )
        self.client.max_inflight_messages_set(64)
        self.client.reconnect_delay_set(min_delay=1, max_delay=8)  # backoff while the broker is down
        if opts.username is not None:
            self.client.username_pw_set(opts.username, opts.password)
        if opts.tls:
            self.client.tls_set(
                ca_certs=opts.cafile, certfile=opts.certfile, keyfile=opts.keyfile, cert_reqs=ssl.CERT_REQUIRED
            )
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.on_message, self.client.on_subscribe = self._on_message, self._on_subscribe
        self._sub_mid: int | None = None
        self.closing = False

    # paho's network thread -------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            log.warning("%s refused the connection: %s", self.opts.uri, reason)
            return
        self.refused = ""
        self.stats["connects"] += 1
        with self.lock:
            subs = list(self.subs.items())
        if subs:
            self._sub_mid = client.subscribe(subs)[1]
        else:
            self.subscribed.set()
        self.connected.set()
        if self.user_on_connect is not None:
            self.user_on_connect()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid == self._sub_mid:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self.connected.is_set() and not self.closing:
            log.warning("%s: disconnected (%s); reconnecting", self.opts.uri, reason)
        self.connected.clear()
        self.subscribed.clear()

    def _on_message(self, client, userdata, msg) -> None:
        self.stats["received"] += 1
        try:
            self.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # a handler's bug must not stop the network thread: log it, go on
            log.exception("handling a message on %s", msg.topic)

    # ------------------------------------------------------------------------------------------
    def start(self, wait: float | None = None) -> "Link":
        """Connect and start the network thread. WAIT=None: in the background, retried until the
        broker answers (an agent at boot). WAIT=S: fail within S seconds with a BrokerError naming
        the broker and why (a command line tool)."""
        if wait is None:
            self.client.connect_async(self.opts.host, self.opts.port, keepalive=self.keepalive)
            self.client.loop_start()
            return self
        try:
            self.client.connect(self.opts.host, self.opts.port, keepalive=self.keepalive)
        except ssl.SSLError as e:
            raise BrokerError(
                f"{self.opts.uri}: TLS failed ({e.reason or e}); check --cafile "
                "(the CA that signed the broker's certificate) and the host name"
            ) from None
        except OSError as e:
            raise BrokerError(f"{self.opts.uri}: cannot connect ({e.strerror or e})") from None
        self.client.loop_start()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.refused and not self.subscribed.is_set():
            time.sleep(0.02)
        if not self.subscribed.is_set():
            self.close()
            why = self.refused or f"no answer within {wait:g} s"
            hint = " (check --user and --password-file)" if "auth" in why.lower() or "password" in why.lower() else ""
            raise BrokerError(f"{self.opts.uri}: the broker refused the connection: {why}{hint}")
        return self

    def subscribe(self, topic: str) -> None:
        with self.lock:
            self.subs[topic] = 1
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        with self.lock:
            self.subs.pop(topic, None)
        if self.connected.is_set():
            self.client.unsubscribe(topic)

    def send(self, topic: str, payload: bytes | str, retain: bool = True) -> None:
        """Publish QoS 1 without waiting (paho re-sends it after a reconnect until acknowledged)."""
        self.client.publish(topic, payload, qos=1, retain=retain)
        self.stats["published"] += 1

    def publish(self, items: Sequence[tuple[str, bytes | str]], retain: bool = True, timeout: float = 60.0) -> None:
        """Publish every (topic, payload), QoS 1, and wait until the broker acknowledged each one; a
        message whose PUBACK a broker restart swallowed is sent again (every fleet message is
        idempotent: retained snapshots and signed messages with ids)."""
        deadline = time.monotonic() + timeout
        todo = list(items)
        while todo:
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{self.opts.uri}: {len(todo)} message(s) to {todo[0][0]}… not acknowledged "
                    f"within {timeout:g} s (is the broker up?)"
                )
            if not self.connected.wait(0.5):
                continue
            infos = []
            for topic, payload in todo:
                infos.append(self.client.publish(topic, payload, qos=1, retain=retain))
                self.stats["published"] += 1
            while self.connected.is_set() and time.monotonic() < deadline and not all(i.is_published() for i in infos):
                time.sleep(0.01)
            todo = [it for it, info in zip(todo, infos) if not info.is_published()]

    def close(self) -> None:
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()
