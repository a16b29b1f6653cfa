"""Frame sources by URI. `read()` returns the next Frame, or None at the end of the stream.

  file://clip.mp4 or clip.mp4       a video file (FFmpeg inside OpenCV's wheel)
  file://images/ or images/          a folder of images, sorted by name
  file://part.png or part.png        one image

Camera schemes (csi://, v4l2://, rtsp://) come with the camera work; asking for one now says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from edgesdk.data.mvtec import IMAGE_EXTS, DataError, list_images, read_image

log = logging.getLogger("edgesdk.video")


@dataclass
class Frame:
    image: np.ndarray         # (h, w, 3) uint8 BGR
    frame_id: int             # 0-based index in the source
    timestamp: float          # wall clock when read, seconds since the epoch
    source_time: float | None = None   # position in the source (video time, seconds) if known
    name: str = ""            # file name for image sources


class Source:
    scheme = ""

    def __init__(self) -> None:
        self.count = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def options(self) -> dict:
        """What the source resolved (size, fps, count...), logged at open."""
        return {}

    def __enter__(self) -> "Source":
        log.info("source %s %s", type(self).__name__, self.options)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame


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


def _file_source(path: Path) -> Source:
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        if not path.exists():
            raise DataError(f"{path}: not found")
        return ImageFilesSource.from_path(path)
    return VideoFileSource(path)


SOURCES = {"file": _file_source}
PLANNED = ("csi", "v4l2", "rtsp", "synth")


def open_source(uri: str) -> Source:
    """A source for a URI or a plain path (see the module docstring for the schemes)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else "file"   # "C:" is a drive, not a scheme
    if scheme not in SOURCES:
        hint = " (planned: camera sources are not in this release)" if scheme in PLANNED else ""
        raise ValueError(f"{uri}: unsupported source scheme {scheme!r}{hint}; supported: "
                         f"{sorted(SOURCES)} or a plain path")
    path = Path(parsed.netloc + parsed.path) if parsed.scheme == "file" else Path(uri)
    return SOURCES[scheme](path)
