"""An image's width and height from its header bytes, before anything is decoded: PNG (IHDR), JPEG
(SOFn), BMP, TIFF (first IFD) and WebP (VP8, VP8L, VP8X). images.read_image checks the pixel count
against its limit with this, so a small file that decodes to gigabytes (a constant 20000x20000 PNG)
is refused without the allocation. OpenCV has no header-only API. Standard library only."""

from __future__ import annotations

import re
import struct

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry (precision, height, width); C4 (DHT), C8 (JPG), CC (DAC) do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_FILL = re.compile(rb"\xff+")  # a marker's 0xFF and any fill bytes before it, skipped in C
# Segments read before the frame header; real files carry tens (APPn, DQT, DHT, COM). Without a bound
# a file of empty COM segments costs a Python loop turn per 4 bytes: minutes for a large file.
_MAX_SEGMENTS = 1024


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from the start of an encoded image; None when the bytes are not one of the
    formats above or its header is cut short or holds a zero size."""
    buf = bytes(data[:32]) if len(data) >= 32 else bytes(data)
    try:
        if buf.startswith(_PNG):
            w, h = struct.unpack(">II", buf[16:24]) if buf[12:16] == b"IHDR" else (0, 0)
        elif buf.startswith(b"\xff\xd8"):
            w, h = _jpeg(data)
        elif buf.startswith(b"BM"):
            w, h = _bmp(buf)
        elif buf[:4] in (b"II*\x00", b"MM\x00*"):
            w, h = _tiff(data)
        elif buf[:4] == b"RIFF" and buf[8:12] == b"WEBP":
            w, h = _webp(buf)
        else:
            return None
    except (struct.error, IndexError):  # the header ends early
        return None
    return (w, h) if w > 0 and h > 0 else None


def _jpeg(data: bytes | memoryview) -> tuple[int, int]:
    i = 2
    for _ in range(_MAX_SEGMENTS):
        fill = _FILL.match(data, i)
        if fill is None:
            return 0, 0
        i = fill.end()  # at the marker byte
        marker = data[i]
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 1
            continue
        length = int.from_bytes(bytes(data[i + 1 : i + 3]), "big")
        if marker in _SOF:  # length, precision, then height, width
            h, w = struct.unpack(">HH", bytes(data[i + 4 : i + 8]))
            return w, h  # h == 0 (height given later by a DNL marker) is refused by the caller
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid file
            return 0, 0
        i += 1 + length
    return 0, 0


def _bmp(buf: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack("<I", buf[14:18])
    if dib == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", buf[18:22])
    w, h = struct.unpack("<ii", buf[18:26])
    return w, abs(h)  # a negative height is a top-down bitmap


def _tiff(data: bytes | memoryview) -> tuple[int, int]:
    e = "<" if bytes(data[:2]) == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", bytes(data[4:8]))
    (count,) = struct.unpack(e + "H", bytes(data[ifd : ifd + 2]))
    size: dict[int, int] = {}
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, typ, n = struct.unpack(e + "HHI", bytes(data[at : at + 8]))
        if tag not in (256, 257) or tag in size:  # libtiff keeps a tag's first entry and ignores repeats
            continue
        if n != 1 or typ not in (3, 4):  # another type (LONG8, SLONG, ...) holds the value elsewhere: not read
            return 0, 0
        # ImageWidth, ImageLength: SHORT (3) or LONG (4), the value inline
        size[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), bytes(data[at + 8 : at + (10 if typ == 3 else 12)]))[
            0
        ]
    return size.get(256, 0), size.get(257, 0)


def _webp(buf: bytes) -> tuple[int, int]:
    chunk = buf[12:16]
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code 9d 01 2a, then 14-bit sizes
        w, h = struct.unpack("<HH", buf[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14 bits each of width-1 and height-1
        (bits,) = struct.unpack("<I", buf[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        return 1 + int.from_bytes(buf[24:27], "little"), 1 + int.from_bytes(buf[27:30], "little")
    return 0, 0
