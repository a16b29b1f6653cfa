"""`edgesdk service` and `stage --source/--sink`: the hardened unit, checked by Debian's own
`systemd-analyze verify` (and its offline security review), every value quoted for systemd; and the
stream loop's sd_notify: READY, WATCHDOG only while frames move, STATUS, STOPPING, over a real Unix
datagram socket, from the real CLI.

systemd-analyze verify (252, as root in a container) checks that every Exec*= binary exists and is
executable, and warns about each value it cannot parse; it does not look User= up (the manager
resolves it when it spawns the process), so the device-side test needs no user on this machine and
never creates one; the staged test verifies under --root, whose etc/passwd has the user."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy_util import ROOT, cli, keypair, snapshot  # noqa: F401
from edgesdk.notify import Notifier
from edgesdk.stream.pipeline import run_stream
from notify_util import NotifySocket

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def verify(unit: Path, root: Path | None = None) -> list[str]:
    """systemd-analyze verify's complaints (warnings too, which leave its exit status 0)."""
    r = subprocess.run(
        [
            ANALYZE,
            "verify",
            "--man=no",
            *([f"--root={root}"] if root else []),
            str(unit.relative_to(root) if root else unit),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    return [line for line in (r.stdout + r.stderr).splitlines() if line.strip()] + (
        [f"rc={r.returncode}"] if r.returncode else []
    )


def fake_slot(root: Path, runtime: bool) -> Path:
    """ROOT/slots/1.0.0-x, current -> it; with RUNTIME, an executable runtime/venv/bin/edgesdk in it."""
    slot = root / "slots" / "1.0.0-0123456789ab"
    (slot / "bundle").mkdir(parents=True)
    if runtime:
        exe = slot / "runtime" / "venv" / "bin" / "edgesdk"
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    os.symlink("slots/1.0.0-0123456789ab", root / "current")
    return slot


def exec_argv(unit_text: str) -> list[str]:
    """ExecStart= decoded as systemd documents it: double quotes with \\\\ and \\" escapes, %% for %,
    and in the arguments (not the executable, which no variable reaches) $$ for $."""
    line = next(x for x in unit_text.splitlines() if x.startswith("ExecStart="))
    exe, *args = (w.replace("%%", "%") for w in shlex.split(line[len("ExecStart=") :]))
    return [exe, *(a.replace("$$", "$") for a in args)]


@needs_analyze
def test_the_unit_verifies_with_systemd_and_every_value_survives_its_quoting(tmp_path):
    # Every path carries a space, a % (a specifier to systemd) and a $ (a variable on a command line).
    top = tmp_path / "line 1 %i $HOME"
    root, out = top / "opt edgesdk", top / "out %n"
    fake_slot(root, runtime=True)
    sinks = [
        f"jsonl://{out}/verdicts.jsonl",
        f"dir://{out}/ng",
        "mqtt://127.0.0.1:1883/line1",
        f"mqtt://broker:1883/line2?outbox={top}/outbox/o.db",
        "http://0.0.0.0:8080",
    ]
    unit = tmp_path / "edgesdk.service"
    r = cli(
        "service",
        "--root",
        root,
        "--out",
        unit,
        "--source",
        "v4l2:///dev/video2",
        "--device-allow",
        "/dev/video3",
        "--json",
        *(a for s in sinks for a in ("--sink", s)),
        check=True,
    )
    rep = json.loads(r.stdout)
    text = unit.read_text()
    assert rep["runtime"] == "slot" and rep["executable"] == f"{root}/current/runtime/venv/bin/edgesdk"
    # The binary is found only if the quoting and escaping of its path are right (a bare % would be a
    # specifier, a space would split it); a path list split at a space warns "not absolute".
    assert verify(unit) == []
    assert exec_argv(text) == [
        rep["executable"],
        "run",
        f"{root}/current",
        "--source",
        "v4l2:///dev/video2",
        *(a for s in sinks for a in ("--sink", s)),
    ]
    lines = set(text.splitlines())
    pct = lambda p: str(p).replace("%", "%%")  # noqa: E731
    for want in [
        "Type=notify",
        "WatchdogSec=10s",
        "Restart=on-failure",
        "User=edgesdk",
        "Group=edgesdk",
        "StateDirectory=edgesdk",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DevicePolicy=closed",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=no",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "UMask=0027",
        "WantedBy=multi-user.target",
        "After=network-online.target",
        f'ReadOnlyPaths="{pct(root)}"',
        f'ReadWritePaths="{pct(out)}" "{pct(out)}/ng" "{pct(top)}/outbox"',
        'DeviceAllow="/dev/video2" rw',
        'DeviceAllow="/dev/video3" rw',
        'DeviceAllow="/dev/nvmap" rw',
        'DeviceAllow="/dev/nvgpu/igpu0/ctrl" rw',
        "DeviceAllow=char-nvidia* rw",
    ]:
        assert want in lines, want
    assert not any(x.startswith("DynamicUser") for x in lines)
    # The offline security review agrees it is locked down ("OK" is below 4.0 of 10).
    sec = subprocess.run([ANALYZE, "security", "--offline=yes", "--man=no", str(unit)], capture_output=True, text=True)
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout).group(1))
    assert level < 4.0, sec.stdout[-2000:]
    # A unit this command wrote is replaced; any other file is not.
    cli(
        "service",
        "--root",
        root,
        "--out",
        unit,
        "--source",
        "synth://conveyor",
        "--sink",
        f"jsonl://{out}/v.jsonl",
        check=True,
    )
    assert '--source" "synth://conveyor"' in unit.read_text()
    other = tmp_path / "other.service"
    other.write_text("[Service]\nExecStart=/bin/true\n")
    r = cli(
        "service", "--root", root, "--out", other, "--source", "synth://conveyor", "--sink", f"jsonl://{out}/v.jsonl"
    )
    assert r.returncode == 2 and "not written by `edgesdk service`; not replaced" in r.stderr
    assert other.read_text() == "[Service]\nExecStart=/bin/true\n"


