"""Nothing in an engine sidecar, a device profile, a recipe or a build flag picks code to import,
reaches a file outside its folder, or slips an inf/nan or out-of-range value past the loaders."""

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from edgesdk.backends.tensorrt import TensorRTRunner
from edgesdk.cli import main
from edgesdk.compile.trt import check_onnx
from edgesdk.devices import load_profile
from edgesdk.engines import (
    EngineError,
    TensorRTUnavailable,
    find_reusable,
    import_tensorrt,
    load_plan_sidecar,
    read_plan,
    staged_plan,
)
from edgesdk.recipe import load_recipe
from edgesdk.spec import BuildConfig, EngineSidecar, SpecError, from_mapping


def write_plan(folder: Path, name: str = "e.plan", **over) -> Path:
    """A plan file (any bytes: nothing here deserializes it) and a sidecar that matches it,
    with the fields in OVER replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / name
    plan.write_bytes(b"not really a plan" * 8)
    data = plan.read_bytes()
    side = {
        "plan": plan.name,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "plan_bytes": len(data),
        "key": "0123456789",
        "onnx_sha256": "a" * 64,
        "model": "padim",
        "precision": "fp32",
        "tensorrt_module": "tensorrt_rtx",
        "tensorrt_version": "1.2.0.54",
        "device": "rtx",
        "gpu": {},
        "strongly_typed": True,
        "flags": [],
        "dla_core": -1,
        "workspace_mb": 1024,
        "build_seconds": 1.5,
        "profile": {"input": "image", "min": [1, 128, 128, 3], "opt": [1, 128, 128, 3], "max": [4, 128, 128, 3]},
        "schema_version": 1,
    }
    side.update(over)
    EngineSidecar.path_for(plan).write_text(json.dumps(side))  # json writes inf/nan as Infinity/NaN
    return plan


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """evil_mod.py in the working directory (on sys.path); importing it writes a marker file."""
    marker = tmp_path / "evil_mod_ran"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nBuilder = object\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_mod", raising=False)
    yield marker
    sys.modules.pop("evil_mod", None)


def test_a_valid_sidecar_loads(tmp_path):
    side = load_plan_sidecar(write_plan(tmp_path))
    assert side.tensorrt_module == "tensorrt_rtx" and side.profile["max"][0] == 4


def test_a_sidecar_cannot_choose_the_module_the_runner_imports(tmp_path, evil):
    plan = write_plan(tmp_path / "engines", tensorrt_module="evil_mod")
    with pytest.raises(
        EngineError,
        match=r"e\.json: tensorrt_module must be one of tensorrt, tensorrt_rtx, "
        r"got 'evil_mod'",
    ):
        TensorRTRunner(plan).load()
    with pytest.raises(EngineError, match="tensorrt_module"):
        load_plan_sidecar(plan)
    assert not evil.exists() and "evil_mod" not in sys.modules


def test_the_builder_imports_only_tensorrt_modules(tmp_path, evil):
    with pytest.raises(TensorRTUnavailable, match="tensorrt_module 'evil_mod'.*refusing to import it"):
        import_tensorrt("evil_mod", "mine")
    with pytest.raises(TensorRTUnavailable, match="'evil_mod'"):
        check_onnx(tmp_path / "model.onnx", module="evil_mod")
    with pytest.raises(SpecError, match="tensorrt_module must be tensorrt, tensorrt_rtx or empty"):
        dataclasses.replace(load_profile("rtx"), tensorrt_module="evil_mod")
    prof = tmp_path / "mine.toml"
    prof.write_text('name = "mine"\ndescription = "x"\nkind = "rtx"\ntensorrt_module = "evil_mod"\n')
    with pytest.raises(SpecError, match=r"mine\.toml: tensorrt_module"):
        load_profile(str(prof))
    assert not evil.exists() and "evil_mod" not in sys.modules


def test_build_engine_refuses_a_profile_that_names_another_module(bundle, tmp_path, evil):
    from edgesdk.compile.trt import build_engine

    prof = load_profile("rtx")
    object.__setattr__(prof, "tensorrt_module", "evil_mod")  # past the profile's own checks
    with pytest.raises(TensorRTUnavailable, match="'evil_mod'"):
        build_engine(bundle, prof, out=tmp_path / "engines")
    assert not evil.exists() and "evil_mod" not in sys.modules


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("plan", "../e.plan", "plan must be a plain file name"),
        ("plan", "/tmp/e.plan", "plan must be a plain file name"),
        ("plan", "e.bin", "plan must be a plain file name ending in .plan"),
        ("plan", "other.plan", "plan 'other.plan' is not the plan beside this sidecar"),
        ("plan_sha256", "abc", "plan_sha256 must be 64 lowercase hex digits"),
        ("onnx_sha256", "g" * 64, "onnx_sha256 must be 64 lowercase hex digits"),
        ("plan_bytes", -1, "plan_bytes must be >= 0"),
        ("plan_bytes", 1.5, "plan_bytes must be int"),
        ("precision", "fp64", "precision must be one of"),
        ("tensorrt_version", "1.2; rm", "tensorrt_version must be a version"),
        ("device", "../x", "device must be a device profile name"),
        ("gpu", {"name": "x", "compute_capability": "sm87"}, r"gpu\.compute_capability must be like"),
        ("gpu", {"driver": "x"}, "gpu must be"),
        ("strongly_typed", "yes", "strongly_typed must be bool"),
        ("flags", ["EVIL"], r"flags\[0\] must be one of"),
        (
            "profile",
            {"input": "image", "min": [0, 8, 8, 3], "opt": [1, 8, 8, 3], "max": [1, 8, 8, 3]},
            r"profile\.min\[0\] must be >= 1",
        ),
        (
            "profile",
            {"input": "image", "min": [4, 8, 8, 3], "opt": [1, 8, 8, 3], "max": [2, 8, 8, 3]},
            "min <= opt <= max",
        ),
        ("profile", {"input": "image", "min": [1], "opt": [1], "max": [1e400]}, r"profile\.max\[0\] is inf"),
        ("profile", {"input": "image", "min": [1], "opt": [1]}, "profile must be a table of input, min, opt, max"),
        ("dla_core", -2, "dla_core must be >= -1"),
        ("workspace_mb", 0, "workspace_mb must be in 1"),
        ("build_seconds", float("inf"), "build_seconds is inf"),
        ("build_seconds", float("nan"), "build_seconds is nan"),
        ("build_seconds", -1.0, "build_seconds must be >= 0"),
        ("schema_version", 2, "schema_version 2 is not supported"),
        ("schema_version", True, "schema_version must be int"),
    ],
)
def test_every_sidecar_field_is_checked(tmp_path, field, value, message):
    plan = write_plan(tmp_path, **{field: value})
    with pytest.raises(EngineError, match=r"e\.json: .*" + message):
        load_plan_sidecar(plan)
    with pytest.raises(SpecError, match=message):
        EngineSidecar.load(EngineSidecar.path_for(plan))


def test_plan_and_sidecar_links_out_of_the_folder_are_refused(tmp_path):
    outside = write_plan(tmp_path / "elsewhere")  # a plan + sidecar that match each other
    inside = tmp_path / "engines"
    inside.mkdir()
    (inside / "e.plan").symlink_to(outside)
    (inside / "e.json").write_bytes(outside.with_suffix(".json").read_bytes())
    with pytest.raises(EngineError, match=r"e\.plan: a link to .*elsewhere.*, outside"):
        load_plan_sidecar(inside / "e.plan")
    assert find_reusable(inside / "e.plan", "0123456789") is None
    (inside / "e.plan").unlink()
    (inside / "e.plan").write_bytes(outside.read_bytes())
    (inside / "e.json").unlink()
    (inside / "e.json").symlink_to(outside.with_suffix(".json"))
    with pytest.raises(EngineError, match=r"e\.json: a link to .*, outside"):
        load_plan_sidecar(inside / "e.plan")
    assert find_reusable(inside / "e.plan", "0123456789") is None
    (inside / "e.json").unlink()
    (inside / "e.json").write_bytes(outside.with_suffix(".json").read_bytes())
    assert load_plan_sidecar(inside / "e.plan").plan == "e.plan"  # plain files beside each other
    assert find_reusable(inside / "e.plan", "0123456789") is not None


def test_a_staged_plan_is_taken_only_when_the_sidecar_vouches_for_it(tmp_path):
    """Between a rebuild's last two steps NAME.json vouches for the staged .NAME.plan.next, not for
    NAME.plan: the loader takes the staged one when it is a plain file in the folder, and never renames."""
    new = write_plan(tmp_path / "elsewhere")  # the rebuilt plan, and a sidecar for it
    plan = tmp_path / "engines" / "e.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"an older build" * 8)
    plan.with_suffix(".json").write_bytes(new.with_suffix(".json").read_bytes())
    staged = staged_plan(plan)
    staged.symlink_to(new)  # the vouched bytes, but outside the folder
    with pytest.raises(EngineError, match=r"e\.plan: .* differ from its sidecar"):
        load_plan_sidecar(plan)
    staged.unlink()
    staged.write_bytes(new.read_bytes())
    s = load_plan_sidecar(plan)
    assert read_plan(plan, s) == new.read_bytes()
    assert plan.read_bytes() == b"an older build" * 8 and staged.is_file()
    staged.write_bytes(b"x" + new.read_bytes()[1:])  # same size, other bytes
    with pytest.raises(EngineError, match="differ from its sidecar"):
        load_plan_sidecar(plan)
    with pytest.raises(EngineError, match="no longer the plan its sidecar vouched for"):
        read_plan(plan, s)


PROFILE = 'name = "mine"\ndescription = "x"\nkind = "jetson"\ntensorrt_module = "tensorrt"\n'


@pytest.mark.parametrize(
    "line, message",
    [
        ("memory_gb = inf", "memory_gb is inf"),
        ("memory_gb = nan", "memory_gb is nan"),
        ("memory_gb = -8.0", "memory_gb must be >= 0"),
        ("dla_cores = -1", "dla_cores must be >= 0"),
        ("max_onnx_opset = -3", "max_onnx_opset must be >= 0"),
        ('compute_capability = "sm_87"', "compute_capability must be like"),
        ('tensorrt_version = "ten"', "tensorrt_version must be a version"),
        ('match_models = [""]', "match_models must not hold an empty string"),
        ("power_modes = [1e999]", r"power_modes\[0\] is inf"),
    ],
)
def test_profile_numbers_are_finite_and_in_range(tmp_path, line, message):
    f = tmp_path / "mine.toml"
    f.write_text(PROFILE + line + "\n")
    with pytest.raises(SpecError, match=r"mine\.toml: " + message):
        load_profile(str(f))


def test_profile_kind_and_name_are_checked(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(PROFILE.replace('"jetson"', '"gpu"'))
    with pytest.raises(SpecError, match=r"mine\.toml: kind must be jetson, rtx or cpu"):
        load_profile(str(f))
    # The name becomes part of engine and timing-cache file names.
    f.write_text(PROFILE.replace('name = "mine"', 'name = "../../escape"'))
    with pytest.raises(SpecError, match=r"mine\.toml: name must be a plain name"):
        load_profile(str(f))


def test_a_name_is_only_looked_up_among_shipped_profiles(tmp_path, monkeypatch):
    import edgesdk.devices as devices

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text(PROFILE)
    assert load_profile("mine.toml").name == "mine" and load_profile("./mine.toml").name == "mine"
    with pytest.raises(FileNotFoundError, match="'mine': no such device profile.*orin-nx"):
        load_profile("mine")  # a name, not the file in the working directory
    with pytest.raises(FileNotFoundError, match=r"\.\./etc/x: device profile file not found.*read as a path"):
        load_profile("../etc/x")
    with pytest.raises(SpecError, match="'orin nx': not a device profile name"):
        load_profile("orin nx")
    # A shipped folder whose NAME.toml links elsewhere does not serve that file under the name.
    shipped = tmp_path / "devices"
    shipped.mkdir()
    (shipped / "evil.toml").symlink_to(tmp_path / "mine.toml")
    monkeypatch.setattr(devices, "data_dir", lambda name: shipped)
    with pytest.raises(SpecError, match="'evil': the shipped profile .* is a link to .*mine.toml, outside"):
        load_profile("evil")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"workspace_mb": 0}, "workspace 0 MB: must be positive"),
        ({"dla_core": -2}, "dla_core must be >= -1"),
        ({"optimization_level": 9}, r"optimization_level must be in 0\.\.5"),
        ({"batch": [1, 2]}, r"batch \(1, 2\): need three ints"),
    ],
)
def test_build_configs_are_range_checked(config, message):
    with pytest.raises(SpecError, match=r"b\.toml: " + message):
        from_mapping(BuildConfig, config, "b.toml")


def _cli_error(capsys, *argv) -> str:
    """stderr of `edgesdk ARGV`, which must fail with status 2 and no traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refusing an option
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


