"""AUPRO, pixel F1/IoU and recall per defect kind through `eval`, `compare` and `bench --data`: the
same bundle on the same data gets the same numbers from each, and they agree with the maps and
scores the device runtime produces."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgesdk.data import mvtec
from edgesdk.measure.metrics import aupro
from edgesdk.stream.detector import Detector

KEYS = ("aupro", "pixel_f1", "pixel_iou", "recall_by_kind")


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"edgesdk {args} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def truth(bundle, tiny_data):
    """Scores, maps and masks of the test set through the Detector, and the expected numbers worked
    out here in plain numpy (defect pixels are `map > threshold`, verdicts `score > threshold`)."""
    items = mvtec.test_items(tiny_data / "brick")
    with Detector(bundle) as det:
        loaded = [mvtec.read_item(it, det.size) for it in items]
        results = [det.predict(img) for img, _ in loaded]
        t = det.threshold
    maps = np.stack([r.anomaly_map for r in results])
    masks = np.stack([m if m is not None else np.zeros(maps.shape[1:], bool) for _, m in loaded])
    pred = maps > t
    tp, fp, fn = (pred & masks).sum(), (pred & ~masks).sum(), (~pred & masks).sum()
    kinds = sorted({it.kind for it in items} - {"good"})
    recall = {k: np.mean([r.score > t for r, it in zip(results, items) if it.kind == k]) for k in kinds}
    return {
        "aupro": aupro(maps, masks),
        "pixel_f1": 2 * tp / (2 * tp + fp + fn),
        "pixel_iou": tp / (tp + fp + fn),
        "recall_by_kind": recall,
    }


def check(r, truth):
    assert r["aupro"] == pytest.approx(truth["aupro"], abs=1e-6) and 0.5 < r["aupro"] <= 1.0
    assert r["pixel_f1"] == pytest.approx(truth["pixel_f1"], abs=1e-6) and 0 < r["pixel_iou"] < r["pixel_f1"] < 1
    assert r["pixel_iou"] == pytest.approx(truth["pixel_iou"], abs=1e-6)
    assert r["recall_by_kind"] == pytest.approx(truth["recall_by_kind"])
    assert set(r["recall_by_kind"]) == {"hole", "scratch", "smudge", "stain"}


def test_eval_reports_localization_and_recall_per_kind(bundle, tiny_data, truth):
    r = json.loads(cli("eval", bundle, "--data", tiny_data / "brick", "--json"))
    check(r, truth)
    assert {"image_auroc", "pixel_auroc", "f1", "per_defect", "confusion"} <= set(r)  # the old keys stay
    text = cli("eval", bundle, "--data", tiny_data / "brick")
    assert all(h in text for h in ("AUPRO", "pixel F1", "pixel IoU", "per defect kind", "recall"))
    hole = next(line for line in text.splitlines() if line.startswith("hole "))
    assert hole.split()[-1] == f"{truth['recall_by_kind']['hole']:.3f}"


def test_compare_and_bench_report_the_same_numbers_as_eval(bundle, tiny_data, truth, tmp_path):
    out = tmp_path / "cmp.json"
    text = cli("compare", bundle, bundle, "--data", tiny_data / "brick", "--json", out)
    assert "aupro" in text and "recall per defect kind" in text and "AUPRO drop" in text
    j = json.loads(out.read_text())
    for row in j["rows"]:
        check(row, truth)
    assert j["pair"]["aupro_drop"] == 0.0
    cli(
        "bench",
        bundle,
        "--data",
        tiny_data / "brick",
        "--backends",
        "onnxruntime",
        "--iters",
        "2",
        "--no-cold-start",
        "--json",
        tmp_path / "b.json",
        "--md",
        tmp_path / "b.md",
    )
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    check(row, truth)
    assert "| AUPRO | pixel F1 | pixel IoU |" in (tmp_path / "b.md").read_text()


def test_compare_on_a_folder_without_masks_has_no_pixel_numbers(bundle, tiny_data, tmp_path, truth):
    for kind in ("good", "hole"):
        shutil.copytree(tiny_data / "brick/test" / kind, tmp_path / "labelled" / kind)
    cli("compare", bundle, bundle, "--data", tmp_path / "labelled", "--json", tmp_path / "c.json")
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["aupro"] is None and row["pixel_f1"] is None and row["pixel_iou"] is None
    assert row["recall_by_kind"] == pytest.approx({"hole": truth["recall_by_kind"]["hole"]})
