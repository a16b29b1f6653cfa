"""Live sources: V4L2 cameras, IP cameras (RTSP, HTTP MJPEG) and Jetson CSI cameras.

A grabber thread reads the device as fast as it delivers, so the driver's buffer never fills with
stale frames; `read(timeout)` returns the newest frame not yet returned, or None when none came in
time. Frames the consumer never picked up are counted as dropped. A lost device or stream is
reopened with exponential backoff (0.5 s doubling to 8 s), counted in `stats["reconnects"]`, and
reading resumes; only close() ends a live source.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import cv2

from edgesdk.errors import OptionError
from edgesdk.video.base import Frame, Source, SourceOptions
from edgesdk.video.options import foreign_query, public_uri

log = logging.getLogger("edgesdk.video")

BACKOFF = (0.5, 8.0)  # first and longest wait between reconnect attempts, seconds
# FFmpeg waits 30 s by default on a stalled network stream before read() fails; a line wants the
# reconnect (and its report) sooner. Milliseconds.
NET_TIMEOUTS = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]


def csi_pipeline(sensor: int, opts: SourceOptions) -> str:
    """nvarguscamerasrc -> BGR appsink, as JetPack's OpenCV (built with GStreamer) opens it."""
    w, h = opts.size or (1920, 1080)
    fps = max(1, round(opts.fps or 30))
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={w}, height={h}, "
        f"framerate={fps}/1, format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
        f"video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def has_gstreamer() -> bool:
    return any(
        line.strip().startswith("GStreamer:") and "YES" in line for line in cv2.getBuildInformation().splitlines()
    )


class LiveSource(Source):
    live, ended = True, False

    def __init__(self, uri: str, target, backend: int, opts: SourceOptions, name: str):
        super().__init__()
        # the camera's password stays in TARGET (what OpenCV opens); everything shown uses the public URI
        self.uri, self.target, self.backend, self.opts, self.name = public_uri(uri), target, backend, opts, name
        self.stats = {"reconnects": 0, "failed_opens": 0, "dropped_at_source": 0, "grabbed": 0}
        self._cond = threading.Condition()
        self._latest: tuple[Any, float] | None = None  # (BGR frame, wall time)
        self._stop = threading.Event()
        self._resolved: dict = {}
        self.cap = self._open()
        if self.cap is None:
            raise OSError(
                f"{self.uri}: cannot open this source (OpenCV {cv2.__version__}, backend "
                f"{cv2.videoio_registry.getBackendName(backend)}); check the address, the device "
                "node's permissions, or that the camera is not in use by another process"
            )
        self._thread = threading.Thread(target=self._grab, name=f"edgesdk-grab-{name}", daemon=True)
        self._thread.start()

    def _open(self):
        params = NET_TIMEOUTS if self.backend == cv2.CAP_FFMPEG else []
        cap = cv2.VideoCapture(self.target, self.backend, params)
        if not cap.isOpened():
            cap.release()
            return None
        if self.opts.size and self.backend == cv2.CAP_V4L2:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.opts.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.opts.size[1])
        if self.opts.fps and self.backend == cv2.CAP_V4L2:
            cap.set(cv2.CAP_PROP_FPS, self.opts.fps)
        self._resolved = {
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": cap.get(cv2.CAP_PROP_FPS),
        }
        return cap

    @property
    def options(self) -> dict:
        return {"uri": self.uri, **self._resolved, "roi": self.opts.roi}

    def _grab(self) -> None:
        wait = BACKOFF[0]
        while not self._stop.is_set():
            ok, img = self.cap.read() if self.cap is not None else (False, None)
            if ok:
                wait = BACKOFF[0]
                with self._cond:
                    if self._latest is not None:
                        self.stats["dropped_at_source"] += 1  # never picked up: the consumer was busy
                    self._latest = (img, time.time())
                    self.stats["grabbed"] += 1
                    self._cond.notify()
                continue
            # Lost (or never came back): release, back off, reopen.
            if self.cap is not None:
                self.cap.release()
                self.cap = None
                log.warning("source %s lost; reconnecting", self.uri)
            if self._stop.wait(wait):
                break
            wait = min(wait * 2, BACKOFF[1])
            self.cap = self._open()
            if self.cap is None:
                self.stats["failed_opens"] += 1
            else:
                self.stats["reconnects"] += 1
                log.warning("source %s reconnected (%d so far)", self.uri, self.stats["reconnects"])

    def read(self, timeout: float | None = None) -> Frame | None:
        t0 = time.perf_counter()
        with self._cond:
            if self._latest is None and not self._cond.wait_for(
                lambda: self._latest is not None or self._stop.is_set(), timeout
            ):
                return None
            if self._latest is None:
                return None
            img, t = self._latest
            self._latest = None
        frame = Frame(self.opts.crop(img), self.count, t, None, self.name, (time.perf_counter() - t0) * 1e3)
        self.count += 1
        return frame

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if self.cap is not None:
            self.cap.release()
        self.ended = True


def open_live(uri: str, parsed, opts: SourceOptions) -> LiveSource:
    if opts.loop:
        raise OptionError(f"{uri}: loop= is for files; a live source never ends")
    if parsed.scheme == "v4l2":
        if parsed.netloc or "#" in uri:  # v4l2://video1 would otherwise open /dev/video0
            raise OptionError(f"{uri}: a V4L2 camera is v4l2:///dev/videoN (the device node's path)")
        dev = parsed.path or "/dev/video0"
        return LiveSource(uri, dev, cv2.CAP_V4L2, opts, dev)
    if parsed.scheme == "csi":
        if not re.fullmatch(r"[0-9]{0,3}", parsed.netloc) or parsed.path not in ("", "/") or "#" in uri:
            raise OptionError(f"{uri}: a CSI camera is csi://N, N the sensor number (0, 1, ...)")
        if not has_gstreamer():
            raise RuntimeError(
                f"{uri}: CSI cameras are read through GStreamer (nvarguscamerasrc), and this "
                "OpenCV is built without it (the PyPI wheel never has it). On a Jetson, use "
                "JetPack's OpenCV: `pip uninstall opencv-python-headless` in this environment "
                "and create it with --system-site-packages (apt package python3-opencv), or read "
                "the camera as v4l2:///dev/videoN where its driver offers V4L2"
            )
        sensor = int(parsed.netloc or 0)
        return LiveSource(uri, csi_pipeline(sensor, opts), cv2.CAP_GSTREAMER, opts, f"csi{sensor}")
    # Our options come off the URL; the camera's own query parameters stay on it.
    theirs = foreign_query(parsed.query, SourceOptions.KEYS)
    target = parsed._replace(query=theirs).geturl()
    return LiveSource(uri, target, cv2.CAP_FFMPEG, opts, parsed.hostname or "stream")
