"""install / rollback / status / gc / stage on real folders, with real ONNX Runtime health checks."""

from __future__ import annotations

import json
import os

import pytest

from deploy_util import cli, golden_set, keypair, pkgs, snapshot  # noqa: F401
from edgesdk.deploy import keys
from edgesdk.deploy.package import PackOptions, pack
from edgesdk.deploy.slots import InstallError, InstallOptions, install, rollback, status, verify_slot
from edgesdk.deploy.stage import stage


def current(root):
    return os.readlink(root / "current") if (root / "current").is_symlink() else None


def test_install_upgrade_rollback_and_status(pkgs, keypair, tmp_path):
    root, pub = tmp_path / "root", keypair[1]
    r = cli("install", pkgs["1.0.0"], "--pubkey", pub, "--root", root, "--json", check=True)
    rep = json.loads(r.stdout)
    assert rep["status"] == "installed" and rep["device"] == "cpu" and rep["health"]["passed"]
    assert [s["step"] for s in rep["steps"]] == [
        "verify",
        "lock",
        "extract",
        "fsync",
        "rename",
        "runtime",
        "engine",
        "health",
        "previous",
        "current",
        "history",
        "gc",
    ]
    assert rep["steps"][5]["detail"] == "the package carries no runtime"
    v1 = root / current(root)
    assert current(root) == f"slots/{rep['slot']}" and not verify_slot(v1, keys.load_public(pub))
    assert {p.name for p in v1.iterdir()} == {"package.json", "package.json.minisig", "bundle", "health.json"}
    assert json.loads((v1 / "health.json").read_text())["passed"]

    rep2 = install(pkgs["1.1.0"], pub, root)
    assert rep2.status == "installed" and rep2.previous == v1.name
    assert current(root) == f"slots/{rep2.slot}" and os.readlink(root / "previous") == f"slots/{v1.name}"
    # Installing what is already current is harmless: nothing happens, nothing changes.
    before = snapshot(root)
    assert install(pkgs["1.1.0"], pub, root).status == "current" and snapshot(root) == before

    r = cli("rollback", "--root", root, "--json", check=True)
    assert json.loads(r.stdout)["current"] == v1.name and current(root) == f"slots/{v1.name}"
    assert os.readlink(root / "previous") == f"slots/{rep2.slot}"  # a second rollback goes forward again
    st = json.loads(cli("status", "--root", root, "--json", check=True).stdout)
    assert st["current"] == v1.name and st["previous"] == rep2.slot and st["leftovers"] == []
    assert [h["event"] for h in st["history"]] == ["install", "install", "rollback"]
    assert all(s["verifies"] and s["state"] == "good" for s in st["slots"])
    text = cli("status", "--root", root, check=True).stdout
    assert v1.name in text and "rollback" in text


def test_downgrades_and_version_reuse_are_refused_without_changing_anything(pkgs, keypair, bundle, tmp_path):
    root, pub = tmp_path / "root", keypair[1]
    install(pkgs["1.1.0"], pub, root)
    before = snapshot(tmp_path)
    r = cli("install", pkgs["1.0.0"], "--pubkey", pub, "--root", root)
    assert r.returncode == 2 and "1.0.0 is older than the active 1.1.0" in r.stderr and str(pkgs["1.0.0"]) in r.stderr
    other = pack(bundle, keypair[0], tmp_path / "other-1.1.0.tgz", PackOptions(version="1.1.0", name="other"))
    before = snapshot(root)
    with pytest.raises(InstallError, match="already active as another package"):
        install(other["package"], pub, root)
    assert snapshot(root) == before
    rep = install(pkgs["1.0.0"], pub, root, InstallOptions(allow_downgrade=True))
    assert rep.status == "installed" and rep.version == "1.0.0"


