"""fsutil's atomic file writes: an interrupt (Ctrl-C's KeyboardInterrupt) or an error at any point leaves
the target as it was and no temporary file beside it; a file that merely shares the random name is
never removed."""

import os
import subprocess
import sys

import pytest

from edgesdk import fsutil


def interrupt_after_making(monkeypatch, suffix: str) -> list[str]:
    """os.open makes the file, then a Ctrl-C lands before the call returns (as a signal can, after the
    system call): the made names, which the caller never received."""
    real, made = os.open, []

    def open_then_interrupt(path, flags, mode=0o777, *args, **kw):
        fd = real(path, flags, mode, *args, **kw)
        if os.fspath(path).endswith(suffix):
            made.append(os.fspath(path))
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupt)
    return made


def test_ctrl_c_as_the_temp_file_is_made_leaves_the_target_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "part-000009.parquet"
    target.write_bytes(b"before")
    made = interrupt_after_making(monkeypatch, ".tmp")
    with pytest.raises(KeyboardInterrupt):
        fsutil.atomic_write_bytes(target, b"after")
    assert made, "the interrupt never landed: the test no longer exercises the creation"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000009.parquet"]
    assert target.read_bytes() == b"before"


@pytest.mark.parametrize("where", ["write", "replace"])
def test_ctrl_c_while_filling_or_renaming_leaves_no_temp(tmp_path, monkeypatch, where):
    target = tmp_path / "run.json"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    if where == "replace":
        monkeypatch.setattr(os, "replace", interrupt)
    else:
        monkeypatch.setattr(fsutil, "open", interrupt, raising=False)
    with pytest.raises(KeyboardInterrupt):
        fsutil.atomic_write_bytes(target, b"{}")
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_the_same_random_name_is_never_removed(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    monkeypatch.setattr(fsutil.secrets, "token_hex", lambda n: "0" * (2 * n))
    theirs = tmp_path / f".x.bin.{'0' * 16}.tmp"
    theirs.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        fsutil.atomic_write_bytes(target, b"mine")
    assert theirs.read_bytes() == b"someone else's" and not target.exists()


def test_the_written_file_has_the_umasks_mode_and_the_bytes(tmp_path):
    old = os.umask(0o027)
    try:
        fsutil.atomic_write_bytes(tmp_path / "a" / "f.txt", b"data")
    finally:
        os.umask(old)
    f = tmp_path / "a" / "f.txt"
    assert f.read_bytes() == b"data" and f.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in f.parent.iterdir()] == ["f.txt"]


def test_a_package_fetch_interrupted_as_its_part_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    from edgesdk.fleet.fetch import fetch

    src = tmp_path / "pkg.tgz"
    src.write_bytes(b"package bytes")
    dest = tmp_path / "incoming" / "pkg.tgz"
    made = interrupt_after_making(monkeypatch, ".part")
    pkg = {"url": f"file://{src}", "bytes": 13, "sha256": "0" * 64}
    with pytest.raises(KeyboardInterrupt):
        fetch(pkg, dest)
    assert made and list(dest.parent.iterdir()) == []


def test_the_bytes_are_on_disk_before_the_name_is(tmp_path, monkeypatch):
    """fsync of the temporary file comes before the rename: else a power cut just after it can leave
    the new name on an empty file (ext4 without data=ordered guarantees, XFS)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    fsutil.atomic_write_bytes(tmp_path / "state.json", b"{}")
    assert events == ["fsync", "replace"]


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links (FAT)"])
def test_publish_never_replaces_a_file_that_appeared_meanwhile(tmp_path, monkeypatch, links):
    if not links:

        def no_links(*a, **k):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "model-1.0.0.tgz"
    with fsutil.temp_beside(out) as tmp:
        tmp.write_bytes(b"mine")
        fsutil.publish(tmp, out)
    assert out.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == [out.name]
    with pytest.raises(FileExistsError):
        with fsutil.temp_beside(out) as tmp:
            tmp.write_bytes(b"a second one")
            fsutil.publish(tmp, out)
    assert out.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_sweep_dead_takes_only_dead_processes_work_folders_of_its_own_name(tmp_path):
    out = tmp_path / "pkg.tgz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".pkg.tgz.runtime.{int(dead.stdout)}.abcd1234"
    live = tmp_path / f".pkg.tgz.runtime.{os.getpid()}.abcd1234"
    theirs = [tmp_path / ".pkg.tgz.runtime-notes", tmp_path / ".other.tgz.runtime.1.x", tmp_path / "runtime.1.x"]
    for d in (gone, live, *theirs):
        d.mkdir()
        (d / "f").write_text("x")
    assert fsutil.sweep_dead(out, "runtime") == [gone]
    assert not gone.exists() and live.exists() and all(d.exists() for d in theirs)


def test_an_agent_record_save_cut_by_ctrl_c_keeps_the_old_record_and_no_temp(tmp_path, monkeypatch):
    from edgesdk.fleet.record import _durable_json

    path = tmp_path / "agent.json"
    _durable_json(path, {"releases": {"a": 1}})

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _durable_json(path, {"releases": {"b": 2}})
    assert [p.name for p in tmp_path.iterdir()] == ["agent.json"] and '"a": 1' in path.read_text()
