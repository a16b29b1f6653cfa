"""Tiled scoring of high-resolution frames (stream/tiling.py): the grid covers every frame without
padding, the stitched map keeps the max where tiles overlap, and with the real bundle (128 px PaDiM,
real ONNX Runtime) a painted defect on a 1024x768 frame lands at its frame coordinates, also when it
straddles a tile border; a frame of exactly one tile scores as untiled; bad options are refused;
`edgesdk run` with ?tile= writes records whose regions are in frame pixels.

The large frame is 8x6 of the category's good images side by side: tiles of the model's size (128,
overlap 0) fall exactly on them, so every tile is a good part the model knows and the seams between
images (which no tile straddles) raise no false alarm."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgesdk.data.synth import paint_defect
from edgesdk.errors import DataError, OptionError
from edgesdk.images import list_images, read_image
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.stream.pipeline import run_stream
from edgesdk.stream.tiling import TileSpec, grid, stitch, stitch_kinds
from edgesdk.video import open_source
from edgesdk.video.sources import source_tiling


@pytest.fixture(scope="module")
def big_frame(tiny_data) -> np.ndarray:
    """(768, 1024, 3) uint8: 6 rows of 8 good 128 px training images."""
    imgs = [read_image(p) for p in list_images(tiny_data / "brick" / "train" / "good")[:48]]
    return np.concatenate([np.concatenate(imgs[r * 8 : (r + 1) * 8], axis=1) for r in range(6)], axis=0)


def paint_hole(frame: np.ndarray, cx: int, cy: int, seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """FRAME with a hole centred at (CX, CY) (sized as on a 256 px part: radius 6-10 px) and the
    hole's box x0, y0, x1, y1 (exclusive) in frame pixels."""
    out, (x0, y0) = frame.copy(), (cx - 128, cy - 128)
    patch, mask = paint_defect(out[y0 : y0 + 256, x0 : x0 + 256], "hole", np.random.default_rng(seed), (128, 128))
    out[y0 : y0 + 256, x0 : x0 + 256] = patch
    x, y, w, h = cv2.boundingRect(mask)
    return out, (x0 + x, y0 + y, x0 + x + w, y0 + y + h)


def assert_found_at(regions, box) -> None:
    """The strongest region covers the defect and is centred on it within a few pixels (a map is
    smoother than the paint, so the region is wider than the hole)."""
    assert regions, "no region found"
    rx0, ry0, rx1, ry1 = regions[0].bbox
    x0, y0, x1, y1 = box
    assert rx0 <= x0 and ry0 <= y0 and rx1 >= x1 and ry1 >= y1, (regions[0].bbox, box)
    assert abs((rx0 + rx1) / 2 - (x0 + x1) / 2) <= 12 and abs((ry0 + ry1) / 2 - (y0 + y1) / 2) <= 12
    assert rx1 - rx0 <= 4 * (x1 - x0) and ry1 - ry0 <= 4 * (y1 - y0)


def test_grid_covers_the_frame_and_shifts_the_last_tiles_inward():
    origins = grid((768, 1024), (256, 256), 32)
    ys, xs = sorted(set(origins[:, 0])), sorted(set(origins[:, 1]))
    assert ys == [0, 224, 448, 512] and xs == [0, 224, 448, 672, 768]  # step 224; last ends at the edge
    assert len(origins) == 20
    cover = np.zeros((768, 1024), int)
    for y, x in origins:
        cover[y : y + 256, x : x + 256] += 1
    assert cover.min() >= 1
    assert len(grid((256, 256), (256, 256), 32)) == 1 and len(grid((300, 256), (256, 256), 0)) == 2


def test_stitch_keeps_the_max_where_tiles_overlap():
    origins = grid((8, 12), (8, 8), 4)  # x at 0 and 4: columns 4..7 shared
    maps = np.stack([np.full((8, 8), 1.0, np.float32), np.full((8, 8), 3.0, np.float32)])
    maps[0, 2, 6] = 9.0  # a peak in the shared part, seen by the first tile only
    out = stitch(maps, origins, (8, 8), (8, 12))
    assert out.shape == (8, 12) and out.dtype == np.float32
    assert (out[:, :4] == 1).all() and out[2, 6] == 9 and (out[:, 8:] == 3).all()
    assert out[0, 5] == 3  # the shared part: the larger of the two, not their mean
    # Tiles of another size than the model's: maps are resized back to the tile.
    small = stitch(np.full((2, 4, 4), 2.0, np.float32), origins, (8, 8), (8, 12))
    assert small.shape == (8, 12) and (small == 2).all()


