"""Helpers of the interrupt tests of `edgesdk score` (tests/test_scale_hostile.py on the process pool,
tests/test_scale_ray.py on Ray): an archive long enough to interrupt, and a terminal's Ctrl-C once the
run has written a few parts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def long_archive(bundle, tiny_data, tmp_path, n: int) -> tuple[Path, Path, list[str]]:
    """N links to the test images (a run long enough to interrupt): (archive, OUT, score's argv)."""
    src = sorted((tiny_data / "brick" / "test").rglob("*.png"))
    arch, out = tmp_path / "archive", tmp_path / "o"
    arch.mkdir()
    for i in range(n):
        (arch / f"{i:05d}.png").symlink_to(src[i % len(src)])
    return arch, out, [sys.executable, "-m", "edgesdk", "score", str(bundle), "--images", str(arch), "--out", str(out)]


def wait_for_parts(out: Path, p: subprocess.Popen, parts: int = 3, timeout: float = 120) -> None:
    """Until OUT holds PARTS part files, P has ended, or TIMEOUT seconds have passed."""
    deadline = time.monotonic() + timeout
    while len(list(out.glob("part-*.parquet"))) < parts and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def ctrl_c(argv: list[str], out: Path, what: str, env=None, start_s: float = 120, exit_s: float = 90):
    """ARGV run as from a terminal (its own process group, SIGINT's default handling), sent a Ctrl-C (SIGINT
    to the whole group, workers too) once OUT holds 3 parts: (the process, its stderr). Fails the test,
    naming WHAT, when the command does not end within EXIT_S seconds."""
    p = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_parts(out, p, timeout=start_s)
    assert p.poll() is None, p.communicate()[1][-4000:]
    os.killpg(p.pid, signal.SIGINT)
    try:
        return p, p.communicate(timeout=exit_s)[1]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"{what} hung after Ctrl-C")


def interrupted_parts(p: subprocess.Popen, err: str, out: Path, n: int) -> int:
    """How many whole parts the interrupted run P kept in OUT, after checking it ended as Ctrl-C should:
    exit 130, the resume message, no traceback, no half-written part, and fewer than half its N images."""
    assert p.returncode == 130, err[-4000:]
    assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err, err[-4000:]
    kept = len(list(out.glob("part-*.parquet")))
    assert 3 <= kept < n // 2, f"{kept} parts kept of {n} images; {err[-2000:]}"
    assert not list(out.glob(".*.tmp")), sorted(p.name for p in out.iterdir())
    return kept
