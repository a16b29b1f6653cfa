"""The command line as a package (edgesdk/cli/): the three ways to start it, the global flags, and the
rules its commands delegate to the library (here: verify's)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT)


def test_python_m_edgesdk_python_m_edgesdk_cli_and_the_console_script_agree():
    a, b = run("-m", "edgesdk", "device", "list", "--json"), run("-m", "edgesdk.cli", "device", "list", "--json")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and '"profiles"' in a.stdout, a.stderr + b.stderr
    # pyproject.toml's console script names edgesdk.cli:main
    text = (ROOT / "pyproject.toml").read_text()
    assert 'edgesdk = "edgesdk.cli:main"' in text
    c = run("-c", "import sys; from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))", "device", "list", "--json")
    assert c.returncode == 0 and c.stdout == a.stdout


def test_verbose_and_quiet_are_one_or_the_other(tmp_path):
    for argv in (["-v", "-q", "device", "list"], ["-v", "device", "list", "-q"]):
        r = run("-m", "edgesdk", *argv)
        assert r.returncode == 2 and "-q/--quiet: not allowed with argument -v/--verbose" in r.stderr, r.stderr


def test_quiet_and_verbose_after_the_command_too(capsys):
    from edgesdk.cli import build_parser

    p = build_parser()
    assert p.parse_args(["run", "b", "--source", "s", "--sink", "k", "-q"]).quiet is True
    a = p.parse_args(["-v", "device", "check", "b", "--device", "rtx"])
    assert a.verbose is True and a.quiet is False
    assert p.parse_args(["pack", "b", "--key", "k", "--version", "1", "--out", "o"]).verbose is False


@pytest.mark.parametrize(
    "tolerance, message",
    [
        (-0.1, "a score difference >= 0"),
        (float("nan"), "must be a finite number"),
        (float("inf"), "must be a finite number"),
    ],
)
def test_verify_engine_refuses_a_tolerance_that_would_decide_for_every_engine(bundle, tolerance, message):
    """inf would pass every engine and nan none; both are refused before any engine is opened."""
    from edgesdk.measure.compare import default_tolerance, verify_engine

    with pytest.raises(ValueError, match=message):
        verify_engine("no.plan", bundle, tolerance)
    assert default_tolerance("fp32") == 0.05 and default_tolerance("int8") == default_tolerance("fp16") == 0.25
