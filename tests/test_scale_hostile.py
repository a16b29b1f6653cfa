"""`edgesdk score` attacked: part files that are not what their names say must not be trusted on resume
or counted (every image exactly once); Ctrl-C on the pool ends the run with a message, resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="edgesdk score writes Parquet: pip install 'edgesdk[scale]'")

from score_util import ctrl_c, interrupted_parts, long_archive, wait_for_parts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True, cwd=ROOT)


def _scored(bundle, tiny_data, tmp_path, n: int = 4) -> tuple[Path, Path, list[str]]:
    """N test images scored into OUT in shards of 2; (images folder, OUT, the sorted paths)."""
    arch = tmp_path / "archive"
    arch.mkdir()
    for p in sorted((tiny_data / "brick" / "test").rglob("*.png"))[:n]:
        shutil.copy(p, arch / f"{p.parent.name}-{p.name}")
    out = tmp_path / "o"
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    return arch, out, sorted(str(p) for p in arch.iterdir())


def test_resume_rescores_a_part_holding_another_shards_rows(bundle, tiny_data, tmp_path):
    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    shutil.copy(out / "part-000000.parquet", out / "part-000001.parquet")  # right row count, foreign rows
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["scored"] == 2 and s["resumed"] == 2
    assert sorted(pq.read_table(out).column("path").to_pylist()) == paths  # each image once, none lost


def test_a_stray_part_beyond_the_runs_shards_is_not_counted(bundle, tiny_data, tmp_path):
    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    shutil.copy(out / "part-000000.parquet", out / "part-000099.parquet")
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed"] == len(paths) and s["ng"] + s["good"] + s["errors"] == len(paths)


def _session_processes(sid: int, wait_s: float = 10.0) -> list[str]:
    """Command lines of live processes in session SID (a finished process's children linger a moment)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
                    left.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, IndexError, ValueError):
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_ctrl_c_on_the_pool_exits_130_with_a_message_and_the_run_resumes(bundle, tiny_data, tmp_path):
    n = 200
    arch, out, argv = long_archive(bundle, tiny_data, tmp_path, n)
    p, err = ctrl_c(argv + ["--batch", "2", "--workers", "2", "-q"], out, "the pool")
    kept = interrupted_parts(p, err, out, n)
    assert _session_processes(p.pid) == [], "worker processes outlived the command"
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 2, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed"] == 2 * kept and s["scored"] == n - 2 * kept
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n


def test_labels_csv_with_a_bom_non_utf8_or_conflicting_rows(tmp_path):
    from edgesdk.errors import DataError
    from edgesdk.scale.compare import csv_labels

    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfa.png,ng\nb.png,good\n")  # as spreadsheets save "CSV UTF-8", no header
    assert csv_labels(bom) == {str(tmp_path / "a.png"): 1, str(tmp_path / "b.png"): 0}
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"caf\xe9.png,ng\n")
    with pytest.raises(DataError, match=r"--labels .*latin\.csv: not UTF-8"):
        csv_labels(latin)
    both = tmp_path / "both.csv"
    both.write_text("path,label\na.png,ng\nb.png,good\n./a.png,good\n")
    with pytest.raises(DataError, match=r"both\.csv: line 4: './a.png' is labelled both good and defective"):
        csv_labels(both)
    same = tmp_path / "same.csv"
    same.write_text("a.png,ng\na.png,scratch\n")  # a repeated row that agrees is harmless
    assert csv_labels(same) == {str(tmp_path / "a.png"): 1}


def test_pool_workers_beyond_the_cores_are_capped(bundle, tiny_data, tmp_path, monkeypatch):
    from edgesdk.scale.run import ScoreOptions, score_archive

    arch = tmp_path / "archive"
    arch.mkdir()
    for p in sorted((tiny_data / "brick" / "test").rglob("*.png"))[:3]:
        shutil.copy(p, arch / f"{p.parent.name}-{p.name}")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # a 2-core machine, whatever runs the test
    r = score_archive(bundle, arch, tmp_path / "o", ScoreOptions(batch=1, workers=10_000, progress=False))
    assert r["workers"] == 2 and r["n_images"] == r["scored"] == 3