def test_a_package_for_another_device_is_refused(bundle, keypair, tmp_path):
    pkg = pack(bundle, keypair[0], tmp_path / "p.tgz", PackOptions(version="1.0.0", devices=("orin-nx",)))["package"]
    root = tmp_path / "root"
    r = cli("install", pkg, "--pubkey", keypair[1], "--root", root)
    assert r.returncode == 2 and "built for orin-nx; this device is cpu" in r.stderr
    assert not root.exists()
    # --device names the target (tests, staging); orin-nx's TensorRT is not here, so ONNX Runtime runs it.
    rep = install(pkg, keypair[1], root, InstallOptions(device="orin-nx"))
    assert rep.ok and "tensorrt is not installed here" in rep.steps[6]["detail"]


def test_gc_keeps_n_slots_never_current_or_previous(bundle, pkgs, keypair, tmp_path):
    root, pub = tmp_path / "root", keypair[1]
    extra = pack(bundle, keypair[0], tmp_path / "p3.tgz", PackOptions(version="3.0.0"))["package"]
    v1, v11, v2 = (install(pkgs[v], pub, root, InstallOptions(keep=3)).slot for v in ("1.0.0", "1.1.0", "2.0.0"))
    assert sorted(p.name for p in (root / "slots").iterdir()) == sorted([v1, v11, v2])
    rollback(root)  # current 1.1.0, previous 2.0.0: 1.0.0 is the oldest
    rep = install(extra, pub, root, InstallOptions(keep=3))  # current 3.0.0, previous 1.1.0
    assert rep.removed == [v1] and (root / "slots" / v2).is_dir()
    rep = install(pkgs["2.0.0"], pub, root, InstallOptions(keep=1, allow_downgrade=True))
    # keep=1 still keeps current (2.0.0, reused: it verified) and previous (3.0.0)
    assert rep.removed == [v11] and sorted(p.name for p in (root / "slots").iterdir()) == sorted([v2, rep.previous])
    assert "reused" in rep.steps[2]["detail"]


def test_rollback_refuses_without_previous_or_when_previous_fails_verification(pkgs, keypair, tmp_path):
    root, pub = tmp_path / "root", keypair[1]
    install(pkgs["1.0.0"], pub, root)
    r = cli("rollback", "--root", root)
    assert r.returncode == 2 and "no previous slot" in r.stderr
    install(pkgs["1.1.0"], pub, root)
    prev = root / os.readlink(root / "previous")
    with open(prev / "bundle" / "model.onnx", "r+b") as f:  # bit rot in the old slot
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    before = snapshot(root)
    r = cli("rollback", "--root", root)
    assert r.returncode == 2 and "fails verification" in r.stderr and "model.onnx" in r.stderr
    assert snapshot(root) == before
    st = status(root)
    assert [s["verifies"] for s in st["slots"] if s["previous"]] == [False]


def test_latency_budget_fails_the_health_check_and_keeps_the_old_model(pkgs, keypair, tmp_path):
    root, pub = tmp_path / "root", keypair[1]
    old = install(pkgs["1.0.0"], pub, root).slot
    r = cli("install", pkgs["1.1.0"], "--pubkey", pub, "--root", root, "--max-latency-ms", "0.001")
    assert r.returncode == 2 and "health check failed: latency" in r.stderr and f"current is still {old}" in r.stderr
    assert current(root) == f"slots/{old}"
    st = status(root)
    assert {s["slot"]: s["state"] for s in st["slots"]}[old] == "good"
    assert [s["state"] for s in st["slots"] if s["slot"] != old] == ["failed"]
    assert st["history"][-1]["event"] == "health-failed"


@pytest.fixture(scope="module")
def grass_bundle(tmp_path_factory):
    """A tiny PaDiM trained on another texture (grass): the wrong model for the brick line."""
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.data.synth import SynthConfig, synth_dataset
    from edgesdk.train import train

    root = tmp_path_factory.mktemp("grass")
    synth_dataset(
        root / "data",
        ["grass"],
        SynthConfig(size=128, n_train=30, n_test_good=2, n_test_per_defect=1, seed=1),
        video=False,
    )
    run = train(root / "data" / "grass", root / "run", config={"input_size": [128, 128]}, quiet=True)
    return export_onnx(run, root / "bundle")


