"""http:// sink: a live preview page (MJPEG with heatmap overlays) and Prometheus metrics.

  http://127.0.0.1:8080[?fps=10&token=SECRET]   binds to loopback unless another address is given
  GET /              the page: the annotated stream and a live stats table
  GET /stream.mjpg   multipart/x-mixed-replace JPEGs (any MJPEG viewer, or edgesdk's http:// source)
  GET /frame.jpg     the latest annotated frame (the page shows it first, then switches to the stream)
  GET /metrics       Prometheus text: frames, anomalies, drops, reconnects, FPS, latency quantiles,
                     drift events per kind and the current drift statistics
  GET /stats.json    the same as JSON

Frames are drawn and JPEG-encoded only while someone is looking, at most `fps` a second, on the
viewer's own thread, once per frame however many viewers there are: with no viewer the sink only
counts (the preview must not slow the line). Metrics count every frame. A viewer sleeps on a
condition until a new frame arrives (or a second passes), so no frame rate makes it spin.

Bound to any address but loopback, anyone on that network can watch the line: a warning says so.
With a token, every path (the page, the stream, /metrics) answers 401 unless the request carries
`Authorization: Bearer TOKEN` or `?token=TOKEN`; the page passes its token on to the stream it shows.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from edgesdk.errors import OptionError, finite
from edgesdk.video.base import Sink
from edgesdk.viz import overlay

log = logging.getLogger("edgesdk.preview")

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>edgesdk line preview</title>
<style>body{font-family:sans-serif;margin:16px;background:#111;color:#eee}img{border:1px solid #444;
max-width:100%%}table{border-collapse:collapse;margin-top:8px}td{padding:2px 10px;border-bottom:1px solid #333}
td.v{text-align:right;font-variant-numeric:tabular-nums}</style></head><body>
<h3>edgesdk line preview &mdash; %(title)s</h3><div style="display:flex;gap:16px;align-items:flex-start">
<img id="s" src="/frame.jpg%(q)s" width="%(w)d" alt="annotated stream"><table id="t"></table></div><script>
window.addEventListener('load',()=>{document.getElementById('s').src='/stream.mjpg%(q)s';
tick();setInterval(tick,1000)});
async function tick(){const s=await (await fetch('/stats.json%(q)s')).json();
document.getElementById('t').innerHTML=Object.entries(s).map(([k,v])=>
`<tr><td>${k}</td><td class="v">${typeof v==='number'?+v.toFixed(3):v}</td></tr>`).join('')}
</script></body></html>"""


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PreviewSink(Sink):
    evidence = True

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8080, max_fps: float = 10.0, title: str = "", token: str = ""
    ):
        where = f"http://{host}:{port}"
        max_fps = finite(max_fps, "fps", where)
        if max_fps <= 0:
            raise OptionError(f"{where}: fps must be > 0 (the most frames a second a viewer is sent), got {max_fps:g}")
        self.max_fps, self.title, self.token = max_fps, title, token.encode()
        self.frames = self.anomalous = 0
        self.threshold = 0.0
        self.lat: deque[float] = deque(maxlen=1000)  # recent capture-to-verdict ms
        self.times: deque[float] = deque(maxlen=1000)  # recent frame wall times, for FPS
        self.latest: tuple | None = None  # (image, anomaly map, threshold, regions)
        self.encoded: tuple[int, bytes] = (0, b"")  # (frames when encoded, JPEG)
        self.encode_lock = threading.Lock()
        self.first_frame = threading.Event()
        self.new_frame = threading.Condition()  # viewers wait on it; write() notifies
        self.width = 640
        self.pipeline_stats: Callable[[], dict] = lambda: {}  # set by the stream loop: drops, reconnects
        self.closed = threading.Event()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.address = f"http://{host}:{self.server.server_address[1]}"
        bound = str(self.server.server_address[0])
        if not ipaddress.ip_address(bound).is_loopback:
            log.warning(
                "preview %s is bound to %s, not loopback: anyone on the network can watch the line%s",
                self.address,
                bound,
                "" if token else " (add ?token=SECRET to ask viewers for it)",
            )
        threading.Thread(target=self.server.serve_forever, name="edgesdk-preview", daemon=True).start()

    def attach(self, stats_fn) -> None:
        self.pipeline_stats = stats_fn

    def write(self, record: dict, frame, result) -> None:
        # One reference swap: the frame and map are new arrays each frame, never written again. It
        # comes before the count, which keys the JPEG cache, so a count never names an older frame.
        self.latest = (frame.image, result.anomaly_map, record["threshold"], result.regions)
        self.width = max(frame.image.shape[1], 384)
        self.frames += 1
        self.anomalous += bool(record["is_anomalous"])
        self.threshold = record["threshold"]
        self.lat.append(record["latency_ms"]["total"])
        self.times.append(time.monotonic())
        self.first_frame.set()
        with self.new_frame:
            self.new_frame.notify_all()

    def jpeg(self) -> bytes | None:
        """The newest frame, annotated and encoded (cached until the next frame arrives)."""
        return self.versioned_jpeg()[1]

    def versioned_jpeg(self) -> tuple[int, bytes | None]:
        """(frames counted when it was encoded, the JPEG), or (0, None) before the first frame."""
        with self.encode_lock:
            version, latest = self.frames, self.latest
            if latest is None:
                return 0, None
            if self.encoded[0] != version:
                image, amap, threshold, regions = latest
                ok, buf = cv2.imencode(".jpg", overlay(image, amap, threshold, regions), [cv2.IMWRITE_JPEG_QUALITY, 80])
                self.encoded = (version, buf.tobytes())
            return self.encoded

    def stats(self) -> dict:
        t = list(self.times)
        fps = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0
        q = np.percentile(self.lat, [50, 90, 99]) if self.lat else [0.0, 0.0, 0.0]
        extra = self.pipeline_stats()
        sinks = extra.get("sinks", {})
        return {
            "frames": self.frames,
            "anomalous_frames": self.anomalous,
            "fps": fps,
            "latency_p50_ms": float(q[0]),
            "latency_p90_ms": float(q[1]),
            "latency_p99_ms": float(q[2]),
            "dropped_frames": extra.get("dropped_frames", 0),
            "source_reconnects": extra.get("reconnects", 0),
            "threshold": self.threshold,  # per sink in /metrics; here one number a row for the page
            "sink_errors": sum(h["errors"] for h in sinks.values()),
            "degraded_sinks": sum(bool(h["degraded"]) for h in sinks.values()),
        }

    def metrics(self) -> str:
        s = self.stats()
        lines: list[str] = []

        def m(name, kind, help_, value, labels=""):
            if not any(x.startswith(f"# TYPE {name} ") for x in lines):
                lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            lines.append(f"{name}{labels} {value}")

        m("edgesdk_frames_total", "counter", "Frames scored.", s["frames"])
        m("edgesdk_anomalous_frames_total", "counter", "Frames over the threshold.", s["anomalous_frames"])
        m(
            "edgesdk_dropped_frames_total",
            "counter",
            "Live frames dropped because inference was behind.",
            s["dropped_frames"],
        )
        m(
            "edgesdk_source_reconnects_total",
            "counter",
            "Times the source was lost and reopened.",
            s["source_reconnects"],
        )
        m("edgesdk_fps", "gauge", "Frames scored per second (last 1000 frames).", round(s["fps"], 3))
        for q in ("50", "90", "99"):
            m(
                "edgesdk_latency_ms",
                "gauge",
                "Capture-to-verdict latency quantiles (last 1000 frames).",
                round(s[f"latency_p{q}_ms"], 3),
                f'{{quantile="0.{q}"}}',
            )
        m("edgesdk_threshold", "gauge", "Threshold in score units.", s["threshold"])
        for name, c in self.pipeline_stats().get("sources", {}).items():  # a multi-source run: each camera
            label = f'{{source="{_label(name)}"}}'
            m("edgesdk_source_frames_total", "counter", "Frames of this source scored.", c["frames"], label)
            m(
                "edgesdk_source_dropped_frames_total",
                "counter",
                "Frames of this source dropped.",
                c["dropped_frames"],
                label,
            )
            m("edgesdk_source_reconnects_total", "counter", "Times this source was reopened.", c["reconnects"], label)
            m("edgesdk_source_threshold", "gauge", "This source's threshold in score units.", c["threshold"], label)
            for kind, n in ((c.get("drift") or {}).get("events") or {}).items():
                m(
                    "edgesdk_source_drift_events_total",
                    "counter",
                    "Drift episodes of this source, by kind (stream/drift.py).",
                    n,
                    f'{{source="{_label(name)}",kind="{_label(kind)}"}}',
                )
            for q in ("50", "99"):
                v = c["latency_ms"].get(f"p{q}", 0.0)
                m(
                    "edgesdk_source_latency_ms",
                    "gauge",
                    "Capture-to-verdict latency quantiles per source.",
                    round(v, 3),
                    f'{{source="{_label(name)}",quantile="0.{q}"}}',
                )
        for uri, h in self.pipeline_stats().get("sinks", {}).items():
            label = f'{{sink="{_label(uri)}"}}'
            m(
                "edgesdk_sink_errors_total",
                "counter",
                "Failed writes of a sink (an evidence sink is retried).",
                h["errors"],
                label,
            )
            m(
                "edgesdk_sink_skipped_frames_total",
                "counter",
                "Frames an evidence sink skipped while backing off.",
                h["skipped_frames"],
                label,
            )
            m("edgesdk_sink_degraded", "gauge", "1 while an evidence sink is failing.", int(h["degraded"]), label)
        drift = self.pipeline_stats().get("drift") or {}
        for kind, n in drift.get("events", {}).items():
            m(
                "edgesdk_drift_events_total",
                "counter",
                "Drift episodes raised, by kind (stream/drift.py).",
                n,
                f'{{kind="{_label(kind)}"}}',
            )
        for name, v in drift.get("statistics", {}).items():
            m(
                "edgesdk_drift_statistic",
                "gauge",
                "Current drift statistics: score CUSUM and median z, image "
                "statistics in reference std, view shift as a fraction of the side.",
                v,
                f'{{statistic="{_label(name)}"}}',
            )
        return "\n".join(lines) + "\n"

    def _handler(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, body: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _allowed(self) -> bool:
                if not sink.token:
                    return True
                auth = self.headers.get("Authorization", "")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                given = given or parse_qs(urlsplit(self.path).query).get("token", [""])[-1]
                return hmac.compare_digest(given.encode(), sink.token)

            def do_GET(self):
                if not self._allowed():
                    body = b"401: this preview asks for its token (Authorization: Bearer TOKEN, or ?token=TOKEN)\n"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="edgesdk preview"')
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                path = urlsplit(self.path).path
                if path == "/":
                    q = "?token=" + quote(sink.token.decode(), safe="") if sink.token else ""
                    self._send(
                        (PAGE % {"title": sink.title or sink.address, "w": sink.width, "q": q}).encode(),
                        "text/html; charset=utf-8",
                    )
                elif path == "/metrics":
                    self._send(sink.metrics().encode(), "text/plain; version=0.0.4")
                elif path == "/stats.json":
                    self._send(json.dumps(sink.stats()).encode(), "application/json")
                elif path == "/frame.jpg":  # the latest annotated frame, as a still
                    sink.first_frame.wait(5.0)
                    jpg = sink.jpeg()
                    if jpg is None:
                        self.send_error(503, "no frame scored yet")
                    else:
                        self._send(jpg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self.send_error(404, "try /, /stream.mjpg, /frame.jpg, /metrics or /stats.json")

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                sent = 0  # frames counted when the last JPEG sent was encoded
                try:
                    while not sink.closed.is_set():
                        # Sleep until a frame newer than the one sent arrives; the timeout only
                        # rechecks `closed`. Never a poll, so no fps and no idle line can spin a core.
                        with sink.new_frame:
                            sink.new_frame.wait_for(lambda: sink.frames != sent or sink.closed.is_set(), 1.0)
                        version, jpg = sink.versioned_jpeg()
                        if jpg is None or version == sent or sink.closed.is_set():
                            continue
                        sent = version
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpg)).encode()
                            + b"\r\n\r\n"
                            + jpg
                            + b"\r\n"
                        )
                        sink.closed.wait(1 / sink.max_fps)  # the rate cap, after each frame sent
                except OSError:
                    pass  # the viewer went away

        return Handler

    def close(self) -> None:
        self.closed.set()
        self.first_frame.set()
        with self.new_frame:
            self.new_frame.notify_all()
        self.server.shutdown()
        self.server.server_close()