@needs_analyze
def test_the_runtime_is_the_slots_own_or_this_pythons(tmp_path):
    import sysconfig

    root, unit = tmp_path / "root", tmp_path / "u.service"
    slot = fake_slot(root, runtime=False)
    args = ["--root", root, "--out", unit, "--source", "synth://conveyor", "--sink", "jsonl:///srv/v.jsonl", "--json"]
    r = cli("service", *args, "--runtime", "slot")
    assert r.returncode == 2 and f"{root}/current/runtime/venv/bin/edgesdk not found" in r.stderr
    assert not unit.exists()
    mine = str(Path(sysconfig.get_path("scripts")) / "edgesdk")
    for runtime in ("auto", "system"):
        rep = json.loads(cli("service", *args, "--runtime", runtime, check=True).stdout)
        assert rep["runtime"] == "system" and rep["executable"] == mine and exec_argv(unit.read_text())[0] == mine
        assert verify(unit) == []
    exe = slot / "runtime" / "venv" / "bin" / "edgesdk"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    rep = json.loads(cli("service", *args, "--runtime", "auto", check=True).stdout)
    assert rep["runtime"] == "slot" and exec_argv(unit.read_text())[0] == f"{root}/current/runtime/venv/bin/edgesdk"
    assert verify(unit) == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sink", "jsonl:///srv/a\nExecStartPre=/bin/sh"], "control character"),
        (["--sink", "jsonl://rel/v.jsonl"], "absolute path"),
        (["--sink", "mqtt://b:1883/t?outbox=o.db"], "outbox 'o.db': the service needs an absolute path"),
        (["--sink", "http://0.0.0.0:80"], "below 1024"),
        (["--sink", "ftp://x/y"], "unsupported sink scheme 'ftp'"),
        (["--sink", "jsonl://ROOT/v.jsonl"], "may not write inside the deployment root"),
        (["--sink", "jsonl:///srv/v.jsonl", "--user", "root"], "--user 'root'"),
        (["--sink", "jsonl:///srv/v.jsonl", "--name", "a/b"], "--name 'a/b'"),
        (["--sink", "jsonl:///srv/v.jsonl", "--watchdog-s", "0"], "--watchdog-s 0.0: from 1 to 3600"),
        (["--sink", "jsonl:///srv/v.jsonl", "--device-allow", "video0"], "--device-allow 'video0'"),
    ],
)
def test_values_a_unit_cannot_carry_are_refused_naming_the_flag(tmp_path, flags, message):
    root, unit = tmp_path / "root", tmp_path / "u.service"
    fake_slot(root, runtime=True)
    flags = [f.replace("ROOT", str(root)) for f in flags]
    r = cli("service", "--root", root, "--out", unit, "--source", "synth://conveyor", *flags)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not unit.exists()


