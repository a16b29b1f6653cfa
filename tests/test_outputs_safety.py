"""Nothing a user types destroys their files: `--out` replaces only what is ours (a bundle, a run folder,
a synth category), empty or missing folders; never anything holding or inside an input, even with
--force; names read from a manifest or run.json stay inside their folder; killed runs' staging is swept."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgesdk.bundle import Bundle, BundleError
from edgesdk.cli import main
from edgesdk.data.mvtec import list_images
from edgesdk.spec import SpecError, sha256_file


def user_folder(path, n=3):
    """A folder of someone's own files."""
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"notes{i}.txt").write_text(f"mine {i}\n")
    return path


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def my_bundle(bundle, tmp_path):
    """A private copy of the session bundle (the tests may try to delete around it)."""
    return Path(shutil.copytree(bundle, tmp_path / "bundles" / "brick"))


# -- 1. --out replaces only what is recognisably ours ------------------------------------------------
def test_calibrate_refuses_an_out_folder_of_user_files(my_bundle, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    code, err = cli(capsys, "calibrate", my_bundle, "--source", "synth://conveyor", "--frames", 30, "--out", mine)
    assert code == 2 and f"{mine}: not replaced" in err and "not an edgesdk bundle" in err and "--force" in err
    assert snapshot(mine) == before


def test_calibrate_never_replaces_the_folder_holding_its_input(my_bundle, tmp_path, capsys):
    bundles = my_bundle.parent
    sibling = shutil.copytree(my_bundle, bundles / "other")
    for force in ([], ["--force"]):
        code, err = cli(
            capsys, "calibrate", my_bundle, "--source", "synth://conveyor", "--frames", 30, "--out", bundles, *force
        )
        assert code == 2 and f"{bundles}: not replaced: it holds the input {my_bundle}" in err
        Bundle.open(my_bundle), Bundle.open(sibling)
    code, err = cli(
        capsys,
        "calibrate",
        my_bundle,
        "--source",
        "synth://conveyor",
        "--frames",
        30,
        "--out",
        my_bundle / "inner",
        "--force",
    )
    assert code == 2 and "lies inside the input" in err and not (my_bundle / "inner").exists()


def test_calibrate_never_replaces_its_source_folder(my_bundle, tiny_data, tmp_path, capsys):
    frames = shutil.copytree(tiny_data / "brick/train/good", tmp_path / "line")
    code, err = cli(capsys, "calibrate", my_bundle, "--source", frames, "--frames", 30, "--out", frames, "--force")
    assert code == 2 and f"{frames}: not replaced: it is the input" in err
    assert len(list_images(frames)) == len(list_images(tiny_data / "brick/train/good"))


def test_calibrate_replaces_a_bundle_and_with_force_anything_else(my_bundle, tiny_data, tmp_path):
    from edgesdk.stream.calibrate import calibrate

    src = str(tiny_data / "brick/train/good")
    out = tmp_path / "cal"
    calibrate(my_bundle, src, out, frames=30, progress=False)
    calibrate(my_bundle, src, out, frames=30, progress=False)  # ours: replaced without --force
    (tmp_path / "empty").mkdir()
    calibrate(my_bundle, src, tmp_path / "empty", frames=30, progress=False)
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="not replaced"):
        calibrate(my_bundle, src, mine, frames=30, progress=False)
    calibrate(my_bundle, src, mine, frames=30, progress=False, force=True)
    assert not (mine / "notes0.txt").exists() and Bundle.open(mine)


