"""Result sinks by URI. A sink gets each frame's record (a JSON-ready dict), the frame and result.

  jsonl://results.jsonl    one JSON object per line, appended and flushed per frame
  dir://overlays/          a heatmap overlay PNG per anomalous frame (all frames with ?all=1)
  mqtt://host:1883/topic   QoS 1 to an MQTT broker through an on-disk outbox (see video/mqtt.py)
"""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2

from edgesdk.viz import overlay


class Sink:
    def write(self, record: dict, frame, result) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonlSink(Sink):
    """Appends (never truncates: earlier runs' records are kept) and flushes every line, so a
    crash or power cut loses at most the frame being written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = open(path, "a", buffering=1)

    def write(self, record: dict, frame, result) -> None:
        self.f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.f.close()


class DirSink(Sink):
    def __init__(self, path: Path, every_frame: bool = False):
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.every_frame = path, every_frame

    def write(self, record: dict, frame, result) -> None:
        if result.is_anomalous or self.every_frame:
            img = overlay(frame.image, result.anomaly_map, record["threshold"], result.regions)
            cv2.imwrite(str(self.path / f"frame_{record['frame_id']:06d}.png"), img)


def _jsonl(uri) -> Sink:
    return JsonlSink(Path(uri.netloc + uri.path))


def _dir(uri) -> Sink:
    return DirSink(Path(uri.netloc + uri.path), parse_qs(uri.query).get("all", ["0"])[0] == "1")


def _mqtt(uri) -> Sink:
    from edgesdk.video.mqtt import open_mqtt   # paho-mqtt only when asked for

    return open_mqtt(uri)


SINKS = {"jsonl": _jsonl, "dir": _dir, "mqtt": _mqtt}


def open_sink(uri: str) -> Sink:
    parsed = urlparse(uri)
    if parsed.scheme not in SINKS:
        raise ValueError(f"{uri}: unsupported sink scheme {parsed.scheme!r}; supported: "
                         + ", ".join(f"{s}://" for s in sorted(SINKS)))
    return SINKS[parsed.scheme](parsed)
