"""Shared fixtures: one tiny synthetic data set, one trained run and one bundle per test session
(128 px images so the whole suite stays within minutes on 2 cores)."""

from __future__ import annotations

import pytest

from edgesdk.data.synth import SynthConfig

TINY = SynthConfig(size=128, n_train=100, n_test_good=6, n_test_per_defect=3, seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from edgesdk.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("data")
    synth_dataset(root, ["brick"], TINY)
    return root


@pytest.fixture(scope="session")
def run_dir(tiny_data, tmp_path_factory):
    from edgesdk.train import train

    return train(
        tiny_data / "brick", tmp_path_factory.mktemp("runs") / "brick", config={"input_size": [128, 128]}, quiet=True
    )


@pytest.fixture(scope="session")
def bundle(run_dir, tmp_path_factory):
    from edgesdk.compile.onnx import export_onnx

    return export_onnx(run_dir, tmp_path_factory.mktemp("bundles") / "brick")


# Every zoo model at test size (128 px; stfpm on a step budget that keeps the suite fast).
ZOO_CONFIGS = {
    "padim": {"input_size": [128, 128]},
    "patchcore": {"input_size": [128, 128], "coreset_ratio": 0.02},
    "stfpm": {"input_size": [128, 128], "steps": 400, "seconds": 3600.0},  # steps decide, not the clock
}


@pytest.fixture(scope="session")
def zoo(tiny_data, run_dir, bundle, tmp_path_factory):
    """{model: (run_dir, bundle_dir)} for every zoo model, trained and exported once per session."""
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.train import train

    out = {"padim": (run_dir, bundle)}
    root = tmp_path_factory.mktemp("zoo")
    for model, cfg in ZOO_CONFIGS.items():
        if model in out:
            continue
        run = train(tiny_data / "brick", root / f"run_{model}", model, config=cfg, quiet=True)
        out[model] = (run, export_onnx(run, root / f"bundle_{model}"))
    return out


# The segmenter at test size: a few steps on small crops (its accuracy is measured in docs/ZOO.md).
SEG_CONFIG = {"input_size": [128, 128], "crop": 64, "steps": 60, "seconds": 3600.0, "reuse": 2}


@pytest.fixture(scope="session")
def seg(tiny_data, tmp_path_factory):
    """(run_dir, bundle_dir) of the supervised segmenter trained on tiny_data's brick/labels."""
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.train import train

    root = tmp_path_factory.mktemp("seg")
    run = train(
        tiny_data / "brick",
        root / "run",
        "segmenter",
        config=SEG_CONFIG,
        quiet=True,
        labels=tiny_data / "brick" / "labels",
    )
    return run, export_onnx(run, root / "bundle")
