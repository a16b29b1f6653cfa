"""Many cameras, one model: `run --source A --source B` never silently scores only one of them."""

import subprocess
import sys

import pytest

from edgesdk.errors import OptionError
from edgesdk.stream.pipeline import run_stream


def test_two_sources_are_never_silently_reduced_to_one(bundle, tiny_data, tmp_path):
    # Before: argparse kept the last --source and the run scored B alone, exit 0.
    good = tiny_data / "brick" / "test" / "good"
    out = tmp_path / "r.jsonl"
    argv = ["run", bundle, "--source", good, "--source", f"{good}?token=secret", "--sink", f"jsonl://{out}"]
    r = subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True)
    assert r.returncode == 2 and "edgesdk run: error: --source given 2 times" in r.stderr, r.stderr
    assert "secret" not in r.stderr and not out.exists()
    with pytest.raises(OptionError, match="--source given 2 times"):
        run_stream(bundle, [str(good), str(good)], [])
    with pytest.raises(OptionError, match="--source given 0 times"):
        run_stream(bundle, [], [])
