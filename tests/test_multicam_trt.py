"""Many cameras on TensorRT: `build --max-batch N` gives the engine an optimization profile up to N
(real TensorRT for RTX builds, ahead of time on this CPU); a run of N sources picks a plan whose profile
takes N frames a call, and refuses, naming the plan and its profile, when no plan does. On a machine
with an NVIDIA GPU the N sources are scored by the engine, batched, as ONNX Runtime scores them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgesdk.backends.tensorrt import nvidia_gpu_present
from edgesdk.bundle import Bundle
from edgesdk.compile.trt import build_engine
from edgesdk.devices import load_profile
from edgesdk.engines import EngineError, find_engine, load_plan_sidecar
from edgesdk.spec import BuildConfig
from edgesdk.stream.detector import DetectorOptions
from edgesdk.stream.pipeline import run_stream

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
LINE = "synth://conveyor?defects=0"
THREE = [f"{LINE}&seed=1&name=a", f"{LINE}&seed=2&name=b", f"{LINE}&seed=3&name=c"]
TRT = DetectorOptions(backend="tensorrt")


@pytest.fixture(scope="module")
def engines(bundle, tmp_path_factory):
    """A private bundle copy with two real plans: the default-sized profile 1:1:2 and `--max-batch 4`'s."""
    b = Bundle.open(
        shutil.copytree(bundle, tmp_path_factory.mktemp("trt") / "b", ignore=shutil.ignore_patterns("engines"))
    )
    small = build_engine(b, load_profile("rtx"), BuildConfig(batch=(1, 1, 2))).plan
    argv = ["build", b.path, "--device", "rtx", "--max-batch", "4", "--json"]
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return b, small, json.loads(r.stdout)


def test_build_max_batch_gives_the_engine_a_profile_up_to_n(engines):
    b, small, r = engines
    side = load_plan_sidecar(r["plan"])
    assert side.profile["max"][0] == 4 and side.profile["opt"][0] == 4 and side.profile["min"][0] == 1
    assert side.strongly_typed and side.onnx_sha256 == b.onnx_sha256
    assert load_plan_sidecar(small).profile["max"][0] == 2


def test_a_run_of_n_sources_picks_the_plan_whose_profile_takes_n(engines):
    b, small, r = engines
    v = trt.__version__
    assert str(find_engine(b, module="tensorrt_rtx", version=v, batch=3)) == r["plan"]
    with pytest.raises(EngineError, match=r"max-batch 5"):
        find_engine(b, module="tensorrt_rtx", version=v, batch=5)


def test_a_run_of_more_sources_than_the_profile_takes_is_refused_naming_plan_and_profile(engines, tmp_path):
    # Before: the plan was picked whatever its profile, and a run of 3 sources on a 1:1:2 engine split
    # every batch into calls of 2 and 1, unannounced.
    b, small, _ = engines
    only_small = shutil.copytree(b.path, tmp_path / "b", ignore=shutil.ignore_patterns("*-b1x4x4-*"))
    with pytest.raises(EngineError, match=rf"{small.name}: its optimization profile takes batches 1:1:2.*up to 3"):
        run_stream(only_small, THREE, [], TRT, max_frames=2)
    with pytest.raises(EngineError, match=rf"{small.name}: its optimization profile takes batches 1:1:2.*max-batch 3"):
        run_stream(b, THREE, [], DetectorOptions(backend="tensorrt", engine=str(small)), max_frames=2)
    argv = ["run", only_small, "--backend", "tensorrt", "--max-frames", 2, "--sink", f"jsonl://{tmp_path / 'r.jsonl'}"]
    argv += [x for s in THREE for x in ("--source", s)]
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True)
    assert r.returncode == 2 and "edgesdk run: error:" in r.stderr and "1:1:2" in r.stderr, r.stderr


@pytest.mark.skipif(not nvidia_gpu_present(), reason="TensorRT engines run on an NVIDIA GPU; none here")
def test_n_sources_are_scored_batched_by_the_engine_as_onnx_runtime_scores_them(engines):
    b, _, _ = engines
    got: list = []
    s = run_stream(b.path, THREE, [], TRT, max_frames=20, on_record=got.append)
    ref: list = []
    run_stream(b.path, THREE, [], max_frames=20, on_record=ref.append)
    assert s["frames"] == 60 and s["mean_batch"] > 1
    key = lambda r: (r["source"], r["frame_id"])  # noqa: E731
    got, ref = sorted(got, key=key), sorted(ref, key=key)
    assert [key(r) for r in got] == [key(r) for r in ref]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in ref], rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not nvidia_gpu_present(), reason="TensorRT engines run on an NVIDIA GPU; none here")
def test_a_sidecar_claiming_a_larger_profile_than_its_plan_is_refused(engines, tmp_path):
    # Before: the run trusted the sidecar's profile: a 1:1:2 plan whose sidecar was edited to say 1:1:4
    # was picked for 3 cameras and fed batches of 3 beyond its real profile.
    b, small, _ = engines
    copy = shutil.copytree(b.path, tmp_path / "b", ignore=shutil.ignore_patterns("*-b1x4x4-*"))
    side = copy / "engines" / small.with_suffix(".json").name
    d = json.loads(side.read_text())
    d["profile"]["max"][0] = 4
    side.write_text(json.dumps(d))
    with pytest.raises(EngineError, match=r"sidecar claims batches up to 4, the plan's own profile takes 2"):
        run_stream(copy, THREE, [], TRT, max_frames=2)