def test_a_non_utf8_file_name_is_refused_naming_it_not_a_crash(bundle, tmp_path):
    arch = tmp_path / "archive"
    arch.mkdir()
    os.symlink(Path(bundle) / "manifest.json", os.fsencode(arch) + b"/caf\xe9.png")  # any file: never read
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(arch) + b"/caf\xe9.png\n")
    for images in (arch, listing):
        r = cli("score", bundle, "--images", images, "--out", tmp_path / "o", "--workers", 1, "-q")
        assert r.returncode == 2, (r.returncode, r.stderr)  # was a segfault in cv2.imread (-11)
        assert f"--images {images}: 1 path(s) not valid UTF-8" in r.stderr and "caf\\xe9.png" in r.stderr
        assert not (tmp_path / "o").exists()


def test_out_a_dangling_symlink_is_refused_naming_it(bundle, tiny_data, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    images = tiny_data / "brick" / "test" / "good"
    for argv in (("score", bundle), ("compare", bundle, bundle)):
        r = cli(*argv, "--images", images, "--out", tmp_path / "out", "--workers", 1, "-q")
        assert r.returncode == 2 and f"--out {tmp_path / 'out'}: a symbolic link to" in r.stderr, r.stderr
        assert not (tmp_path / "nowhere").exists()


def test_resume_removes_only_its_own_temporary_parts(bundle, tiny_data, tmp_path):
    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    ours, theirs = out / ".part-000001.parquet.k3j9.tmp", out / ".part-notes.tmp"
    ours.write_bytes(b"half a part")
    theirs.write_text("someone's notes")
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "-q")
    assert r.returncode == 0, r.stderr
    assert not ours.exists() and theirs.read_text() == "someone's notes"


def test_an_interrupt_while_a_part_is_written_stops_the_pool_workers_first(bundle, tiny_data, tmp_path, monkeypatch):
    import multiprocessing as mp

    from edgesdk.scale import shards
    from edgesdk.scale.run import ScoreOptions, score_archive

    arch = tmp_path / "archive"
    arch.mkdir()
    src = sorted((tiny_data / "brick" / "test").rglob("*.png"))
    for i in range(12):
        (arch / f"{i:05d}.png").symlink_to(src[i % len(src)])
    write = shards.write_part
    calls = []

    def interrupted(out, shard, rows):  # Ctrl-C arriving while the second part is being written
        calls.append(shard)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write(out, shard, rows)

    monkeypatch.setattr(shards, "write_part", interrupted)
    opts = ScoreOptions(batch=2, workers=2, threads=1, progress=False)
    with pytest.raises(KeyboardInterrupt, match=r"2 of 12 images scored into") as e:
        score_archive(bundle, arch, tmp_path / "o", opts)
    assert "rerun the same command to resume" in str(e.value)
    assert mp.active_children() == []  # the pool's workers have exited, not left to the garbage collector
    assert len(list((tmp_path / "o").glob("part-*.parquet"))) == 1 and not list((tmp_path / "o").glob(".*.tmp"))


def test_a_worker_that_cannot_load_the_bundle_ends_the_run_saying_why(tmp_path):
    from edgesdk.errors import EdgesdkError
    from edgesdk.scale.pool import run_pool

    jobs = [(0, [str(tmp_path / "a.png")]), (1, [str(tmp_path / "b.png")])]
    # Each worker's initializer fails; the pool used to report it as "a worker process died (killed or out of
    # memory?)", the reason only in the workers' tracebacks.
    with pytest.raises(EdgesdkError, match=r"a scoring worker could not load the bundle .*gone: .*not found"):
        list(run_pool(str(tmp_path / "gone"), jobs, batch=1, workers=2, threads=1))


def test_killing_the_score_process_ends_its_workers_and_a_rerun_scores_each_image_once(bundle, tiny_data, tmp_path):
    n = 200
    arch, out, argv = long_archive(bundle, tiny_data, tmp_path, n)
    p = subprocess.Popen(argv + ["--batch", "2", "--workers", "2", "-q"], cwd=ROOT, start_new_session=True)
    try:
        wait_for_parts(out, p)
        assert p.poll() is None, "the run ended before it was killed: the test proves nothing"
        p.kill()  # the score process alone (an OOM kill, `kill -9`): its workers get no signal
        p.wait(30)
        left = _session_processes(p.pid, wait_s=20)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever of the run is left, so a failure leaks nothing
        except ProcessLookupError:
            pass
    assert left == [], "worker processes outlived the killed score process"
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 2, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed"] >= 6 and s["resumed"] + s["scored"] == n
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n


