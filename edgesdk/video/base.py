"""The shapes every source and sink shares: Frame, Source and its options (SourceOptions), Sink and
the sink URIs' ?key=value options (query_options). sources.py and live.py, sinks.py, preview.py and
mqtt.py each import these from here, and the URI factories (open_source, open_sink) import the
modules behind their schemes, so no module of video/ imports one that imports it back."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qs

import numpy as np

from edgesdk.errors import DataError

log = logging.getLogger("edgesdk.video")


@dataclass
class Frame:
    image: np.ndarray         # (h, w, 3) uint8 BGR
    frame_id: int             # 0-based index in the source
    timestamp: float          # wall clock when read, seconds since the epoch
    source_time: float | None = None   # position in the source (video time, seconds) if known
    name: str = ""            # file name for image sources
    wait_ms: float = 0.0      # time read() spent waiting for the frame to be due (camera rate), not decoding


@dataclass(frozen=True)
class SourceOptions:
    KEYS = ("fps", "loop", "roi", "size")           # the query keys that are ours, not a camera's

    fps: float | None = None                       # files: pace to this rate (live); cameras: request
    loop: bool = False                             # files: start again at the end
    roi: tuple[int, int, int, int] | None = None   # x, y, w, h crop of every frame
    size: tuple[int, int] | None = None            # cameras: requested (width, height)

    @classmethod
    def parse(cls, uri: str, query: str, strict: bool = True) -> "SourceOptions":
        """Our options from a query string; with strict=False (network cameras) other keys are the
        camera's own and are left alone."""
        from urllib.parse import parse_qs

        q = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(q) - set(cls.KEYS)
        if not strict:
            q = {k: v for k, v in q.items() if k not in unknown}
        elif unknown:
            raise ValueError(f"{uri}: unknown source option(s) {sorted(unknown)}; known: fps, loop, roi, size")
        try:
            fps = float(q["fps"]) if "fps" in q else None
            roi = tuple(int(v) for v in q["roi"].split(",")) if "roi" in q else None
            size = tuple(int(v) for v in q["size"].lower().split("x")) if "size" in q else None
        except ValueError:
            raise ValueError(f"{uri}: bad option value (fps=30, roi=x,y,w,h, size=640x480)") from None
        if fps is not None and fps <= 0 or roi is not None and (len(roi) != 4 or min(roi[2:]) <= 0) \
                or size is not None and (len(size) != 2 or min(size) <= 0):
            raise ValueError(f"{uri}: fps must be > 0, roi x,y,w,h with w,h > 0, size WxH")
        return cls(fps, q.get("loop", "0") in ("1", "true", "yes"), roi, size)  # type: ignore[arg-type]

    def crop(self, img: np.ndarray) -> np.ndarray:
        if self.roi is None:
            return img
        x, y, w, h = self.roi
        out = img[y:y + h, x:x + w]
        if out.shape[0] != h or out.shape[1] != w:
            raise DataError(f"roi {self.roi} is outside the {img.shape[1]}x{img.shape[0]} frame")
        return out


class Source:
    scheme = ""
    live = False       # live sources drop frames the consumer is too slow for; files wait for it
    ended = True       # read() returning None means the end (live sources: only once closed)

    def __init__(self) -> None:
        self.count = 0
        self.stats: dict = {}

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


class Sink:
    def write(self, record: dict, frame, result) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def query_options(uri, known: dict) -> dict:
    """A sink URI's ?key=value options: KNOWN maps each key to its default, whose type converts the
    value; an unknown key is an error that names the URI and the keys it takes."""
    q = {k: v[-1] for k, v in parse_qs(uri.query).items()}
    unknown = set(q) - set(known)
    if unknown:
        raise ValueError(f"{uri.geturl()}: unknown option(s) {sorted(unknown)}; known: {', '.join(known)}")
    return {k: type(d)(q[k]) if k in q else d for k, d in known.items()}
