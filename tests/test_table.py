"""edgesdk.table: plain-text tables, and reading them back (a failed export's attempts are only text)."""

from __future__ import annotations

from edgesdk.table import parse, table

ATTEMPTS = [
    {"int8_convs": 33, "fp16_convs": 0, "fp32_convs": 0, "seconds": 535.9, "image_auroc": 0.978,
     "image_auroc_drop": 0.009, "pixel_auroc": None, "verdict_flips": 1, "passed": False},
    {"int8_convs": 17, "fp16_convs": 0, "fp32_convs": 16, "seconds": 58.0, "image_auroc": 0.94,
     "image_auroc_drop": 0.008, "pixel_auroc": 0.99, "verdict_flips": 12, "passed": False},
]  # fmt: skip


def test_parse_reads_a_gate_errors_attempts_back_between_its_prose():
    # The shape of compile.gate.GateError's message: a sentence, the table titled "attempts", advice.
    text = (
        "edgesdk export: error: int8 --target tensorrt loses more than max_drop 0.005 ... no bundle written.\n"
        + table(ATTEMPTS, title="attempts")
        + "\nTry --calib-method percentile or entropy, more calibration images, or another precision."
    )
    assert parse(text, "attempts") == ATTEMPTS  # empty cells back as None, yes/no as bools, ints stay ints


def test_parse_takes_the_table_under_its_title_and_stops_at_a_blank_line():
    first = table([{"a": 1, "name": "x y"}], title="one")
    second = table([{"b": 2.5, "ok": True}, {"b": None, "ok": False}], title="two")
    assert parse(first + "\n\n" + second) == [{"a": 1, "name": "x y"}]
    assert parse(first + "\n\n" + second, "two") == [{"b": 2.5, "ok": True}, {"b": None, "ok": False}]
    assert parse("no table here\n---") == [] and parse("") == []
