"""The device's runtime bootstrap (edgesdk/deploy/bootstrap.py) removes only venvs it made: never the
target of a `venv` link someone pointed elsewhere, never a folder that merely starts with "venv-".
The venv build itself (python -m venv + offline pip) is stood in for: the tests of a real build are in
tests/test_deploy_runtime.py; these are about what is removed around it."""

import os

import pytest

from edgesdk.deploy import bootstrap as bs

RT = {"python": "3.11", "wheels": ["runtime/wheels/a.whl"], "edgesdk": "runtime/wheels/a.whl"}
MEMBERS = {"runtime/wheels/a.whl": {"sha256": "0" * 64, "bytes": 1}}


@pytest.fixture
def slot(tmp_path, monkeypatch):
    """A slot whose runtime builds instantly: (slot, its runtime folder)."""
    s = tmp_path / "slots" / "1.0.0-abc"
    (s / "runtime").mkdir(parents=True)
    monkeypatch.setattr(bs, "describe", lambda _slot: (RT, MEMBERS))
    monkeypatch.setattr(bs, "_python_for", lambda _rt: None)

    def build(_slot, _rt, _members, key, venv):
        os.makedirs(os.path.join(venv, "bin"))
        return {"installed": [], "seconds": 0}

    monkeypatch.setattr(bs, "_build", build)
    return s, s / "runtime"


def user_venv(path):
    (path / "bin").mkdir(parents=True)
    (path / "precious.txt").write_text("mine")
    return path


@pytest.mark.parametrize("where", ["absolute", "relative", "named like ours but elsewhere"])
def test_a_venv_link_pointing_elsewhere_is_refused_and_its_target_kept(slot, tmp_path, where):
    s, rt = slot
    if where == "absolute":
        target = str(user_venv(tmp_path / "home" / "me" / "my-venv"))
    elif where == "relative":
        user_venv(tmp_path / "home" / "me" / "my-venv")
        target = os.path.relpath(tmp_path / "home" / "me" / "my-venv", rt)
    else:
        user_venv(tmp_path / "venv-0123456789abcdef")
        target = "../../../venv-0123456789abcdef"
    os.symlink(target, rt / "venv")
    with pytest.raises(bs.Refused, match="not a venv this script made"):
        bs.ensure(str(s))
    assert (rt / "venv").resolve().joinpath("precious.txt").read_text() == "mine"
    assert os.readlink(rt / "venv") == target and sorted(os.listdir(rt)) == ["venv"]


def test_only_venvs_of_its_own_names_are_swept(slot):
    s, rt = slot
    stale = rt / "venv-00000000deadbeef"  # another wheel set's venv, left by an interrupted run
    (stale / "bin").mkdir(parents=True)
    user_venv(rt / "venv-backup")
    venv = bs.ensure(str(s))
    assert not stale.exists() and (rt / "venv-backup" / "precious.txt").read_text() == "mine"
    assert os.readlink(rt / "venv") == os.path.basename(venv) and bs.OURS.match(os.path.basename(venv))


def test_the_previous_venv_of_its_own_is_removed_once_relinked(slot):
    s, rt = slot
    old = rt / "venv-aaaaaaaaaaaaaaaa"
    (old / "bin").mkdir(parents=True)
    os.symlink(old.name, rt / "venv")
    venv = bs.ensure(str(s))
    assert not old.exists() and os.readlink(rt / "venv") == os.path.basename(venv)


def test_an_old_venv_of_its_name_that_is_a_link_is_left_and_no_error(slot, tmp_path):
    s, rt = slot
    theirs = user_venv(tmp_path / "theirs")
    os.symlink(theirs, rt / "venv-bbbbbbbbbbbbbbbb")
    os.symlink("venv-bbbbbbbbbbbbbbbb", rt / "venv")
    venv = bs.ensure(str(s))
    assert os.readlink(rt / "venv") == os.path.basename(venv) and (theirs / "precious.txt").read_text() == "mine"
