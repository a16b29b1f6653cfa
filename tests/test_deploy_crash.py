"""Crash safety: `edgesdk install` (the real CLI, a child process) is killed with SIGKILL at every step
of the install state machine (EDGESDK_FAULT_AT); `current` must always name a complete slot that
verifies, and the next status and install must work and clean up what the killed one left."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from deploy_util import cli, keypair, pkgs  # noqa: F401
from edgesdk.bundle import Bundle
from edgesdk.deploy import keys
from edgesdk.deploy.slots import FAULT_ENV, STEPS, install, status, verify_slot


@pytest.fixture(scope="module")
def base(pkgs, keypair, tmp_path_factory):
    root = tmp_path_factory.mktemp("base") / "root"
    return root, install(pkgs["1.0.0"], keypair[1], root).slot


def test_every_step_is_named_and_reached(pkgs, keypair, tmp_path):
    rep = install(pkgs["1.0.0"], keypair[1], tmp_path / "root")
    assert tuple(s["step"] for s in rep.steps) == STEPS


@pytest.mark.parametrize("step", STEPS)
def test_killed_at_any_step_current_stays_complete_and_the_next_install_recovers(base, pkgs, keypair, tmp_path, step):
    src, old = base
    root = tmp_path / "root"
    shutil.copytree(src, root, symlinks=True)
    pub = keys.load_public(keypair[1])
    r = cli("install", pkgs["2.0.0"], "--pubkey", keypair[1], "--root", root, env={FAULT_ENV: step})
    assert r.returncode == -signal.SIGKILL, (step, r.returncode, r.stderr)

    cur = root / os.readlink(root / "current")
    switched = STEPS.index(step) > STEPS.index("current")
    assert (cur.name != old) == switched, (step, cur.name)
    assert verify_slot(cur, pub) == "" and Bundle.open(cur / "bundle")  # complete, signed, intact
    st = status(root)
    assert st["current"] == cur.name and all(s["verifies"] for s in st["slots"] if s["current"] or s["previous"])

    rep = install(pkgs["2.0.0"], keypair[1], root)
    assert rep.ok and rep.status == ("current" if switched else "installed"), (step, rep.status)
    assert (root / os.readlink(root / "current")).name == rep.slot != old
    assert not [p for p in (root / "slots").iterdir() if p.name.startswith(".")]
    assert not list(root.glob(".*"))
    assert status(root)["leftovers"] == []