def test_a_list_with_a_bom_or_a_line_separator_in_a_name_keeps_every_path(tmp_path):
    from edgesdk.scale.inputs import resolve

    names = ["a.png", "b\u2028c.png", "d\x85e.png"]  # U+2028 and NEL are legal in file names
    for name in names:
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(names).encode() + b"\r\n")  # Notepad's UTF-8: BOM, CRLF
    assert resolve(listing) == sorted(str(tmp_path / name) for name in names)


def test_a_failed_part_write_names_the_file_and_a_rerun_resumes(bundle, tiny_data, tmp_path):
    import resource

    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    (out / "part-000001.parquet").unlink()
    size = (out / "part-000000.parquet").stat().st_size
    argv = ["score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "-q"]
    # A full disk, without root: no file of the process may grow past half a part (CPython ignores SIGXFSZ).
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))  # noqa: E731
    r = subprocess.run(
        [sys.executable, "-m", "edgesdk", *map(str, argv)], capture_output=True, text=True, cwd=ROOT, preexec_fn=limit
    )
    assert r.returncode == 2, r.stderr
    assert f"--out {out}: could not write part-000001.parquet (File too large)" in r.stderr, r.stderr
    assert "rerun the same command to resume" in r.stderr and not list(out.glob(".*.tmp"))
    r = cli(*argv, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["scored"] == 2 and sorted(pq.read_table(out).column("path").to_pylist()) == paths


def test_a_resume_with_another_batch_keeps_the_folders_shards(bundle, tiny_data, tmp_path):
    arch, out, paths = _scored(bundle, tiny_data, tmp_path)  # shards of 2
    (out / "part-000001.parquet").unlink()  # as a run killed mid-way leaves it
    # The advice after a worker runs out of memory: rerun with a smaller --batch. It was refused
    # ("shard_size is 2 but this run's is 1").
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 1, "--workers", 1, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["resumed"], s["scored"], s["shards"]) == (2, 2, 2)
    assert sorted(q.name for q in out.glob("part-*")) == ["part-000000.parquet", "part-000001.parquet"]
    assert sorted(pq.read_table(out).column("path").to_pylist()) == paths


