"""Camera augmentation: the training images again as the line's codec delivers them (real mp4v and
JPEG round trips), recorded in the run; a model fitted with it scores codec frames as good."""

import json

import cv2
import numpy as np
import pytest

from edgesdk.data import mvtec
from edgesdk.data.camera import parse, simulate
from edgesdk.train import TrainOptions, train


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


def test_codecs_really_change_the_frames_and_keep_their_order(tiny_data):
    x = mvtec.read_batch(mvtec.good_images(tiny_data / "brick")[:6], (128, 128))
    for kind, lo, hi in (("mp4v", 22, 48), ("jpeg:30", 22, 40), ("jpeg:95", 32, 60)):
        y = simulate(x, kind)
        assert y.shape == x.shape and y.dtype == np.uint8
        p = [[psnr(a, b) for b in y] for a in x]
        assert all(lo < p[i][i] < hi for i in range(len(x))), (kind, p)
        assert [int(np.argmax(row)) for row in p] == list(range(len(x)))  # frame i came back as frame i
    assert psnr(x[0], simulate(x, "jpeg:30")[0]) < psnr(x[0], simulate(x, "jpeg:95")[0])


def test_unknown_kinds_are_named():
    assert parse("mp4v,jpeg:70") == ("mp4v", "jpeg:70") and parse(None) == ()
    for bad in ("h264", "jpeg", "jpeg:0", "mp4v:3"):
        with pytest.raises(ValueError, match=f"camera augmentation '{bad}': known kinds are mp4v, jpeg:Q"):
            parse(bad)


def test_a_run_fitted_with_the_codec_records_it_and_scores_codec_frames_lower(tiny_data, run_dir, tmp_path):
    # run_dir (the session's PaDiM, fitted on PNGs) vs the same fit with the mp4v copies added.
    out = train(
        tiny_data / "brick",
        tmp_path / "cam",
        "padim",
        config={"input_size": [128, 128]},
        opts=TrainOptions(camera=("mp4v",)),
        quiet=True,
    )
    run = json.loads((out / "run.json").read_text())
    base = json.loads((run_dir / "run.json").read_text())
    assert run["data"]["camera_augmentation"] == ["mp4v"]
    assert run["data"]["n_fit"] == base["data"]["n_fit"] and run["fit"]["n_images"] == 2 * base["data"]["n_fit"]
    from edgesdk.train import load_run

    good = mvtec.read_batch(mvtec.good_images(tiny_data / "brick")[:16], (128, 128))
    coded = simulate(good, "mp4v")
    scores = {}
    for name, d in (("png", run_dir), ("cam", out)):
        net, _ = load_run(d)
        import torch

        with torch.no_grad():
            scores[name] = net(torch.from_numpy(coded))[0].numpy()
    # Codec frames of good parts look less anomalous to the model that saw the codec.
    assert np.median(scores["cam"]) < np.median(scores["png"]), scores