def test_train_refuses_to_replace_its_data_folder(tiny_data, tmp_path, capsys):
    data = tmp_path / "images"
    data.mkdir()
    for p in list_images(tiny_data / "brick/train/good")[:12]:
        shutil.copy(p, data / p.name)
    before = snapshot(data)
    for out in (data, tmp_path):  # the data folder itself, the folder above it
        code, err = cli(capsys, "train", "--data", data, "--out", out, "--size", 64, "--force")
        assert code == 2 and f"{out}: not replaced: it {'is' if out == data else 'holds'} the input" in err
    code, err = cli(capsys, "train", "--data", data, "--out", data / "run", "--size", 64)
    assert code == 2 and "lies inside the input" in err
    mine = user_folder(tmp_path / "mine")
    code, err = cli(capsys, "train", "--data", data, "--out", mine, "--size", 64)
    assert code == 2 and f"{mine}: not replaced" in err and "not a run folder" in err
    assert snapshot(data) == before and (mine / "notes0.txt").is_file()


def test_export_refuses_user_folders_its_run_and_its_training_data(run_dir, tmp_path, capsys):
    from edgesdk.compile.onnx import export_onnx

    run = shutil.copytree(run_dir, tmp_path / "runs" / "brick")
    data = user_folder(tmp_path / "data")  # stands in for the run's training images
    meta = json.loads((run / "run.json").read_text())
    meta["data"]["path"] = str(data)
    (run / "run.json").write_text(json.dumps(meta))
    mine = user_folder(tmp_path / "mine")
    code, err = cli(capsys, "export", run, "--out", mine)
    assert code == 2 and f"{mine}: not replaced" in err and "not an edgesdk bundle" in err
    for out in (run, run.parent, data):
        code, err = cli(capsys, "export", run, "--out", out, "--force")
        assert code == 2 and f"{out}: not replaced" in err and "the input" in err
    with pytest.raises(ValueError, match="lies inside the input"):
        export_onnx(run, run / "bundle", force=True)
    assert (mine / "notes0.txt").is_file() and (data / "notes0.txt").is_file() and (run / "model.pt").is_file()


