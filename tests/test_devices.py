"""Device profiles ship with the package, load strictly, detect the machine and judge bundles."""

import json
import subprocess
import sys

import pytest

from edgesdk.bundle import Bundle
from edgesdk.devices import check_bundle, detect, list_profiles, load_profile, match_profile
from edgesdk.spec import DeviceProfile, SpecError

REQUIRED = {"orin-nano", "orin-nx", "agx-orin", "thor", "xavier-nx", "rtx", "cpu"}


def test_every_required_profile_ships_and_loads():
    profiles = {p.name: p for p in list_profiles()}
    assert REQUIRED <= set(profiles)
    nx = profiles["orin-nx"]
    assert (nx.jetpack, nx.l4t, nx.tensorrt_version, nx.compute_capability) == ("6.2", "36.4.3", "10.3", "8.7")
    assert nx.dla_cores == 2 and nx.strongly_typed and nx.tensorrt_module == "tensorrt"
    assert not profiles["xavier-nx"].strongly_typed and profiles["xavier-nx"].max_onnx_opset == 17
    assert profiles["rtx"].tensorrt_module == "tensorrt_rtx" and profiles["rtx"].strongly_typed
    assert profiles["thor"].compute_capability == "11.0" and profiles["thor"].dla_cores == 0


def test_bad_profiles_name_the_key_and_file(tmp_path):
    good = load_profile("orin-nx").__dict__
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\ndescription = "x"\nkind = "jetson"\ntensorrt_module = "tensorrt"\ndla_cors = 2\n')
    with pytest.raises(SpecError, match=r"mine\.toml: unknown key 'dla_cors'"):
        load_profile(str(f))
    f.write_text('name = "mine"\ndescription = "x"\nkind = "jetson"\ntensorrt_module = "tensorrt"\ndla_cores = "two"\n')
    with pytest.raises(SpecError, match=r"mine\.toml: dla_cores must be int, got str 'two'"):
        load_profile(str(f))
    f.write_text('name = "mine"\nkind = "jetson"\ntensorrt_module = "tensorrt"\n')
    with pytest.raises(SpecError, match=r"mine\.toml: missing key 'description'"):
        load_profile(str(f))
    f.write_text(
        'name = "mine"\ndescription = "x"\nkind = "jetson"\ntensorrt_module = "tensorrt"\n'
        'gpu_precisions = ["fp32", "int4x"]\n'
    )
    with pytest.raises(SpecError, match="unknown precision 'int4x'"):
        load_profile(str(f))
    f.write_text("name = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_profile(str(f))
    with pytest.raises(FileNotFoundError, match="'orin-nxx': no such device.*orin-nx"):
        load_profile("orin-nxx")
    assert good["name"] == "orin-nx"


def test_detect_a_jetson_from_its_files(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    )
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    f = detect(tmp_path)
    assert f["l4t"] == "36.4.3" and f["profile"] == "orin-nx" and "Orin NX" in f["why"]
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson TX2\x00")
    f = detect(tmp_path)
    assert f["profile"] == "" and "no shipped profile matches" in f["why"]


def test_match_an_rtx_pc_and_a_plain_cpu():
    assert (
        match_profile(
            {"gpus": [{"name": "NVIDIA GeForce RTX 4070", "compute_capability": "8.9"}], "machine": "x86_64"}
        )[0]
        == "rtx"
    )
    assert match_profile({"gpus": [], "machine": "x86_64"})[0] == "cpu"


def test_check_says_why_a_bundle_will_not_run(bundle):
    b = Bundle.open(bundle)
    nx = {c.name: c for c in check_bundle(b, load_profile("xavier-nx"), dla_core=0)}
    assert nx["onnx opset"].status == "fail" and "up to 17" in nx["onnx opset"].detail
    assert nx["dla precision"].status == "warn" and "fp32" in nx["dla precision"].detail
    assert nx["dla layers"].status == "warn" and "MatMul" in nx["dla layers"].detail
    orin = {c.name: c for c in check_bundle(b, load_profile("orin-nx"))}
    assert all(c.status == "ok" for c in orin.values()) and "strongly typed" in orin["network"].detail
    nano = {c.name: c for c in check_bundle(b, load_profile("orin-nano"), dla_core=0)}
    assert nano["dla"].status == "fail"


def test_device_cli(bundle):
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "edgesdk", "device", *map(str, a)],
        capture_output=True,
        text=True,
    )
    r = run("check", bundle, "--device", "xavier-nx", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["runs"] is False
    r = run("check", bundle, "--device", "agx-orin")
    assert r.returncode == 0 and "will run on agx-orin" in r.stdout
    r = run("info", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["profile"] in {p.name for p in list_profiles()} | {""}
    r = run("list")
    assert r.returncode == 0 and all(name in r.stdout for name in REQUIRED)


def test_profile_types_are_checked_by_the_shared_loader():
    from edgesdk.spec import from_mapping

    with pytest.raises(SpecError, match="x.toml: memory_gb must be float, got str"):
        from_mapping(
            DeviceProfile,
            {"name": "a", "description": "b", "kind": "cpu", "tensorrt_module": "", "memory_gb": "8"},
            "x.toml",
        )
    p = from_mapping(
        DeviceProfile,
        {"name": "a", "description": "b", "kind": "cpu", "tensorrt_module": "", "memory_gb": 8, "power_modes": ["a"]},
        "x.toml",
    )
    assert p.memory_gb == 8.0 and p.power_modes == ("a",)
