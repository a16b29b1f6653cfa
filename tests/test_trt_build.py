"""Every graph the project exports is built into a real TensorRT engine (TensorRT for RTX builds
ahead of time on this CPU-only machine), and the engine cache, sidecars and refusals work."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgesdk.bundle import Bundle
from edgesdk.compile.trt import TensorRTParseError, build_engine, check_onnx, is_strongly_typed, trtexec_command
from edgesdk.devices import load_profile
from edgesdk.engines import EngineError, TensorRTUnavailable, find_engine, load_plan_sidecar, read_plan, staged_plan
from edgesdk.spec import BuildConfig

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
RTX = load_profile("rtx")


def cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"edgesdk {args} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def own_bundle(bundle, tmp_path):
    """A private copy without engines/ (other tests may have built into the shared bundle)."""
    return Bundle.open(shutil.copytree(bundle, tmp_path / "b", ignore=shutil.ignore_patterns("engines")))


def test_exported_graph_builds_a_strongly_typed_engine(own_bundle, tmp_path):
    r = build_engine(own_bundle, RTX, BuildConfig(batch=(1, 1, 2)))
    s = r.sidecar
    assert not r.reused and r.plan.is_file() and r.plan.stat().st_size == s.plan_bytes > 1_000_000
    assert s.strongly_typed and s.tensorrt_module == "tensorrt_rtx" and s.tensorrt_version == trt.__version__
    assert s.onnx_sha256 == own_bundle.onnx_sha256 and s.precision == "fp32" and s.flags == ()
    assert s.profile == {"input": "image", "min": [1, 128, 128, 3], "opt": [1, 128, 128, 3], "max": [2, 128, 128, 3]}
    # A raw plan: TensorRT's runtime reads its header as well-formed (it can't run it without a GPU);
    # the same bytes behind a private header, as Ultralytics writes them, are malformed to it.
    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    malformed = int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)
    plan = r.plan.read_bytes()
    assert not runtime.get_engine_validity(plan)[1] & malformed
    assert runtime.get_engine_validity(b'{"meta": 1}' + plan)[1] & malformed
    again = build_engine(own_bundle, RTX, BuildConfig(batch=(1, 1, 2)))
    assert again.reused and again.plan == r.plan and again.sidecar.build_seconds == s.build_seconds
    other = build_engine(own_bundle, RTX, BuildConfig(batch=(1, 2, 4)))
    assert not other.reused and other.plan != r.plan and other.sidecar.key != s.key
    assert "model-engine-file=" in r.deepstream.read_text() and "network-type=100" in r.deepstream.read_text()
    assert "--maxShapes=image:2x128x128x3" in r.trtexec and r.trtexec.startswith("tensorrt_rtx ")


def test_uint8_input_into_transpose_is_rejected_with_the_parsers_message(tmp_path):
    """The graph every bundle had before this fix: TensorRT accepts a uint8 input only into a Cast."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["t"], ["out"], to=TensorProto.FLOAT),
        ],
        "old_preprocess",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(TensorRTParseError, match=r"old\.onnx.*rejected(.|\n)*Transpose(.|\n)*UInt8"):
        check_onnx(path)


def test_every_uint8_input_feeds_only_a_cast(bundle):
    import onnx

    g = onnx.load(str(bundle / "model.onnx")).graph
    for inp in g.input:
        if inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
            users = [n.op_type for n in g.node if inp.name in n.input]
            assert users == ["Cast"], users


def test_interrupted_build_leaves_no_plan(own_bundle, monkeypatch):
    """A first build stopped at its last rename leaves no NAME.plan, only a sidecar and the staged plan
    it vouches for; the next build finishes the rename. A sidecar alone is never reused."""
    import edgesdk.fsutil as fsutil

    real = os.replace

    def interrupted(src, dst):
        if str(dst).endswith(".plan"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_engine(own_bundle, RTX)
    folder = own_bundle.path / "engines"
    assert not list(folder.glob("*.plan")) and not list(folder.glob(".*tmp"))
    (side_path,) = folder.glob("*.json")
    staged = staged_plan(side_path.with_suffix(".plan"))
    assert staged.is_file()
    monkeypatch.setattr(fsutil.os, "replace", real)
    r = build_engine(own_bundle, RTX)
    assert r.reused and not staged.exists() and load_plan_sidecar(r.plan).plan_sha256 == r.sidecar.plan_sha256
    r.plan.unlink()
    assert not build_engine(own_bundle, RTX).reused  # a sidecar alone is never reused


def test_rebuild_stopped_before_any_rename_keeps_a_matching_pair(own_bundle, monkeypatch):
    """--force over a plan of the same key, stopped before its 1st, 2nd, ... rename into engines/ until
    one run finishes: after every stop the loader finds the plan the sidecar vouches for and reads
    exactly those bytes. The previous plan is made a byte longer (its sidecar to match) so that a new
    sidecar beside it can never pass by chance: rebuilt plans are equal in some builds."""
    r = build_engine(own_bundle, RTX)
    old = r.plan.read_bytes() + b"\0"
    r.plan.write_bytes(old)
    side_path = r.plan.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side.update(plan_sha256=hashlib.sha256(old).hexdigest(), plan_bytes=len(old))
    side_path.write_text(json.dumps(side))
    real, folder = os.replace, r.plan.parent
    done, stop = None, 0
    while done is None:
        stop += 1
        seen = []

        def interrupted(src, dst):
            if os.path.dirname(os.path.abspath(dst)) == str(folder):
                seen.append(dst)
                if len(seen) == stop:
                    raise KeyboardInterrupt
            return real(src, dst)

        monkeypatch.setattr(os, "replace", interrupted)
        try:
            done = build_engine(own_bundle, RTX, force=True)
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(os, "replace", real)
        s = load_plan_sidecar(r.plan)
        assert hashlib.sha256(read_plan(r.plan, s)).hexdigest() == s.plan_sha256, f"stopped before rename {stop}"
        assert not list(folder.glob(".*tmp"))
    assert stop > 3 and not staged_plan(r.plan).exists() and r.plan.read_bytes() != old
    assert load_plan_sidecar(r.plan) == done.sidecar


def test_mismatched_or_corrupt_plans_are_refused_by_name(own_bundle, tmp_path):
    r = build_engine(own_bundle, RTX)
    assert find_engine(own_bundle, module="tensorrt_rtx", version=trt.__version__) == r.plan
    with pytest.raises(EngineError, match=r"built with TensorRT .*, running 10\.3\.0\.30"):
        find_engine(own_bundle, module="tensorrt_rtx", version="10.3.0.30")
    side = json.loads(r.plan.with_suffix(".json").read_text())
    side["gpu"] = {"name": "Orin", "compute_capability": "8.7"}
    r.plan.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(EngineError, match=r"compute capability 8\.7 \(Orin\), running on 8\.9"):
        find_engine(
            own_bundle,
            module="tensorrt_rtx",
            version=trt.__version__,
            gpu={"name": "RTX 4070", "compute_capability": "8.9"},
        )
    data = bytearray(r.plan.read_bytes())
    data[100] ^= 0xFF
    r.plan.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"\.plan: .* differ from its sidecar"):
        load_plan_sidecar(r.plan)
    r.plan.unlink()
    with pytest.raises(EngineError, match="plan not found"):
        load_plan_sidecar(r.plan)


