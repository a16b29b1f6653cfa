"""Frame sources by URI. `read()` returns the next Frame, or None at the end of the stream.

  file://clip.mp4 or clip.mp4       a video file (FFmpeg inside OpenCV's wheel)
  file://images/ or images/          a folder of images, sorted by name
  file://part.png or part.png        one image
  v4l2:///dev/video0                 a USB/V4L2 camera                          (live, see live.py)
  rtsp://host/stream, http://host/mjpg   an IP camera (FFmpeg)                  (live)
  csi://0                            a Jetson CSI camera via GStreamer nvarguscamerasrc (live)
  synth://conveyor?category=brick    the generated conveyor, endless: a defect rides through every
                                     ~10 frames on average; frame names say "good" or the defect kind

Options as a query string, on any source: ?fps=30 (files: play at that rate, as a camera would,
making the source live; cameras: request it), ?loop=1 (files: start again at the end),
?roi=x,y,w,h (crop every frame), ?size=WxH (cameras: request a resolution).
File and folder sources apply backpressure (every frame is scored); live sources never wait for the
consumer: frames it was too slow for are dropped and counted (`stats`).
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import cv2

from edgesdk.errors import DataError
from edgesdk.images import IMAGE_EXTS, list_images, read_image
from edgesdk.video.base import Frame, Source, SourceOptions

SMALL_FRAME = 1280 * 720      # pixels; videos up to this size decode on one thread


class VideoFileSource(Source):
    scheme = "file"

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: video file not found")
        self.cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self.cap.isOpened():
            raise DataError(f"{self.path}: OpenCV/FFmpeg cannot open this video")
        w, h = self.cap.get(cv2.CAP_PROP_FRAME_WIDTH), self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
        if w * h <= SMALL_FRAME:
            # One decoder thread: FFmpeg's frame threads cost more CPU than they save on small frames
            # (mp4v 256x256: 0.19 ms a frame on one thread, 0.24-0.34 ms on two), CPU inference needs.
            self.cap.release()
            self.cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
            if not self.cap.isOpened():
                raise DataError(f"{self.path}: OpenCV/FFmpeg cannot open this video")

    @property
    def options(self) -> dict:
        c = self.cap
        return {"path": str(self.path), "width": int(c.get(cv2.CAP_PROP_FRAME_WIDTH)),
                "height": int(c.get(cv2.CAP_PROP_FRAME_HEIGHT)), "fps": c.get(cv2.CAP_PROP_FPS),
                "frames": int(c.get(cv2.CAP_PROP_FRAME_COUNT))}

    def read(self, timeout: float | None = None) -> Frame | None:
        ok, img = self.cap.read()
        if not ok:
            return None
        frame = Frame(img, self.count, time.time(), self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1e3,
                      self.path.name)
        self.count += 1
        return frame

    def close(self) -> None:
        self.cap.release()


class ImageFilesSource(Source):
    scheme = "file"

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = paths

    @classmethod
    def from_path(cls, path: Path) -> "ImageFilesSource":
        return cls(list_images(path) if path.is_dir() else [path])

    @property
    def options(self) -> dict:
        return {"images": len(self.paths), "first": str(self.paths[0]) if self.paths else None}

    def read(self, timeout: float | None = None) -> Frame | None:
        if self.count >= len(self.paths):
            return None
        path = self.paths[self.count]
        frame = Frame(read_image(path), self.count, time.time(), None, path.name)
        self.count += 1
        return frame


class FileOptions(Source):
    """A file or folder source with options: ROI crop, loop, and pacing at `fps` as a camera would
    deliver it (frames the consumer is too late for are skipped and counted: the source is live)."""

    def __init__(self, inner: Source, opts: SourceOptions, reopen):
        super().__init__()
        self.inner, self.opts, self.reopen = inner, opts, reopen
        self.live = opts.fps is not None
        self.t0: float | None = None
        self.stats = {"dropped_at_source": 0, "loops": 0}

    @property
    def options(self) -> dict:
        return {**self.inner.options, "play_fps": self.opts.fps, "loop": self.opts.loop, "roi": self.opts.roi}

    def _next(self) -> Frame | None:
        frame = self.inner.read()
        if frame is None and self.opts.loop:
            self.inner.close()
            self.inner = self.reopen()
            self.stats["loops"] += 1
            frame = self.inner.read()
        return frame

    def read(self, timeout: float | None = None) -> Frame | None:
        frame = self._next()
        if frame is not None and self.opts.fps:
            now = time.perf_counter()
            self.t0 = now if self.t0 is None else self.t0
            due = self.t0 + self.count / self.opts.fps
            while frame is not None and now - due >= 1 / self.opts.fps:   # a camera would have moved on
                frame, self.count = self._next(), self.count + 1
                self.stats["dropped_at_source"] += 1
                due += 1 / self.opts.fps
            if due > now:
                time.sleep(due - now)
        if frame is None:
            return None
        if self.opts.fps:
            frame.wait_ms = max(0.0, (due - now) * 1e3)
            frame.timestamp = time.time()              # "arrived" when the camera would have sent it
        frame.frame_id = self.count
        frame.image = self.opts.crop(frame.image)
        self.count += 1
        return frame

    def close(self) -> None:
        self.inner.close()


def _file_source(path: Path) -> Source:
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        if not path.exists():
            raise DataError(f"{path}: not found")
        return ImageFilesSource.from_path(path)
    return VideoFileSource(path)


def _file(uri: str, parsed, opts: SourceOptions) -> Source:
    if opts.size is not None:
        raise ValueError(f"{uri}: size= is for cameras; files are resized to the model's input anyway")
    path = Path(parsed.netloc + parsed.path) if parsed.scheme == "file" else Path(uri.split("?")[0])
    src = _file_source(path)
    if opts == SourceOptions():
        return src
    return FileOptions(src, opts, lambda: _file_source(path))


class SynthSource(Source):
    """The sample conveyor, generated frame by frame forever (scikit-image textures, the training
    extra). Frame.name is the ground truth ("good" or the defect kind), so a sink records it."""
    scheme = "synth"
    ended = False

    def __init__(self, category: str, seed: int):
        super().__init__()
        try:
            from edgesdk.data.synth import Conveyor, SynthConfig
        except ImportError as e:
            raise RuntimeError(f"synth://conveyor draws real textures from scikit-image ({e}); "
                               "pip install 'edgesdk[train]'") from None
        self.category, self.seed = category, seed
        self.frames = iter(Conveyor(category, SynthConfig(seed=seed), cycle=True))

    @property
    def options(self) -> dict:
        return {"category": self.category, "seed": self.seed, "endless": True}

    def read(self, timeout: float | None = None) -> Frame | None:
        img, truth = next(self.frames)
        frame = Frame(img, self.count, time.time(), None, truth["defect"] or "good")
        self.count += 1
        return frame


def _synth(uri: str, parsed, opts: SourceOptions) -> Source:
    from urllib.parse import parse_qs

    if parsed.netloc != "conveyor":
        raise ValueError(f"{uri}: the generated source is synth://conveyor")
    q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    ours = {k: q[k] for k in ("category", "seed") if k in q}
    opts = SourceOptions.parse(uri, "&".join(f"{k}={v}" for k, v in q.items() if k not in ours))
    if opts.size is not None or opts.loop:
        raise ValueError(f"{uri}: size= and loop= do not apply to the generated conveyor (256x256, endless)")
    try:
        seed = int(ours.get("seed", 0))
    except ValueError:
        raise ValueError(f"{uri}: seed must be an integer") from None
    make = lambda: SynthSource(ours.get("category", "brick"), seed)  # noqa: E731
    try:
        src = make()
    except ValueError as e:
        raise ValueError(f"{uri}: {e}") from None
    return src if opts == SourceOptions() else FileOptions(src, opts, make)


def _live(uri: str, parsed, opts: SourceOptions) -> Source:
    from edgesdk.video.live import open_live   # cameras and network streams

    return open_live(uri, parsed, opts)


SOURCES = {"file": _file, "synth": _synth, "v4l2": _live, "rtsp": _live, "rtsps": _live, "http": _live, "https": _live, "csi": _live}


def open_source(uri: str) -> Source:
    """A source for a URI or a plain path (see the module docstring for the schemes and options)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else "file"   # "C:" is a drive, not a scheme
    if scheme not in SOURCES:
        raise ValueError(f"{uri}: unsupported source scheme {scheme!r}; supported: "
                         f"{', '.join(s + '://' for s in sorted(SOURCES))} or a plain path")
    if scheme == "file" and not parsed.scheme and "?" not in uri:
        parsed = parsed._replace(query="")             # a plain path may contain characters urlparse splits on
    if scheme == "synth":
        return _synth(uri, parsed, SourceOptions())            # it parses its own keys first
    strict = scheme not in ("http", "https", "rtsp", "rtsps")
    return SOURCES[scheme](uri, parsed, SourceOptions.parse(uri, parsed.query, strict))
