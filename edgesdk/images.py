"""Image I/O and resizing, the one implementation both sides use: the device resizes every frame
with `resize` (stream/detector.py), reads image folders as sources (video/sources.py); the host
reads data sets with the same functions (data/mvtec.py), so training and scoring see the same pixels.
numpy + OpenCV only. Every error is a DataError naming the path.

Files are read by Python and decoded from memory (cv2.imdecode): cv2.imread takes a UTF-8 name and
crashes the process on one that is not (Linux hands such names to Python as lone surrogates). The
header's width x height is checked against a pixel limit before decoding (imagesize.py): a small
PNG can decode to gigabytes, and OpenCV's own guard (OPENCV_IO_MAX_IMAGE_PIXELS, 2^30 pixels, read
once per process) lets a 400 MP image through. check_video reads back a video this process wrote; its
error is an OSError (a failed write, not bad input)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

import cv2
import numpy as np

from edgesdk.errors import DataError, OptionError
from edgesdk.imagesize import image_size

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 50_000_000  # width x height; a 50 MP colour image decodes to 150 MB
MAX_PIXELS_ENV = "EDGESDK_MAX_PIXELS"  # overrides MAX_PIXELS for every command that reads images
# Bytes read to find the size: a JPEG's frame header may follow megabytes of APPn segments (EXIF, ICC,
# XMP). A file is read whole only once its size passed the limit, and only up to what it can need.
HEAD_BYTES = 64 * 2**20


# Each running command's --max-pixels (pixel_limit), newest last: one process-wide setting, which the
# threads a command starts (sources, sinks) see too.
_command_limit: list[tuple[object, int]] = []
_command_lock = threading.Lock()


def max_pixels(value: int | None = None) -> int:
    """The pixel limit in force: VALUE (a --max-pixels flag), else the running command's --max-pixels
    (pixel_limit), else $EDGESDK_MAX_PIXELS, else MAX_PIXELS."""
    if value is None:
        with _command_lock:
            value = _command_limit[-1][1] if _command_limit else None
    where, raw = ("--max-pixels", value) if value is not None else (MAX_PIXELS_ENV, os.environ.get(MAX_PIXELS_ENV))
    if raw is None or raw == "":
        return MAX_PIXELS
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise OptionError(f"{where} {raw!r}: a whole number of pixels >= 1") from None
    if isinstance(raw, bool) or n < 1:
        raise OptionError(f"{where} {raw!r}: a whole number of pixels >= 1")
    return n


@contextlib.contextmanager
def pixel_limit(value: int | None) -> Iterator[None]:
    """Every image read inside the block, in any thread of the process (a command's sources, calibration
    images, files), is held to VALUE pixels unless its caller passes its own limit; None changes nothing.
    Blocks may overlap (two commands run from two threads): the newest one still open is in force."""
    if value is None:
        yield
        return
    max_pixels(value)  # an OptionError naming --max-pixels before anything runs
    token = object()
    with _command_lock:
        _command_limit.append((token, value))
    try:
        yield
    finally:
        with _command_lock:
            _command_limit[:] = [e for e in _command_limit if e[0] is not token]


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return files


def _bytes_per_pixel(head: bytes) -> int:
    """The most bytes a pixel of this format can take in the file: 16-bit RGBA stored raw (8); a colour
    PFM's three float32 (12); ASCII Netpbm writes each sample as text ("65535 " for three channels)."""
    magic = head[:2]
    return 24 if magic in (b"P1", b"P2", b"P3") else 12 if magic == b"PF" else 8


def read_image(path: str | Path, size: tuple[int, int] | None = None, limit: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 BGR, resized to size=(H, W) if given. LIMIT: most pixels (width x height) an
    image may have (None: max_pixels()); a larger one is a DataError naming the file and its size."""
    img = _decode(path, cv2.IMREAD_COLOR, limit)
    return resize(img, size) if size is not None else img


def read_mask(path: str | Path, limit: int | None = None) -> np.ndarray:
    """(H, W) uint8, a ground-truth mask read as grayscale; the same checks as read_image."""
    return _decode(path, cv2.IMREAD_GRAYSCALE, limit, what="mask image")


def _decode(path: str | Path, flags: int, limit: int | None, what: str = "image") -> np.ndarray:
    with _open_regular(path, what) as f:
        try:
            data = f.read(HEAD_BYTES)
            wh = image_size(data)
            if wh is None:
                raise DataError(f"{path}: not a readable {what}")  # a format imagesize does not read, or cut short
            n, cap = wh[0] * wh[1], max_pixels(limit)
            if n > cap:
                raise DataError(
                    f"{path}: {wh[0]}x{wh[1]} pixels ({n / 1e6:.1f} MP) is over the limit of {cap} pixels; "
                    f"not decoded (raise it with --max-pixels or ${MAX_PIXELS_ENV})"
                )
            most = n * _bytes_per_pixel(data) + HEAD_BYTES  # plus metadata and appended data
            if len(data) == HEAD_BYTES:
                data += f.read(most + 1 - len(data))
            if len(data) > most:
                raise DataError(
                    f"{path}: not a readable {what} (over {most} bytes, more than {wh[0]}x{wh[1]} pixels need)"
                )
        except OSError as e:
            raise DataError(f"{path}: not a readable {what} ({e.strerror or e})") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise DataError(f"{path}: not a readable {what}")
    return img


def _open_regular(path: str | Path, what: str) -> BinaryIO:
    """PATH opened for reading when it is a regular file: a FIFO named x.png would block the read (and
    its open, without O_NONBLOCK) for ever, /dev/zero would never end. Python opens the file, not
    OpenCV, so any file name works."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable {what} ({getattr(e, 'strerror', None) or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a readable {what} (not a regular file: a folder, FIFO or device)")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def check_video(path: Path, frames: int, name: Path) -> None:
    """OSError naming NAME unless the video file PATH holds its FRAMES-th frame. cv2.VideoWriter's
    write() and release() report no error (a full disk cuts the file short in silence, and a
    Matroska header still states the whole duration), so a writer reads its file back before giving
    it its name: a seek to the last frame and one decode, not the whole recording (a service's stop
    has seconds); the count for the message is decoded only when that fails."""
    if frames <= 0:
        return
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        # a seek OpenCV cannot do (no duration in a header cut short) may land elsewhere: the
        # position after the grab says which frame was decoded
        if cap.isOpened() and cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1) and cap.grab():
            if cap.get(cv2.CAP_PROP_POS_FRAMES) == frames:
                return
    finally:
        cap.release()
    cap, got = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), 0
    try:
        while got < frames and cap.grab():  # grab: decode only, no conversion to BGR
            got += 1
    finally:
        cap.release()
    raise OSError(errno.EIO, f"only {got} of {frames} frames written could be read back (a full disk?)", str(name))


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
