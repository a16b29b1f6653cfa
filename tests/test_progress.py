"""Progress output: a tqdm bar only on a terminal; in a log or a pipe one line when a stage starts and
one when it ends (no carriage-return redraws); nothing with -q. Third-party chatter stays out."""

import io
import subprocess
import sys

from edgesdk.progress import bar, quiet, say


def test_off_a_terminal_a_stage_is_two_lines():
    out = io.StringIO()
    with bar(total=5, desc="fit padim", unit="img", file=out) as b:
        for _ in range(5):
            b.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2, lines
    assert lines[0] == "fit padim: 5 img ..." and lines[1].startswith("fit padim: 100% 5/5 img in ")
    out = io.StringIO()
    assert list(bar([1, 2, 3], desc="eval", unit="img", file=out)) == [1, 2, 3]
    assert out.getvalue().splitlines()[1].startswith("eval: 100% 3/3 img")


def test_quiet_silences_bars_and_info_lines_and_restores():
    out = io.StringIO()
    with quiet():
        assert list(bar([1, 2], desc="eval", file=out)) == [1, 2]
        say("building", out)
    assert out.getvalue() == ""
    say("building", out)
    assert out.getvalue() == "building\n"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)], capture_output=True, text=True)


def test_calibrate_progress_in_a_pipe_and_with_q(bundle, tiny_data, tmp_path):
    good = tiny_data / "brick/train/good"
    r = cli("calibrate", bundle, "--source", good, "--frames", 30, "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr, repr(r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == "calibrate: 30 frame ...", lines
    assert lines[1].startswith("calibrate: 100% 30/30 frame in "), lines
    r = cli("calibrate", bundle, "--source", good, "--frames", 30, "--out", tmp_path / "c", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # -q after the command, as before it
    assert "line calibration" in r.stdout


def test_export_prints_its_table_and_nothing_else(run_dir, tmp_path):
    """torch.onnx's own notes (torchvision ops it skips, a FutureWarning about its own tree specs)
    are not the user's business: stderr stays empty."""
    r = cli("export", run_dir, "--out", tmp_path / "b")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "parity score rel err" in r.stdout