def test_sidecar_of_another_bundle_is_refused(own_bundle, tmp_path):
    r = build_engine(own_bundle, RTX)
    m = json.loads((own_bundle.path / "manifest.json").read_text())
    m["files"]["model.onnx"]["sha256"] = "0" * 64  # as if re-exported: another model.onnx
    other = Bundle(own_bundle.path, own_bundle.manifest.from_dict(m))
    with pytest.raises(EngineError, match="another bundle, or re-exported"):
        find_engine(other, module="tensorrt_rtx", version=trt.__version__)
    assert r.plan.is_file()


def test_build_refuses_what_the_device_cannot_do(own_bundle):
    with pytest.raises(ValueError, match="runs bundles in ONNX Runtime"):
        build_engine(own_bundle, load_profile("cpu"))
    with pytest.raises(ValueError, match="orin-nano has 0 DLA cores"):
        build_engine(own_bundle, load_profile("orin-nano"), BuildConfig(dla_core=0))
    if "tensorrt" not in sys.modules and not _has("tensorrt"):
        with pytest.raises(TensorRTUnavailable, match="python3-libnvinfer"):
            build_engine(own_bundle, load_profile("orin-nx"))


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def test_tensorrt_85_gets_flags_from_the_graph_precision():
    assert is_strongly_typed("tensorrt_rtx", "1.7.1") and is_strongly_typed("tensorrt", "10.3.0.30")
    assert not is_strongly_typed("tensorrt", "8.5.2.2")
    from pathlib import Path

    shapes = {"input": "image", "min": [1, 8, 8, 3], "opt": [1, 8, 8, 3], "max": [4, 8, 8, 3]}
    cmd = trtexec_command(
        Path("m.onnx"),
        Path("e.plan"),
        shapes,
        "tensorrt",
        False,
        ("FP16", "INT8", "GPU_FALLBACK"),
        BuildConfig(dla_core=0),
        Path("t.cache"),
    )
    assert cmd.startswith("/usr/src/tensorrt/bin/trtexec ") and "--fp16 --int8" in cmd
    assert "--useDLACore=0 --allowGPUFallback" in cmd and "--stronglyTyped" not in cmd
    typed = trtexec_command(Path("m.onnx"), Path("e.plan"), shapes, "tensorrt", True, (), BuildConfig(), None)
    assert "--stronglyTyped" in typed and "--fp16" not in typed


def test_build_cli_prints_the_table_and_reuses(own_bundle):
    r = cli("build", own_bundle.path, "--device", "rtx", "--batch", "1:1:2")
    assert "engine for rtx" in r.stdout and "tensorrt_rtx" in r.stdout and "trtexec equivalent" in r.stdout
    r2 = cli("build", own_bundle.path, "--device", "rtx", "--batch", "1:1:2", "--json")
    assert json.loads(r2.stdout)["reused"] is True
    bad = cli("build", own_bundle.path, "--device", "nosuch", check=False)
    assert bad.returncode == 2 and "'nosuch': no such device" in bad.stderr and "orin-nx" in bad.stderr
    bad = cli("build", own_bundle.path, "--device", "rtx", "--batch", "4:1:2", check=False)
    assert bad.returncode == 2 and "MIN:OPT:MAX" in bad.stderr


def test_parity_frames_travel_with_the_bundle(bundle):
    frames = Bundle.open(bundle).parity_frames()
    assert frames.dtype == np.uint8 and frames.shape[1:] == (128, 128, 3) and len(frames) >= 2
