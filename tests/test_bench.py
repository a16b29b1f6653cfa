"""`edgesdk bench`: one table over bundles x backends x batches; rows that cannot run say why."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edgesdk.devices import detect
from edgesdk.measure.benchmark import BenchOptions
from edgesdk.measure.timing import harness_overhead_ms, timed_calls

KEYS = {
    "backend",
    "precision",
    "status",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "fps",
    "cold_start_ms",
    "peak_rss_mb",
    "rss_mb",
    "image_auroc",
}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesdk", "bench", *map(str, args)], capture_output=True, text=True)


def test_bench_table_json_markdown_and_plot(zoo, tiny_data, tmp_path):
    bundles = [zoo["padim"][1], zoo["stfpm"][1]]
    r = cli(
        *bundles,
        "--data",
        tiny_data / "brick",
        "--batch",
        "1,2",
        "--iters",
        "20",
        "--json",
        tmp_path / "b.json",
        "--md",
        tmp_path / "b.md",
        "--plot",
        tmp_path / "b.png",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "b.json").read_text())
    assert set(out) >= {"rows", "provenance", "harness_overhead_ms"} and out["provenance"]["cores"] >= 1
    assert out["provenance"]["int8_isa"] == detect()["int8_isa"]  # which INT8 instructions this machine had
    rows = out["rows"]
    assert all(KEYS <= set(row) for row in rows) and len(rows) == 2 * 3 * 2
    ort = [x for x in rows if x["backend"] == "onnxruntime"]
    assert all(x["status"] == "ok" and 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] for x in ort)
    assert all(x["image_auroc"] > 0.85 and x["cold_start_ms"] > 0 and x["peak_rss_mb"] > 10 for x in ort)
    b2 = next(x for x in ort if x["batch"] == 2 and x["model"] == "padim")
    assert abs(b2["fps"] - 2000 / b2["mean_ms"]) < 1e-6  # throughput at the batch
    torch_row = next(x for x in rows if x["backend"] == "torch" and x["batch"] == 1 and x["model"] == "padim")
    assert torch_row["vs_torch"] == 1.0 and next(x for x in ort if x["batch"] == 1)["vs_torch"] > 0
    trt = [x for x in rows if x["backend"] == "tensorrt"]
    if not any(x["status"] == "ok" for x in trt):  # no GPU here: a row, not a crash
        assert all(x["status"] == "unavailable" and x["reason"] and x["p50_ms"] is None for x in trt)
        if _has("tensorrt_rtx"):  # the build is still reported
            assert all(x["engine_mb"] > 0.5 and x["engine_build_s"] > 0 for x in trt)
    md = (tmp_path / "b.md").read_text()
    # Rows name their bundle's folder: two bundles of one model and precision stay tellable apart.
    assert "| bundle | model | backend |" in md and f"| {zoo['stfpm'][1].name} | stfpm |" in md
    assert f"{zoo['padim'][1].name} " in r.stdout
    img = cv2.imread(str(tmp_path / "b.png"))
    assert img is not None and img.shape[1] == 900 and (img < 128).any()


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def test_bad_input_is_a_clear_error_and_good_rows_are_kept(bundle, tmp_path):
    r = cli(bundle, "--backends", "onnxruntime,tflite")
    assert r.returncode == 2 and "unknown backend 'tflite'" in r.stderr
    r = cli(bundle, "--batch", "0")
    assert r.returncode == 2 and "every batch must be >= 1" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.onnx").write_bytes(b"truncated")
    r = cli(
        broken, bundle, "--backends", "onnxruntime", "--iters", "5", "--no-cold-start", "--json", tmp_path / "o.json"
    )
    assert r.returncode == 1
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert rows[0]["status"] == "error" and "broken/model.onnx" in rows[0]["reason"]
    assert rows[1]["status"] == "ok" and rows[1]["p50_ms"] > 0


def test_the_timing_loop_rotates_feeds_and_leaves_untimed_calls_out():
    """compare, the export gate, the bench rounds and time_runner all time through timed_calls."""

    class Recorder:
        def __init__(self):
            self.seen = []

        def infer(self, feed):
            self.seen.append(feed["i"])

    feeds = [{"i": i} for i in range(3)]
    r, ms = Recorder(), [1.0]
    assert timed_calls(r, feeds, 5, start=2, untimed=2, out=ms) is ms
    assert r.seen == [2, 0, 1, 2, 0] and len(ms) == 1 + 3 and all(x >= 0 for x in ms)


def test_a_runner_used_before_load_or_after_close_says_so(run_dir, bundle):
    import numpy as np

    from edgesdk.backends import OnnxRuntimeRunner
    from edgesdk.backends.torch import TorchRunner

    feeds = {"image": np.zeros((1, 128, 128, 3), np.uint8)}
    for runner in (OnnxRuntimeRunner(bundle / "model.onnx", "CPUExecutionProvider"), TorchRunner(run_dir)):
        with pytest.raises(RuntimeError, match=f"{runner.name} runner: not loaded; call load"):
            runner.infer(feeds)
        with runner:
            assert runner.infer(feeds)["score"].shape == (1,) and runner.inputs[0].shape[1:] == (128, 128, 3)
        with pytest.raises(RuntimeError, match="not loaded"):
            _ = runner.outputs


def test_harness_overhead_is_measured():
    overhead = harness_overhead_ms()
    assert math.isfinite(overhead) and overhead > 0


def test_options_are_checked():
    with pytest.raises(ValueError, match="every batch must be >= 1"):
        BenchOptions(batches=(1, 0))


def test_peak_rss_is_the_cold_start_process_alone(bundle):
    """ru_maxrss would count the parent's pages copied by fork; the bench reads VmHWM after exec."""
    import numpy as np

    from edgesdk.measure.benchmark import cold_start

    big = np.ones(100_000_000)  # 800 MB resident in this (parent) process
    ms, mb, now = cold_start("onnxruntime", bundle, "")
    assert big[-1] == 1 and ms > 0 and 20 < mb < 600
    # Resident after the first result, the model still open: at most the peak (load holds more), and
    # more than the interpreter alone.
    assert 20 < now <= mb