def test_the_wrong_model_fails_the_golden_health_check_and_the_old_one_stays(
    bundle, grass_bundle, tiny_data, keypair, pkgs, tmp_path
):
    root, pub = tmp_path / "root", keypair[1]
    golden = golden_set(bundle, tiny_data / "brick", tmp_path / "golden")
    # The brick model packed with this line's golden set passes it on the device too.
    good = pack(bundle, keypair[0], tmp_path / "brick.tgz", PackOptions(version="1.0.0", golden=str(golden)))
    assert good["manifest"]["golden"]["good"] >= 2
    rep = install(good["package"], pub, root)
    assert rep.ok and "verdicts right (the package's golden set)" in rep.health["checks"][-1]["detail"]
    # pack refuses a golden set its own bundle fails: such a package could never pass on a device.
    with pytest.raises(ValueError, match="golden image"):
        pack(grass_bundle, keypair[0], tmp_path / "g.tgz", PackOptions(version="2.0.0", golden=str(golden)))
    wrong = pack(grass_bundle, keypair[0], tmp_path / "grass.tgz", PackOptions(version="2.0.0"))["package"]
    r = cli("install", wrong, "--pubkey", pub, "--root", root, "--golden", golden, "--json")
    assert r.returncode == 2 and "health check failed: golden" in r.stderr
    assert f"current is still {rep.slot}" in r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and "must pass" in out["health"]["why"]
    assert current(root) == f"slots/{rep.slot}"
    failed = root / "slots" / out["slot"]
    assert json.loads((failed / "health.json").read_text())["passed"] is False  # kept for inspection


def test_stage_makes_the_same_slot_tree_as_install(pkgs, keypair, tmp_path):
    pub = keypair[1]
    rep = install(pkgs["1.0.0"], pub, tmp_path / "device")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    r = cli("stage", pkgs["1.0.0"], "--pubkey", pub, "--rootfs", rootfs, "--json", check=True)
    staged = json.loads(r.stdout)
    assert staged["slot"] == rep.slot and staged["health"]["mode"] == "staged"
    opt = rootfs / "opt" / "edgesdk"
    assert os.readlink(opt / "current") == f"slots/{rep.slot}"

    def tree(root):
        return {k: v for k, v in snapshot(root / "slots").items() if not k.endswith("health.json")}

    assert tree(opt) == tree(tmp_path / "device")
    assert (rootfs / "etc/edgesdk/edgesdk.pub").read_text() == (tmp_path / "device/edgesdk.pub").read_text()
    assert 'root = "/opt/edgesdk"' in (rootfs / "etc/edgesdk/config.toml").read_text()
    # The systemd hook: unit text -> the unit and its multi-user.target.wants link.
    _, written = stage(pkgs["1.1.0"], pub, rootfs, unit_text="[Unit]\nDescription=edgesdk\n")
    wants = rootfs / "etc/systemd/system/multi-user.target.wants/edgesdk.service"
    assert os.readlink(wants) == "../edgesdk.service" and wants.read_text().startswith("[Unit]")
    assert os.readlink(opt / "previous") == f"slots/{rep.slot}"
    with pytest.raises(InstallError, match="absolute path"):
        stage(pkgs["2.0.0"], pub, rootfs, prefix="opt/../../x")


def test_a_damaged_current_slot_does_not_block_the_install_that_replaces_it(pkgs, keypair, tmp_path):
    root, pub = tmp_path / "root", keypair[1]
    old = install(pkgs["1.1.0"], pub, root).slot
    (root / "slots" / old / "package.json").write_text("{")  # bit rot in the running slot
    assert not status(root)["slots"][0]["verifies"]
    rep = install(pkgs["2.0.0"], pub, root)
    assert rep.ok and current(root) == f"slots/{rep.slot}" and rep.previous == old
    with pytest.raises(InstallError, match="fails verification"):  # nor is it a rollback target
        rollback(root)
