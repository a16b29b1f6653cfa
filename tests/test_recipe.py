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
    assert {r.model for r in recipes} == {"padim", "patchcore", "stfpm"}
    assert load_recipe("patchcore-lite0").config["coreset_ratio"] == 0.01


@pytest.mark.parametrize("text, message", [
    ('model = "patchcore"\n[config]\ncoreset_ratoi = 0.1\n', r"mine\.toml \[config\]: unknown key 'coreset_ratoi'"),
    ('model = "patchcore"\n[config]\ncoreset_ratio = "0.1"\n', r"\[config\]: coreset_ratio must be float, got str"),
    ('model = "padim"\n[train]\nk_sigma = true\n', r"\[train\]: k_sigma must be float, got bool"),
    ('model = "yolo"\n', r"mine\.toml: model 'yolo' is not in the zoo"),
    ('modle = "padim"\n', r"mine\.toml: unknown key 'modle'"),
    ('model = "padim"\n[export]\nprecision = 16\n', r"\[export\]: precision must be str"),
])
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
    assert meta["model"] == "patchcore" and meta["config"]["coreset_ratio"] == 0.02     # flag wins
    assert meta["threshold"]["value"] == 4.0                                           # from the recipe
    assert meta["recipe"]["recipe"] == str(f) and meta["recipe"]["config"]["input_size"] == [64, 64]
    r = cli("train", "--recipe", tmp_path / "nope.toml", "--data", tiny_data / "brick", "--out", tmp_path / "r2")
    assert r.returncode == 2 and "nope.toml: file not found" in r.stderr
