"""What a line's camera pipeline does to a frame, simulated for training ("camera augmentation").

A model fitted on PNGs meets codec-compressed frames on the line: mp4v at ~36 dB PSNR softens fine
texture, and every good frame scores higher. Adding the training images once more, as they come
out of the line's codec, puts those artifacts among the good patterns the model learns.

Kinds (a spec string each):
  mp4v       through a real MPEG-4 part 2 encode/decode (OpenCV's FFmpeg), the frames as one clip
  jpeg:Q     through JPEG at quality Q (MJPEG USB and IP cameras), e.g. jpeg:70
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

KINDS = ("mp4v", "jpeg:Q")


def parse(specs: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Validated kinds from a list or a comma-separated string; an unknown kind names the known ones."""
    if not specs:
        return ()
    items = [s.strip() for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    for s in items:
        name, _, arg = s.partition(":")
        ok = name == "mp4v" and not arg or name == "jpeg" and arg.isdigit() and 1 <= int(arg) <= 100
        if not ok:
            raise ValueError(f"camera augmentation {s!r}: known kinds are {', '.join(KINDS)} (Q in 1..100)")
    return tuple(items)


def _jpeg(frame: np.ndarray, params: list[int]) -> np.ndarray:
    """One (H, W, 3) uint8 BGR frame through JPEG encoding at params, decoded back."""
    ok, buf = cv2.imencode(".jpg", frame, params)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if img is None:
        raise OSError("OpenCV could not JPEG-encode and decode a frame for camera augmentation")
    return img


def simulate(frames: np.ndarray, kind: str) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR -> the same frames after the camera pipeline `kind`."""
    name, _, arg = kind.partition(":")
    if name == "jpeg":
        q = [cv2.IMWRITE_JPEG_QUALITY, int(arg)]
        return np.stack([_jpeg(f, q) for f in frames])
    if name == "mp4v":
        h, w = frames.shape[1:3]
        with tempfile.TemporaryDirectory(prefix="edgesdk-camera-") as tmp:
            path = str(Path(tmp) / "clip.mp4")
            writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*"mp4v"), 15.0, (w, h))
            if not writer.isOpened():
                raise OSError("OpenCV could not open an mp4v writer for camera augmentation")
            for f in frames:
                writer.write(np.ascontiguousarray(f))
            writer.release()
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
            out: list[np.ndarray] = []
            while len(out) < len(frames) and (got := cap.read())[0]:
                out.append(got[1])
            cap.release()
        if len(out) != len(frames):
            raise OSError(f"mp4v camera augmentation returned {len(out)} of {len(frames)} frames")
        return np.stack(out)
    raise ValueError(f"camera augmentation {kind!r}: known kinds are {', '.join(KINDS)}")