def test_defect_lands_at_its_frame_coordinates(bundle, big_frame):
    with Detector(bundle, DetectorOptions(tile=TileSpec())) as det:
        clean = det.predict(big_frame)
        assert clean.tiles == 48 and clean.anomaly_map.shape == (768, 1024)
        assert not clean.is_anomalous and clean.regions == []
        frame, box = paint_hole(big_frame, 700, 300)
        r = det.predict(frame)
    assert r.is_anomalous and r.tiles == 48
    assert_found_at(r.regions, box)
    assert r.score == pytest.approx(float(r.anomaly_map.max()))  # the max over tiles is the map's max


@pytest.mark.parametrize("centre", [(640, 300), (640, 384)], ids=["edge", "corner"])
def test_defect_straddling_a_tile_border_is_found(bundle, big_frame, centre):
    # x = 640 is the border of tiles 4 and 5; (640, 384) is the corner four tiles share.
    frame, box = paint_hole(big_frame, *centre)
    with Detector(bundle, DetectorOptions(tile=TileSpec(128))) as det:
        r = det.predict(frame)
    assert r.is_anomalous
    assert_found_at(r.regions, box)


@pytest.mark.parametrize("spec", [TileSpec(), TileSpec(128, 32)], ids=["auto", "128-overlap-32"])
def test_a_frame_of_one_tile_scores_as_untiled(bundle, big_frame, spec):
    frame, _ = paint_hole(big_frame, 700, 300)
    one = np.ascontiguousarray(frame[236:364, 636:764])  # 128x128 around the hole
    with Detector(bundle) as whole, Detector(bundle, DetectorOptions(tile=spec)) as tiled:
        a, b = whole.predict(one), tiled.predict(one)
    assert b.tiles == 1 and a.tiles == 0
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert a.score == b.score and [x.to_dict() for x in a.regions] == [x.to_dict() for x in b.regions]


def test_tiles_of_another_size_are_resized_to_the_model_and_back(bundle, big_frame):
    frame = np.ascontiguousarray(big_frame[:200, :300])
    with Detector(bundle, DetectorOptions(tile=TileSpec(64, 16))) as det:
        r = det.predict(frame)
    assert r.tiles == len(grid((200, 300), (64, 64), 16)) == 4 * 6
    assert r.anomaly_map.shape == (200, 300) and np.isfinite(r.anomaly_map).all()


@pytest.mark.parametrize(
    "query, words",
    [
        ("tile=0", "tile must be auto or a whole number"),
        ("tile=-64", "tile must be auto"),
        ("tile=abc", "tile must be auto"),
        ("tile=nan", "tile must be auto"),
        ("tile=64.5", "tile must be auto"),
        ("tile=64&overlap=64", "overlap must be less than the tile (64)"),
        ("tile=64&overlap=-1", "overlap must be >= 0"),
        ("tile=64&overlap=inf", "overlap must be an integer"),
        ("tile=64&tile=128", "tile is given twice"),
    ],
)
def test_bad_tile_options_are_refused_naming_the_uri(tiny_data, query, words):
    uri = f"{tiny_data / 'brick' / 'test' / 'good'}?{query}"
    for parse in (open_source, source_tiling):
        with pytest.raises(OptionError) as e:
            parse(uri)
        assert uri in str(e.value) and words in str(e.value)


def test_tile_options_parse_for_every_source_kind(tiny_data):
    folder = tiny_data / "brick" / "test" / "good"
    assert source_tiling(str(folder)) is None
    assert source_tiling(f"{folder}?tile=256&overlap=32") == (256, 32)
    assert source_tiling(f"{folder}?tile=auto") == (None, 0) == source_tiling(f"{folder}?tile=AUTO&overlap=0")
    assert source_tiling(f"{folder}?overlap=16") == (None, 16)
    assert source_tiling("synth://conveyor?tile=64") == (64, 0)
    assert source_tiling("rtsp://cam/stream?tile=512&overlap=64&camera_own=1") == (512, 64)
    with open_source(f"{folder}?tile=64") as src:  # the frames are untouched: tiling is the detector's
        assert type(src).__name__ == "ImageFilesSource"


