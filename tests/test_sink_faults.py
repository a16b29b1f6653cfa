"""Sinks that fail: an evidence sink (dir, video, preview) whose folder turns into a file mid-run
degrades (counted, logged once, retried, resumed) while every verdict is still written; a verdict
sink on a full disk stops the run naming its file; the preview refuses a frame rate <= 0, never
spins a core for a viewer, warns when it is reachable from the network and asks for its token on
every path; a damaged MQTT outbox is moved aside, not deleted, and a fresh one is started."""

import json
import logging
import math
import re
import resource
import socket
import sqlite3
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgesdk.stream import sinkguard
from edgesdk.stream.pipeline import run_stream
from edgesdk.video import open_sink
from mqtt_broker import Broker, Subscriber, free_port, mosquitto_binary

needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs Debian's mosquitto broker (apt-get install mosquitto)"
)


def _metric(text: str, name: str, labels: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"{name}{labels} ")))


def test_a_dir_sink_whose_folder_becomes_a_file_degrades_and_every_verdict_is_written(
    bundle, tiny_data, tmp_path, monkeypatch, caplog
):
    # The folder of dir:// is replaced by a regular file after frame 10 (real ENOTDIR/EEXIST, which
    # root cannot write through either) and freed again after frame 30. The JSONL must hold every
    # frame, the dir sink must resume, and the preview's /metrics must show the errors meanwhile.
    monkeypatch.setattr(sinkguard, "EVIDENCE_RETRY_S", 0.05)
    monkeypatch.setattr(sinkguard, "EVIDENCE_RETRY_MAX_S", 0.05)
    ng, port = tmp_path / "ng", free_port()
    dir_uri, jsonl = f"dir://{ng}?all=1", tmp_path / "r.jsonl"
    seen = {}

    def on_record(rec):
        time.sleep(0.02)  # pace the file so retries fall between frames
        if rec["frame_id"] == 10:
            ng.rename(tmp_path / "ng-before")
            ng.write_text("a file where the folder was")
        elif rec["frame_id"] == 20:
            seen["metrics"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        elif rec["frame_id"] == 30:
            ng.unlink()

    caplog.set_level(logging.WARNING, logger="edgesdk.stream.pipeline")
    s = run_stream(
        bundle,
        str(tiny_data / "conveyor_brick.mkv"),
        [f"jsonl://{jsonl}", dir_uri, f"http://127.0.0.1:{port}?fps=10"],
        on_record=on_record,
    )
    recs = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert s["frames"] == 60 and [r["frame_id"] for r in recs] == list(range(60))
    before = {int(p.stem[6:]) for p in (tmp_path / "ng-before").glob("frame_*[0-9].png")}
    after = {int(p.stem[6:]) for p in ng.glob("frame_*[0-9].png")}
    assert before == set(range(11)) and min(after) > 30 and set(range(50, 60)) <= after
    errors, skipped = s["sink_errors"][dir_uri], s["sink_skipped_frames"][dir_uri]
    assert errors >= 1 and errors + skipped == 60 - len(before) - len(after)
    assert s["sink_errors"][f"jsonl://{jsonl}"] == 0
    label = f'{{sink="{dir_uri}"}}'
    assert _metric(seen["metrics"], "edgesdk_sink_errors_total", label) >= 1
    assert _metric(seen["metrics"], "edgesdk_sink_degraded", label) == 1
    # Logged once when the episode began and once when it ended, not per frame.
    mine = [r.getMessage() for r in caplog.records if dir_uri in r.getMessage()]
    assert len(mine) == 2 and "working again" in mine[1], mine
    assert re.search(r"evidence sink failed \((File exists|Not a directory): ", mine[0]), mine[0]


def test_a_video_sink_that_cannot_finish_its_file_is_counted_not_fatal(bundle, tiny_data, tmp_path, caplog):
    # The video's folder becomes a file mid-run: the writer keeps its open file (moved with the old
    # folder), and renaming it over the target at the end fails. The run still ends with its summary.
    vid, jsonl = tmp_path / "vid", tmp_path / "r.jsonl"
    video_uri = f"video://{vid / 'a.mp4'}"

    def on_record(rec):
        if rec["frame_id"] == 10:
            vid.rename(tmp_path / "vid-before")
            vid.write_text("a file where the folder was")

    caplog.set_level(logging.WARNING, logger="edgesdk.stream.pipeline")
    s = run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [f"jsonl://{jsonl}", video_uri], on_record=on_record)
    assert s["frames"] == len(jsonl.read_text().splitlines()) == 60 and s["sink_errors"][video_uri] == 1
    (msg,) = [r.getMessage() for r in caplog.records if video_uri in r.getMessage()]
    assert "failed to close" in msg and str(vid / "a.mp4") in msg.split("(", 1)[1]
    (kept,) = (tmp_path / "vid-before").glob(".a.mp4.*.partial.mp4")
    assert kept.stat().st_size > 0  # what was written is kept


