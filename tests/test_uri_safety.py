"""What a user types into a URI or a flag can neither destroy a file, open another one than named,
nor silently turn a run into one that scores nothing: one option parser for every source and sink
(unknown keys, bad values, non-finite numbers, ranges), `#` kept in file names, the JSONL sink
refusing files that are not its own, a corrupt image in a folder recorded instead of fatal, and
frame and stream counts checked."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edgesdk.data.mvtec import DataError
from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.stream.pipeline import run_stream
from edgesdk.video import open_sink, open_source
from mqtt_broker import free_port


def _video(path, frames: int = 5):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    w.release()
    return path


@pytest.fixture
def clip(tmp_path):
    return _video(tmp_path / "clip.avi")


# (URI suffix or whole URI, the option the error must name). {v} is a 5-frame video.
BAD_SOURCES = [
    ("{v}?fps=inf", "fps"),
    ("{v}?fps=-Infinity", "fps"),
    ("{v}?fps=NaN", "fps"),
    ("{v}?fps=abc", "fps"),
    ("{v}?fps=0", "fps"),
    ("{v}?fps=-3", "fps"),
    ("file://{v}?fps=1e999", "fps"),
    ("{v}?loop=maybe", "loop"),
    ("{v}?loop=", "loop"),
    ("{v}?loop=2", "loop"),
    ("{v}?roi=-20,-20,10,10", "roi"),
    ("{v}?roi=0,0,0,5", "roi"),
    ("{v}?roi=1.5,0,4,4", "roi"),
    ("{v}?fps=5&fps=inf", "fps"),
    ("synth://conveyor?fps=inf", "fps"),
    ("synth://conveyor?seed=1.5", "seed"),
    ("synth://conveyor?seed=-1", "seed"),
    ("synth://conveyor?sed=1", "sed"),
    ("rtsp://127.0.0.1:1/cam?fps=inf&user=x", "fps"),  # the camera's own keys pass, ours are checked
    ("v4l2:///dev/video0?size=0x480", "size"),
    ("v4l2:///dev/video0?size=640x", "size"),
]


@pytest.mark.parametrize("uri,option", BAD_SOURCES)
def test_bad_source_options_are_refused_naming_uri_and_option(clip, uri, option):
    uri = uri.format(v=clip)
    with pytest.raises(OptionError, match=rf"{re.escape(uri.split('?')[0])}.*{re.escape(option)}"):
        open_source(uri)


BAD_SINKS = [
    ("jsonl://{d}/r.jsonl?max_mb=abc", "max_mb"),
    ("jsonl://{d}/r.jsonl?max_mb=nan", "max_mb"),
    ("jsonl://{d}/r.jsonl?max_mb=-inf", "max_mb"),
    ("jsonl://{d}/r.jsonl?max_mb=-1", "max_mb"),
    ("jsonl://{d}/r.jsonl?keep=1.5", "keep"),
    ("jsonl://{d}/r.jsonl?keep=0", "keep"),
    ("jsonl://{d}/r.jsonl?kep=3", "kep"),
    ("video://{d}/a.mp4?fps=inf", "fps"),
    ("video://{d}/a.mp4?fps=0", "fps"),
    ("dir://{d}/ng?all=2", "all"),
    ("dir://{d}/ng?al=1", "al"),
    ("dir://{d}/ng?all=1&all=0", "all"),
    ("http://127.0.0.1:{p}?fps=0", "fps"),
    ("http://127.0.0.1:{p}?fps=INF", "fps"),
    ("http://127.0.0.1:0", "port"),
    ("http://127.0.0.1:http", "port"),
    ("mqtt://127.0.0.1:1/t?qos=x", "qos"),
    ("mqtt://127.0.0.1:1/t?qos=3", "qos"),
    ("mqtt://127.0.0.1:1/t?health=nan", "health"),
    ("mqtt://127.0.0.1:1/t?drain=-1", "drain"),
    ("mqtt://127.0.0.1:abc/t", "port"),
    ("mqtt://127.0.0.1:0/t", "port"),
    ("mqtt://127.0.0.1:70000/t", "port"),
    ("mqtt://127.0.0.1:1/line/#", "#"),
    ("mqtt://127.0.0.1:1/line#1", "#"),
]


@pytest.mark.parametrize("uri,option", BAD_SINKS)
def test_bad_sink_options_are_refused_naming_uri_and_option(tmp_path, uri, option):
    uri = uri.format(d=tmp_path / "out", p=free_port())
    with pytest.raises(OptionError, match=rf"{re.escape(uri.split('?')[0])}.*{re.escape(option)}"):
        open_sink(uri)
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_yes_no_options_take_their_spellings_and_integers_stay_whole(clip, tmp_path):
    for text, want in (("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False), ("false", False)):
        with open_source(f"{clip}?loop={text}&roi=0,0,8,8") as src:
            assert src.opts.loop is want
        with open_sink(f"dir://{tmp_path / text}?all={text}") as sink:
            assert sink.every_frame is want
    with open_sink(f"jsonl://{tmp_path / 'r.jsonl'}?max_mb=0.5&keep=3") as sink:
        assert (sink.max_bytes, sink.keep) == (500_000, 3)
    with pytest.raises(OptionError, match=r"keep must be an integer, got '3.0'"):
        open_sink(f"jsonl://{tmp_path / 'r.jsonl'}?keep=3.0")


def test_a_negative_roi_no_longer_crops_another_corner(tmp_path):
    # Python slicing would take img[-20:-10] - the bottom rows - and the crop had the asked size.
    img = tmp_path / "p.png"
    cv2.imwrite(str(img), np.arange(128 * 128 * 3, dtype=np.uint8).reshape(128, 128, 3))
    with pytest.raises(OptionError, match=r"roi x,y,w,h needs x,y >= 0"):
        open_source(f"{img}?roi=-20,-20,10,10")


def test_fps_inf_is_refused_by_the_cli_instead_of_scoring_nothing(bundle, clip, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "run",
            str(bundle),
            "--source",
            f"{clip}?fps=inf&loop=1",
            "--sink",
            f"jsonl://{tmp_path / 'r.jsonl'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and f"{clip}?fps=inf&loop=1: fps must be a finite number" in r.stderr, r.stderr


def test_a_looping_source_without_a_readable_frame_ends_with_an_error(tmp_path):
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48)).release()  # opens, no frames
    with open_source(f"{empty}?loop=1") as src:
        with pytest.raises(DataError, match=r"empty.avi\?loop=1: loop=1, but .*no (readable )?frame"):
            src.read()


def test_a_looping_folder_of_unreadable_images_ends_with_an_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.jpg").write_bytes(b"")
    with open_source(f"{folder}?loop=1&fps=1000", errors="record") as src:  # error frames, then refuse
        with pytest.raises(DataError, match=r"loop=1, but a whole pass gave no readable frame"):
            for _ in range(10):
                assert src.read(timeout=1).error == "not a readable image"


def test_a_paced_file_source_answers_read_timeouts_so_a_stop_is_honoured(bundle, clip):
    # One frame in 1000 s: the run must still end soon after `stop` is set, not after the sleep.
    stop, out, recs = threading.Event(), {}, []
    t = threading.Thread(
        target=lambda: out.update(run_stream(bundle, f"{clip}?fps=0.001", [], stop=stop, on_record=recs.append)),
        daemon=True,
    )
    t.start()
    deadline = time.monotonic() + 60
    while not recs and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(30)
    assert not t.is_alive() and out["stopped"] is True and out["frames"] == 1


@pytest.mark.parametrize("scheme", ["file://", ""])
def test_hash_in_a_file_name_is_part_of_the_name(clip, tmp_path, scheme):
    named = tmp_path / "line#2.avi"
    shutil.copy(clip, named)
    (tmp_path / "line").write_bytes(b"another file")  # what a cut at '#' would open
    with open_source(f"{scheme}{named}?roi=0,0,16,16") as src:
        frames = list(src)
    assert len(frames) == 5 and frames[0].image.shape == (16, 16, 3)


def test_hash_in_a_sink_path_writes_that_file_and_leaves_the_other_alone(tmp_path):
    from edgesdk.stream.detector import Result
    from edgesdk.video.sources import Frame

    (tmp_path / "out").write_bytes(b'{"mine": 1}\n')
    (tmp_path / "ng").mkdir()
    rec = {"frame_id": 0, "threshold": 1.0, "is_anomalous": True}
    frame = Frame(np.zeros((32, 32, 3), np.uint8), 0, 0.0)
    res = Result(2.0, True, np.zeros((32, 32), np.float32), [], {"total": 1.0})
    for uri in (f"jsonl://{tmp_path}/out#1.jsonl", f"dir://{tmp_path}/ng#1", f"video://{tmp_path}/out#2.avi"):
        with open_sink(uri) as sink:
            sink.write(rec, frame, res)
    assert json.loads((tmp_path / "out#1.jsonl").read_text()) == rec
    assert (tmp_path / "ng#1" / "frame_000000.png").exists() and not list((tmp_path / "ng").iterdir())
    assert (tmp_path / "out#2.avi").exists()
    assert (tmp_path / "out").read_bytes() == b'{"mine": 1}\n'


def _png(path):
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    path.write_bytes(buf.tobytes())
    return path.read_bytes()


@pytest.mark.parametrize("content", ["png", "text", "text_nl", "json_then_text", "torn_not_json", "empty_line"])
def test_jsonl_sink_refuses_a_file_that_is_not_json_lines_and_leaves_it_byte_identical(tmp_path, content):
    path = tmp_path / "picture.png"
    if content == "png":
        before = _png(path)
    else:
        before = {
            "text": b"my notes\nsecond line",
            "text_nl": b"# my notes\nkeep me\n",
            "json_then_text": b'{"a": 1}\nnot json\n{"frame_id": 2, "sc',
            "torn_not_json": b'{"a": 1}\n{"b": 2}\nhello',
            "empty_line": b'{"a": 1}\n\n{"b": 2',
        }[content]
        path.write_bytes(before)
    with pytest.raises(EdgesdkError, match=rf"{path}: .*not a JSON object|{path}: .*neither JSON"):
        open_sink(f"jsonl://{path}")
    assert path.read_bytes() == before


def test_jsonl_sink_refuses_folders_and_fifos(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(EdgesdkError, match=r"d.jsonl: is a folder"):
        open_sink(f"jsonl://{tmp_path / 'd.jsonl'}")
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    got = []

    def opening():
        try:
            got.append(open_sink(f"jsonl://{fifo}"))
        except Exception as e:  # noqa: BLE001  (the refusal is what the test wants)
            got.append(e)

    t = threading.Thread(target=opening, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # blocked opening a FIFO with no reader: release it
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        t.join(10)
    assert isinstance(got[0], EdgesdkError) and "not a regular file" in str(got[0])


def test_jsonl_sink_still_repairs_its_own_torn_line_and_zero_filled_tail(tmp_path):
    for tail in (b'{"frame_id": 2, "sco', b"\0" * 300, b'{"frame_id": 2' + b"\0" * 50):
        path = tmp_path / "r.jsonl"
        path.write_bytes(b'{"frame_id": 0}\n{"frame_id": 1}\n' + tail)
        with open_sink(f"jsonl://{path}") as sink:
            sink.write({"frame_id": 3}, None, None)
        assert [json.loads(x)["frame_id"] for x in path.read_text().splitlines()] == [0, 1, 3]


def test_jsonl_sink_keeps_a_whole_last_record_that_lacks_its_newline(tmp_path):
    # What "\n".join(json.dumps(r) ...) writes: every record whole, no final newline. Not a tear.
    for before in (b'{"frame": 1}\n{"frame": 2, "note": "operator B"}', b'{"frame": 1}'):
        path = tmp_path / "events.jsonl"
        path.write_bytes(before)
        with open_sink(f"jsonl://{path}") as sink:
            sink.write({"frame": 3}, None, None)
        assert path.read_bytes() == before + b'\n{"frame":3}\n'


def _folder_with_bad_images(tiny_data, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(sorted((tiny_data / "brick/test/good").iterdir())[:3]):
        shutil.copy(p, folder / f"{2 * i}_{p.name}")
    (folder / "1_x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "3_y.jpg").write_bytes(b"")
    return folder


def test_an_unreadable_image_in_a_folder_is_recorded_and_the_run_goes_on(bundle, tiny_data, tmp_path):
    folder = _folder_with_bad_images(tiny_data, tmp_path)
    seen = []
    s = run_stream(
        bundle,
        str(folder),
        [f"jsonl://{tmp_path / 'r.jsonl'}", f"dir://{tmp_path / 'ng'}?all=1"],
        on_record=seen.append,
    )
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert s["frames"] == 3 and s["errors"] == 2 and len(seen) == 3
    assert [r["frame_id"] for r in recs] == [0, 1, 2, 3, 4]
    bad = [r for r in recs if "error" in r]
    assert [(r["name"], r["error"]) for r in bad] == [
        ("1_x.png", "not a readable image"),
        ("3_y.jpg", "not a readable image"),
    ]
    assert all("score" not in r for r in bad) and all("error" not in r and "score" in r for r in recs if r not in bad)
    assert len(list((tmp_path / "ng").glob("*_overlay.jpg"))) == 3  # the image sink saw only the good ones
    with pytest.raises(DataError, match=r"1_x.png: not a readable image"):
        run_stream(bundle, str(folder), [], strict=True)


def test_cli_strict_stops_at_an_unreadable_image(bundle, tiny_data, tmp_path):
    folder = _folder_with_bad_images(tiny_data, tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "edgesdk",
        "run",
        str(bundle),
        "--source",
        str(folder),
        "--sink",
        f"jsonl://{tmp_path / 'r.jsonl'}",
        "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["errors"] == 2, r.stderr
    r = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "1_x.png: not a readable image" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "flag,value",
    [("--max-frames", "-5"), ("--max-frames", "0"), ("--streams", "0"), ("--streams", "-1"), ("--max-frames", "2.5")],
)
def test_frame_and_stream_counts_are_refused_below_one(tmp_path, clip, flag, value):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "run",
            str(tmp_path / "nobundle"),
            "--source",
            str(clip),
            "--sink",
            f"jsonl://{tmp_path / 'r.jsonl'}",
            flag,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and f"argument {flag}: must be a whole number >= 1" in r.stderr, r.stderr


def test_run_stream_refuses_frame_and_stream_counts_below_one(tmp_path, clip):
    for kw in ({"max_frames": -5}, {"max_frames": 0}, {"max_frames": True}, {"streams": 0}, {"streams": 1.5}):
        with pytest.raises(OptionError, match=rf"{next(iter(kw))} .*at least 1"):
            run_stream(tmp_path / "nobundle", str(clip), [], **kw)
