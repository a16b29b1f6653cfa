"""Recipes in export/: shipped, strict, applied by train/export with flags overriding."""

import json
import subprocess
import sys

import pytest

from edgesdk.recipe import load_recipe
from edgesdk.resources import data_dir
from edgesdk.spec import SpecError


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)


def test_one_shipped_recipe_per_zoo_model_and_all_load():
    names = sorted(p.stem for p in data_dir("export").glob("*.toml"))
    recipes = [load_recipe(n) for n in names]
    assert {r.model for r in recipes} == {"padim", "patchcore", "stfpm", "segmenter"}
    assert load_recipe("patchcore-lite0").config["coreset_ratio"] == 0.01


@pytest.mark.parametrize(
    "text, message",
    [
        ('model = "patchcore"\n[config]\ncoreset_ratoi = 0.1\n', r"mine\.toml \[config\]: unknown key 'coreset_ratoi'"),
        ('model = "patchcore"\n[config]\ncoreset_ratio = "0.1"\n', r"\[config\]: coreset_ratio must be float, got str"),
        ('model = "padim"\n[train]\nk_sigma = true\n', r"\[train\]: k_sigma must be float, got bool"),
        ('model = "yolo"\n', r"mine\.toml: model 'yolo' is not in the zoo"),
        ('modle = "padim"\n', r"mine\.toml: unknown key 'modle'"),
        ('model = "padim"\n[export]\nprecision = 16\n', r"\[export\]: precision must be str"),
    ],
)
def test_bad_recipes_name_the_key_and_file(tmp_path, text, message):
    f = tmp_path / "mine.toml"
    f.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_recipe(f)


def test_train_from_a_recipe_records_it_and_flags_override(tiny_data, tmp_path):
    f = tmp_path / "pc.toml"
    f.write_text('model = "patchcore"\n[config]\ninput_size = [64, 64]\ncoreset_ratio = 0.05\n[train]\nk_sigma = 4.0\n')
    r = cli("train", "--recipe", f, "--data", tiny_data / "brick", "--out", tmp_path / "run", "--coreset-ratio", "0.02")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "run/run.json").read_text())
    assert meta["model"] == "patchcore" and meta["config"]["coreset_ratio"] == 0.02  # flag wins
    assert meta["threshold"]["value"] == 4.0  # from the recipe
    assert meta["recipe"]["recipe"] == str(f) and meta["recipe"]["config"]["input_size"] == [64, 64]
    r = cli("train", "--recipe", tmp_path / "nope.toml", "--data", tiny_data / "brick", "--out", tmp_path / "r2")
    assert r.returncode == 2 and "nope.toml: file not found" in r.stderr


# A flag is held to the rules a recipe's value is: before this, `--holdout 2` fitted on 2 images and
# held out the rest, and `--k-sigma inf` wrote a run whose threshold flags nothing.
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--holdout", "2"], "--holdout 2.0: holdout must be in (0, 1)"),
        (["--k-sigma", "inf"], "--k-sigma must be a finite number, got inf"),
        (["--k-sigma", "-1"], "--k-sigma -1.0: k_sigma must be >= 0"),
        (["--model", "patchcore", "--coreset-ratio", "nan"], "--coreset-ratio must be a finite number, got nan"),
        (["--model", "stfpm", "--seconds", "inf"], "--seconds must be a finite number, got inf"),
        (["--size", "100"], "--size 100: input_size must be [height, width], positive multiples of 32"),
        (["--model", "padim", "--feature-dim", "0"], "--feature-dim 0: feature_dim must be > 0"),
        (["--camera-augment", "jpeg:0"], '--camera-augment jpeg:0: camera must be camera pipelines "mp4v"'),
    ],
)
def test_train_flags_are_checked_like_recipe_values(tiny_data, tmp_path, capsys, flags, message):
    from edgesdk.cli import main

    rc = main(["train", "--data", str(tiny_data / "brick"), "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "run").exists()  # refused before any fitting


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n-calib", "3"], "--n-calib 3: n_calib must be >= 8"),
        (["--max-drop", "nan"], "--max-drop must be a finite number, got nan"),
        (["--max-drop", "1.5"], "--max-drop 1.5: max_drop must be in [0, 1)"),
    ],
)
def test_export_flags_are_checked_like_recipe_values(run_dir, tmp_path, capsys, flags, message):
    from edgesdk.cli import main

    rc = main(["export", str(run_dir), "--out", str(tmp_path / "b"), "--precision", "int8", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "b").exists()


def test_resolve_train_puts_flags_over_the_recipe():
    from edgesdk.recipe import load_recipe, resolve_train

    r = load_recipe("patchcore-lite0")
    req = resolve_train(r, {"coreset_ratio": 0.05, "k_sigma": 4.0, "seed": None, "camera": ["mp4v"]})
    assert req.model == "patchcore" and req.config == {**r.config, "coreset_ratio": 0.05}
    assert req.opts.k_sigma == 4.0 and req.opts.camera == ("mp4v",) and req.opts.seed == 0
    assert req.recipe["recipe"] == r.path and req.recipe["export"] == r.export
    other = resolve_train(r, {"model": "padim"})  # another model: the recipe's config does not fit it
    assert other.model == "padim" and other.config == {}
    assert resolve_train(None, {}).model == "padim"


def test_resolve_export_reads_the_runs_recipe_and_checks_it(tmp_path):
    from edgesdk.recipe import resolve_export

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"recipe": {"export": {"precision": "int8", "n_calib": 16}}}))
    opts = resolve_export(run, None, {"n_calib": 32, "target": None})
    assert (opts.precision, opts.n_calib, opts.target) == ("int8", 32, "cpu")
    (run / "run.json").write_text(json.dumps({"recipe": {"export": {"n_calib": "many"}}}))
    with pytest.raises(SpecError, match=r"run\.json \[recipe\.export\]: .*n_calib must be int"):
        resolve_export(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"run\.json: not valid JSON"):
        resolve_export(run)