COUNT_RUNS = """
import atexit, os, onnxruntime
calls = []
run = onnxruntime.InferenceSession.run
def counted(self, *a, **k):
    calls.append(1)
    return run(self, *a, **k)
onnxruntime.InferenceSession.run = counted
atexit.register(lambda: open(os.environ["EDGESDK_TEST_RUNS"], "w").write(str(len(calls))))
"""


def test_cold_start_reads_memory_of_a_running_detector_not_of_its_first_result(bundle, tmp_path, monkeypatch):
    """ONNX Runtime's arena settles after the first call (memory patterns add a block on the second):
    the RSS the bench reports is read after several results of the real session in the child."""
    import os

    from edgesdk.measure.benchmark import STEADY_RESULTS, cold_start

    (tmp_path / "sitecustomize.py").write_text(COUNT_RUNS)  # the child process counts its session's runs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("EDGESDK_TEST_RUNS", str(tmp_path / "runs.txt"))
    ms, mb, now = cold_start("onnxruntime", bundle, "")
    assert ms is not None and now is not None and 20 < now <= mb
    assert int((tmp_path / "runs.txt").read_text()) == STEADY_RESULTS >= 5


PYC_PROBE = """
import importlib.util, os, sys
src = os.path.join(os.environ["EDGESDK_TEST_SRC"], "edgesdk", "bundle.py")
cached = importlib.util.cache_from_source(src)  # where this interpreter reads edgesdk.bundle's bytecode
with open(os.environ["EDGESDK_TEST_PYC"], "a") as f:
    f.write(f"{sys.flags.dont_write_bytecode} {cached.startswith(sys.pycache_prefix or '//')} {os.path.exists(cached)}\\n")
"""


def test_cold_start_is_timed_with_compiled_bytecode_as_on_a_device(bundle, tmp_path, monkeypatch):
    """With PYTHONDONTWRITEBYTECODE set (CI's environment), every start would compile edgesdk's sources;
    pip compiles them on a device. The bench's first child writes the bytecode under a private prefix
    and the second, timed one finds it there."""
    import os

    import edgesdk
    from edgesdk.measure.benchmark import cold_start

    (tmp_path / "sitecustomize.py").write_text(PYC_PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("EDGESDK_TEST_SRC", str(Path(edgesdk.__file__).parents[1]))
    monkeypatch.setenv("EDGESDK_TEST_PYC", str(tmp_path / "pyc.txt"))
    ms, _, _ = cold_start("onnxruntime", bundle, "")
    assert ms is not None and ms > 0
    # Two children, bytecode written (not the caller's no-write flag), under the private prefix; the
    # timed one starts with edgesdk.bundle's already there.
    assert (tmp_path / "pyc.txt").read_text().splitlines() == ["0 True False", "0 True True"]


def test_e2e_adds_the_pipeline_row_beside_the_model_only_row(bundle, tiny_data, tmp_path):
    r = cli(
        bundle,
        "--backends",
        "onnxruntime",
        "--iters",
        "20",
        "--no-cold-start",
        "--e2e",
        f"file://{tiny_data / 'conveyor_brick.mkv'}",
        "--json",
        tmp_path / "e.json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    model, pipe = rows
    assert pipe["backend"] == "pipeline (onnxruntime)" and pipe["frames"] == 60 and pipe["fps"] > 0
    assert {"read", "preprocess", "infer", "postprocess", "total"} <= set(pipe["stage_p50_ms"])
    assert abs(pipe["share_of_model_only_fps"] - pipe["fps"] / model["fps"]) < 1e-9
    assert "of model-only" in r.stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")
def test_a_run_pinned_to_fewer_cores_records_them():
    """ONNX Runtime sizes its pool by the process's CPU affinity: a `taskset -c 0` run measured 1 core,
    and its provenance must say so, not the machine's count."""
    code = (
        "import os, json; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from edgesdk.measure.benchmark import provenance; from edgesdk.measure.bench_report import cores_text;"
        "p = provenance(); print(json.dumps([p['cores'], p['cores_usable'], cores_text(p)]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    total, used, text = json.loads(r.stdout)
    assert used == 1 and text == ("1 cores" if total == 1 else f"1 of {total} cores")