def fake_target(rootfs: Path) -> None:
    """What verify --root needs of a target: systemd's units, the user, /bin/kill, a system edgesdk."""
    shutil.copytree("/usr/lib/systemd/system", rootfs / "usr/lib/systemd/system", symlinks=True)
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nedgesdk:x:990:990::/var/lib/edgesdk:/bin/false\n")
    (rootfs / "etc/group").write_text("root:x:0:\nvideo:x:44:edgesdk\nedgesdk:x:990:\n")
    for exe in ("bin/kill", "usr/local/bin/edgesdk"):
        (rootfs / exe).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / exe).write_text("#!/bin/sh\n")
        (rootfs / exe).chmod(0o755)


@needs_analyze
def test_stage_writes_the_targets_unit_enabled_and_its_user(pkgs, keypair, tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    base = ["stage", pkgs["1.0.0"], "--pubkey", keypair[1], "--rootfs", rootfs, "--device", "cpu", "--json"]
    # A unit that cannot be written is refused before anything is installed.
    r = cli(*base, "--source", "synth://conveyor", "--sink", "jsonl://relative.jsonl")
    assert r.returncode == 2 and "absolute path" in r.stderr and snapshot(rootfs) == {}
    r = cli(
        *base,
        "--source",
        "v4l2:///dev/video0",
        "--sink",
        "jsonl:///var/lib/edgesdk/verdicts.jsonl",
        "--sink",
        "dir:///data/ng",
        check=True,
    )
    written = json.loads(r.stdout)["written"]
    unit = rootfs / "etc/systemd/system/edgesdk.service"
    assert written["unit"] == str(unit) and written["executable"] == "/usr/local/bin/edgesdk"
    assert os.readlink(rootfs / "etc/systemd/system/multi-user.target.wants/edgesdk.service") == "../edgesdk.service"
    assert (rootfs / "etc/sysusers.d/edgesdk.conf").read_text().splitlines()[
        1
    ] == 'u edgesdk - "edgesdk" /var/lib/edgesdk -'
    text = unit.read_text()
    # the target's paths, never the build host's
    assert str(tmp_path) not in text and 'ReadOnlyPaths="/opt/edgesdk"' in text
    assert exec_argv(text)[:3] == ["/usr/local/bin/edgesdk", "run", "/opt/edgesdk/current"]
    assert 'ReadWritePaths="/data/ng"' in text.splitlines()  # /var/lib/edgesdk is the StateDirectory
    fake_target(rootfs)
    assert verify(unit, rootfs) == []
    # verify --root looks for the binary inside the target: without it, it fails, naming it
    (rootfs / "usr/local/bin/edgesdk").unlink()
    assert any("/usr/local/bin/edgesdk is not executable" in x for x in verify(unit, rootfs))


@pytest.fixture(scope="module")
def pkgs(bundle, keypair, tmp_path_factory):
    from edgesdk.deploy.package import PackOptions, pack

    out = tmp_path_factory.mktemp("pkgs")
    return {"1.0.0": Path(pack(bundle, keypair[0], out / "brick-1.0.0.tgz", PackOptions(version="1.0.0"))["package"])}


def test_run_tells_systemd_ready_alive_and_stopping(bundle, tmp_path):
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    out = tmp_path / "v.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "1000000",
    }
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "run",
            str(bundle),
            "--json",
            "--source",
            "synth://conveyor?category=brick&fps=15",
            "--sink",
            f"jsonl://{out}",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ns.wait("WATCHDOG", 4)
    finally:
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
        ns.close()
    assert p.returncode == 0, stderr
    first, last = ns.messages[0][1], ns.messages[-1][1]
    assert first["READY"] == "1" and "scoring synth://conveyor" in first["STATUS"]
    assert last["STOPPING"] == "1" and len(ns.keys("READY")) == 1 and len(ns.keys("STOPPING")) == 1
    pings = [t for t, _ in ns.keys("WATCHDOG")]
    assert all(b - a > 0.4 for a, b in zip(pings, pings[1:])), pings  # at most every WATCHDOG_USEC / 2
    assert all(
        re.fullmatch(r"\d+ frames, [0-9.]+ FPS, model [0-9a-f]{12}(, \d+ dropped)?", m["STATUS"])
        for _, m in ns.keys("WATCHDOG")
    )
    assert json.loads(stdout)["frames"] == len(out.read_text().splitlines()) > 0


