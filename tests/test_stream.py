"""The pipelined stream loop and live sources: every file frame scored in order; live sources drop
the oldest frames (counted) instead of queueing without bound; a cut camera is reconnected and
reported, over HTTP MJPEG and over RTSP from a real server; SIGTERM drains and closes sinks; the
generated conveyor is endless and labelled; source options and camera errors are clear."""

import json
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

import rtsp_server
from edgesdk.stream.pipeline import run_stream
from edgesdk.video import open_source
from mjpeg_server import MjpegCamera
from mqtt_broker import free_port


def test_file_source_every_frame_scored_in_order_with_stage_latency(bundle, tiny_data, tmp_path):
    slow = lambda rec: time.sleep(0.005)  # noqa: E731  (a slow sink must not cost a frame of a file)
    s = run_stream(
        bundle,
        str(tiny_data / "conveyor_brick.mkv"),
        [f"jsonl://{tmp_path / 'r.jsonl'}"],
        on_record=slow,
        queue_depth=2,
    )
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert s["frames"] == len(recs) == 60 and s["dropped_frames"] == 0
    assert [r["frame_id"] for r in recs] == list(range(60))
    lat = recs[10]["latency_ms"]
    assert {"read", "queue", "preprocess", "infer", "postprocess", "total"} <= set(lat)
    assert lat["total"] == pytest.approx(
        lat["read"] + lat["queue"] + lat["preprocess"] + lat["infer"] + lat["postprocess"], abs=0.01
    )


@pytest.mark.parametrize("streams", [1, 2])
def test_live_source_drops_oldest_frames_and_counts_them(bundle, tiny_data, tmp_path, streams):
    # The file played as a 100 FPS camera into a sink that takes 30 ms a frame: the loop must not
    # queue without bound; it drops (and counts) frames and keeps the verdicts in order.
    seen = []
    s = run_stream(
        bundle,
        f"{tiny_data / 'conveyor_brick.mkv'}?fps=100",
        [],
        on_record=lambda rec: (seen.append(rec["frame_id"]), time.sleep(0.03)),
        queue_depth=2,
        streams=streams,
    )
    dropped = s["dropped_frames"] + s["source_stats"]["dropped_at_source"]
    assert s["frames"] == len(seen) < 60 and dropped > 0 and s["frames"] + dropped == 60
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_http_camera_cut_and_restored_is_reconnected_and_reported(bundle, tiny_data):
    cam = MjpegCamera(str(tiny_data / "conveyor_brick.mkv"), fps=30).start()
    stop, out, got = threading.Event(), {}, []
    t = threading.Thread(target=lambda: out.update(run_stream(bundle, cam.url, [], on_record=got.append, stop=stop)))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        cam.stop()  # the camera goes away mid-stream
        time.sleep(1.5)
        n_cut = len(got)
        cam.start()
        while len(got) < n_cut + 10 and time.monotonic() < deadline + 20:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(20)
        cam.stop()
    assert not t.is_alive() and out["stopped"] is True
    assert n_cut >= 10 and out["frames"] >= n_cut + 10, (n_cut, out["frames"])
    assert out["source_stats"]["reconnects"] >= 1


def _mp4v_copy(video, out, times: int) -> list:
    """The video re-encoded as mp4v (what an IP camera's RTSP carries here), `times` over; its frames."""
    frames, cap = [], cv2.VideoCapture(str(video))
    while (f := cap.read())[0]:
        frames.append(f[1])
    w = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 15, frames[0].shape[1::-1])
    for f in frames * times:
        w.write(f)
    w.release()
    cap, decoded = cv2.VideoCapture(str(out)), []
    while (f := cap.read())[0]:
        decoded.append(f[1])
    return decoded


@pytest.mark.skipif(rtsp_server.available() is not None, reason=str(rtsp_server.available()))
def test_rtsp_camera_on_loopback_is_scored_and_its_cut_reconnected(bundle, tiny_data, tmp_path):
    file_frames = _mp4v_copy(tiny_data / "conveyor_brick.mkv", tmp_path / "line.mp4", times=4)
    srv = rtsp_server.RtspServer(tmp_path / "line.mp4", free_port()).start()
    try:
        # RTP carries the file's mp4v bitstream untouched: what arrives decodes to the file's frames.
        with open_source(srv.url) as src:
            got = [f.image for f in (src.read(5.0) for _ in range(5)) if f is not None]
        assert len(got) == 5 and all(min(np.abs(g.astype(int) - f).max() for f in file_frames) == 0 for g in got)
        stop, out, recs = threading.Event(), {}, []
        t = threading.Thread(
            target=lambda: out.update(
                run_stream(bundle, srv.url, [f"jsonl://{tmp_path / 'r.jsonl'}"], on_record=recs.append, stop=stop)
            )
        )
        t.start()
        deadline = time.monotonic() + 30
        while len(recs) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.stop()  # the server dies mid-stream
        time.sleep(1.5)
        n_cut = len(recs)
        srv.start()
        while len(recs) < n_cut + 10 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        stop.set()
        t.join(20)
    finally:
        srv.stop()
    assert not t.is_alive() and out["stopped"] is True
    assert n_cut >= 10 and out["frames"] >= n_cut + 10, (n_cut, out["frames"])
    assert out["source_stats"]["reconnects"] >= 1
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == out["frames"] and all(json.loads(x)["score"] == r["score"] for x, r in zip(lines, recs))