def test_bad_tile_specs_and_frames_are_refused(bundle):
    for args, words in [
        ((0,), "tile must be 1 to 65535"),
        ((True,), "tile must be a whole number"),
        ((64.0,), "tile must be a whole number"),
        ((64, 64), "overlap 64 must be less than the tile (64)"),
        ((64, -1), "overlap must be >= 0"),
    ]:
        with pytest.raises(OptionError, match=words.replace("(", r"\(").replace(")", r"\)")):
            TileSpec(*args)
    with pytest.raises(OptionError, match=r"overlap 128 must be less than the tile \(auto: the model's input, 128x128"):
        Detector(bundle, DetectorOptions(tile=TileSpec(None, 128)))
    with Detector(bundle, DetectorOptions(tile=TileSpec(256))) as det:
        with pytest.raises(DataError, match="a 300x200 frame is smaller than the 256x256 tile"):
            det.predict(np.zeros((200, 300, 3), np.uint8))
    with pytest.raises(DataError, match="tiles .at most"):
        grid((4000, 4000), (16, 16), 15)


def test_stream_run_with_tiling_writes_regions_in_frame_pixels(bundle, big_frame, tmp_path):
    folder = tmp_path / "line"
    folder.mkdir()
    frame, box = paint_hole(big_frame, 700, 300)
    cv2.imwrite(str(folder / "0_good.png"), big_frame)
    cv2.imwrite(str(folder / "1_hole.png"), frame)
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "edgesdk", "run", str(bundle), "--source", f"{folder}?tile=auto"]
    r = subprocess.run([*cmd, "--sink", f"jsonl://{out}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    good, bad = [json.loads(x) for x in out.read_text().splitlines()]
    assert good["tiles"] == bad["tiles"] == 48 and {"preprocess", "infer", "postprocess"} <= set(bad["latency_ms"])
    assert not good["is_anomalous"] and good["regions"] == []
    assert bad["is_anomalous"]
    rx0, ry0, rx1, ry1 = bad["regions"][0]["bbox"]
    assert rx0 <= box[0] and ry0 <= box[1] and rx1 >= box[2] and ry1 >= box[3]
    assert abs((rx0 + rx1) / 2 - (box[0] + box[2]) / 2) <= 12 and abs((ry0 + ry1) / 2 - (box[1] + box[3]) / 2) <= 12
    # the same through the library, with the tile size spelled out, the threshold and regions alike
    recs: list[dict] = []
    s = run_stream(bundle, f"{folder}?tile=128&overlap=0", [], on_record=recs.append)
    assert s["frames"] == 2 and [x["regions"] for x in recs] == [good["regions"], bad["regions"]]
    with pytest.raises(OptionError, match=r"\?tile=128&overlap=200: overlap must be less than the tile"):
        run_stream(bundle, f"{folder}?tile=128&overlap=200", [])


def test_calibrate_on_a_tiled_source_scores_tile_by_tile(bundle, tiny_data, tmp_path):
    # The threshold must come from the scores `run` will compare it with: with ?tile= those are the
    # max over each frame's tiles, not the frame squashed into the model's input.
    from edgesdk.stream.calibrate import calibrate

    goods = [read_image(p) for p in list_images(tiny_data / "brick" / "train" / "good")[:64]]
    folder = tmp_path / "good"
    folder.mkdir()
    frames = [np.concatenate(goods[i : i + 2], axis=1) for i in range(0, 64, 2)]  # 32 frames, 256x128
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), f)
    st = calibrate(bundle, f"{folder}?tile=auto", tmp_path / "cal", frames=32, progress=False)
    with Detector(bundle, DetectorOptions(tile=TileSpec())) as tiled, Detector(bundle) as whole:
        z_tiled = np.array([tiled.predict(f).score for f in frames])
        z_whole = np.array([whole.predict(f).score for f in frames])
    assert abs(z_tiled.mean() - z_whole.mean()) > 0.5  # the two readings differ: this test can tell them apart
    assert st["frames"] == 32 and st["mean"] == pytest.approx(z_tiled.mean(), rel=1e-5)