def test_the_abstract_namespace_and_another_process_watchdog():
    name = f"edgesdk-test-{os.getpid()}-{time.monotonic_ns()}"
    ns = NotifySocket("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.watchdog_s == 2.0 and n.ready("up") and n.watchdog()
        ns.wait("WATCHDOG")
        assert ns.messages[0][1] == {"READY": "1", "STATUS": "up"}
        # WATCHDOG_PID names another process: the watchdog is not ours to feed
        other = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
        assert Notifier(other).watchdog_s is None
        # no NOTIFY_SOCKET: every call is a no-op
        assert not Notifier({}).ready() and not Notifier({}).enabled
    finally:
        ns.close()


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["summary"] = fn()
        except BaseException as e:  # reported by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_stalled_sink_stops_the_watchdog_pings_and_they_resume_after(bundle, tiny_data, tmp_path, monkeypatch):
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s while healthy
    stop, release, stalled, first = threading.Event(), threading.Event(), [], []

    def on_record(rec):
        if not first:
            first.append(time.monotonic())
        if not stalled and time.monotonic() - first[0] > 1.5:  # after a few pings
            stalled.append(time.monotonic())
            release.wait()  # the sink thread hangs here

    t, out = _in_thread(
        lambda: run_stream(bundle, f"{tiny_data / 'conveyor_brick.mkv'}?loop=1", [], on_record=on_record, stop=stop)
    )
    try:
        deadline = time.monotonic() + 60
        while not stalled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stalled, out
        time.sleep(2.0)
        before = [ts for ts, _ in ns.keys("WATCHDOG") if ts < stalled[0]]
        during = [ts for ts, _ in ns.keys("WATCHDOG") if ts > stalled[0] + 0.5]
        released = time.monotonic()
        release.set()
        ns.wait("WATCHDOG", len(ns.keys("WATCHDOG")) + 2, timeout=30)
    finally:
        release.set()
        stop.set()
        t.join(60)
        ns.close()
    assert "error" not in out and out["summary"]["stopped"]
    assert len(before) >= 2 and during == [], (before, during, stalled)  # silent while the sink hangs
    assert any(ts > released for ts, _ in ns.keys("WATCHDOG"))  # and alive again once it moves


def test_a_camera_that_is_reconnecting_keeps_the_pings(bundle, tiny_data, tmp_path, monkeypatch):
    from mjpeg_server import MjpegCamera

    ns = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    cam = MjpegCamera(str(tiny_data / "conveyor_brick.mkv"), fps=30).start()
    stop, got = threading.Event(), []
    t, out = _in_thread(lambda: run_stream(bundle, cam.url, [], on_record=got.append, stop=stop))
    try:
        deadline = time.monotonic() + 60
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        cam.stop()  # no frames: the source waits, legitimately
        time.sleep(0.5)
        cut, n_cut = time.monotonic(), len(got)
        time.sleep(2.0)
        during = [ts for ts, _ in ns.keys("WATCHDOG") if ts > cut]
    finally:
        stop.set()
        t.join(60)
        cam.stop()
        ns.close()
    assert "error" not in out and n_cut >= 10
    assert len(got) == n_cut and len(during) >= 5, during  # nothing scored, yet alive
