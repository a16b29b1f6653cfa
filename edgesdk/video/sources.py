"""Frame sources by URI. `read()` returns the next Frame, or None at the end of the stream.

  file://clip.mp4 or clip.mp4       a video file (FFmpeg inside OpenCV's wheel)
  file://images/ or images/          a folder of images, sorted by name
  file://part.png or part.png        one image
  v4l2:///dev/video0                 a USB/V4L2 camera                          (live, see live.py)
  rtsp://host/stream, http://host/mjpg   an IP camera (FFmpeg)                  (live)
  csi://0                            a Jetson CSI camera via GStreamer nvarguscamerasrc (live)
  synth://conveyor?category=brick    the generated conveyor, endless: a defect rides through every
                                     ~10 frames on average; frame names say "good" or the defect kind;
                                     ?defects=0: good parts only; ?drift=ramp|shift|blur|texture
                                     &drift_at=N&drift_len=N&drift_amount=X: the line drifts from frame N
                                     on; ?rails=1: fixed guide rails in view (data/drift_synth.py)

Options as a query string, on any source: ?fps=30 (files: play at that rate, as a camera would,
making the source live; cameras: request it), ?loop=1 (files: start again at the end),
?roi=x,y,w,h (crop every frame), ?size=WxH (cameras: request a resolution), ?tile=N|auto&overlap=N
(the stream loop scores each frame tile by tile: stream/tiling.py, source_tiling); parsed and checked
by video/options.py. In a file URI or path, `#` is part of the name; options start at the first `?`.
A paced file (?fps=) is live: read(timeout) returns None when its next frame is not due in time.
A folder image that cannot be read raises DataError, or with errors="record" becomes a Frame with
`error` set and no image (the stream loop records it and goes on).
File and folder sources apply backpressure (every frame is scored); live sources never wait for the
consumer: frames it was too slow for are dropped and counted (`stats`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2

from edgesdk.errors import DataError, OptionError
from edgesdk.images import IMAGE_EXTS, list_images, read_image
from edgesdk.video.base import Frame, Source, SourceOptions
from edgesdk.video.options import Opt, parse_query, parse_url, scheme_of, split_file_uri

log = logging.getLogger("edgesdk.video")

SMALL_FRAME = 1280 * 720  # pixels; videos up to this size decode on one thread


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
        return {
            "path": str(self.path),
            "width": int(c.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(c.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": c.get(cv2.CAP_PROP_FPS),
            "frames": int(c.get(cv2.CAP_PROP_FRAME_COUNT)),
        }

    def read(self, timeout: float | None = None) -> Frame | None:
        ok, img = self.cap.read()
        if not ok:
            return None
        frame = Frame(img, self.count, time.time(), self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1e3, self.path.name)
        self.count += 1
        return frame

    def close(self) -> None:
        self.cap.release()


class ImageFilesSource(Source):
    scheme = "file"

    def __init__(self, paths: list[Path], errors: str = "raise"):
        super().__init__()
        self.paths, self.errors = paths, errors

    @classmethod
    def from_path(cls, path: Path, errors: str = "raise") -> "ImageFilesSource":
        return cls(list_images(path) if path.is_dir() else [path], errors)

    @property
    def options(self) -> dict:
        return {"images": len(self.paths), "first": str(self.paths[0]) if self.paths else None}

    def read(self, timeout: float | None = None) -> Frame | None:
        if self.count >= len(self.paths):
            return None
        path = self.paths[self.count]
        self.count += 1  # past this file whether it reads or not
        try:
            return Frame(read_image(path), self.count - 1, time.time(), None, path.name)
        except DataError as e:
            if self.errors == "raise":
                raise
            why = str(e).removeprefix(f"{path}: ")  # "not a readable image", or its size over the pixel limit
            log.warning("%s: %s; recorded and skipped", path, why)
            return Frame(
                None,  # type: ignore[arg-type]
                self.count - 1,
                time.time(),
                None,
                path.name,
                error=why,
            )


class FileOptions(Source):
    """A file or folder source with options: ROI crop, loop, and pacing at `fps` as a camera would
    deliver it (frames the consumer is too late for are skipped and counted: the source is live).
    A loop whose whole pass gave no readable frame is a DataError: looping again would spin."""

    def __init__(self, inner: Source, opts: SourceOptions, reopen, uri: str = ""):
        super().__init__()
        self.inner, self.opts, self.reopen, self.uri = inner, opts, reopen, uri
        self.live = opts.fps is not None
        self.ended = not self.live  # paced: None means "not due yet" until the end
        self.t0: float | None = None
        self.good = 0  # readable frames in this pass
        self.pending: tuple[Frame, float] | None = None  # the next frame and when it is due
        self.stats = {"dropped_at_source": 0, "loops": 0}

    @property
    def options(self) -> dict:
        return {**self.inner.options, "play_fps": self.opts.fps, "loop": self.opts.loop, "roi": self.opts.roi}

    def _next(self) -> Frame | None:
        frame = self.inner.read()
        if frame is None and self.opts.loop:
            if not self.good:
                raise DataError(f"{self.uri}: loop=1, but a whole pass gave no readable frame")
            self.inner.close()
            self.inner = self.reopen()
            self.stats["loops"] += 1
            self.good = 0
            frame = self.inner.read()
            if frame is None:
                raise DataError(f"{self.uri}: loop=1, but the source gave no frame when reopened")
        if frame is not None and not frame.error:
            self.good += 1
        return frame

    def _due(self) -> tuple[Frame, float] | None:
        """The next frame to deliver and its due time (perf_counter), skipping frames a camera
        would have moved past already."""
        frame = self._next()
        if frame is None or not self.opts.fps:
            return None if frame is None else (frame, 0.0)
        now = time.perf_counter()
        self.t0 = now if self.t0 is None else self.t0
        due = self.t0 + self.count / self.opts.fps
        while frame is not None and now - due >= 1 / self.opts.fps:  # a camera would have moved on
            frame, self.count = self._next(), self.count + 1
            self.stats["dropped_at_source"] += 1
            due += 1 / self.opts.fps
        return None if frame is None else (frame, due)

    def read(self, timeout: float | None = None) -> Frame | None:
        if self.pending is None:
            self.pending = self._due()
            if self.pending is None:
                self.ended = True
                return None
        frame, due = self.pending
        wait = 0.0
        if self.opts.fps:
            wait = max(0.0, due - time.perf_counter())
            if timeout is not None and wait > timeout:  # not due yet: the caller may want to stop
                time.sleep(timeout)
                return None
            time.sleep(wait)
            frame.wait_ms = wait * 1e3
            frame.timestamp = time.time()  # "arrived" when the camera would have sent it
        self.pending = None
        frame.frame_id = self.count
        if frame.image is not None:
            frame.image = self.opts.crop(frame.image)
        self.count += 1
        return frame

    def close(self) -> None:
        self.inner.close()


def _file_source(path: Path, errors: str = "raise") -> Source:
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        if not path.exists():
            raise DataError(f"{path}: not found")
        return ImageFilesSource.from_path(path, errors)
    return VideoFileSource(path)


def _file(uri: str, errors: str) -> Source:
    name, query = split_file_uri(uri)
    opts = SourceOptions.parse(uri, query)
    if opts.size is not None:
        raise OptionError(f"{uri}: size= is for cameras; files are resized to the model's input anyway")
    path = Path(name)
    src = _file_source(path, errors)
    if opts.plain:
        return src
    return FileOptions(src, opts, lambda: _file_source(path, errors), uri)


class SynthSource(Source):
    """The sample conveyor, generated frame by frame forever (scikit-image textures, the training
    extra). Frame.name is the ground truth ("good" or the defect kind), so a sink records it.
    DRIFT (data/drift_synth.py) makes the line drift from a given frame on; defects=False: good parts only."""

    scheme = "synth"
    ended = False

    def __init__(self, category: str, seed: int, drift=None, defects: bool = True, rails: bool = False):
        super().__init__()
        try:
            from edgesdk.data.drift_synth import Drift
            from edgesdk.data.synth import TEXTURES, Conveyor, SynthConfig
        except ImportError as e:
            raise RuntimeError(
                f"synth://conveyor draws real textures from scikit-image ({e}); pip install 'edgesdk[train]'"
            ) from None
        self.category, self.seed, self.defects, self.rails = category, seed, defects, rails
        self.drift = drift or Drift()
        line = Conveyor(category, SynthConfig(seed=seed), cycle=True)
        if not defects:
            line.schedule = ()
        self.frames = iter(line)
        self.other = None
        if self.drift.kind == "texture":  # the new batch: the next category's texture, good parts
            names = sorted(TEXTURES)
            other = names[(names.index(category) + 1) % len(names)] if category in names else category
            self.other = iter(Conveyor(other, SynthConfig(seed=seed + 1), schedule=(), cycle=True))

    @property
    def options(self) -> dict:
        d = self.drift
        return {
            "category": self.category,
            "seed": self.seed,
            "endless": True,
            "defects": self.defects,
            "rails": self.rails,
            **(
                {"drift": d.kind, "drift_at": d.at, "drift_len": d.length, "drift_amount": d.value}
                if d.kind != "none"
                else {}
            ),
        }

    def read(self, timeout: float | None = None) -> Frame | None:
        img, truth = next(self.frames)
        if self.rails:
            from edgesdk.data.drift_synth import add_rails

            img = add_rails(img)
        if self.drift.kind != "none":
            other = next(self.other)[0] if self.other is not None else None
            img = self.drift.apply(img, self.count, other)
        frame = Frame(img, self.count, time.time(), None, truth["defect"] or "good")
        self.count += 1
        return frame


SYNTH_SPEC = {
    **SourceOptions.SPEC,
    "category": "brick",
    "seed": Opt(0, lo=0),
    "defects": Opt(True),
    "rails": Opt(False),
    "drift": "none",
    "drift_at": Opt(300, lo=0),
    "drift_len": Opt(300, lo=1),
    "drift_amount": Opt(None, "float"),
}


def _synth(uri: str, errors: str) -> Source:
    parsed = parse_url(uri)
    if parsed.netloc != "conveyor" or parsed.path not in ("", "/") or "#" in uri:
        raise OptionError(f"{uri}: the generated source is synth://conveyor")
    q = parse_query(uri, parsed.query, SYNTH_SPEC, what="source option")
    opts = SourceOptions(**{k: q[k] for k in SourceOptions.SPEC})
    if opts.size is not None or opts.loop:
        raise OptionError(f"{uri}: size= and loop= do not apply to the generated conveyor (256x256, endless)")

    def make() -> SynthSource:
        from edgesdk.data.drift_synth import Drift

        drift = Drift(q["drift"], q["drift_at"], q["drift_len"], q["drift_amount"])
        return SynthSource(q["category"], q["seed"], drift, q["defects"], q["rails"])

    try:
        src = make()
    except ValueError as e:
        raise OptionError(f"{uri}: {e}") from None
    return src if opts.plain else FileOptions(src, opts, make, uri)


NETWORK = ("http", "https", "rtsp", "rtsps")  # their query may carry the camera's own parameters


def _live(uri: str, errors: str) -> Source:
    from edgesdk.video.live import open_live  # cameras and network streams

    parsed = parse_url(uri)
    return open_live(uri, parsed, SourceOptions.parse(uri, parsed.query, strict=parsed.scheme not in NETWORK))


SOURCES = {"file": _file, "synth": _synth, **{s: _live for s in ("v4l2", "csi", *NETWORK)}}


def open_source(uri: str, errors: str = "raise") -> Source:
    """A source for a URI or a plain path (see the module docstring for the schemes and options).
    errors="record": a folder image that cannot be read is a Frame with `error` set, not a DataError."""
    if errors not in ("raise", "record"):
        raise ValueError(f"errors={errors!r}: 'raise' or 'record'")
    scheme = scheme_of(uri) or "file"
    if scheme not in SOURCES:
        raise OptionError(
            f"{uri}: unsupported source scheme {scheme!r}; supported: "
            f"{', '.join(s + '://' for s in sorted(SOURCES))} or a plain path"
        )
    return SOURCES[scheme](uri, errors)


def source_path(uri: str) -> Path | None:
    """The file or folder a file source (file://, a plain path) reads; None for cameras and synth://."""
    return Path(split_file_uri(uri)[0]) if (scheme_of(uri) or "file") == "file" else None


def source_tiling(uri: str) -> tuple[int | None, int] | None:
    """The ?tile=&overlap= of a source URI as (tile, overlap), tile None for the model's input size,
    or None without tiling: the stream loop hands them to the detector, the source ignores them. A bad
    value is an OptionError naming the URI; the rest of the query is checked when the source opens."""
    query = split_file_uri(uri)[1] if (scheme_of(uri) or "file") == "file" else parse_url(uri).query
    return SourceOptions.parse(uri, query, strict=False).tiling
