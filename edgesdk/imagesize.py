"""An image's width and height from its header bytes, before anything is decoded: PNG (IHDR), JPEG
(SOFn), BMP, TIFF (first IFD), WebP (VP8, VP8L, VP8X), GIF (logical screen), the Netpbm family (PBM,
PGM, PPM: P1-P6; PAM: P7; PFM), Sun raster and JPEG 2000 (SIZ of a J2K codestream, alone or in JP2).
images.read_image checks the pixel count against its limit with this, so a small file that decodes
to gigabytes (a constant 20000x20000 PNG) is refused without the allocation. OpenCV has no
header-only API. Standard library only.

The format is told by content (magic bytes), as cv2.imdecode tells it: archives hold a GIF or PPM
named .png. Each parser reads the size the way OpenCV's decoder does, and refuses (None) whatever it
is not sure of: a size it could read lower than OpenCV would let a large image through."""

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
# Netpbm (OpenCV's grfmt_pxm.cpp ReadNumber): before a number any run of C isspace() bytes and of
# comments, '#' up to and including the next CR or LF. Whitespace runs are one character class:
# a group repeated per byte makes re keep state per repetition (gigabytes for 60 MB of spaces). More
# than _PNM_COMMENTS comments leave a '#' where the number should be: the header is not read.
_PNM_COMMENTS = 1024
_PNM_GAP = re.compile(rb"[ \t\n\v\f\r]*(?:#[^\n\r]*[\n\r][ \t\n\v\f\r]*){0,%d}" % _PNM_COMMENTS)
_DIGITS = re.compile(rb"[0-9]+")
_INT_MAX = 2**31 - 1  # OpenCV reads the sizes as int and refuses larger ones
# PAM (grfmt_pam.cpp): "P7" and a line end, then KEY value lines up to ENDHDR. Only the lines read
# here are accepted; a header this does not fully understand is not read (None).
_PAM_HEADER_MAX = 4096
_PAM_LINE = re.compile(rb"([^\r\n]*)[\r\n]")
_SUN_MAGIC = b"\x59\xa6\x6a\x95"
_J2K = b"\xff\x4f\xff\x51"  # SOC then SIZ: a JPEG 2000 codestream
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 file format's signature box


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
        elif buf[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", buf[6:10])  # the logical screen; every frame must lie inside it
        elif buf[:1] == b"P" and buf[1:2] in b"123456" and buf[2:3].isspace():
            w, h = _pnm(data)
        elif buf[:3] in (b"P7\n", b"P7\r"):
            w, h = _pam(data)
        elif buf[:2] in (b"PF", b"Pf"):
            w, h = _pfm(buf)
        elif buf.startswith(_SUN_MAGIC):
            w, h = struct.unpack(">ii", buf[4:12])
        elif buf.startswith(_J2K):
            w, h = _siz(data, 0)
        elif buf.startswith(_JP2):
            w, h = _jp2(data)
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


def _pnm(data: bytes | memoryview) -> tuple[int, int]:
    """P1-P6: width and height are the first two numbers after the magic. Comments may come before
    each and be as long as the file (a header claiming 100000x100000 after 1 MB of them); a '#' right
    after a digit is no comment: it ends the number ("7#5" is 7 by 5 to OpenCV)."""
    size, i = [], 2
    for _ in range(2):
        i = _PNM_GAP.match(data, i).end()  # type: ignore[union-attr]  # matches the empty string
        num = _DIGITS.match(data, i)
        # No number (cut short, or a byte OpenCV refuses), or the number runs to the end of what was
        # read (the file's next byte could be another digit).
        if num is None or num.end() >= len(data):
            return 0, 0
        size.append(int(num.group()) if num.end() - num.start() <= 10 else _INT_MAX + 1)
        i = num.end() + 1  # OpenCV reads the byte that ends a number and drops it, whatever it is
    if max(size) > _INT_MAX:
        return 0, 0
    return size[0], size[1]


def _pam(data: bytes | memoryview) -> tuple[int, int]:
    """Header lines up to ENDHDR; OpenCV refuses an unknown key or a repeated WIDTH or HEIGHT. A line
    is read here only as `KEY value` or a comment at its start; any other form is not read."""
    size: dict[bytes, int] = {}
    for line in _PAM_LINE.finditer(bytes(data[3 : 3 + _PAM_HEADER_MAX])):  # terminated lines only
        text = line[1]
        if not text.strip() or text.startswith(b"#"):
            continue
        kv = re.fullmatch(rb"([A-Z]+)(?:[ \t]+(.*?))?[ \t]*", text)
        if kv is None:
            return 0, 0
        if kv[1] == b"ENDHDR":
            w, h = size.get(b"WIDTH", 0), size.get(b"HEIGHT", 0)
            return (w, h) if max(w, h) <= _INT_MAX else (0, 0)
        if kv[1] in (b"WIDTH", b"HEIGHT"):
            if kv[1] in size or not re.fullmatch(rb"[0-9]{1,10}", kv[2] or b""):  # a repeat or a non-number
                return 0, 0
            size[kv[1]] = int(kv[2])
    return 0, 0  # no ENDHDR in the first _PAM_HEADER_MAX bytes


def _pfm(buf: bytes) -> tuple[int, int]:
    """PF (colour) or Pf (grey), a line feed, then width, height and scale, each ended by one whitespace
    byte (OpenCV's grfmt_pfm.cpp reads up to it, then atoi); only plain digits are read here."""
    m = re.match(rb"P[Ff]\n([0-9]{1,9})[ \t\n\v\f\r]([0-9]{1,9})[ \t\n\v\f\r]", buf)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def _siz(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """The codestream at AT: SOC, SIZ (length, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz). OpenJPEG's image spans
    x0 = XOsiz to x1 = Xsiz, and OpenCV's size is x1 - x0 (grfmt_jpeg2000_openjpeg.cpp)."""
    if bytes(data[at : at + 4]) != _J2K:
        return 0, 0
    x, y, x0, y0 = struct.unpack(">IIII", bytes(data[at + 8 : at + 24]))
    return x - x0, y - y0  # a negative extent is refused by the caller


def _jp2(data: bytes | memoryview) -> tuple[int, int]:
    """Top-level boxes (length, type; length 1: a 64-bit length follows, 0: to the end) up to the first
    codestream box, jp2c, whose SIZ OpenJPEG decodes; the jp2h header box's sizes are not what it uses."""
    i = 0
    for _ in range(_MAX_SEGMENTS):
        length, kind = struct.unpack(">I4s", bytes(data[i : i + 8]))
        head = 8
        if length == 1:
            (length,) = struct.unpack(">Q", bytes(data[i + 8 : i + 16]))
            head = 16
        if kind == b"jp2c":
            return _siz(data, i + head)
        if length < head:  # 0 (the last box) before the codestream, or a length shorter than its header
            return 0, 0
        i += length
    return 0, 0
