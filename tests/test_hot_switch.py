"""A running `edgesdk run ROOT/current` takes the model `install` and `rollback` switch to, between
frames: the camera is never reopened, no record is lost, and each record names the model that scored
it. A model that fails to open is logged and the running one kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy_util import ROOT, cli, keypair  # noqa: F401
from edgesdk.stream.pipeline import run_stream
from notify_util import NotifySocket


@pytest.fixture(scope="module")
def bundle_v2(zoo):
    """Another model of the same line (PatchCore beside the PaDiM bundle): another model id."""
    return zoo["patchcore"][1]


@pytest.fixture(scope="module")
def two_pkgs(bundle, bundle_v2, keypair, tmp_path_factory):
    from edgesdk.deploy.package import PackOptions, pack

    out = tmp_path_factory.mktemp("pkgs")
    return [
        Path(pack(b, keypair[0], out / f"brick-{v}.tgz", PackOptions(version=v, name="brick"))["package"])
        for b, v in ((bundle, "1.0.0"), (bundle_v2, "2.0.0"))
    ]


def model_of(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["files"]["model.onnx"]["sha256"][:12]


def records(path: Path) -> list[dict]:
    """The complete lines written so far (the last one may be mid-write)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(x) for x in text.split("\n")[:-1]]


def wait_for(cond, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def runs(recs: list[dict]) -> list[tuple[str, int]]:
    """(model, first frame_id) of each run of consecutive records scored by one model."""
    out: list[tuple[str, int]] = []
    for r in recs:
        if not out or out[-1][0] != r["model"]:
            out.append((r["model"], r["frame_id"]))
    return out


def test_install_and_rollback_switch_a_running_stream_without_losing_a_frame(
    two_pkgs, bundle, bundle_v2, keypair, tmp_path
):
    v1, v2 = model_of(bundle), model_of(bundle_v2)
    assert v1 != v2
    root, out, pub = tmp_path / "root", tmp_path / "verdicts.jsonl", keypair[1]
    cli("install", two_pkgs[0], "--pubkey", pub, "--root", root, check=True)
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    # An unpaced source: backpressure, every frame scored, so a gap in frame_id is a lost record.
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgesdk",
            "run",
            str(root / "current"),
            "--json",
            "--source",
            "synth://conveyor?category=brick",
            "--sink",
            f"jsonl://{out}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(records(out)) >= 50, "records from v1")
        cli("install", two_pkgs[1], "--pubkey", pub, "--root", root, check=True)
        wait_for(lambda: [m for m, _ in runs(records(out))][-1:] == [v2], "records from v2")
        n_v2 = len(records(out))
        wait_for(lambda: len(records(out)) >= n_v2 + 50, "more records from v2")
        cli("rollback", "--root", root, check=True)
        wait_for(lambda: [m for m, _ in runs(records(out))] == [v1, v2, v1], "records from v1 again")
        n_back = len(records(out))
        wait_for(lambda: len(records(out)) >= n_back + 20, "more records from v1")
    finally:
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
        ns.close()
    assert p.returncode == 0, stderr
    recs, summary = records(out), json.loads(stdout)
    assert [r["frame_id"] for r in recs] == list(range(len(recs))) and summary["frames"] == len(recs)
    sw = runs(recs)
    assert [m for m, _ in sw] == [v1, v2, v1] and sw[0][1] == 0 < sw[1][1] < sw[2][1]
    # one source for the whole run: frame ids never restarted, nothing reconnected
    assert summary["source_stats"].get("reconnects", 0) == 0 and summary["dropped_frames"] == 0
    assert [(m["model"], m["first_frame"]) for m in summary["models"]] == sw and summary["model"] == v1
    assert summary["model_switch_errors"] == 0 and "switched model" in stderr
    # systemd heard of each switch: RELOADING=1, then READY=1
    events = [k for _, m in ns.messages for k in ("READY", "RELOADING", "STOPPING") if k in m]
    assert events == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"], events


def test_a_new_model_that_does_not_open_is_logged_and_the_old_one_kept(bundle, tmp_path, caplog):
    root = tmp_path / "root"
    for name in ("a", "b"):
        shutil.copytree(bundle, root / "slots" / name / "bundle")
    with open(root / "slots/b/bundle/model.onnx", "r+b") as f:  # bit rot in the new slot
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    os.symlink("slots/a", root / "current")

    def point(name: str) -> None:  # as layout.point: a rename over the link
        os.symlink(f"slots/{name}", root / ".current.tmp")
        os.replace(root / ".current.tmp", root / "current")

    got, stop, out = [], threading.Event(), {}
    t = threading.Thread(
        target=lambda: out.update(
            run_stream(root / "current", "synth://conveyor?category=brick", [], on_record=got.append, stop=stop)
        ),
        daemon=True,
    )
    t.start()
    try:
        wait_for(lambda: len(got) >= 20, "records")
        point("b")
        # the attempt (logged), then two more watch ticks pointing at the same broken slot: one attempt, not three
        wait_for(lambda: any("the new model cannot be used" in r.message for r in caplog.records), "the failed switch")
        time.sleep(2.0)
        n_b = len(got)
        point("a")
        wait_for(lambda: len(got) >= n_b + 20, "records after pointing back")
    finally:
        stop.set()
        t.join(60)
    assert out["stopped"] and out["model_switch_errors"] == 1 and out["frames"] == len(got)
    assert {r["model"] for r in got} == {model_of(bundle)}
    assert [r["frame_id"] for r in got] == list(range(len(got)))
    assert any("the new model cannot be used" in r.message and "model.onnx" in r.message for r in caplog.records)
