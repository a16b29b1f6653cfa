"""Result sinks by URI. A sink gets each frame's record (a JSON-ready dict), the frame and result.

  jsonl://results.jsonl    one JSON object per line, appended per frame (?max_mb=100&keep=5 rotates)
  video://annotated.mp4    the annotated stream (?fps=15); an existing file is never replaced
  http://127.0.0.1:8080    live preview page (MJPEG with overlays) and /metrics for Prometheus
  dir://ng/                per anomalous frame (all frames with ?all=1): the raw frame (lossless PNG,
                           to label and retrain on) and its heatmap overlay (JPEG, for eyes)
  mqtt://host:1883/topic   QoS 1 to an MQTT broker through an on-disk outbox (see video/mqtt.py)

Options are parsed and range-checked by video/options.py (unknown keys and bad values are refused,
naming the URI and the option). A file sink's path keeps any `#`; the query starts at the first `?`.
A frame the source could not read (a corrupt image in a folder) has a record with `error` and no
result: only sinks with `takes_errors` get it (jsonl, mqtt); the image sinks have nothing to draw.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
from pathlib import Path

import cv2

from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.fsutil import atomic_write_bytes, publish_new
from edgesdk.images import check_video, resize
from edgesdk.video.base import Sink, query_options
from edgesdk.video.options import Opt, host_port, parse_query, parse_url, scheme_of, split_file_uri
from edgesdk.viz import overlay

log = logging.getLogger("edgesdk.video")


class JsonlSink(Sink):
    """Appends (never truncates: earlier runs' records are kept). Each record is one write() of a
    whole line on an O_APPEND descriptor, so a crash leaves complete lines only; a torn last line
    from a power cut is cut off when the file is next opened. A last line that is a whole JSON object
    without its newline (another tool's "\n".join) is a record, not a tear: it gets its newline.
    With max_mb, the file is rotated at that size: FILE -> FILE.1 -> ... -> FILE.<keep> (the oldest
    is deleted).

    An existing file must be JSON lines: one that is not (an image, a text file given by mistake)
    is refused before a byte of it changes, as is a folder, a device or a FIFO."""

    takes_errors = True  # records of frames that could not be read (no result) are written too

    def __init__(self, path: Path, max_mb: float = 0.0, keep: int = 5):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes, self.keep = path, int(max_mb * 1e6), max(1, keep)
        self.rotations = 0
        self._repair()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _refuse(self, why: str) -> None:
        raise EdgesdkError(
            f"{self.path}: {why}; the JSONL sink appends only to its own JSON-lines files (give a new file name)"
        )

    def _repair(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._refuse("is a folder")
        if not stat.S_ISREG(st.st_mode):
            self._refuse("is not a regular file (a device, FIFO or socket)")
        if st.st_size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
            f.seek(0)
            if not torn:  # appending only: the first and last lines show whose file it is
                first = f.readline()
                f.seek(max(0, st.st_size - (1 << 20)))
                last = f.read().rsplit(b"\n", 2)[-2]
                for which, line in (("first", first), ("last", last)):
                    if not _json_object(line):
                        self._refuse(f"its {which} line is not a JSON object")
                return
            keep = 0  # bytes of complete lines; every one must be a JSON object to cut after them
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break
                if not _json_object(line):
                    self._refuse(f"line {n} is not a JSON object")
                keep += len(line)
        tail = line
        if _json_object(tail):
            # No proper prefix of a record's line parses as an object (it would end at the record's
            # closing brace, which is last), so this is a whole record: keep it, end its line.
            with open(self.path, "ab") as f:
                f.write(b"\n")
            return
        # The torn tail is the start of a record, or zeros: a power cut on ext4 (delayed allocation)
        # can leave the file's last blocks allocated but never written.
        if not (tail.startswith(b"{") or tail.strip(b"\0") == b""):
            self._refuse("its last line is neither JSON nor a torn record")
        with open(self.path, "rb+") as f:
            f.truncate(keep)  # drop the torn line, keep every complete one

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
        n = os.write(self.fd, line)
        if n != len(line):  # a full disk or a file-size limit took part of the line: take it back
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - n)
            raise OSError(errno.ENOSPC, f"only {n} of {len(line)} bytes of a record fit", str(self.path))

    def close(self) -> None:
        os.close(self.fd)


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # not UTF-8, or not JSON
        return False


class DirSink(Sink):
    """frame_NNNNNN.png (the raw frame) and frame_NNNNNN_overlay.jpg per NG frame. Each file is
    written beside its name and renamed over it, so a crash never leaves half an image. The folder
    is made again if it goes missing (a cleaned-up disk resumes). Frame ids start at 0 every run:
    a name an earlier run took gets a suffix (frame_NNNNNN-1.png), so its evidence is never replaced."""

    evidence = True

    def __init__(self, path: Path, every_frame: bool = False):
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.every_frame = path, every_frame

    def _save(self, name: str, ext: str, img, params: list[int]) -> None:
        ok, buf = cv2.imencode(ext, img, params)
        if not ok:
            raise OSError(f"{self.path / name}: OpenCV could not encode {ext}")
        try:
            atomic_write_bytes(self.path / name, buf.tobytes())
        except OSError as e:
            if e.filename is not None:
                raise
            # a full disk's ENOSPC names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(self.path / name)) from e

    def wants(self, record: dict) -> bool:
        return bool(record["is_anomalous"]) or self.every_frame

    def _free_stem(self, stem: str) -> str:
        name, k = stem, 0
        while (self.path / f"{name}.png").exists() or (self.path / f"{name}_overlay.jpg").exists():
            k += 1
            name = f"{stem}-{k}"
        return name

    def write(self, record: dict, frame, result) -> None:
        if result.is_anomalous or self.every_frame:
            stem = self._free_stem(f"frame_{record['frame_id']:06d}")
            self._save(f"{stem}.png", ".png", frame.image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            img = overlay(frame.image, result.anomaly_map, record["threshold"], result.regions)
            self._save(f"{stem}_overlay.jpg", ".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])


class VideoSink(Sink):
    """The annotated stream (heatmap overlay, boxes, verdict) as an mp4v/FFV1 video, written beside
    the target under a hidden name (.NAME.RANDOM.partial.EXT) and given its name when the run ends, so
    an interrupted run never leaves half a file. Like dir://, it never replaces a file: when the name
    is taken (an earlier run's video is evidence too) the video gets a suffix, NAME-1.EXT, logged.
    The video is read back first (OpenCV reports no write errors): one short of frames (a full disk)
    is an OSError naming it and stays at its hidden name, as does one whose naming fails."""

    evidence = True

    def __init__(self, path: Path, fps: float = 15.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.frames = path, fps, 0
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] = (0, 0)  # (height, width) the writer was opened with
        self.tmp: Path | None = None
        self.published: Path | None = None  # the name the video got: path, or path with a suffix

    def _open(self, width: int, height: int) -> None:
        fourcc = "FFV1" if self.path.suffix.lower() in (".mkv", ".avi") else "mp4v"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the extension last: OpenCV picks the container by it
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.partial{self.path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # a name no one else has
        except FileExistsError:
            raise
        except BaseException:  # a Ctrl-C may land after the file is made: the name is known, remove it
            tmp.unlink(missing_ok=True)
            raise
        try:
            writer = cv2.VideoWriter(
                str(tmp), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*fourcc), self.fps, (width, height)
            )
            if not writer.isOpened():
                raise OSError(f"{self.path}: OpenCV could not open a {fourcc} video writer at {tmp}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.writer, self.tmp = writer, tmp

    def write(self, record: dict, frame, result) -> None:
        img = overlay(frame.image, result.anomaly_map, record["threshold"], result.regions)
        if self.writer is None:  # kept only once open, so a failed open is tried again
            self._open(img.shape[1], img.shape[0])
            self.size = img.shape[:2]
        assert self.writer is not None
        # OpenCV's writer drops a frame of another size in silence (cameras of different resolutions)
        self.writer.write(resize(img, self.size))
        self.frames += 1

    def close(self) -> None:
        if self.writer is None or self.tmp is None:
            return
        self.writer.release()
        self.writer = None
        try:
            os.stat(self.tmp)
        except OSError as e:  # its folder was moved or removed mid-run: nothing here to name
            raise OSError(e.errno, e.strerror, str(self.tmp), None, str(self.path)) from e
        try:
            check_video(self.tmp, self.frames, self.path)
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror}; what was written is kept at {self.tmp}", str(self.path)) from e
        self.published = publish_new(self.tmp, self.path)
        if self.published != self.path:
            log.warning(
                "%s exists (an earlier run's?); not replaced: this run's video is %s", self.path, self.published
            )


def _jsonl(uri: str) -> Sink:
    path, query = split_file_uri(uri)
    # max_mb at most a petabyte: the sink counts bytes in an int, and int(1e308 * 1e6) overflows
    spec = {"max_mb": Opt(0.0, lo=0, hi=1e9), "keep": Opt(5, lo=1, hi=1000)}
    return JsonlSink(Path(path), **parse_query(uri, query, spec))


def _video(uri: str) -> Sink:
    path, query = split_file_uri(uri)
    return VideoSink(Path(path), **parse_query(uri, query, {"fps": Opt(15.0, lo=0.001, hi=1000.0)}))


def _http(uri: str) -> Sink:
    from edgesdk.video.preview import PreviewSink

    parsed = parse_url(uri)
    if parsed.path not in ("", "/"):
        raise OptionError(f"{uri}: the preview serves its own paths; give http://HOST:PORT")
    q = query_options(parsed, {"fps": Opt(10.0, lo=0.001, hi=1000.0), "token": ""}, uri)
    host, port = host_port(uri, 8080)
    return PreviewSink(host or "127.0.0.1", port, max_fps=q["fps"], token=q["token"])


def _dir(uri: str) -> Sink:
    path, query = split_file_uri(uri)
    return DirSink(Path(path), parse_query(uri, query, {"all": False})["all"])


def _mqtt(uri: str) -> Sink:
    from edgesdk.video.mqtt import open_mqtt  # paho-mqtt only when asked for

    return open_mqtt(uri)


SINKS = {"jsonl": _jsonl, "dir": _dir, "mqtt": _mqtt, "video": _video, "http": _http}
NETWORK = ("mqtt", "http")


def sink_path(uri: str) -> Path | None:
    """The file or folder a file sink (jsonl, video, dir) writes; None for a network sink."""
    return Path(split_file_uri(uri)[0]) if scheme_of(uri) in ("jsonl", "video", "dir") else None


def open_sink(uri: str) -> Sink:
    """A sink for a URI. File sinks (jsonl, dir, video) keep `#` in their path (see video/options.py);
    network sinks refuse it: urllib would cut the URI there (and `#` is an MQTT wildcard)."""
    scheme = scheme_of(uri)
    if scheme not in SINKS:
        raise OptionError(
            f"{uri}: unsupported sink scheme {scheme!r}; supported: " + ", ".join(f"{s}://" for s in sorted(SINKS))
        )
    if scheme in NETWORK and "#" in uri:
        raise OptionError(f"{uri}: '#' is not allowed in a {scheme}:// sink (in MQTT it is a subscription wildcard)")
    return SINKS[scheme](uri)
