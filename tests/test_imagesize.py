"""imagesize on the formats OpenCV decodes besides PNG, JPEG, BMP, TIFF and WebP (test_images.py):
GIF, the Netpbm family (P1-P7, PFM), Sun raster and JPEG 2000, told by content as cv2.imdecode tells them, so a
mislabelled file in an archive (a GIF named .png) is read; and their hostile headers (huge sizes,
comments, truncations), refused or measured before anything is decoded."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from edgesdk.errors import DataError
from edgesdk.images import read_image
from edgesdk.imagesize import image_size

IMG = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
ASCII = [cv2.IMWRITE_PXM_BINARY, 0]
WRITTEN = [  # (extension cv2.imencode writes, colour or grey, params)
    (".gif", 3, []),
    (".ppm", 3, []),
    (".ppm", 3, ASCII),
    (".pgm", 1, []),
    (".pgm", 1, ASCII),
    (".pbm", 1, []),
    (".pbm", 1, ASCII),
    (".pam", 1, []),
    (".pam", 3, []),
    (".pfm", 1, []),
    (".pfm", 3, []),
    (".ras", 3, []),
    (".jp2", 3, []),
    (".jp2", 1, []),
]


@pytest.mark.parametrize("ext,channels,params", WRITTEN)
def test_a_mislabelled_file_is_read_by_its_content(ext, channels, params, tmp_path):
    ok, buf = cv2.imencode(ext, IMG if channels == 3 else IMG[..., 0], params)
    assert ok and image_size(buf.tobytes()) == (53, 37)
    named_png = tmp_path / "frame.png"  # what an archive holds: any format under a .png name
    named_png.write_bytes(buf.tobytes())
    np.testing.assert_array_equal(read_image(named_png), cv2.imdecode(buf, cv2.IMREAD_COLOR))
    with pytest.raises(DataError, match=r"frame.png: 53x37 pixels \(0.0 MP\) is over the limit of 1960 pixels"):
        read_image(named_png, limit=53 * 37 - 1)


def _pixels(data: bytes) -> bytes:
    return data + bytes(4096)  # enough pixel bytes for the small sizes below


# Headers OpenCV decodes, with what its readers allow: comments anywhere between PNM numbers (up to
# a CR or LF), any whitespace run, PAM lines in any order with comments and unknown-to-us keys.
ODD_BUT_VALID = [
    b"P6\n# made by a camera\r  7\t#w\n#h\n 5 #maxval next\n255\n",
    b"P5\x0b7\x0c5\r255\n",
    b"P6\n7#5\n2\n",  # '#' right after a digit ends the number and is dropped: 7 by 5, not a comment
    b"P6\n7x5 255\n",  # so does any other byte
    b"P4 7\n5\n",
    b"P7\n# comment\nTUPLTYPE RGB\nHEIGHT 5\nWIDTH 7   \nDEPTH 3\n\nMAXVAL 255\nENDHDR\n",
    b"Pf\n7 5\n-1.0\n",
]


@pytest.mark.parametrize("data", ODD_BUT_VALID)
def test_odd_headers_read_the_size_opencv_decodes(data):
    img = cv2.imdecode(np.frombuffer(_pixels(data), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (5, 7)
    assert image_size(_pixels(data)) == (7, 5)


def test_a_huge_size_is_refused_from_the_header_before_decoding(tmp_path):
    long_comment = b"#" + b"x" * 2_000_000 + b"\n"  # the size after 2 MB of comment is still found
    huge = {
        "ppm": b"P6\n100000 100000\n255\n",
        "ppm-comments": b"P6\n" + long_comment + b"100000\n#h\r100000\n255\n",
        "pbm": b"P4\n100000 100000\n",
        "pam": b"P7\nWIDTH 100000\nHEIGHT 100000\nDEPTH 3\nMAXVAL 255\nENDHDR\n",
        "pfm": b"PF\n100000 100000\n-1\n",
        "gif": b"GIF89a\xa0\x86\xa0\x86\x00\x00\x00",
        "ras": b"\x59\xa6\x6a\x95" + struct.pack(">iiiiiii", 100000, 100000, 24, 0, 1, 0, 0),
        "bmp-top-down": b"BM" + bytes(12) + struct.pack("<Iii", 40, 100000, -100000) + bytes(28),
        "bmp-int-min": b"BM" + bytes(12) + struct.pack("<Iii", 40, 100000, -(2**31)) + bytes(28),
    }
    for name, data in huge.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data + bytes(64))
        with pytest.raises(DataError, match=rf"{name}.png: \d+x\d+ pixels \(\d+\.\d MP\) is over the limit"):
            read_image(path)
    assert image_size(huge["ppm-comments"]) == (100000, 100000)
    assert image_size(huge["gif"]) == (0x86A0, 0x86A0)
    assert image_size(huge["bmp-int-min"]) == (100000, 2**31)


TRUNCATED_OR_UNSURE = [
    b"P6\n",
    b"P6\n100000",  # the width may go on in the bytes not read
    b"P6\n7 5",
    b"P6\n# a comment that never ends 7 5 255",
    b"P6\nx 7 5\n",  # OpenCV refuses a byte that is neither a digit, a space nor a comment
    b"P6\n99999999999 5\n255\n",  # over INT_MAX: OpenCV refuses it
    b"P6\n-7 5\n255\n",
    b"P8\n7 5\n255\n",
    b"P67 5\n255\n",  # no whitespace after the magic: not Netpbm to OpenCV
    b"P7\nWIDTH 7\nHEIGHT 5\n",  # no ENDHDR
    b"P7\nWIDTH 7\nWIDTH 100000\nHEIGHT 5\nENDHDR\n",  # a repeat: OpenCV refuses it
    b"P7\nWIDTH -7\nHEIGHT 5\nENDHDR\n",
    b"P7\n  WIDTH 7\nHEIGHT 5\nENDHDR\n",  # a form not read here
    b"P7 WIDTH 7\nHEIGHT 5\nENDHDR\n",
    b"PF 7 5 -1\n",  # OpenCV wants a line feed after PF
    b"PF\n7  5\n-1\n",  # two spaces: OpenCV reads an empty height
    b"PF\n+7 5\n-1\n",
    b"GIF89a\x07",
    b"GIF89a\x00\x00\x05\x00",
    b"GIF88a\x07\x00\x05\x00",
    b"\x59\xa6\x6a\x95" + struct.pack(">ii", -7, 5),
    b"\x59\xa6\x6a\x95\x00\x00",
]


@pytest.mark.parametrize("data", TRUNCATED_OR_UNSURE)
def test_cut_short_or_unsure_headers_are_not_read(data, tmp_path):
    assert image_size(data) is None
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"x.png: not a readable image$"):
        read_image(path)


def _jp2_parts() -> tuple[bytes, int]:
    """A JP2 file OpenCV wrote and the offset of its codestream box (jp2c)."""
    ok, buf = cv2.imencode(".jp2", IMG)
    jp2 = buf.tobytes()
    return jp2, jp2.index(b"jp2c") - 4


def test_jpeg2000_size_is_the_codestreams(tmp_path):
    jp2, at = _jp2_parts()
    j2k = jp2[at + 8 :]  # the bare codestream: OpenCV decodes it too
    assert cv2.imdecode(np.frombuffer(j2k, np.uint8), cv2.IMREAD_COLOR).shape == (37, 53, 3)
    assert image_size(j2k) == (53, 37)
    # The codestream box with a 64-bit length (box length 1), as large files carry it: OpenJPEG reads it.
    xl = jp2[:at] + struct.pack(">I4sQ", 1, b"jp2c", len(j2k) + 16) + j2k
    assert cv2.imdecode(np.frombuffer(xl, np.uint8), cv2.IMREAD_COLOR).shape == (37, 53, 3)
    assert image_size(xl) == (53, 37)
    # SIZ is what OpenJPEG allocates by, not the jp2h header box: a small ihdr before a huge SIZ is
    # measured by the SIZ. Xsiz, Ysiz at 8 bytes into the codestream; XOsiz, YOsiz follow.
    siz = at + 8 + 8
    huge = jp2[:siz] + struct.pack(">IIII", 100000, 100000, 0, 0) + jp2[siz + 16 :]
    assert image_size(huge) == (100000, 100000)
    path = tmp_path / "huge.png"
    path.write_bytes(huge)
    with pytest.raises(DataError, match=r"huge.png: 100000x100000 pixels \(10000.0 MP\) is over the limit"):
        read_image(path)
    offset = j2k[:8] + struct.pack(">IIII", 1053, 2037, 1000, 2000) + j2k[24:]
    assert image_size(offset) == (53, 37)  # the image spans XOsiz..Xsiz
    for bad in (
        j2k[:8] + struct.pack(">IIII", 1000, 37, 1053, 0) + j2k[24:],  # Xsiz < XOsiz
        j2k[:20],  # SIZ cut short
        jp2[:at],  # no codestream box
        jp2[:at] + struct.pack(">I4s", 0, b"xml ") + jp2[at:],  # a box to the end before the codestream
        jp2[:at] + struct.pack(">I4s", 4, b"xml ") + jp2[at:],  # a box shorter than its header
    ):
        assert image_size(bad) is None


def test_mutated_headers_never_read_smaller_than_opencv_decodes():
    """Bytes of the header changed or inserted at random (seeded): whenever OpenCV decodes the result and
    a size is read, it is the size OpenCV decoded; a smaller one would let a large image through."""
    rng = np.random.default_rng(7)
    seeds = [cv2.imencode(e, IMG if c == 3 else IMG[..., 0], p)[1].tobytes() for e, c, p in WRITTEN]
    checked = 0
    for _ in range(3000):
        b = bytearray(seeds[rng.integers(len(seeds))])
        for _ in range(rng.integers(1, 4)):
            i = int(rng.integers(0, 30))
            c = int(rng.integers(0, 256)) if rng.random() < 0.3 else ord(rng.choice(list(" \n\r\t\x0b#0123456789x-+")))
            b[i : i + (rng.random() < 0.5)] = bytes([c])  # replace or insert
        try:
            img = cv2.imdecode(np.frombuffer(bytes(b), np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
        wh = image_size(bytes(b))
        if img is not None and wh is not None:
            assert wh == (img.shape[1], img.shape[0]), bytes(b[:40])
            checked += 1
    assert checked > 500


def test_a_long_netpbm_gap_is_read_in_bounded_memory():
    """60 MB of spaces before a Netpbm number (a file up to the 64 MiB head is parsed whole): a regex group
    repeated per byte kept state per repetition, gigabytes, and died of MemoryError instead of reading 7x5."""
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "from edgesdk.imagesize import image_size;"
        "print(image_size(b'P6\\n' + b' ' * 60_000_000 + b'7 5\\n255\\n' + bytes(105)),"
        " image_size(b'P6\\n' + b'#\\n' * 5_000_000 + b'7 5\\n255\\n' + bytes(105)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["(7,", "5)", "None"]  # millions of comment lines: not read, refused


def test_a_colour_pfm_larger_than_8_bytes_a_pixel_is_read(tmp_path, monkeypatch):
    """A colour PFM stores 12 bytes a pixel: the file-size bound assumed 8 and refused large ones as
    'more than WxH pixels need' (the bound's slack, HEAD_BYTES, shrunk here to reach it with 100x100)."""
    import edgesdk.images as images

    img = np.random.default_rng(0).random((100, 100, 3), dtype=np.float32)
    ok, buf = cv2.imencode(".pfm", img)
    assert ok and len(buf) > 100 * 100 * 8 + 1024
    (tmp_path / "x.png").write_bytes(buf.tobytes())
    monkeypatch.setattr(images, "HEAD_BYTES", 1024)
    assert read_image(tmp_path / "x.png", limit=10**6).shape[:2] == (100, 100)
