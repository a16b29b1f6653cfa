"""Prebuilt engines travel in the package and are adopted only where their sidecar matches the device
and its TensorRT (here TensorRT for RTX, whose builder runs without a GPU)."""

from __future__ import annotations

import json
import shutil

import pytest

from deploy_util import keypair  # noqa: F401  (fixture)
from edgesdk.deploy.package import PackOptions, pack
from edgesdk.deploy.slots import InstallOptions, install


def test_a_packaged_engine_is_adopted_on_its_device_and_ignored_elsewhere(bundle, keypair, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX builds the engine")
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import current_gpu, load_profile

    b = tmp_path / "bundle"
    shutil.copytree(bundle, b)
    built = build_engine(b, load_profile("rtx"))
    with pytest.raises(ValueError, match="no engine built from this bundle for orin-nx"):
        pack(b, keypair[0], tmp_path / "x.tgz", PackOptions(version="1.0.0", devices=("orin-nx",), engines=True))
    r = pack(b, keypair[0], tmp_path / "p.tgz", PackOptions(version="1.0.0", devices=("rtx", "cpu"), engines=True))
    assert r["manifest"]["engines"] == [
        {
            "plan": f"engines/{built.plan.name}",
            "sidecar": f"engines/{built.plan.with_suffix('.json').name}",
            "device": "rtx",
        }
    ]
    # On a cpu device the plan is carried but not adopted: ONNX Runtime runs the model.
    rep = install(r["package"], keypair[1], tmp_path / "cpu", InstallOptions(device="cpu"))
    assert rep.ok and rep.steps[6]["detail"].startswith("none: cpu runs ONNX Runtime")
    assert not (tmp_path / "cpu" / "slots" / rep.slot / "bundle" / "engines").exists()
    # On rtx the packaged plan matches (device, TensorRT flavour and version): adopted, not rebuilt.
    rep = install(r["package"], keypair[1], tmp_path / "rtx", InstallOptions(device="rtx"))
    assert rep.steps[6]["detail"] == f"adopted packaged {built.plan.name}"
    slot = tmp_path / "rtx" / "slots" / rep.slot
    assert (slot / "bundle" / "engines" / built.plan.name).read_bytes() == built.plan.read_bytes()
    health = json.loads((slot / "health.json").read_text())
    assert health["backend"] == "tensorrt" and health["engine"] == built.plan.name
    if current_gpu():
        assert rep.ok, rep.health["why"]
    else:  # the engine cannot run without a GPU: the install fails its health check, saying why
        assert not rep.ok and rep.health["why"].startswith("runtime:") and not (tmp_path / "rtx" / "current").exists()


def test_a_packaged_plan_cut_short_in_the_slot_is_copied_again(bundle, keypair, tmp_path, monkeypatch):
    """Where the slot's filesystem has no hard links the plan is copied; a copy cut short (a crash)
    must not be taken for the plan at the next install: it fails the sidecar's sha256 and is redone,
    in one rename (never a half-written file under the plan's name)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX builds the engine")
    import os

    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile

    b = tmp_path / "bundle"
    shutil.copytree(bundle, b)
    built = build_engine(b, load_profile("rtx"))
    r = pack(b, keypair[0], tmp_path / "p.tgz", PackOptions(version="1.0.0", devices=("rtx",), engines=True))

    def no_links(*a, **k):
        raise PermissionError(1, "Operation not permitted")  # as on FAT

    monkeypatch.setattr(os, "link", no_links)
    rep = install(r["package"], keypair[1], tmp_path / "rtx", InstallOptions(device="rtx"))
    engines = tmp_path / "rtx" / "slots" / rep.slot / "bundle" / "engines"
    plan = engines / built.plan.name
    assert f"adopted packaged {built.plan.name}" in [s["detail"] for s in rep.steps]
    assert plan.read_bytes() == built.plan.read_bytes() and plan.stat().st_nlink == 1  # copied
    plan.write_bytes(built.plan.read_bytes()[:1000])  # the copy a power cut left
    rep = install(r["package"], keypair[1], tmp_path / "rtx", InstallOptions(device="rtx"))  # the slot, reused
    assert f"adopted packaged {built.plan.name}" in [s["detail"] for s in rep.steps], rep.steps
    assert plan.read_bytes() == built.plan.read_bytes()
    assert sorted(p.name for p in engines.iterdir() if p.name.startswith(".")) == []


def test_placing_a_plan_replaces_a_cut_copy_in_one_rename_without_hard_links(tmp_path, monkeypatch):
    """The step the adoption above uses, on any machine (no TensorRT needed): where there are no hard
    links the plan is copied under a temporary name, fsynced, then renamed over what was there."""
    import os

    from edgesdk.deploy.steps import _place

    src, dst = tmp_path / "slot.plan", tmp_path / "engines" / "x.plan"
    src.write_bytes(os.urandom(50_000))
    dst.parent.mkdir()
    dst.write_bytes(src.read_bytes()[:1000])  # a copy a power cut left
    synced = []
    real_fsync = os.fsync

    def no_links(*a, **k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    _place(src, dst)
    assert dst.read_bytes() == src.read_bytes() and dst.stat().st_nlink == 1 and len(synced) >= 2
    assert [p.name for p in dst.parent.iterdir()] == ["x.plan"]
