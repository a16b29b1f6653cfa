"""Sinks: JSONL that survives a torn line and rotates by size, the annotated video (never over a
file: a source of the run is refused, an earlier file kept; a short video is an error), and the live
preview page with Prometheus metrics, looked at in a real headless Chromium."""

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgesdk.fsutil import OutputError
from edgesdk.stream.pipeline import run_stream
from edgesdk.video import open_source
from mqtt_broker import free_port


def test_jsonl_cuts_a_torn_last_line_and_rotates_by_size(bundle, tiny_data, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"frame_id": 0}\n{"frame_id": 1, "sco')  # a power cut mid-line
    run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [f"jsonl://{out}?max_mb=0.003&keep=3"])
    files = [out, *(out.with_name(f"r.jsonl.{i}") for i in (1, 2, 3))]
    assert all(f.exists() for f in files) and not out.with_name("r.jsonl.4").exists()
    assert all(f.stat().st_size <= 3_000 for f in files)
    recs = [json.loads(x) for f in reversed(files) for x in f.read_text().splitlines()]  # every line parses
    ids = [r["frame_id"] for r in recs]
    assert ids == sorted(ids) and ids[-1] == 59 and len(ids) == len(set(ids))  # oldest rotated away


def test_video_sink_writes_the_annotated_stream(bundle, tiny_data, tmp_path):
    run_stream(bundle, str(tiny_data / "conveyor_brick.mkv"), [f"video://{tmp_path / 'a.mp4'}?fps=15"])
    cap = cv2.VideoCapture(str(tmp_path / "a.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    ok, img = cap.read()
    assert ok and img.shape == (128, 128, 3)
    assert img[5, 60, 1] > 80 and img[5, 60, 2] < 80  # the green "OK" banner on a good frame
    assert not list(tmp_path.glob(".*partial*"))


def test_a_file_sink_on_a_source_of_the_run_is_refused_before_any_frame(bundle, tiny_data, tmp_path):
    clip = tmp_path / "clip.mkv"
    shutil.copy(tiny_data / "conveyor_brick.mkv", clip)
    (tmp_path / "link.mkv").symlink_to(clip)
    imgs = Path(shutil.copytree(tiny_data / "brick/test/good", tmp_path / "imgs"))
    before, names = clip.read_bytes(), sorted(p.name for p in imgs.iterdir())
    seen = []
    for source, sink in (
        (str(clip), f"video://{clip}"),
        (f"file://{clip}?loop=1", f"video://{tmp_path / 'link.mkv'}?fps=5"),  # another spelling of it
        (str(clip), f"jsonl://{clip}"),
        (str(imgs), f"dir://{tmp_path / 'imgs'}/"),
    ):
        with pytest.raises(OutputError, match=r"is this run's source .*a sink never writes over its input"):
            run_stream(bundle, [str(tiny_data / "conveyor_brick.mkv"), source], [sink], on_record=seen.append)
        with pytest.raises(OutputError, match=re.escape(f"{sink}: is this run's source {source}")):
            run_stream(bundle, source, [f"jsonl://{tmp_path / 'r.jsonl'}", sink], on_record=seen.append)
    assert seen == [] and clip.read_bytes() == before and sorted(p.name for p in imgs.iterdir()) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "imgs", "link.mkv"]


def test_a_video_sink_never_replaces_a_file_an_earlier_run_left(bundle, tiny_data, tmp_path):
    # Like dir://: an earlier run's video is evidence, and a file of the user's is theirs.
    src, out = str(tiny_data / "conveyor_brick.mkv"), tmp_path / "a.mkv"
    run_stream(bundle, src, [f"video://{out}"], max_frames=5)
    first = out.read_bytes()
    (tmp_path / "a-1.mkv").write_text("my notes\n")
    run_stream(bundle, src, [f"video://{out}"], max_frames=7)
    assert out.read_bytes() == first and (tmp_path / "a-1.mkv").read_text() == "my notes\n"
    cap = cv2.VideoCapture(str(tmp_path / "a-2.mkv"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.mkv", "a-2.mkv", "a.mkv"]


def test_a_video_cut_short_by_a_full_disk_is_an_error_and_never_gets_its_name(tmp_path):
    # cv2.VideoWriter reports no failed write; a file-size limit (EFBIG) stands in for a full disk.
    script = f"""
import json, resource, signal
import numpy as np
from edgesdk.stream.detector import Result
from edgesdk.video import open_sink
from edgesdk.video.base import Frame
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
sink, rng = open_sink("video://{tmp_path / "v.mkv"}"), np.random.default_rng(0)
for i in range(60):
    res = Result(1.0, False, np.zeros((128, 128), np.float32), [], {{"total": 1.0}})
    sink.write({{"threshold": 3.0}}, Frame(rng.integers(0, 255, (128, 128, 3), np.uint8), i, 0.0), res)
try:
    sink.close()
except OSError as e:
    print(json.dumps([e.filename, e.strerror]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name, why = json.loads(r.stdout)
    (kept,) = tmp_path.glob(".v.mkv.*.partial.mkv")  # what was written is kept, under its hidden name
    assert name == str(tmp_path / "v.mkv") and re.fullmatch(
        rf"only \d+ of 60 frames .*; what was written is kept at {kept}", why
    )
    assert not (tmp_path / "v.mkv").exists()


def test_a_video_sink_takes_frames_of_another_size_instead_of_dropping_them(tmp_path):
    """Cameras of different resolutions into one video://: OpenCV's writer drops a frame of another
    size in silence, which the read-back at close would then take for a full disk."""
    from edgesdk.stream.detector import Result
    from edgesdk.video import open_sink
    from edgesdk.video.base import Frame

    sink, rng = open_sink(f"video://{tmp_path / 'v.mkv'}"), np.random.default_rng(0)
    for i, (h, w) in enumerate([(128, 128), (96, 160), (128, 128), (200, 100), (128, 128), (64, 64)]):
        res = Result(1.0, False, np.zeros((h, w), np.float32), [], {"total": 1.0})
        sink.write({"threshold": 3.0}, Frame(rng.integers(0, 255, (h, w, 3), np.uint8), i, 0.0), res)
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "v.mkv"))
    n = 0
    while cap.grab():
        n += 1
    assert n == 6 and (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (128, 128)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mkv"]


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_the_read_back_finds_a_video_cut_short_whose_header_says_otherwise(tmp_path, ext):
    """A Matroska header written at close states the whole duration even when the frames after a full
    disk are missing: the check looks for the last frame itself."""
    from edgesdk.images import check_video

    whole = tmp_path / f"whole{ext}"
    w = cv2.VideoWriter(
        str(whole), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*("FFV1" if ext == ".mkv" else "mp4v")), 15.0, (64, 48)
    )
    for i in range(120):
        w.write(np.full((48, 64, 3), i, np.uint8))
    w.release()
    check_video(whole, 120, whole)
    with pytest.raises(OSError, match="of 121 frames"):
        check_video(whole, 121, whole)
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(OSError, match=r"only \d+ of 120 frames written could be read back"):
        check_video(cut, 120, cut)


def test_preview_page_stream_and_metrics(bundle, tiny_data, tmp_path):
    port = free_port()
    stop, res = threading.Event(), {}
    src = f"{tiny_data / 'conveyor_brick.mkv'}?fps=20&loop=1"
    t = threading.Thread(
        target=lambda: res.update(run_stream(bundle, src, [f"http://127.0.0.1:{port}?fps=10"], stop=stop))
    )
    t.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                metrics = urllib.request.urlopen(base + "/metrics", timeout=2).read().decode()
                if "edgesdk_frames_total" in metrics and int(_metric(metrics, "edgesdk_frames_total")) >= 20:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert "# TYPE edgesdk_frames_total counter" in metrics and 'edgesdk_latency_ms{quantile="0.99"}' in metrics
        assert 0 < _metric(metrics, "edgesdk_fps") < 40 and _metric(metrics, "edgesdk_dropped_frames_total") >= 0
        # The MJPEG stream is readable by an MJPEG client (our own http:// camera source).
        with open_source(base + "/stream.mjpg") as cam:
            frame = cam.read(timeout=5)
        assert frame is not None and frame.image.shape == (128, 128, 3)
        shot = _chromium_screenshot(base + "/", tmp_path / "preview.png")
        img = cv2.imread(str(shot))
        # Look at it: the page is dark; the annotated stream is a bright, textured block with a
        # green or red verdict banner; the stats table is rendered text.
        assert img is not None and img.shape[0] >= 400
        body = img[60:200, 16:150]
        assert body.std() > 20, "no video frame drawn on the page"
        table = img[70:280, 420:660]
        assert (table.max(axis=2) > 200).mean() > 0.02, "no stats table beside the stream"
        banner = img[60:90, 16:150].reshape(-1, 3)
        assert ((banner[:, 1] > 100) & (banner[:, 2] < 80)).mean() > 0.2 or (
            (banner[:, 2] > 150) & (banner[:, 1] < 60)
        ).mean() > 0.2
    finally:
        stop.set()
        t.join(20)
    assert res["frames"] >= 20


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _chromium_screenshot(url: str, out):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("needs a headless Chromium (apt-get install chromium; .ci/run does) to look at the page")
    subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--timeout=4000",
            "--window-size=700,520",
            f"--screenshot={out}",
            url,
        ],
        capture_output=True,
        timeout=90,
    )
    assert out.exists(), "chromium wrote no screenshot"
    return out


def test_preview_encodes_only_for_a_viewer_and_once_per_frame():
    # With nobody watching, the preview only counts (no overlay, no JPEG on the line's CPU); a
    # viewer gets the newest frame, encoded once however often it is asked for.
    from edgesdk.stream.detector import Result
    from edgesdk.video.base import Frame
    from edgesdk.video.preview import PreviewSink

    sink = PreviewSink(port=free_port())
    try:
        rng = np.random.default_rng(0)
        for i in range(50):
            img = rng.integers(0, 255, (64, 64, 3), np.uint8)
            res = Result(0.1 * i, False, np.zeros((64, 64), np.float32), [], {"total": 1.0})
            sink.write(
                {"is_anomalous": False, "threshold": 3.0, "latency_ms": {"total": 1.0}},
                Frame(img, i, time.time(), None, "x"),
                res,
            )
        assert sink.frames == 50 and sink.encoded[0] == 0
        body = urllib.request.urlopen(sink.address + "/frame.jpg", timeout=5).read()
        again = urllib.request.urlopen(sink.address + "/frame.jpg", timeout=5).read()
        assert sink.encoded[0] == 50 and body == again
        shown = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert shown.shape == (64, 64, 3)
    finally:
        sink.close()
