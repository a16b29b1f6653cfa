"""A real Ray cluster of two nodes on this machine for the tests: `ray start --head` and a second
`ray start` joining it on loopback, each with 1 CPU and a resource of its own, token-authenticated.
Stopped by killing exactly the processes of this cluster (their command lines name its temp dir) and
their children: `ray stop` would also stop any other Ray instance this user runs on the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(token: str) -> dict:
    """What every process of the cluster and its drivers needs: the cluster's own random token. Ray's
    servers listen on every interface and a multi-node cluster advertises the machine's address even
    when given 127.0.0.1 (it refuses loopback unless run as a single-node cluster), so the token is what
    keeps other hosts out."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}


def _ours(marker: str) -> set[int]:
    """PIDs whose command line names MARKER, and all their descendants."""
    parents: dict[int, int] = {}
    found = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(p.name)] = ppid
        if marker in cmd:
            found.add(int(p.name))
    grew = True
    while grew:
        kids = {pid for pid, pp in parents.items() if pp in found} - found
        grew = bool(kids)
        found |= kids
    found.discard(os.getpid())
    return found


def stop(temp_dir: str) -> None:
    known: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        known |= _ours(temp_dir)  # gathered before killing: an orphaned child no longer shows its parent
        pids = set(known)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)}
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


class Cluster:
    """Two nodes: `with Cluster(tmp) as c:` ... c.address, c.env; stopped on exit, whatever happened."""

    def __init__(self, tmp: Path):
        # Short path: Ray's Unix sockets live in the temp dir and a socket path is limited to 107 bytes.
        self.temp_dir = Path("/tmp") / f"ray-{secrets.token_hex(4)}"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = env(secrets.token_hex(16))
        self.log = tmp / "ray-start.log"

    def _start(self, *args: str) -> None:
        common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
        with open(self.log, "a") as log:
            subprocess.run(
                [RAY, "start", "--node-ip-address=127.0.0.1", *common, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=180,
            )

    def __enter__(self) -> "Cluster":
        self.temp_dir.mkdir()
        try:
            head = ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
            self._start(*head, '--resources={"node_a": 1}')
            self._start(f"--address={self.address}", '--resources={"node_b": 1}')
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        stop(str(self.temp_dir))
        shutil.rmtree(self.temp_dir, ignore_errors=True)