def test_synth_conveyor_is_endless_and_labelled(bundle):
    # 130 frames: past the end of one pass (60), defects keep coming, of every kind, named per frame.
    recs = []
    s = run_stream(bundle, "synth://conveyor?category=brick", [], on_record=recs.append, max_frames=130)
    names = [r["name"] for r in recs]
    assert s["frames"] == 130 and set(names) == {"good", "hole", "stain", "scratch", "smudge"}
    assert names.count("good") == 130 - 4 * 8 and names[60:].count("good") == 70 - 16
    flagged = {r["name"] for r in recs if r["is_anomalous"]}
    assert {"hole", "stain"} <= flagged
    with pytest.raises(ValueError, match="synth://belt: the generated source is synth://conveyor"):
        open_source("synth://belt")
    with pytest.raises(ValueError, match="unknown category 'wood'"):
        open_source("synth://conveyor?category=wood")


def test_sigterm_drains_in_flight_frames_and_closes_sinks(bundle, tiny_data, tmp_path):
    out = tmp_path / "r.jsonl"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "run",
            str(bundle),
            "--json",
            "--source",
            f"{tiny_data / 'conveyor_brick.mkv'}?fps=30&loop=1",  # never ends
            "--sink",
            f"jsonl://{out}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 2000) and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 0, stderr
    summary = json.loads(stdout)
    lines = out.read_text().splitlines()
    assert summary["stopped"] is True and summary["frames"] == len(lines) > 0
    assert [json.loads(x)["frame_id"] for x in lines] == sorted(json.loads(x)["frame_id"] for x in lines)


def test_source_options_and_camera_errors_are_clear(tiny_data, tmp_path):
    video = tiny_data / "conveyor_brick.mkv"
    with pytest.raises(ValueError, match=r"unknown source option\(s\) \['fsp'\]"):
        open_source(f"{video}?fsp=3")
    with pytest.raises(ValueError, match="roi x,y,w,h"):
        open_source(f"{video}?roi=1,2,3")
    with open_source(f"file://{video}?roi=16,32,64,48") as src:
        assert src.read().image.shape == (48, 64, 3)
    with pytest.raises(ValueError, match="loop= is for files"):
        open_source("rtsp://127.0.0.1:1/x?loop=1")
    with pytest.raises(OSError, match=r"v4l2:///dev/video99: cannot open"):
        open_source("v4l2:///dev/video99")
    if "GStreamer:                   NO" in cv2.getBuildInformation():
        with pytest.raises(RuntimeError, match="without it.*JetPack's OpenCV"):
            open_source("csi://0")
    with pytest.raises(ValueError, match="unsupported source scheme 'ftp'"):
        open_source("ftp://x/y")


def test_two_streams_score_every_frame_in_capture_order_with_the_same_verdicts(bundle, tiny_data, tmp_path):
    # Throughput mode: two frames in flight on one shared session, one thread each. Records must
    # still leave in capture order, and score what one stream scores (float sums may differ by
    # thread count only in the last bits).
    video = str(tiny_data / "conveyor_brick.mkv")
    one, two = [], []
    s1 = run_stream(bundle, video, [], on_record=one.append)
    s2 = run_stream(bundle, video, [f"jsonl://{tmp_path / 'r.jsonl'}"], on_record=two.append, streams=2)
    assert s2["streams"] == 2 and s2["threads_per_stream"] >= 1 and s2["frames"] == s1["frames"] == 60
    assert [r["frame_id"] for r in two] == list(range(60))
    assert [json.loads(x)["frame_id"] for x in (tmp_path / "r.jsonl").read_text().splitlines()] == list(range(60))
    np.testing.assert_allclose([r["score"] for r in two], [r["score"] for r in one], rtol=1e-4, atol=1e-4)
    assert [r["is_anomalous"] for r in two] == [r["is_anomalous"] for r in one]


def test_streams_need_onnxruntime_and_at_least_one(bundle, tiny_data):
    from edgesdk.stream.detector import DetectorOptions

    with pytest.raises(ValueError, match="tensorrt backend runs one stream"):
        run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [], DetectorOptions(backend="tensorrt"), streams=2)
    with pytest.raises(ValueError, match="at least 1"):
        run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [], streams=0)
