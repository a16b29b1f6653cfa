"""The shapes every source and sink shares: Frame, Source and its options (SourceOptions), Sink and
the sink URIs' ?key=value options (query_options). sources.py and live.py, sinks.py, preview.py and
mqtt.py each import these from here, and the URI factories (open_source, open_sink) import the
modules behind their schemes, so no module of video/ imports one that imports it back."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edgesdk.errors import DataError, OptionError
from edgesdk.video.options import Opt, parse_query

log = logging.getLogger("edgesdk.video")


@dataclass
class Frame:
    image: np.ndarray  # (h, w, 3) uint8 BGR
    frame_id: int  # 0-based index in the source
    timestamp: float  # wall clock when read, seconds since the epoch
    source_time: float | None = None  # position in the source (video time, seconds) if known
    name: str = ""  # file name for image sources
    wait_ms: float = 0.0  # time read() spent waiting for the frame to be due (camera rate), not decoding
    error: str = ""  # set (and image None) for a file that could not be read (errors="record")


@dataclass(frozen=True)
class SourceOptions:
    # fps at most 1000 (a frame a ms) and at least one frame in 1000 s: pacing sleeps 1/fps
    SPEC = {
        "fps": Opt(None, "float", lo=0.001, hi=1000.0),
        "loop": Opt(False),
        "roi": Opt(None, "roi"),
        "size": Opt(None, "size"),
        "tile": Opt(None, "tile"),
        "overlap": Opt(None, "int", lo=0, hi=65534),
    }
    KEYS = tuple(SPEC)  # the query keys that are ours, not a camera's

    fps: float | None = None  # files: pace to this rate (live); cameras: request
    loop: bool = False  # files: start again at the end
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h crop of every frame
    size: tuple[int, int] | None = None  # cameras: requested (width, height)
    # Scoring, not capture (stream/tiling.py): the detector scores each frame tile by tile. tile=auto
    # or overlap= alone: tiles of the model's input size; tile= alone: overlap 0.
    tile: int | str | None = None  # a tile's side in pixels, or "auto": the model's input size
    overlap: int | None = None  # pixels neighbouring tiles share, < tile

    @classmethod
    def parse(cls, uri: str, query: str, strict: bool = True) -> "SourceOptions":
        """Our options from a query string; with strict=False (network cameras) other keys are the
        camera's own and are left alone."""
        q = parse_query(uri, query, cls.SPEC, strict, "source option")
        if isinstance(q["tile"], int) and q["overlap"] is not None and q["overlap"] >= q["tile"]:
            raise OptionError(f"{uri}: overlap must be less than the tile ({q['tile']}), got {q['overlap']}")
        return cls(**q)

    @property
    def tiling(self) -> tuple[int | None, int] | None:
        """(tile, overlap) for the detector (tile None: the model's input size), or None: whole frames."""
        if self.tile is None and self.overlap is None:
            return None
        return (self.tile if isinstance(self.tile, int) else None), self.overlap or 0

    @property
    def plain(self) -> bool:
        """No option changes the frames themselves (tiling is the detector's business)."""
        return (self.fps, self.loop, self.roi, self.size) == (None, False, None, None)

    def crop(self, img: np.ndarray) -> np.ndarray:
        if self.roi is None:
            return img
        x, y, w, h = self.roi
        out = img[y : y + h, x : x + w]
        if out.shape[0] != h or out.shape[1] != w:
            raise DataError(f"roi {self.roi} is outside the {img.shape[1]}x{img.shape[0]} frame")
        return out


class Source:
    scheme = ""
    live = False  # live sources drop frames the consumer is too slow for; files wait for it
    ended = True  # read() returning None means the end (live sources: only once closed)

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
    """A verdict sink (evidence = False: jsonl, mqtt) carries every record: when it fails, the run
    stops rather than lose verdicts silently. An evidence sink (dir, video, http preview) carries
    images and views of the verdicts: when it fails, the stream loop counts, logs and retries it
    while the verdict sinks carry on (edgesdk.stream.pipeline)."""

    evidence = False
    takes_errors = False  # write(record, frame, None) for a frame that could not be read (record has "error")

    def wants(self, record: dict) -> bool:
        """Whether write() would store anything of this record: the loop counts only those frames
        as written, failed or skipped, and only they end an evidence sink's episode of failures."""
        return True

    def write(self, record: dict, frame, result) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def query_options(uri, known: dict, text: str = "") -> dict:
    """A network sink URI's (urlparse result) ?key=value options, parsed by video/options.py: KNOWN
    maps each key to its default or an Opt (type and range); an unknown key or a bad value is an
    OptionError that names the URI and the option: TEXT, the URI as typed, where given (geturl()
    rewrites some, e.g. mqtt://?x as mqtt:?x)."""
    return parse_query(text or uri.geturl(), uri.query, known)