def test_a_verdict_sink_that_cannot_write_stops_the_run_and_names_its_file(bundle, tiny_data, tmp_path):
    # A real write failure for root too: the process may not grow a file past 2 KB (RLIMIT_FSIZE), so
    # the JSONL's writes fail with EFBIG after a few records, as they would on a full disk.
    import signal
    import subprocess
    import sys

    out = tmp_path / "verdicts.jsonl"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesdk.cli",
            "run",
            str(bundle),
            "--source",
            str(tiny_data / "conveyor_brick.mkv"),
            "--sink",
            f"jsonl://{out}",
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert f"jsonl://{out}: the verdict sink failed (" in r.stderr and "no verdict is lost" in r.stderr
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines and all(line.endswith(b"\n") and json.loads(line) for line in lines)  # whole lines only


@needs_mosquitto
def test_the_mqtt_health_topic_reports_a_failing_evidence_sink(bundle, tiny_data, tmp_path):
    broker = Broker(tmp_path).start()
    try:
        sub = Subscriber(broker.port, "line3")
        ng = tmp_path / "ng"
        dir_uri = f"dir://{ng}?all=1"

        def on_record(rec):
            time.sleep(0.02)
            if rec["frame_id"] == 5:
                ng.rename(tmp_path / "ng-before")
                ng.write_text("a file where the folder was")

        s = run_stream(
            bundle,
            str(tiny_data / "conveyor_brick.mkv"),
            [f"mqtt://127.0.0.1:{broker.port}/line3?outbox={tmp_path / 'o.db'}&health=0.1", dir_uri],
            on_record=on_record,
        )
        assert s["frames"] == 60 and s["sink_errors"][dir_uri] >= 1
        deadline = time.monotonic() + 10
        while not any(h["sink_errors"].get(dir_uri) for h in sub.health) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = sub.wait_for(set(range(60)))  # the last verdicts may still be on their way
        sub.close()
        bad = [h for h in sub.health if h["sink_errors"].get(dir_uri)]
        assert bad and dir_uri in bad[-1]["sink_degraded"], sub.health[-3:]
        assert got == set(range(60))
    finally:
        broker.stop()


@pytest.mark.parametrize("fps", [0, -5, math.nan, math.inf])
def test_the_preview_refuses_a_frame_rate_that_is_not_a_positive_number(fps):
    from edgesdk.errors import OptionError
    from edgesdk.video.preview import PreviewSink

    port = free_port()
    with pytest.raises(OptionError, match=f"http://127.0.0.1:{port}: fps must be"):
        PreviewSink(port=port, max_fps=fps)
    with pytest.raises(ValueError, match="fps"):
        open_sink(f"http://127.0.0.1:{port}?fps={fps}")
    socket.create_server(("127.0.0.1", port)).close()  # nothing was left bound to the port


def _write_frame(sink, i: int) -> None:
    from edgesdk.stream.detector import Result
    from edgesdk.video.sources import Frame

    img = np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)
    sink.write(
        {"is_anomalous": False, "threshold": 3.0, "latency_ms": {"total": 1.0}},
        Frame(img, i, time.time(), None, "x"),
        Result(0.1, False, np.zeros((64, 64), np.float32), [], {"total": 1.0}),
    )


def _read_part(conn: socket.socket, buf: bytearray) -> bytes:
    """The next JPEG of a multipart MJPEG response."""
    while True:
        m = re.search(rb"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: (\d+)\r\n\r\n", buf)
        if m and len(buf) >= m.end() + int(m[1]):
            jpg = bytes(buf[m.end() : m.end() + int(m[1])])
            del buf[: m.end() + int(m[1])]
            return jpg
        chunk = conn.recv(65536)
        assert chunk, "the preview closed the stream"
        buf += chunk