def test_a_symlinked_out_is_judged_by_what_it_points_to(my_bundle, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(my_bundle.parent, target_is_directory=True)
    code, err = cli(
        capsys, "calibrate", my_bundle, "--source", "synth://conveyor", "--frames", 30, "--out", link, "--force"
    )
    assert code == 2 and "holds the input" in err
    Bundle.open(my_bundle)


def test_synth_replaces_only_its_own_category_folders(tmp_path):
    from edgesdk.data.synth import SynthConfig, synth_dataset

    cfg = SynthConfig(size=32, n_train=2, n_test_good=1, n_test_per_defect=1)
    synth_dataset(tmp_path / "d", ["grass"], cfg, video=False)
    synth_dataset(tmp_path / "d", ["grass"], cfg, video=False)  # its own output: replaced
    assert (tmp_path / "d/grass/train/good/000.png").is_file()
    user_folder(tmp_path / "d/brick")
    with pytest.raises(ValueError, match=r"brick: not replaced: .*not a category folder made by"):
        synth_dataset(tmp_path / "d", ["grass", "brick"], cfg, video=False)
    assert (tmp_path / "d/brick/notes0.txt").is_file()


def test_synth_replaces_only_its_own_conveyor_video(tmp_path):
    from edgesdk.data.synth import SynthConfig, synth_dataset
    from edgesdk.fsutil import OutputError

    cfg, d = SynthConfig(size=64, n_train=2, n_test_good=1, n_test_per_defect=1), tmp_path / "d"
    video, truth = d / "conveyor_grass.mkv", d / "conveyor_grass.json"
    user_folder(d)
    for mine, why in (
        ({video: b"my recording"}, "it has no conveyor_grass.json beside it"),
        ({truth: b'{"notes": 1}\n'}, "conveyor_grass.json is not the ground truth `edgesdk data synth` writes"),
        ({video: b"my recording", truth: b"not json"}, "conveyor_grass.json is not readable JSON"),
    ):
        for p, data in mine.items():
            p.write_bytes(data)
        with pytest.raises(OutputError, match=rf"{video}: not replaced: {re.escape(why)}.*--force"):
            synth_dataset(d, ["grass"], cfg)
        assert {p: p.read_bytes() for p in mine} == mine and not (d / "grass").exists()
        for p in mine:
            p.unlink()
    video.write_bytes(b"my recording")
    synth_dataset(d, ["grass"], cfg, force=True)
    synth_dataset(d, ["grass"], cfg)  # its own output: replaced
    assert json.loads(truth.read_text())["video"] == video.name and video.stat().st_size > 1000
    names = {video.name, truth.name, "grass", "notes0.txt", "notes1.txt", "notes2.txt"}
    assert {p.name for p in d.iterdir()} == names  # no temporary file left


def test_a_synth_stopped_between_its_truth_and_its_video_is_still_its_own(tmp_path, monkeypatch):
    """The truth JSON, which marks the pair as synth's, is written before the video gets its name: a
    Ctrl-C between the two leaves a pair the next run replaces without --force (the demo has none)."""
    from pathlib import Path as P

    from edgesdk.data.synth import SynthConfig, synth_dataset

    cfg, d = SynthConfig(size=64, n_train=2, n_test_good=1, n_test_per_defect=1), tmp_path / "d"
    synth_dataset(d, ["grass"], cfg)
    real = P.replace

    def interrupted(self, target):
        if P(target).suffix == ".mkv":
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(P, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth_dataset(d, ["grass"], cfg)
    monkeypatch.setattr(P, "replace", real)
    synth_dataset(d, ["grass"], cfg)
    assert {p.name for p in d.iterdir()} == {"conveyor_grass.mkv", "conveyor_grass.json", "grass"}


def test_demo_writes_only_into_a_new_empty_or_demo_folder(tmp_path, capsys):
    from edgesdk.demo import claim_out

    mine = user_folder(tmp_path / "mine")
    (mine / "stream.jsonl").write_text('{"mine": 1}\n')
    (mine / "summary.json").write_text('{"quarter": 3}\n')
    before = snapshot(mine)
    code, err = cli(capsys, "demo", "--out", mine, "--quick", "--categories", "brick")
    assert code == 2 and f"{mine}: not used: its summary.json is not one `edgesdk demo` wrote" in err
    (mine / "summary.json").unlink()
    code, err = cli(capsys, "demo", "--out", mine, "--quick", "--categories", "brick")
    assert code == 2 and "it has no edgesdk-demo.json, so it is not a folder made by `edgesdk demo`" in err
    (tmp_path / "f").write_text("a file\n")
    code, err = cli(capsys, "demo", "--out", tmp_path / "f", "--quick")
    assert code == 2 and "f: is a file, not a demo folder" in err
    assert snapshot(mine) == {k: v for k, v in before.items() if k != Path("summary.json")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "mine"]
    # A new, empty or demo folder is taken and marked, so a rerun (even after Ctrl-C) finds it its own.
    (tmp_path / "empty").mkdir()
    (tmp_path / "done").mkdir()
    # an older demo's summary has no "int8": still a demo's
    (tmp_path / "done/summary.json").write_text(json.dumps({"config": {}, "categories": {}, "stream": {}}))
    for out in ("new", "empty", "done"):
        claim_out(tmp_path / out)
        (tmp_path / out / "data").mkdir(exist_ok=True)
        (tmp_path / out / "summary.json").unlink(missing_ok=True)
        claim_out(tmp_path / out)


# -- 7. staging left by killed runs ----------------------------------------------------------------
def test_killed_runs_staging_is_swept_but_a_live_runs_is_not(my_bundle, tiny_data, tmp_path):
    from edgesdk.stream.calibrate import calibrate

    out, src = tmp_path / "cal", str(tiny_data / "brick/train/good")
    calibrate(my_bundle, src, out, frames=30, progress=False)
    stale = [tmp_path / f".cal.staging.{dead_pid()}.k1ll3d", tmp_path / f".cal.old.{dead_pid()}.k1ll3d"]
    live = [tmp_path / f".cal.staging.{os.getpid()}.l1v3", tmp_path / ".cal.staging.n0p1d"]  # live, no PID
    for d in stale + live:
        d.mkdir()
        (d / "model.onnx").write_bytes(b"half written")
    calibrate(my_bundle, src, out, frames=30, progress=False)
    assert not any(d.exists() for d in stale)
    assert all((d / "model.onnx").is_file() for d in live)
    Bundle.open(out)


def test_killed_export_staging_is_swept(run_dir, tmp_path):
    from edgesdk.compile.onnx import export_onnx

    stale = tmp_path / f".b.staging.{dead_pid()}.k1ll3d"
    stale.mkdir()
    export_onnx(run_dir, tmp_path / "b")
    assert not stale.exists() and Bundle.open(tmp_path / "b")


def test_a_folder_replaced_but_not_yet_succeeded_is_put_back(tmp_path):
    from edgesdk.fsutil import atomic_dir

    old = tmp_path / f".run.old.{dead_pid()}.k1ll3d"  # killed between its two renames
    user_folder(old)
    (old / "run.json").write_text(json.dumps({"model": "padim", "config": {}, "threshold": {}, "normalization": {}}))
    with pytest.raises(RuntimeError, match="fit failed"):
        with atomic_dir(tmp_path / "run", kind="run"):
            raise RuntimeError("fit failed")
    assert (tmp_path / "run/notes0.txt").is_file() and not old.exists()


# -- 2. names from a manifest or run.json stay inside their folder ---------------------------------
def edit_manifest(folder, fn):
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "name",
    [
        "../evil.sh",
        "../../x/evil.sh",
        "/tmp/evil.sh",
        "a/../../evil.sh",
        "..\\evil.sh",
        "./model.onnx",
        "a//b",
        "",
        "a\0b",
    ],
)
def test_manifest_file_names_that_leave_the_bundle_are_refused(my_bundle, name):
    def add(m):
        m["files"][name] = m["files"]["parity.json"]

    edit_manifest(my_bundle, add)
    with pytest.raises(SpecError, match=r"manifest\.json: field files\[.*the file name"):
        Bundle.open(my_bundle)


def test_calibrate_writes_nothing_outside_out_for_an_escaping_manifest(my_bundle, tiny_data, tmp_path):
    from edgesdk.stream.calibrate import calibrate

    evil = my_bundle.parent.parent / "evil.sh"  # the file the manifest vouches for, outside
    evil.write_text("#!/bin/sh\necho owned\n")

    def add(m):
        m["files"]["../../evil.sh"] = {"sha256": sha256_file(evil), "bytes": evil.stat().st_size}

    edit_manifest(my_bundle, add)
    out = tmp_path / "deep" / "er" / "cal"
    with pytest.raises(SpecError, match=r"evil\.sh"):
        calibrate(my_bundle, str(tiny_data / "brick/train/good"), out, frames=30, progress=False)
    assert not (out.parent.parent / "evil.sh").exists() and not out.exists()


@pytest.mark.parametrize("outside", [False, True])
def test_bundle_files_that_are_symlinks_are_refused(my_bundle, tmp_path, outside):
    real = tmp_path / "elsewhere.json"
    shutil.move(my_bundle / "parity.json", real)
    if outside:
        (my_bundle / "parity.json").symlink_to(real)
    else:  # a linked folder on the way out
        (tmp_path / "dir").mkdir()
        shutil.move(real, tmp_path / "dir" / "parity.json")
        (my_bundle / "sub").symlink_to(tmp_path / "dir", target_is_directory=True)
        edit_manifest(my_bundle, lambda m: m["files"].__setitem__("sub/parity.json", m["files"].pop("parity.json")))
    with pytest.raises(BundleError, match="symbolic link or outside"):
        Bundle.open(my_bundle)


def test_run_json_holdout_names_that_leave_the_data_folder_are_refused(run_dir, tmp_path):
    from edgesdk.train import load_run

    run = shutil.copytree(run_dir, tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["data"]["holdout_files"] = ["000.png", "../../../secret.png"]
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(SpecError, match=r"run\.json: field data\.holdout_files\[1\]"):
        load_run(run)
    meta["data"]["holdout_files"] = ["000.png"]
    meta["threshold"]["value"] = float("nan")
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"run\.json: threshold\.value is nan"):
        load_run(run)


# -- 3. manifest fields typed and in range --------------------------------------------------------
BAD_FIELDS = [
    (lambda m: m["threshold"].__setitem__("value", float("nan")), r"threshold\.value is nan"),
    (lambda m: m["threshold"].__setitem__("value", float("inf")), r"threshold\.value is inf"),
    (lambda m: m["threshold"].__setitem__("value", "3.0"), r"field threshold\.value must be a number"),
    (lambda m: m["input"].__setitem__("height", -128), r"field input\.height must be a positive integer"),
    (lambda m: m["input"].__setitem__("width", "128"), r"field input\.width must be an integer"),
    (lambda m: m["input"].__setitem__("width", 12.5), r"field input\.width must be an integer"),
    (
        lambda m: m["files"]["model.onnx"].__setitem__("sha256", "abc"),
        r"field files\['model\.onnx'\]\.sha256 must be 64",
    ),
    (
        lambda m: m["files"]["model.onnx"].__setitem__("bytes", -1),
        r"field files\['model\.onnx'\]\.bytes must be a non-neg",
    ),
    (
        lambda m: m["files"]["model.onnx"].__setitem__("bytes", "12"),
        r"field files\['model\.onnx'\]\.bytes must be an int",
    ),
    (lambda m: m["files"].__setitem__("model.onnx", "abc"), r"field files\['model\.onnx'\] must be an object"),
    (lambda m: m.__setitem__("precision", "int4"), r"field precision must be one of fp32, fp16, int8"),
    (lambda m: m.__setitem__("outputs", {"score": 1}), r"field outputs must be a list"),
    (lambda m: m.__setitem__("outputs", ["score"]), r"field outputs\[0\] must be an object"),
    (lambda m: m.__setitem__("files", []), r"field files must be an object"),
    (lambda m: m.__setitem__("threshold", 3.0), r"field threshold must be an object"),
]


@pytest.mark.parametrize("edit,msg", BAD_FIELDS, ids=[m.split(" ")[0].replace("\\", "") for _, m in BAD_FIELDS])
def test_manifest_fields_are_type_and_range_checked(my_bundle, edit, msg):
    edit_manifest(my_bundle, edit)
    with pytest.raises(SpecError, match=r"manifest\.json: " + msg):
        Bundle.open(my_bundle)


# -- 6. train warns on too few or identical images ------------------------------------------------
def test_train_warns_on_few_identical_flat_images(tmp_path, caplog):
    from edgesdk.train import train

    data = tmp_path / "flat"
    data.mkdir()
    img = np.full((64, 64, 3), 128, np.uint8)
    for i in range(6):
        cv2.imwrite(str(data / f"{i:03d}.png"), img)
    run = train(data, tmp_path / "run", config={"input_size": [64, 64], "feature_dim": 8}, quiet=True)
    warnings = json.loads((run / "run.json").read_text())["warnings"]
    assert any("only 6 good images" in w for w in warnings)
    assert any("byte-identical" in w for w in warnings)
    assert any("one flat colour" in w for w in warnings)
    assert {r.getMessage() for r in caplog.records if r.levelname == "WARNING"} >= set(warnings)


def test_train_warns_when_images_decode_to_the_same_pixels(tiny_data, tmp_path, caplog):
    from edgesdk.train import train

    data = tmp_path / "same"
    data.mkdir()
    img = cv2.imread(str(list_images(tiny_data / "brick/train/good")[0]))
    for i in range(12):  # different files (PNG compression level), the same picture
        cv2.imwrite(str(data / f"{i:03d}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, i % 10])
    run = train(data, tmp_path / "run", config={"input_size": [64, 64], "feature_dim": 8}, quiet=True)
    warnings = json.loads((run / "run.json").read_text())["warnings"]
    assert len(warnings) == 1 and "have the same pixels" in warnings[0], warnings
