"""Opset 17 for TensorRT 8.5 (JetPack 5: Xavier NX/AGX): every zoo graph lowered from torch's opset 18,
checked against torch by the parity gate, accepted by `device check --device xavier-nx`, and parsed and
built into a real TensorRT-for-RTX engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgesdk.bundle import Bundle
from edgesdk.compile.onnx import ExportError, ExportOptions, export_onnx
from edgesdk.compile.opset import OpsetError, export_opset, lower_to_17
from edgesdk.devices import check_bundle, load_profile
from edgesdk.errors import EdgesdkError


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)


def opset_of(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def model18(nodes, inits=(), out_shape=("n", 2)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        initializer=list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_lowering_moves_reduce_axes_to_attributes_and_keeps_pad_and_resize():
    """The three kinds of node our graphs have that opset 18 changed, lowered to the same numbers."""
    axes = helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("v", TensorProto.INT64, [2], [2, 3]))
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
        helper.make_node("Resize", ["p", "", "scales"], ["r"], mode="linear", antialias=0),
        helper.make_node("ReduceMax", ["r", "axes"], ["y"], keepdims=0),
        axes,
    ]
    m18 = model18([nodes[3]] + nodes[:3], [pads, scales])
    m17 = lower_to_17(m18, "m.onnx")
    onnx.checker.check_model(m17, full_check=True)
    assert [o.version for o in m17.opset_import] == [17] and [o.version for o in m18.opset_import] == [18]
    red = next(n for n in m17.graph.node if n.op_type == "ReduceMax")
    assert list(red.input) == ["r"] and {a.name: helper.get_attribute_value(a) for a in red.attribute}["axes"] == [2, 3]
    assert not any(n.op_type == "Constant" for n in m17.graph.node)  # its only reader took it as an attribute
    assert not any(a.name == "antialias" for n in m17.graph.node for a in n.attribute)
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(m17, x), run(m18, x))


@pytest.mark.parametrize(
    "node, inits, match",
    [
        (
            helper.make_node("Pad", ["x", "pads", "", "ax"], ["y"]),
            [
                helper.make_tensor("pads", TensorProto.INT64, [2], [1, 1]),
                helper.make_tensor("ax", TensorProto.INT64, [1], [3]),
            ],
            r"m\.onnx: Pad node 'odd' uses input 'ax', new in opset 18",
        ),
        (
            helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", antialias=1),
            [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 0.5, 0.5])],
            r"Resize node 'odd' sets antialias=1, which opset 17 cannot express",
        ),
        (helper.make_node("ReduceMean", ["x", "x"], ["y"]), [], r"ReduceMean node 'odd' takes axes from a computed"),
        (helper.make_node("Mish", ["x"], ["y"]), [], r"Mish \(node 'odd'\) is new in opset 18"),
    ],
)
def test_lowering_refuses_what_opset_17_cannot_say(node, inits, match):
    node.name = "odd"
    with pytest.raises(OpsetError, match=match):
        lower_to_17(model18([node], inits), "m.onnx")
    assert issubclass(OpsetError, EdgesdkError)


def test_the_device_profile_caps_the_opset():
    assert export_opset(18, "xavier-nx") == 17 and export_opset(18, "orin-nx") == 18 and export_opset(17) == 17
    assert export_opset(18, "cpu") == 18  # no TensorRT parser, no cap
    with pytest.raises(OpsetError, match="opset 16: export writes opset 17 or newer"):
        export_opset(16)
    with pytest.raises(FileNotFoundError, match="no such device profile"):
        export_opset(18, "xavier-nz")


def test_every_zoo_model_exports_at_opset_17_and_passes_the_xavier_check(zoo, tmp_path):
    """Fails before opset 17 existed: the export refused (torch wrote 18), so no Xavier bundle at all."""
    nx = load_profile("xavier-nx")
    for model, (run_dir, b18) in zoo.items():
        out = export_onnx(run_dir, tmp_path / model, ExportOptions(device="xavier-nx"))
        b = Bundle.open(out)
        assert opset_of(b.model_path) == 17 and b.manifest.graph["opset"] == 17
        assert all(opset_of(f) == 17 for f in out.glob("*.onnx"))  # features.onnx (adapt) too
        assert b.manifest.provenance["opset"] == 17 and b.manifest.provenance["device"] == "xavier-nx"
        par = json.loads((out / "parity.json").read_text())
        assert par["passed"] and par["score_max_rel_err"] <= 1e-4 and par["map_max_rel_err"] <= 1e-4, model
        checks = {c.name: c for c in check_bundle(b, nx)}
        assert checks["onnx opset"].status == "ok" and "opset 17 <= 17" in checks["onnx opset"].detail, model
        old = {c.name: c for c in check_bundle(Bundle.open(b18), nx)}
        assert old["onnx opset"].status == "fail" and "graph is opset 18" in old["onnx opset"].detail


def test_cli_export_for_xavier_then_device_check_passes(run_dir, bundle, tmp_path):
    r = cli("export", run_dir, "--out", tmp_path / "b17", "--device", "xavier-nx")
    assert r.returncode == 0, r.stderr
    assert opset_of(tmp_path / "b17/model.onnx") == 17
    r = cli("device", "check", tmp_path / "b17", "--device", "xavier-nx")
    assert r.returncode == 0 and "will run on xavier-nx" in r.stdout, r.stdout + r.stderr
    r = cli("device", "check", bundle, "--device", "xavier-nx")
    assert r.returncode == 1 and "graph is opset 18" in r.stdout and "up to 17" in r.stdout
    r = cli("export", run_dir, "--out", tmp_path / "b16", "--opset", "16")
    assert r.returncode == 2 and "edgesdk export: error: --opset 16: opset must be >= 17" in r.stderr
    assert not (tmp_path / "b16").exists()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_lower_precision_graphs_stay_at_opset_17(run_dir, tmp_path, precision):
    opts = ExportOptions(precision=precision, target="tensorrt", n_calib=8, max_drop=0.2, opset=17)
    try:
        out = export_onnx(run_dir, tmp_path / precision, opts)
    except ExportError as e:  # a gate that refuses writes nothing; the opset is what this test is about
        assert "opset" not in str(e), e
        pytest.skip(f"{precision} gate refused this tiny run: {e}")
    b = Bundle.open(out)
    assert opset_of(b.model_path) == 17 and b.manifest.graph["opset"] == 17 and b.manifest.precision == precision
    assert json.loads((out / "parity.json").read_text())["passed"]


def test_export_refuses_a_graph_that_misses_the_opset_asked(run_dir, tmp_path, monkeypatch):
    """The guard behind the lowering: were it to leave the graph at 18, no bundle would claim 17."""
    import edgesdk.compile.onnx as export

    monkeypatch.setattr(export, "lower_file", lambda path, where: None)
    with pytest.raises(ExportError, match="asked for ONNX opset 17, but torch's exporter wrote opset 18"):
        export_onnx(run_dir, tmp_path / "b17", ExportOptions(opset=17))
    assert not (tmp_path / "b17").exists()


def test_an_opset_17_bundle_builds_a_real_tensorrt_engine(run_dir, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (tensorrt-rtx-cu12) is in the dev extra")
    from edgesdk.compile.trt import build_engine
    from edgesdk.spec import BuildConfig

    out = export_onnx(run_dir, tmp_path / "b17", ExportOptions(opset=17))
    b = Bundle.open(shutil.copytree(out, tmp_path / "own"))
    assert opset_of(b.model_path) == 17
    r = build_engine(b, load_profile("rtx"), BuildConfig(batch=(1, 1, 2)))
    assert r.plan.is_file() and r.plan.stat().st_size == r.sidecar.plan_bytes > 1_000_000
    assert r.sidecar.onnx_sha256 == b.onnx_sha256 and r.sidecar.tensorrt_version == trt.__version__


def test_recipes_and_run_records_name_a_device_only_by_its_profile_name(tmp_path):
    """A recipe or run.json is a file: the device it names is looked up in devices/, never read as a path."""
    from edgesdk.recipe import load_recipe, resolve_export
    from edgesdk.spec import SpecError

    f = tmp_path / "nx.toml"
    f.write_text('model = "padim"\n[export]\ndevice = "xavier-nx"\n')
    assert resolve_export(tmp_path, f).device == "xavier-nx"
    f.write_text('model = "padim"\n[export]\ndevice = "/etc/my.toml"\n')
    with pytest.raises(SpecError, match=r"nx\.toml \[export\]: device must be a shipped device profile's name"):
        load_recipe(f)
    f.write_text('model = "padim"\n[export]\nopset = 13\n')
    with pytest.raises(SpecError, match=r"nx\.toml \[export\]: opset must be >= 17"):
        load_recipe(f)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"recipe": {"export": {"device": "../../x"}}}))
    with pytest.raises(SpecError, match=r"run\.json \[export\]: device must be"):
        resolve_export(run)
