"""The engine cache (edgesdk/engines.py) without TensorRT: the plan's bytes checked against its
sidecar, reuse only on the same key, and TensorRT imported only under its own two names."""

import sys

import pytest

from edgesdk.backends.tensorrt import TensorRTRunner
from edgesdk.engines import EngineError, TensorRTUnavailable, find_reusable, import_tensorrt, load_plan_sidecar
from edgesdk.fsutil import write_json
from edgesdk.spec import EngineSidecar, sha256_file


def _plan(folder, module="tensorrt_rtx", key="0a1b2c3d4e"):
    """A plan file and its sidecar as `edgesdk build` writes them (the plan's bytes are opaque here)."""
    plan = folder / "m.plan"
    plan.write_bytes(b"\x00plan bytes" * 100)
    side = EngineSidecar(
        plan=plan.name,
        plan_sha256=sha256_file(plan),
        plan_bytes=plan.stat().st_size,
        key=key,
        onnx_sha256="0" * 64,
        model="padim",
        precision="fp32",
        tensorrt_module="tensorrt_rtx",
        tensorrt_version="10.0",
        device="rtx",
        gpu={},
        strongly_typed=True,
        flags=(),
        profile={"input": "image", "min": [1, 8, 8, 3], "opt": [1, 8, 8, 3], "max": [2, 8, 8, 3]},
        dla_core=-1,
        workspace_mb=64,
        build_seconds=1.0,
    )
    write_json(EngineSidecar.path_for(plan), {**side.to_dict(), "tensorrt_module": module})  # as a file may say
    return plan


def test_a_plan_is_reused_only_with_its_key_and_intact_bytes(tmp_path):
    plan = _plan(tmp_path)
    assert find_reusable(plan, "0a1b2c3d4e").key == "0a1b2c3d4e" and load_plan_sidecar(plan).plan == "m.plan"
    assert find_reusable(plan, "0a1b2c3d4f") is None
    plan.write_bytes(plan.read_bytes()[:-1])  # truncated
    assert find_reusable(plan, "0a1b2c3d4e") is None
    with pytest.raises(EngineError, match="differ from its sidecar"):
        load_plan_sidecar(plan)
    EngineSidecar.path_for(plan).write_text("{not json")
    assert find_reusable(plan, "0a1b2c3d4e") is None
    with pytest.raises(EngineError, match="not valid JSON"):
        load_plan_sidecar(plan)


def test_a_sidecar_cannot_pick_a_module_to_import(tmp_path, monkeypatch):
    """The sidecar names the TensorRT flavour; any other name is refused before anything is imported."""
    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nBuilder = object\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plan = _plan(tmp_path, module="planted")
    with pytest.raises(EngineError, match="tensorrt_module must be one of tensorrt, tensorrt_rtx, got 'planted'"):
        TensorRTRunner(plan).load()
    with pytest.raises(TensorRTUnavailable, match="refusing to import it"):
        import_tensorrt("planted")
    assert not (tmp_path / "ran").exists() and "planted" not in sys.modules
