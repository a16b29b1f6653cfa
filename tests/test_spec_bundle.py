import json
import shutil

import pytest

from edgesdk.bundle import Bundle, BundleError
from edgesdk.spec import Manifest, SpecError


def copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_manifest_roundtrip(bundle):
    m = Manifest.load(bundle / "manifest.json")
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.input.dtype == "uint8" and m.input.layout == "NHWC" and m.input.color == "BGR"
    # + what `edgesdk adapt` needs on the device (PaDiM: its features graph and fit statistics)
    assert {f for f in m.files} == {
        "model.onnx",
        "parity.json",
        "parity_frames.npy",
        "features.onnx",
        "adapt_state.npz",
    }
    assert m.adapt is not None and m.adapt.kind == "padim" and m.adapt.state == "adapt_state.npz"
    assert m.graph["opset"] == 18 and m.graph["ops"]["Cast"] >= 1 and m.graph["nodes"] > 50
    assert m.threshold.source == "good_holdout_k_sigma"


def test_edited_model_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 .* does not match"):
        Bundle.open(b)


def flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))


def test_detector_verifies_what_it_reads_and_defers_the_rest(bundle, tmp_path):
    import numpy as np

    from edgesdk.stream.detector import Detector

    b = copy(bundle, tmp_path)
    for name in ("adapt_state.npz", "features.onnx", "parity_frames.npy"):  # read by adapt, verify, compare
        flip(b / name)
    with Detector(b) as det:  # a device process's start hashes model.onnx and the small files only
        assert det.predict(np.zeros((*det.size, 3), np.uint8)).anomaly_map.shape == det.size
        with pytest.raises(BundleError, match=r"parity_frames\.npy: sha256 .* does not match"):
            det.bundle.parity_frames()  # ... and a deferred file when it is first read
    with pytest.raises(BundleError, match=r"(adapt_state\.npz|features\.onnx|parity_frames\.npy): sha256 .* does not"):
        Bundle.open(b)  # what adapt, bench and package open: every file
    for name in ("model.onnx", "parity.json"):
        c = copy(bundle, tmp_path / name)
        flip(c / name)
        with pytest.raises(BundleError, match=rf"{name}: sha256 .* does not match"):
            Detector(c)


def test_truncated_model_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:1000])
    with pytest.raises(BundleError, match="1000 bytes"):
        Bundle.open(b)


def test_missing_manifest_or_file_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    (b / "parity.json").unlink()
    with pytest.raises(BundleError, match="parity.json: listed in manifest.json but missing"):
        Bundle.open(b)
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(b)
    with pytest.raises(BundleError, match="not found"):
        Bundle.open(tmp_path / "nope")


def test_wrong_schema_version_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SpecError, match="schema_version 99 is not supported"):
        Bundle.open(b)


def test_malformed_manifest_names_the_file_and_field(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    del m["threshold"]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SpecError, match=r"manifest\.json: missing field 'threshold'"):
        Bundle.open(b)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        Bundle.open(b)


def test_a_manifest_cannot_defer_the_model_a_detector_runs(bundle, tmp_path):
    """adapt's fields name bundle files; naming model.onnx or drift.json there must not exempt it from
    the detector's start-up check."""
    from edgesdk.stream.detector import Detector

    for name in ("model.onnx", "parity.json"):
        b = copy(bundle, tmp_path / name)
        m = json.loads((b / "manifest.json").read_text())
        m["adapt"]["features"] = name
        (b / "manifest.json").write_text(json.dumps(m))
        assert Bundle.open(b).manifest.adapt.features == name  # a manifest that opens as it is
        flip(b / name)
        with pytest.raises(BundleError, match=rf"{name}: sha256 .* does not match"):
            Detector(b)