def test_a_connected_viewer_sleeps_while_no_new_frame_arrives():
    # A huge fps and a line that delivers nothing: the viewer's thread must sleep until a frame
    # comes, not poll. A poll wakes thousands of times a second (each a voluntary context switch of
    # this process) and burns CPU doing it; a waiter wakes a few times. Both bounds are generous.
    from edgesdk.video.preview import PreviewSink

    sink = PreviewSink(port=free_port(), max_fps=1e6)
    conn = socket.create_connection(("127.0.0.1", sink.server.server_address[1]), timeout=10)
    try:
        conn.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(4096)
        assert buf.startswith(b"HTTP/1.0 200")
        cpu0, wakes0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        time.sleep(1.0)  # connected, no frame scored yet
        _write_frame(sink, 0)
        first = _read_part(conn, buf)
        time.sleep(1.0)  # one frame sent, no new one since
        idle_cpu = time.process_time() - cpu0
        wakes = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - wakes0
        _write_frame(sink, 1)
        second = _read_part(conn, buf)  # the viewer still wakes for the next frame
        assert first != second and first[:2] == second[:2] == b"\xff\xd8"
        assert wakes < 300 and idle_cpu < 0.1, f"{wakes} wake-ups, {idle_cpu:.3f} s of CPU in 2 s idle: it polls"
    finally:
        conn.close()
        sink.close()


def test_a_preview_reachable_from_the_network_says_so(caplog):
    from edgesdk.video.preview import PreviewSink

    caplog.set_level(logging.WARNING, logger="edgesdk.preview")
    PreviewSink(port=free_port()).close()
    assert not caplog.records
    PreviewSink(host="0.0.0.0", port=free_port()).close()
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "bound to 0.0.0.0" in msg and "anyone on the network can watch" in msg and "token" in msg


def test_a_preview_token_guards_every_path():
    from edgesdk.video.preview import PreviewSink

    sink = PreviewSink(port=free_port(), token="s3cret/+")
    _write_frame(sink, 0)
    base = sink.address

    def status(path: str, headers: dict | None = None) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        for path in ("/", "/metrics", "/stats.json", "/frame.jpg", "/stream.mjpg", "/nothing"):
            assert status(path) == 401, path
            assert status(path + "?token=wrong") == 401, path
            assert status(path, {"Authorization": "Bearer wrong"}) == 401, path
            want = 404 if path == "/nothing" else 200
            assert status(path, {"Authorization": "Bearer s3cret/+"}) == want, path
            assert status(path + "?token=s3cret%2F%2B") == want, path
        page = urllib.request.urlopen(base + "/?token=s3cret%2F%2B", timeout=5).read().decode()
        assert "/stream.mjpg?token=s3cret%2F%2B" in page and "/stats.json?token=s3cret%2F%2B" in page
    finally:
        sink.close()


def _outbox_with_rows(path, n: int = 3000) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL)"
    )
    db.executemany("INSERT INTO outbox (topic, payload) VALUES ('t', ?)", [(f"{i:0100d}",) for i in range(n)])
    db.close()


@needs_mosquitto
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_mqtt_outbox_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, damage):
    outbox = tmp_path / "outbox.db"
    if damage == "garbage":
        outbox.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    else:
        _outbox_with_rows(outbox)
        outbox.write_bytes(outbox.read_bytes()[: outbox.stat().st_size // 3])  # cut off mid-table
    damaged = outbox.read_bytes()
    broker = Broker(tmp_path).start()
    try:
        sub = Subscriber(broker.port, "line4")
        caplog.set_level(logging.WARNING, logger="edgesdk.mqtt")
        with open_sink(f"mqtt://127.0.0.1:{broker.port}/line4?outbox={outbox}&drain=10") as sink:
            assert sink.connected.wait(10)
            sink.write({"frame_id": 7, "is_anomalous": False}, None, None)
        assert sub.wait_for({7}) == {7}
        sub.close()
    finally:
        broker.stop()
    (aside,) = tmp_path.glob("outbox.db.corrupt-*")
    assert re.fullmatch(r"outbox\.db\.corrupt-\d{8}T\d{6}", aside.name)
    assert aside.read_bytes() == damaged  # kept, byte for byte
    assert sqlite3.connect(outbox).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0  # fresh, drained
    (msg,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert str(outbox) in msg and str(aside) in msg


def test_a_second_run_never_replaces_the_first_runs_evidence(bundle, tiny_data, tmp_path):
    ng = tmp_path / "ng"
    run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [f"dir://{ng}?all=1"], max_frames=3)
    first = {p.name: p.read_bytes() for p in ng.iterdir()}
    assert "frame_000000.png" in first
    run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [f"dir://{ng}?all=1"], max_frames=3)
    after = {p.name: p.read_bytes() for p in ng.iterdir()}
    assert all(after[name] == data for name, data in first.items())  # every earlier file as it was
    assert {"frame_000000-1.png", "frame_000000-1_overlay.jpg"} <= set(after) and len(after) == 2 * len(first)