def _recipe(folder, with_anomaly: str, model: str = "segmenter"):
    folder.mkdir(exist_ok=True)
    f = folder / "hybrid.toml"
    f.write_text(f'model = "{model}"\nwith_anomaly = {json.dumps(with_anomaly)}\n[train]\nseed = 5\n')
    return f


def test_with_anomaly_in_a_recipe_is_resolved_inside_its_folder_and_a_flag_overrides_it(tmp_path, monkeypatch):
    from edgesdk.recipe import resolve_train

    proj = tmp_path / "proj"
    (proj / "runs" / "pc").mkdir(parents=True)
    f = _recipe(proj, "runs/pc")
    monkeypatch.chdir(tmp_path)  # the recipe's folder, not the working folder, anchors the path
    r = load_recipe(f)
    assert r.with_anomaly == str((proj / "runs" / "pc").resolve())
    req = resolve_train(r, {})
    assert req.model == "segmenter" and req.with_anomaly == r.with_anomaly == req.recipe["with_anomaly"]
    assert req.kwargs()["with_anomaly"] == r.with_anomaly
    assert resolve_train(r, {"with_anomaly": "elsewhere"}).with_anomaly == "elsewhere"
    assert resolve_train(r, {"model": "patchcore"}).with_anomaly is None  # the recipe's key is for its model


@pytest.mark.parametrize(
    "value, message",
    [
        ("/abs/pc", r"with_anomaly '/abs/pc': must be a plain path relative to the recipe's folder"),
        ("../pc", r"with_anomaly '../pc': must be a plain path relative"),
        ("runs\\pc", r"with_anomaly .*: must be a plain path relative"),
        ("a\0b", r"with_anomaly .*: must be a plain path relative"),
        ("missing", r"with_anomaly 'missing': no such folder in .*proj"),
        ("out", r"with_anomaly 'out': leads to .*outside.*, outside the recipe's folder"),
        ("x" * 5000, r"with_anomaly 'x+': File name too long"),
    ],
)
def test_a_bad_with_anomaly_in_a_recipe_names_the_file_and_the_key(tmp_path, value, message):
    (tmp_path / "outside").mkdir()
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "out").symlink_to(tmp_path / "outside")
    f = _recipe(tmp_path / "proj", value)
    with pytest.raises(SpecError, match=rf"hybrid\.toml: {message}"):
        load_recipe(f)


def test_with_anomaly_in_a_recipe_is_for_the_segmenter_and_a_string(tmp_path):
    (tmp_path / "pc").mkdir()
    f = _recipe(tmp_path, "pc", model="padim")
    with pytest.raises(SpecError, match=r"hybrid\.toml: with_anomaly adds a PatchCore head to model segmenter"):
        load_recipe(f)
    f.write_text('model = "segmenter"\nwith_anomaly = 3\n')
    with pytest.raises(SpecError, match=r"hybrid\.toml: with_anomaly must be str, got int"):
        load_recipe(f)
    r = cli("train", "--recipe", f, "--data", tmp_path, "--out", tmp_path / "run")
    assert r.returncode == 2 and "edgesdk train: error:" in r.stderr and "with_anomaly must be str" in r.stderr