def test_tiles_beyond_an_engines_max_batch_are_scored_in_chunks(bundle, big_frame):
    # A TensorRT engine takes at most its profile's max batch (runner.max_batch); ONNX Runtime any.
    # The real ONNX Runtime session behind a runner that says max_batch = 5: 12 tiles in 3 calls.
    class Capped:
        max_batch = 5

        def __init__(self, inner):
            self.inner, self.batches = inner, []

        def infer(self, feeds):
            (x,) = feeds.values()
            assert len(x) <= self.max_batch
            self.batches.append(len(x))
            return self.inner.infer(feeds)

        def close(self):
            self.inner.close()

    frame = np.ascontiguousarray(paint_hole(big_frame, 300, 200)[0][:384, :512])  # 4x3 tiles
    with (
        Detector(bundle, DetectorOptions(tile=TileSpec())) as one,
        Detector(bundle, DetectorOptions(tile=TileSpec())) as det,
    ):
        det.runner = capped = Capped(det.runner)
        a, b = one.predict(frame), det.predict(frame)
    assert capped.batches == [5, 5, 2] and b.tiles == 12
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5)
    assert a.score == pytest.approx(b.score, rel=1e-6) and [r.bbox for r in a.regions] == [r.bbox for r in b.regions]


def test_stitch_kinds_takes_each_pixels_kind_from_the_tile_that_flagged_it():
    origins = grid((8, 12), (8, 8), 4)  # x at 0 and 4: columns 4..7 shared
    maps = np.stack([np.full((8, 8), 1.0, np.float32), np.full((8, 8), 3.0, np.float32)])
    maps[0, 2, 6] = 9.0  # in the shared part the second tile is higher, except at this pixel
    kinds = np.stack([np.full((8, 8), 1, np.int64), np.full((8, 8), 2, np.int64)])
    amap, kmap = stitch_kinds(maps, kinds, origins, (8, 8), (8, 12))
    np.testing.assert_array_equal(amap, stitch(maps, origins, (8, 8), (8, 12)))
    assert kmap.dtype == np.int64 and (kmap[:, :4] == 1).all() and (kmap[:, 8:] == 2).all()
    assert kmap[2, 6] == 1 and kmap[0, 5] == 2  # the winner of the overlap, pixel by pixel
    # Tiles of another size than the model's: kinds go back to the tile by nearest neighbour, unblended.
    small = np.zeros((2, 4, 4), np.int64)
    small[0, :, 2:] = 3
    _, k = stitch_kinds(
        np.stack([np.full((4, 4), 5.0, np.float32), np.zeros((4, 4), np.float32)]), small, origins, (8, 8), (8, 12)
    )
    assert set(np.unique(k)) == {0, 3} and (k[:, :4] == 0).all() and (k[:, 4:8] == 3).all() and (k[:, 8:] == 0).all()


def test_tiled_segmenter_regions_name_their_kind_in_frame_pixels(seg, tiny_data, tmp_path):
    """A real segmenter bundle (128 px) on a 256x256 frame of 2x2 good parts, a scratch painted in the
    bottom-left tile: the tiled record's region names a kind of the bundle, the one that tile gets
    scored alone, at that tile's box moved to frame pixels. (The test-size segmenter names most defects
    "scratch", so the painted kind is a scratch: this checks the kind map's stitching, not the model.)"""
    goods = [read_image(p) for p in list_images(tiny_data / "brick" / "train" / "good")[:4]]
    clean = np.concatenate([np.concatenate(goods[:2], axis=1), np.concatenate(goods[2:], axis=1)], axis=0)
    frame = clean.copy()
    frame[128:, :128], mask = paint_defect(frame[128:, :128], "scratch", np.random.default_rng(1), (64, 64))
    with Detector(seg[1], DetectorOptions(tile=TileSpec())) as tiled, Detector(seg[1]) as whole:
        r = tiled.predict(frame)
        alone = whole.predict(np.ascontiguousarray(frame[128:, :128]))
        assert not tiled.predict(clean).regions
    assert r.tiles == 4 and r.kind_map is not None and r.kind_map.shape == (256, 256)
    assert r.regions and alone.regions and r.regions[0].kind == alone.regions[0].kind == "scratch"
    x0, y0, x1, y1 = alone.regions[0].bbox
    assert r.regions[0].bbox == (x0, y0 + 128, x1, y1 + 128)
    mx, my, mw, mh = cv2.boundingRect(mask)  # the painted scratch, in frame pixels
    rx0, ry0, rx1, ry1 = r.regions[0].bbox
    assert rx0 < mx + mw and mx < rx1 and ry0 < my + 128 + mh and my + 128 < ry1
    # The record a stream writes carries the same kind and box.
    folder = tmp_path / "line"
    folder.mkdir()
    cv2.imwrite(str(folder / "scratch.png"), frame)
    recs: list[dict] = []
    run_stream(seg[1], f"{folder}?tile=auto", [], on_record=recs.append)
    assert [(x["kind"], x["bbox"]) for x in recs[0]["regions"][:1]] == [("scratch", list(r.regions[0].bbox))]
