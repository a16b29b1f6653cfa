"""Result sinks by URI. A sink gets each frame's record (a JSON-ready dict), the frame and result.

  jsonl://results.jsonl    one JSON object per line, appended per frame (?max_mb=100&keep=5 rotates)
  video://annotated.mp4    the annotated stream (?fps=15)
  http://127.0.0.1:8080    live preview page (MJPEG with overlays) and /metrics for Prometheus
  dir://ng/                per anomalous frame (all frames with ?all=1): the raw frame (lossless PNG,
                           to label and retrain on) and its heatmap overlay (JPEG, for eyes)
  mqtt://host:1883/topic   QoS 1 to an MQTT broker through an on-disk outbox (see video/mqtt.py)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2

from edgesdk.fsutil import atomic_write_bytes
from edgesdk.video.base import Sink, query_options
from edgesdk.viz import overlay


class JsonlSink(Sink):
    """Appends (never truncates: earlier runs' records are kept). Each record is one write() of a
    whole line on an O_APPEND descriptor, so a crash leaves complete lines only; a torn last line
    from a power cut is cut off when the file is next opened. With max_mb, the file is rotated at
    that size: FILE -> FILE.1 -> ... -> FILE.<keep> (the oldest is deleted)."""

    def __init__(self, path: Path, max_mb: float = 0.0, keep: int = 5):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes, self.keep = path, int(max_mb * 1e6), max(1, keep)
        self.rotations = 0
        self._repair()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _repair(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)          # drop the torn line, keep every complete one

    def _rotate(self) -> None:
        os.close(self.fd)
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict, frame, result) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        if self.max_bytes and os.fstat(self.fd).st_size + len(line) > self.max_bytes:
            self._rotate()
        os.write(self.fd, line)

    def close(self) -> None:
        os.close(self.fd)


class DirSink(Sink):
    """frame_NNNNNN.png (the raw frame) and frame_NNNNNN_overlay.jpg per NG frame. Each file is
    written beside its name and renamed over it, so a crash never leaves half an image."""

    def __init__(self, path: Path, every_frame: bool = False):
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.every_frame = path, every_frame

    def _save(self, name: str, ext: str, img, params: list[int]) -> None:
        ok, buf = cv2.imencode(ext, img, params)
        if not ok:
            raise OSError(f"{self.path / name}: OpenCV could not encode {ext}")
        atomic_write_bytes(self.path / name, buf.tobytes())

    def write(self, record: dict, frame, result) -> None:
        if result.is_anomalous or self.every_frame:
            stem = f"frame_{record['frame_id']:06d}"
            self._save(f"{stem}.png", ".png", frame.image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            img = overlay(frame.image, result.anomaly_map, record["threshold"], result.regions)
            self._save(f"{stem}_overlay.jpg", ".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])


class VideoSink(Sink):
    """The annotated stream (heatmap overlay, boxes, verdict) as an mp4v/FFV1 video, written beside
    the target and renamed over it when the run ends, so an interrupted run never leaves half a file."""

    def __init__(self, path: Path, fps: float = 15.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.writer, self.frames = path, fps, None, 0
        self.tmp = path.with_name(f".{path.stem}.partial{path.suffix}")

    def write(self, record: dict, frame, result) -> None:
        img = overlay(frame.image, result.anomaly_map, record["threshold"], result.regions)
        if self.writer is None:
            fourcc = "FFV1" if self.path.suffix.lower() in (".mkv", ".avi") else "mp4v"
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                          (img.shape[1], img.shape[0]))
            if not self.writer.isOpened():
                raise OSError(f"{self.path}: OpenCV could not open a {fourcc} video writer")
        self.writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)


def _jsonl(uri) -> Sink:
    return JsonlSink(Path(uri.netloc + uri.path), **query_options(uri, {"max_mb": 0.0, "keep": 5}))


def _video(uri) -> Sink:
    return VideoSink(Path(uri.netloc + uri.path), **query_options(uri, {"fps": 15.0}))


def _http(uri) -> Sink:
    from edgesdk.video.preview import PreviewSink

    q = query_options(uri, {"fps": 10.0})
    return PreviewSink(uri.hostname or "127.0.0.1", uri.port or 8080, max_fps=q["fps"])


def _dir(uri) -> Sink:
    return DirSink(Path(uri.netloc + uri.path), parse_qs(uri.query).get("all", ["0"])[0] == "1")


def _mqtt(uri) -> Sink:
    from edgesdk.video.mqtt import open_mqtt   # paho-mqtt only when asked for

    return open_mqtt(uri)


SINKS = {"jsonl": _jsonl, "dir": _dir, "mqtt": _mqtt, "video": _video, "http": _http}


def open_sink(uri: str) -> Sink:
    parsed = urlparse(uri)
    if parsed.scheme not in SINKS:
        raise ValueError(f"{uri}: unsupported sink scheme {parsed.scheme!r}; supported: "
                         + ", ".join(f"{s}://" for s in sorted(SINKS)))
    return SINKS[parsed.scheme](parsed)