def test_a_refused_compare_leaves_the_folder_as_it_was(bundle, tiny_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    m = json.loads((other / "manifest.json").read_text())
    m["created_utc"] = "2000-01-01T00:00:00Z"  # another manifest: another bundle id
    (other / "manifest.json").write_text(json.dumps(m))
    images, out = tiny_data / "brick" / "test" / "hole", tmp_path / "cmp"
    r = cli("compare", bundle, other, "--images", images, "--out", out, "--workers", 1, "-q")
    assert r.returncode == 0, r.stderr
    before = {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()}
    r = cli("compare", other, bundle, "--images", images, "--out", out, "--workers", 1, "-q")  # A and B swapped
    assert r.returncode == 2 and "A/_run.json: bundle_id is" in r.stderr, r.stderr
    # _compare.json named the swapped pair although A/ and B/ still hold the first run's
    assert {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()} == before


def test_a_part_in_another_column_layout_is_refused_naming_it_not_rewritten(bundle, tiny_data, tmp_path):
    import pyarrow as pa

    arch, out, paths = _scored(bundle, tiny_data, tmp_path)
    part = out / "part-000001.parquet"
    t = pq.read_table(part)
    t = t.drop_columns(["error"]).set_column(1, "score", pa.array(["0.5"] * t.num_rows))  # another version's layout
    pq.write_table(t, part)
    before = part.read_bytes()
    r = cli("score", bundle, "--images", arch, "--out", out, "--batch", 2, "--workers", 1, "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # was: accepted, the text cast to scores and the missing error column read as null ("no error"); a value
    # that does not cast failed the end of the run with pyarrow's "Failed to parse string", naming no file
    assert f"{part}: column(s) score (string), error (missing) differ from the parts" in r.stderr, r.stderr
    assert part.read_bytes() == before


def test_a_worker_that_fails_to_start_ends_the_run_at_once(tmp_path):
    """fork/spawn failing for the second worker (EAGAIN, ENOMEM on a device short of memory) left the first
    at the start barrier and the pool's shutdown waiting START_S (300 s) for it: the run must end with
    the OSError at once."""
    code = """
import time
from concurrent.futures import ProcessPoolExecutor
from edgesdk.scale import pool
real, calls = ProcessPoolExecutor._spawn_process, []
def flaky(self):
    calls.append(1)
    if len(calls) == 2:
        raise OSError(11, "Resource temporarily unavailable")
    return real(self)
if __name__ == "__main__":
    ProcessPoolExecutor._spawn_process = flaky
    t = time.monotonic()
    try:
        list(pool.run_pool(BUNDLE, [(0, ["a"]), (1, ["b"]), (2, ["c"])], batch=1, workers=2, threads=1))
    except OSError as e:
        print("OSError", e.errno, round(time.monotonic() - t))
"""
    script = tmp_path / "spawn_fails.py"
    script.write_text(code.replace("BUNDLE", repr(str(tmp_path / "no-bundle"))))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=150)
    assert r.returncode == 0 and r.stdout.split()[:2] == ["OSError", "11"], (r.stdout, r.stderr[-2000:])
    assert int(r.stdout.split()[2]) < 60  # not the barrier's 300 s


def test_a_link_back_up_the_archive_names_no_image_twice_and_linked_folders_count(tmp_path):
    import glob

    from edgesdk.errors import DataError
    from edgesdk.scale.inputs import resolve

    arch = tmp_path / "arch"
    for rel in ("2026-11-01/a.png", "2026-11-01/cam2/b.png", ".cache/c.png", "d.png", "elsewhere/e.png"):
        (arch / rel).parent.mkdir(parents=True, exist_ok=True)
        (arch / rel).write_bytes(b"")
    (arch / "2026-11-01" / "cam2" / "back").symlink_to("../..")  # a loop: the archive inside itself
    (arch / "2026-11-02").symlink_to("elsewhere")  # a date folder linked in
    want = [str(arch / r) for r in ("2026-11-01/a.png", "2026-11-01/cam2/b.png", "2026-11-02/e.png", "d.png")]
    assert resolve(arch) == sorted(want + [str(arch / ".cache/c.png"), str(arch / "elsewhere/e.png")])
    pattern = f"{arch}/**/*.png"
    assert resolve(pattern) == sorted(want + [str(arch / "elsewhere/e.png")])  # `**` skips hidden folders
    # glob.glob followed the loop down to the system's limit on links, naming every image again at each depth;
    # apart from those, the two agree, here and on patterns without `**`.
    assert len(glob.glob(pattern, recursive=True)) > 40
    loop_free = sorted(p for p in glob.glob(pattern, recursive=True) if "/back/" not in p)
    assert resolve(pattern) == loop_free
    for pattern in (f"{arch}/*/*.png", f"{arch}/20??-*/*/*.png", f"{arch}/.*/*.png", f"{arch}/*/../*.png"):
        assert resolve(pattern) == sorted({os.path.abspath(p) for p in glob.glob(pattern)}), pattern
    with pytest.raises(DataError, match="matches no image"):
        resolve(f"{arch}/*/")  # a trailing separator matches folders only, as glob's does


def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_run(bundle, tiny_data, tmp_path, monkeypatch, capsys):
    """Python's own SIGINT handler raises wherever the main thread is; inside a finalizer (pyarrow's
    writer has one) the KeyboardInterrupt is swallowed and the run went on to the end, exit 0. score
    takes the first Ctrl-C between parts: it stops after the part being written, which is whole."""
    from edgesdk.scale import shards
    from edgesdk.scale.run import ScoreOptions, score_archive

    arch, out, argv = long_archive(bundle, tiny_data, tmp_path, 12)
    real, calls = shards.write_part, []

    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # backward jumps: where the interpreter runs pending signal handlers
                pass

    def write_part(out_dir, shard, rows):
        calls.append(shard)
        if len(calls) == 2:
            Finalizer()  # collected at once: the Ctrl-C lands inside its __del__
        real(out_dir, shard, rows)

    monkeypatch.setattr(shards, "write_part", write_part)
    # a terminal's handling, as Python sets it up (a test run started in the background inherits SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="4 of 12 images scored .* rerun the same command to resume"):
            score_archive(bundle, arch, out, ScoreOptions(batch=2, workers=1, threads=1, progress=False))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, before)
    assert len(calls) == 2 and len(list(out.glob("part-*.parquet"))) == 2 and not list(out.glob(".*.tmp"))
    assert "stopping after the part being written; Ctrl-C again to stop at once" in capsys.readouterr().err


def test_score_leaves_a_callers_own_sigint_handler_alone():
    from edgesdk.scale.run import ctrl_c_between_parts

    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGINT, mine)
    try:
        with ctrl_c_between_parts() as hit:
            assert signal.getsignal(signal.SIGINT) is mine and hit == []
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, old)
