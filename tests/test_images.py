"""images.read_image on hostile files: names that are not UTF-8 (read, through every command that reads
image folders), images whose header promises more pixels than the limit (refused before decoding),
and imagesize's header parsers on every format OpenCV writes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgesdk.errors import DataError, OptionError
from edgesdk.images import MAX_PIXELS_ENV, max_pixels, read_image, read_mask
from edgesdk.imagesize import image_size

ROOT = Path(__file__).resolve().parents[1]
BAD = b"\xff\xfe-caf\xe9"  # not UTF-8: Python sees lone surrogates, cv2.imread segfaulted on them
# A child's peak RSS in bytes, from a Python -c line: VmHWM is its own address space's; ru_maxrss also
# counts the parent's resident memory at fork (kept across exec), so it reads high under a pytest
# process that trained a model.
PEAK = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024"


def cli(*argv, env=None):
    args = [sys.executable, "-m", "edgesdk", *(a if isinstance(a, bytes) else str(a) for a in argv)]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)


def huge_png(path: Path, w: int, h: int) -> Path:
    """A valid 8-bit grayscale PNG of W x H zeros, written row block by row block (never W x H bytes in
    memory): small on disk, W x H x 3 bytes once decoded as colour."""
    c = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    block = bytes(1 + w) * 500  # filter byte 0 + W zeros per row
    idat = b"".join([c.compress(block) for _ in range(h // 500)] + [c.compress(bytes(1 + w) * (h % 500)), c.flush()])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif", ".webp"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_header_size_of_every_format_opencv_writes(ext, channels):
    img = np.random.default_rng(0).integers(0, 255, (37, 53, channels), np.uint8)
    variants = [[]]
    if ext == ".jpg":
        variants.append([cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    if ext == ".webp":
        variants.append([cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless (VP8L)
    for params in variants:
        ok, buf = cv2.imencode(ext, img[..., 0] if channels == 1 else img, params)
        assert ok and image_size(buf.tobytes()) == (53, 37), (ext, params)


def test_header_size_of_crafted_headers_and_truncations():
    vp8x = b"RIFF\0\0\0\0WEBPVP8X" + bytes(8) + (19999).to_bytes(3, "little") + (29999).to_bytes(3, "little")
    assert image_size(vp8x) == (20000, 30000)
    bmp_top_down = b"BM" + bytes(12) + struct.pack("<Iii", 40, 640, -480) + bytes(8)
    assert image_size(bmp_top_down) == (640, 480)
    ok, buf = cv2.imencode(".png", np.zeros((5, 7), np.uint8))
    png = buf.tobytes()
    for cut in (0, 8, 17, 23):
        assert image_size(png[:cut]) is None
    sof_height_0 = b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x10" + bytes(8)  # height from a DNL marker
    assert image_size(sof_height_0) is None
    assert image_size(b"P6\n7 5\n255\n" + bytes(105)) == (7, 5)  # more formats: tests/test_imagesize.py
    assert image_size(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 5 +X 7\n") is None  # a format not read


def test_a_non_utf8_name_is_read_not_a_crash(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (20, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "m.png"), img[..., 0])
    os.rename(tmp_path / "a.png", os.fsencode(tmp_path) + b"/" + BAD + b".png")
    os.rename(tmp_path / "m.png", os.fsencode(tmp_path) + b"/" + BAD + b"_mask.png")
    name = tmp_path / os.fsdecode(BAD + b".png")
    # In a child process: on the original code cv2.imread segfaults, which would take pytest with it.
    code = (
        "import sys, numpy as np; from edgesdk.images import read_image, read_mask; "
        f"a = read_image({str(name)!r}); m = read_mask({str(tmp_path / os.fsdecode(BAD + b'_mask.png'))!r}); "
        "print(a.shape, m.shape, int(a.sum()))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.split() == ["(20,", "30,", "3)", "(20,", "30)", str(int(img.sum()))]
    assert np.array_equal(read_image(name, (10, 15)), cv2.resize(img, (15, 10), interpolation=cv2.INTER_AREA))


def test_unreadable_files_are_data_errors_naming_them(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(cv2.imencode(".png", np.zeros((9, 9), np.uint8))[1].tobytes()[:40])
    (tmp_path / "dir.png").mkdir()
    for name in ("text.png", "cut.png", "dir.png", "missing.png"):
        with pytest.raises(DataError, match=rf"{name}: not a readable image"):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match=r"text.png: not a readable mask image"):
        read_mask(tmp_path / "text.png")


def test_the_pixel_limit_comes_from_the_flag_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_pixels() == 50_000_000 and max_pixels(7) == 7
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    assert max_pixels() == 1000 and max_pixels(7) == 7
    for bad in ("0", "-5", "1e9", "nan", "lots"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(OptionError, match=rf"\${MAX_PIXELS_ENV}|{MAX_PIXELS_ENV} '{bad}'"):
            max_pixels()
    with pytest.raises(OptionError, match=r"--max-pixels 0"):
        max_pixels(0)


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    return huge_png(tmp_path_factory.mktemp("huge") / "huge.png", 16000, 16000)  # 256 MP: 768 MB as BGR


def test_a_huge_image_is_refused_from_its_header_without_decoding(huge):
    assert huge.stat().st_size < 2_000_000
    # A fresh process, so its peak memory is this read's: decoding would allocate 16000 x 16000 x 3 bytes.
    code = (
        "from edgesdk.images import read_image\n"
        f"try:\n    read_image({str(huge)!r})\nexcept ValueError as e:\n    print(e)\n"
        f"print({PEAK})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    message, peak = r.stdout.strip().splitlines()
    assert f"{huge}: 16000x16000 pixels (256.0 MP) is over the limit of 50000000 pixels" in message
    assert int(peak) < 400 * 2**20, f"peak RSS {int(peak) / 2**20:.0f} MiB: the image was decoded"
    img = np.zeros((40, 30, 3), np.uint8)
    small = huge.parent / "small.png"
    cv2.imwrite(str(small), img)
    with pytest.raises(DataError, match=r"small.png: 30x40 pixels \(0.0 MP\) is over the limit of 1000 pixels"):
        read_image(small, limit=1000)
    assert read_image(small, limit=1200).shape == (40, 30, 3)


def test_score_turns_a_huge_image_into_an_error_row(bundle, tiny_data, huge, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="edgesdk score writes Parquet: pip install 'edgesdk[scale]'")
    arch = tmp_path / "archive"
    arch.mkdir()
    good = sorted((tiny_data / "brick" / "test" / "good").glob("*.png"))[:2]
    for p in good:
        shutil.copy(p, arch / p.name)
    (arch / "huge.png").symlink_to(huge)
    out = tmp_path / "o"
    r = cli("score", bundle, "--images", arch, "--out", out, "--workers", 2, "--batch", 2, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["n_images"] == 3 and s["errors"] == 1 and s["ng"] + s["good"] == 2
    rows = {Path(p).name: e for p, e in zip(*pq.read_table(out, columns=["path", "error"]).to_pydict().values())}
    assert "16000x16000 pixels (256.0 MP) is over the limit of 50000000 pixels" in rows["huge.png"]
    # --max-pixels lowers the limit: the 128 x 128 test images become error rows too.
    r = cli("score", bundle, "--images", arch, "--out", tmp_path / "o2", "--max-pixels", 1000, "--workers", 1, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["errors"] == 3, r.stderr
    r = cli("score", bundle, "--images", arch, "--out", tmp_path / "o3", env={**os.environ, MAX_PIXELS_ENV: "x"})
    assert r.returncode == 2 and f"edgesdk score: error: {MAX_PIXELS_ENV} 'x': a whole number" in r.stderr


def _with_bad_names(tiny_data, tmp_path) -> Path:
    """A copy of the brick category where one good and one defective test image (with its mask) and
    one training image have names that are not UTF-8."""
    cat = tmp_path / "brick"
    shutil.copytree(tiny_data / "brick", cat, ignore=shutil.ignore_patterns("labels"))
    good = sorted((cat / "test" / "good").glob("*.png"))[0]
    kind = sorted(d for d in (cat / "test").iterdir() if d.name != "good")[0]
    bad = sorted(kind.glob("*.png"))[0]
    raw = os.fsencode
    os.rename(good, raw(good.parent) + b"/" + BAD + b".png")
    os.rename(bad, raw(bad.parent) + b"/" + BAD + b".png")
    mask = cat / "ground_truth" / kind.name / f"{bad.stem}_mask.png"
    os.rename(mask, raw(mask.parent) + b"/" + BAD + b"_mask.png")
    train = sorted((cat / "train" / "good").glob("*.png"))[0]
    os.rename(train, raw(train.parent) + b"/" + BAD + b".png")
    return cat


def _not_utf8(name: str) -> bool:
    return os.fsencode(name) != name.encode("utf-8", "replace")


def test_eval_calibrate_and_train_read_non_utf8_names(bundle, tiny_data, tmp_path):
    cat = _with_bad_names(tiny_data, tmp_path)
    n_test = len(list((tiny_data / "brick" / "test").rglob("*.png")))
    r = cli("eval", bundle, "--data", cat, "--json", "-q")
    assert r.returncode == 0, (r.returncode, r.stderr)  # was -11: cv2.imread's segfault
    assert json.loads(r.stdout)["n_images"] == n_test
    clip = tmp_path / "clip"  # 30 good frames, one with the bad name
    clip.mkdir()
    for p in sorted((cat / "train" / "good").iterdir())[-30:]:  # sorted last: its name starts with U+DCFF
        shutil.copy(p, os.fsencode(clip) + b"/" + os.fsencode(p.name))
    assert any(_not_utf8(p.name) for p in clip.iterdir())
    r = cli("calibrate", bundle, "--source", clip, "--frames", 30, "--out", tmp_path / "cal", "--json", "-q")
    assert r.returncode == 0, (r.returncode, r.stderr)
    r = cli("train", "--data", cat, "--out", tmp_path / "run", "--size", 64, "-q")
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert (tmp_path / "run" / "run.json").is_file()


def test_a_folder_source_records_why_an_image_was_skipped(huge, tmp_path):
    from edgesdk.video.sources import open_source

    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), np.zeros((8, 8, 3), np.uint8))
    (folder / "1.png").symlink_to(huge)
    (folder / "2.png").write_bytes(b"not a png")
    with open_source(str(folder), errors="record") as src:
        frames = [src.read(timeout=1) for _ in range(3)]
    assert frames[0].error == "" and frames[0].image.shape == (8, 8, 3)
    assert frames[1].error == "16000x16000 pixels (256.0 MP) is over the limit of 50000000 pixels; not decoded " + (
        f"(raise it with --max-pixels or ${MAX_PIXELS_ENV})"
    )
    assert frames[2].error == "not a readable image"


def test_a_fifo_or_device_named_like_an_image_is_refused_not_waited_on(bundle, tiny_data, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="edgesdk score writes Parquet: pip install 'edgesdk[scale]'")
    good = sorted((tiny_data / "brick" / "test" / "good").glob("*.png"))[0]
    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading waited for a writer: score hung for ever
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\nfifo.png\nzero.png\n")
    r = subprocess.run(
        [sys.executable, "-m", "edgesdk", "score", str(bundle), "--images", str(listing), "--out", str(tmp_path / "o")]
        + ["--workers", "1", "--json", "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["errors"] == 2
    rows = {
        Path(p).name: e for p, e in zip(*pq.read_table(tmp_path / "o", columns=["path", "error"]).to_pydict().values())
    }
    for name in ("fifo.png", "zero.png"):
        assert "not a readable image (not a regular file: a folder, FIFO or device)" in rows[name]
    assert not rows[good.name]


def test_a_large_file_is_not_read_whole(tmp_path):
    sparse, tail, motion = tmp_path / "sparse.png", tmp_path / "tail.png", tmp_path / "motion.jpg"
    with open(sparse, "wb") as f:
        f.truncate(2 * 2**30)  # 2 GB of zeros, none of it on disk; np.fromfile read all of it into memory
    img = np.random.default_rng(2).integers(0, 255, (30, 40, 3), np.uint8)
    with open(tail, "wb") as f:  # a valid PNG followed by 1 GB of zeros: more than 40 x 30 pixels can need
        f.write(cv2.imencode(".png", img)[1].tobytes())
        f.truncate(2**30)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    motion.write_bytes(jpg + bytes(5 * 2**20))  # data after the image (a phone's motion photo): still read
    code = (
        "from edgesdk.images import read_image\n"
        f"for p in ({str(sparse)!r}, {str(tail)!r}):\n"
        "    try:\n        read_image(p)\n    except ValueError as e:\n        print(e)\n"
        f"print(int(read_image({str(motion)!r}).sum()))\n"
        f"print({PEAK})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    refused, too_long, total, peak = r.stdout.strip().splitlines()
    assert refused == f"{sparse}: not a readable image"
    assert (
        too_long == f"{tail}: not a readable image (over {30 * 40 * 8 + 64 * 2**20} bytes, more than 40x30 pixels need)"
    )
    assert int(total) == int(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR).sum())
    assert int(peak) < 400 * 2**20, f"peak RSS {int(peak) / 2**20:.0f} MiB: a file was read whole"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.png: not a readable image$"):
        read_image(tmp_path / "empty.png")


def _tiff(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian 8-bit grayscale TIFF: 16 pixel bytes at offset 8, then one IFD of ENTRIES
    (tag, type, count, 4-byte value field) in the order given."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in entries)
    return b"II*\x00" + struct.pack("<I", 24) + bytes(16) + ifd + bytes(4)


def _tiff_rest() -> list[tuple[int, int, int, bytes]]:
    short, long = (lambda v: struct.pack("<HH", v, 0)), (lambda v: struct.pack("<I", v))
    # BitsPerSample, Compression, Photometric, StripOffsets, SamplesPerPixel, RowsPerStrip, StripByteCounts
    rest = [(258, 3, 1, short(8)), (259, 3, 1, short(1)), (262, 3, 1, short(1)), (273, 4, 1, long(8))]
    return rest + [(277, 3, 1, short(1)), (278, 4, 1, long(4)), (279, 4, 1, long(16))]


def test_tiff_size_is_the_one_libtiff_decodes(tmp_path):
    long = lambda v: struct.pack("<I", v)  # noqa: E731
    h4 = (257, 4, 1, long(4))
    # libtiff keeps the first of repeated tags: the header check read the last, so 30000 x 4 passed as 4 x 4.
    first_small = _tiff([(256, 4, 1, long(4)), (256, 4, 1, long(30000)), h4] + _tiff_rest())
    assert cv2.imdecode(np.frombuffer(first_small, np.uint8), cv2.IMREAD_COLOR).shape == (4, 4, 3)
    assert image_size(first_small) == (4, 4)
    (tmp_path / "dup.tif").write_bytes(_tiff([(256, 4, 1, long(30000)), (256, 4, 1, long(4)), h4] + _tiff_rest()))
    with pytest.raises(DataError, match=r"dup.tif: 30000x4 pixels \(0.1 MP\) is over the limit of 100 pixels"):
        read_image(tmp_path / "dup.tif", limit=100)
    # A width of another type (LONG8: the value at an offset; SLONG; two values) is not guessed at: refused.
    for typ, count in ((16, 1), (9, 1), (4, 2)):
        assert image_size(_tiff([(256, typ, count, long(8)), h4] + _tiff_rest())) is None, (typ, count)
    assert image_size(_tiff([(256, 3, 1, struct.pack("<HH", 4, 0)), h4] + _tiff_rest())) == (4, 4)


def test_jpeg_header_walk_is_bounded_and_skips_fill_bytes():
    ok, buf = cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8))
    jpg = buf.tobytes()
    assert image_size(jpg[:2] + b"\xff" * 100_000 + jpg[2:]) == (40, 30)  # fill bytes before a marker
    assert image_size(jpg[:2] + (b"\xff\xe1\xff\xff" + bytes(65533)) * 200 + jpg[2:]) == (40, 30)  # 13 MB of APP1
    # A chain of empty comments cost a Python loop turn per 4 bytes (minutes for a large file): after
    # 1024 segments without a frame header the file is refused.
    assert image_size(jpg[:2] + b"\xff\xfe\x00\x02" * 1000 + jpg[2:]) == (40, 30)
    assert image_size(jpg[:2] + b"\xff\xfe\x00\x02" * 1100 + jpg[2:]) is None
    for bad in (b"\xff\xe0\x00\x00", b"\xff\xe0\x00\x01", b"\xff\xe0\x00\x10" + bytes(14) + b"\xff\xd9"):
        assert image_size(jpg[:2] + bad) is None  # lengths 0 and 1; no frame header at all


def test_eval_compare_adapt_and_train_take_max_pixels(bundle, tiny_data, tmp_path):
    """The flag reaches every image the command reads (test images and masks, --good frames, training
    images and labelled ones), as score's does; the 128 x 128 images are 16384 pixels: at the limit they
    pass, one under it they fail."""
    cat = tiny_data / "brick"
    r = cli("eval", bundle, "--data", cat, "--max-pixels", 16383, "--json", "-q")
    assert r.returncode == 2 and r.stderr.startswith(f"edgesdk eval: error: {cat / 'test'}"), r.stderr
    assert "128x128 pixels (0.0 MP) is over the limit of 16383 pixels; not decoded" in r.stderr
    r = cli("eval", bundle, "--data", cat, "--max-pixels", 16384, "--json", "-q")
    assert r.returncode == 0 and json.loads(r.stdout)["n_images"] > 0, r.stderr
    r = cli("compare", bundle, bundle, "--data", cat, "--max-pixels", 16383)  # the flag was --images' only
    assert r.returncode == 2 and r.stderr.startswith(f"edgesdk compare: error: {cat / 'test'}"), r.stderr
    r = cli("eval", bundle, "--data", cat, "-q", env={**os.environ, MAX_PIXELS_ENV: "0"})
    assert r.returncode == 2 and f"edgesdk eval: error: {MAX_PIXELS_ENV} '0': a whole number" in r.stderr
    good = cat / "train" / "good"
    args = ("adapt", bundle, "--good", good, "--no-gate", "--out", tmp_path / "adapted", "--json")
    r = cli(*args, "--max-pixels", 16383)
    assert r.returncode == 2 and r.stderr.startswith(f"edgesdk adapt: error: {good}"), r.stderr
    assert "is over the limit of 16383 pixels" in r.stderr and not (tmp_path / "adapted").exists()
    r = cli("train", "--data", cat, "--out", tmp_path / "run", "--size", 64, "--max-pixels", 16383, "-q")
    assert r.returncode == 2 and r.stderr.startswith(f"edgesdk train: error: {good}"), r.stderr
    assert "is over the limit of 16383 pixels" in r.stderr and not (tmp_path / "run" / "run.json").exists()
    from edgesdk.data.labelled import load_labels

    with pytest.raises(DataError, match=r"over the limit of 16383 pixels"):
        load_labels(cat / "labels", 16383).read((64, 64))
    assert len(load_labels(cat / "labels", 16384).read((64, 64))[0]) > 0


def test_predict_run_calibrate_and_export_take_max_pixels(bundle, run_dir, tiny_data, tmp_path):
    """The commands whose images come through sources, file lists or calibration folders hold every image to
    the flag too (they took only $EDGESDK_MAX_PIXELS); the 128 x 128 images are 16384 pixels."""
    from edgesdk.cli import main
    from edgesdk.images import MAX_PIXELS, max_pixels

    good = tiny_data / "brick" / "train" / "good"
    one = sorted(good.glob("*.png"))[0]
    over = "is over the limit of 16383 pixels"
    r = cli("predict", bundle, one, "--max-pixels", 16383, "--json")
    assert r.returncode == 2 and over in r.stderr and str(one) in r.stderr, r.stderr
    assert cli("predict", bundle, one, "--max-pixels", 16384, "--json").returncode == 0
    r = cli("run", bundle, "--source", good, "--sink", f"jsonl://{tmp_path / 'r.jsonl'}", "--max-pixels", 16383)
    assert f"{one}: 128x128 pixels (0.0 MP) {over}" in r.stderr and "recorded and skipped" in r.stderr, r.stderr
    r = cli("calibrate", bundle, "--source", good, "--out", tmp_path / "cal", "--max-pixels", 16383)
    assert r.returncode == 2 and over in r.stderr and not (tmp_path / "cal").exists(), r.stderr
    args = ("export", run_dir, "--out", tmp_path / "q", "--precision", "int8", "--calib", good)
    r = cli(*args, "--max-pixels", 16383)
    assert r.returncode == 2 and over in r.stderr and not (tmp_path / "q").exists(), r.stderr
    r = cli("predict", bundle, one, "--max-pixels", 0)
    assert r.returncode == 2 and "--max-pixels" in r.stderr, r.stderr
    # In one process the flag lasts as long as its command: the next command reads with the default.
    assert main(["predict", str(bundle), str(one), "--max-pixels", "16383", "-q"]) == 2
    assert max_pixels() == MAX_PIXELS and main(["predict", str(bundle), str(one), "-q"]) == 0


def test_overlapping_pixel_limits_each_end_their_own():
    """Two commands run from two threads of one process: the one that ends first takes its own limit
    with it, not the other's."""
    from edgesdk.images import MAX_PIXELS, max_pixels, pixel_limit

    a, b = pixel_limit(1000), pixel_limit(2_000_000)
    a.__enter__()
    b.__enter__()
    assert max_pixels() == 2_000_000
    a.__exit__(None, None, None)
    assert max_pixels() == 2_000_000  # B still runs with its own limit
    b.__exit__(None, None, None)
    assert max_pixels() == MAX_PIXELS