def test_verify_refuses_a_sidecar_that_names_another_module(bundle, tmp_path, capsys, evil):
    plan = write_plan(tmp_path / "engines", tensorrt_module="evil_mod")
    err = _cli_error(capsys, "verify", plan, "--bundle", bundle)
    assert "e.json: tensorrt_module must be one of tensorrt, tensorrt_rtx" in err and not evil.exists()


def test_unknown_compute_capability_is_a_clean_error(bundle, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX builds the engine")
    from edgesdk.compile.trt import build_engine

    prof = dataclasses.replace(load_profile("rtx"), compute_capability="9.9")
    with pytest.raises(ValueError, match="compute_capability 9.9 is not a target of tensorrt_rtx"):
        build_engine(bundle, prof, out=tmp_path / "engines")
    assert not list(tmp_path.rglob("*.plan"))


def test_sidecar_validation_needs_no_gpu_and_comes_first(tmp_path):
    """A corrupt sidecar is refused even where no TensorRT and no GPU exist: it is checked before
    the module import and the GPU check."""
    plan = write_plan(tmp_path, dla_core=-7)
    assert os.path.exists(plan)
    with pytest.raises(EngineError, match="dla_core must be >= -1"):
        TensorRTRunner(plan)


@pytest.mark.parametrize(
    "model, section, line, message",
    [
        ("patchcore", "config", "coreset_ratio = inf", r"config\.coreset_ratio is inf"),
        ("patchcore", "config", "coreset_ratio = nan", r"config\.coreset_ratio is nan"),
        ("patchcore", "config", "coreset_ratio = 0.0", r"\[config\]: coreset_ratio must be in \(0, 1\]"),
        ("patchcore", "config", "coreset_ratio = 1.5", r"\[config\]: coreset_ratio must be in \(0, 1\]"),
        ("patchcore", "config", "num_neighbors = 0", r"\[config\]: num_neighbors must be >= 1"),
        ("padim", "config", "feature_dim = 0", r"\[config\]: feature_dim must be > 0"),
        ("padim", "config", "sigma = -inf", r"config\.sigma is -inf"),
        ("padim", "config", "input_size = [100, 128]", r"\[config\]: input_size must be \[height, width\]"),
        ("stfpm", "config", "steps = 0", r"\[config\]: steps must be > 0"),
        ("stfpm", "config", "lr = 0.0", r"\[config\]: lr must be > 0"),
        ("padim", "train", "holdout = 1.0", r"\[train\]: holdout must be in \(0, 1\)"),
        ("padim", "train", "k_sigma = -1.0", r"\[train\]: k_sigma must be >= 0"),
        ("padim", "train", "k_sigma = inf", r"train\.k_sigma is inf"),
        ("padim", "train", 'camera = ["jpeg:0"]', r"\[train\]: camera must be camera pipelines"),
        ("padim", "export", "max_drop = nan", r"export\.max_drop is nan"),
        ("padim", "export", "max_drop = -0.1", r"\[export\]: max_drop must be in \[0, 1\)"),
        ("padim", "export", "n_calib = 0", r"\[export\]: n_calib must be >= 8"),
        ("padim", "export", 'precision = "fp64"', r"\[export\]: precision must be one of fp32"),
        ("padim", "export", 'calib_method = "guess"', r"\[export\]: calib_method must be minmax"),
    ],
)
def test_recipe_values_are_finite_and_in_range(tmp_path, model, section, line, message):
    f = tmp_path / "mine.toml"
    f.write_text(f'model = "{model}"\n[{section}]\n{line}\n')
    with pytest.raises(SpecError, match=r"mine\.toml.*" + message):
        load_recipe(f)


def test_build_and_device_check_options_fail_cleanly(tmp_path, capsys):
    b = tmp_path / "no-bundle"
    assert "--dla '-5': a DLA core is 0 or more" in _cli_error(capsys, "build", b, "--device", "rtx", "--dla", "-5")
    assert "--workspace '0': need 1 <= MB" in _cli_error(capsys, "build", b, "--device", "rtx", "--workspace", "0")
    assert "--workspace '-3'" in _cli_error(capsys, "build", b, "--device", "rtx", "--workspace", "-3")
    assert "--batch '0'" in _cli_error(capsys, "build", b, "--device", "rtx", "--batch", "0")
    assert "--dla '-2'" in _cli_error(capsys, "device", "check", b, "--device", "rtx", "--dla", "-2")
    assert "--batch '2:1'" in _cli_error(capsys, "device", "check", b, "--device", "rtx", "--batch", "2:1")
    assert "--batch '4:1:2'" in _cli_error(capsys, "device", "check", b, "--device", "rtx", "--batch", "4:1:2")
    assert "'nosuch': no such device profile" in _cli_error(capsys, "build", b, "--device", "nosuch")


def test_verify_tolerance_must_be_a_finite_difference(tmp_path, capsys):
    plan = write_plan(tmp_path)
    for bad, said in (("inf", "finite number"), ("nan", "finite number"), ("-0.1", ">= 0")):
        assert said in _cli_error(capsys, "verify", plan, "--bundle", tmp_path, "--tolerance", bad)
