"""Helpers for tests/test_fleet_*.py: a mosquitto that may require a password and TLS, agent processes
that stop themselves, a loopback HTTP file server, a reader of the broker's retained messages, and a
golden set the brick model gets wrong."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from mqtt_broker import Broker, free_port

ROOT = Path(__file__).resolve().parents[1]
GROUP = "line1"


class FleetBroker(Broker):
    """Broker with persistence (tests/mqtt_broker.py); with USERS ({name: password}) anonymous clients
    are refused, with TLS=(ca, cert, key) a second listener speaks TLS on `tls_port`."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: tuple[Path, Path, Path] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        conf = self.conf.read_text()
        if users:
            pw = workdir / "passwd"
            for i, (name, password) in enumerate(users.items()):
                subprocess.run(
                    ["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(pw), name, password],
                    check=True,
                    capture_output=True,
                )
            conf = conf.replace("allow_anonymous true", f"allow_anonymous false\npassword_file {pw}")
        if tls:
            self.tls_port = free_port()
            ca, cert, key = tls
            conf += (
                f"listener {self.tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                "require_certificate false\n"
            )
        self.conf.write_text(conf)


def make_tls(out: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it (the `cryptography` package)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject, issuer, pub, signer, ca: bool, sans=()):
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgesdk test plant CA")])
    ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    srv = cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
        ca_name,
        srv_key.public_key(),
        ca_key,
        False,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        srv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def cli_args(*args) -> list[str]:
    return [sys.executable, "-m", "edgesdk", *map(str, args)]


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def start_agent(
    broker: str,
    device: str,
    root: Path,
    pub: Path,
    logs: Path,
    *extra,
    golden: Path | None = None,
    run_for: float = 200,
    env_extra: dict | None = None,
) -> subprocess.Popen:
    """`edgesdk agent` in a child process that exits by itself after RUN_FOR seconds."""
    logs.mkdir(parents=True, exist_ok=True)
    args = cli_args(
        "agent",
        "--broker",
        broker,
        "--device-id",
        device,
        "--group",
        GROUP,
        "--root",
        root,
        "--pubkey",
        pub,
        "--device",
        "cpu",
        "--heartbeat",
        "1",
        "--run-for",
        run_for,
        *extra,
        *(["--golden", golden] if golden else []),
    )
    with open(logs / f"{device}.log", "ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env(**(env_extra or {})))


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_until(fn, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def states(port: int, **kw) -> dict[str, dict]:
    """{device: retained state} of the test group (edgesdk.fleet.status.collect, a real subscription)."""
    from edgesdk.fleet.broker import BrokerOptions
    from edgesdk.fleet.status import collect

    found = collect(BrokerOptions("127.0.0.1", port, **kw), GROUP, wait_s=1.0)
    return {d: v["state"] for (g, d), v in found.items() if "state" in v}


def retained(port: int, topic: str, wait: float = 1.0) -> bytes | None:
    """The retained payload of TOPIC now (None: nothing retained)."""
    import paho.mqtt.client as mqtt

    got, done = [], threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    c.on_message = lambda c, u, m: (got.append(bytes(m.payload)), done.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(wait)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else None


def publish(port: int, topic: str, payload: bytes) -> None:
    """One retained QoS 1 message, acknowledged by the broker."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def bad_golden(golden: Path, out: Path) -> Path:
    """The line's golden set with its folders swapped: good images must be flagged, defects must pass;
    the model gets every verdict wrong, so its health check fails on this line."""
    kinds = [p.name for p in golden.iterdir() if p.is_dir() and p.name != "good"]
    shutil.copytree(golden / kinds[0], out / "good")
    shutil.copytree(golden / "good", out / "stain")
    return out


class FileServer:
    """http://127.0.0.1:PORT/ serving FOLDER (a plant's file server), in a thread."""

    def __init__(self, folder: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def read_json_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
