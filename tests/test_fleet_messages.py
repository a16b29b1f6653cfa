"""The fleet's pieces without a broker: signed messages and every refusal, wave plans, broker options,
fetching (file://, http://, chunks) with its size and sha256 checks, the agent's record, silence."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from deploy_util import keypair, other_keypair  # noqa: F401
from edgesdk.deploy import keys
from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.fleet import messages
from edgesdk.fleet.broker import parse_broker
from edgesdk.fleet.fetch import FetchError, fetch
from edgesdk.fleet.record import Record
from edgesdk.fleet.status import rows
from edgesdk.fleet.waves import plan_waves
from fleet_util import FileServer


def body(**kw) -> dict:
    now = int(time.time())
    b = {
        "schema": messages.SCHEMA,
        "kind": "release",
        "group": "line1",
        "release": "r1",
        "issued": now,
        "expires": now + 60,
        "wave": 1,
        "devices": ["a", "b"],
        "package": {
            "name": "brick",
            "version": "1.0.0",
            "manifest_sha256": "a" * 64,
            "sha256": "b" * 64,
            "bytes": 10,
            "url": "file:///srv/p.tgz",
            "chunks": None,
        },
    }
    return {**b, **kw}


def test_a_release_opens_only_with_the_fleet_key_unchanged_and_for_this_group(keypair, other_keypair):
    key, pub = keys.load_private(keypair[0]), keys.load_public(keypair[1])
    wire = messages.seal(body(), key)
    got = messages.open_release(wire, pub, "t", "line1")
    assert got["devices"] == ["a", "b"] and not messages.expired(got)
    with pytest.raises(keys.SignatureError, match="signed by another key"):
        messages.open_release(messages.seal(body(), keys.load_private(other_keypair[0])), pub, "t", "line1")
    env = json.loads(wire)
    env["signed"] = env["signed"].replace('"b"]', '"b","c"]')  # a device added on the way
    with pytest.raises(keys.SignatureError, match="does not match"):
        messages.open_release(json.dumps(env).encode(), pub, "t", "line1")
    with pytest.raises(messages.MessageError, match="for group 'line1', not 'line2'"):
        messages.open_release(wire, pub, "t", "line2")
    for payload, why in (
        (b"garbage", "not JSON"),
        (b"{}", "not a signed fleet message"),
        (messages.seal(body(schema="x/9"), key), "schema 'x/9'"),
        (messages.seal(body(kind="rollback"), key), "expected 'release'"),
        (messages.seal(body(devices=["a/b"]), key), "device 'a/b'"),
        (messages.seal(body(issued=1.5), key), "'issued' must be int"),
        (messages.seal(body(allow_downgrade="yes"), key), "'allow_downgrade' must be true or false"),
        (messages.seal(body(package={**body()["package"], "url": "ftp://x"}), key), "url 'ftp://x'"),
        (messages.seal(body(package={**body()["package"], "url": "mqtt:chunks"}), key), "needs chunks"),
        (
            messages.seal(
                body(package={**body()["package"], "url": "mqtt:chunks", "chunks": {"size": 4, "sha256": ["c" * 64]}}),
                key,
            ),
            "one sha256 per 4-byte chunk",
        ),
    ):
        with pytest.raises(EdgesdkError, match=why):
            messages.open_release(payload, pub, "t", "line1")
    assert messages.expired(body(expires=int(time.time()) - 1))
    cmd = {
        "schema": messages.SCHEMA,
        "kind": "rollback",
        "group": "line1",
        "device": "a",
        "command": "c1",
        "release": "r1",
        "slot": "1.0.0-abc",
        "issued": 0,
        "expires": 10,
    }
    assert messages.open_command(messages.seal(cmd, key), pub, "t", "line1", "a")["slot"] == "1.0.0-abc"
    with pytest.raises(messages.MessageError, match="for line1/a, not line1/b"):  # moved to another device
        messages.open_command(messages.seal(cmd, key), pub, "t", "line1", "b")


def test_waves_are_cumulative_counts_of_the_known_devices():
    assert plan_waves("1,10%,50%,100%", 100) == [1, 10, 50, 100]
    assert plan_waves("1,10%,50%,100%", 6) == [1, 3, 6]  # 10% of 6 adds nobody after the first
    assert plan_waves("1,10%,50%,100%", 1) == [1]
    assert plan_waves("2, 5", 3) == [2, 3] and plan_waves("33.4%,100%", 3) == [2, 3]
    for spec, why in (
        ("0", "count >= 1"),
        ("50%,10%", "cumulative"),
        ("x", "neither"),
        ("150%", "percentage"),
        ("", "neither"),
    ):
        with pytest.raises(OptionError, match=why):
            plan_waves(spec, 10)


def test_broker_options_are_checked_and_name_the_option(tmp_path):
    b = parse_broker("mqtts://plant-broker")
    assert (b.host, b.port, b.tls) == ("plant-broker", 8883, True) and b.uri == "mqtts://plant-broker:8883"
    assert parse_broker("mqtt://10.0.0.5:1884").port == 1884
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n")
    b = parse_broker("mqtt://h", user="u", password_file=str(pw))
    assert (b.username, b.password) == ("u", "s3cret") and "s3cret" not in repr(b)
    (tmp_path / "empty").write_text("\n")
    for kw, why in (
        ({"uri": "http://h"}, "give mqtt://"),
        ({"uri": "mqtt://h/topic"}, "only mqtt"),
        ({"uri": "mqtt://u:p@h"}, "--password-file"),
        ({"uri": "mqtt://h:99999"}, "port"),
        ({"uri": "mqtt://h", "cafile": str(tmp_path / "no.pem")}, "--cafile"),
        ({"uri": "mqtt://h", "certfile": str(pw)}, "give both"),
        ({"uri": "mqtt://h", "password_file": str(pw)}, "give --user"),
        ({"uri": "mqtt://h", "user": "u", "password_file": str(tmp_path / "empty")}, "is empty"),
        ({"uri": "mqtt://h", "user": "u", "password_file": str(tmp_path / "nope")}, "cannot read"),
    ):
        with pytest.raises(OptionError, match=why):
            parse_broker(kw.pop("uri"), **kw)


def test_fetch_keeps_only_the_release_s_bytes(tmp_path):
    data = bytes(range(256)) * 40  # 10240 bytes
    src = tmp_path / "www" / "p.tgz"
    src.parent.mkdir()
    src.write_bytes(data)
    pkg = {"url": f"file://{src}", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chunks": None}
    assert fetch(pkg, tmp_path / "in" / "a.tgz").read_bytes() == data
    server = FileServer(src.parent)
    try:
        assert fetch({**pkg, "url": f"{server.url}/p.tgz"}, tmp_path / "in" / "b.tgz").read_bytes() == data
        with pytest.raises(FetchError, match="cannot download"):
            fetch({**pkg, "url": f"{server.url}/missing.tgz"}, tmp_path / "in" / "c.tgz")
        with pytest.raises(FetchError, match="more than the release's 100 bytes"):  # never fills the disk
            fetch({**pkg, "url": f"{server.url}/p.tgz", "bytes": 100}, tmp_path / "in" / "c.tgz")
    finally:
        server.close()
    with pytest.raises(FetchError, match="is not the release's"):
        fetch({**pkg, "sha256": "0" * 64}, tmp_path / "in" / "c.tgz")
    with pytest.raises(FetchError, match="the release says 10241"):
        fetch({**pkg, "bytes": len(data) + 1}, tmp_path / "in" / "c.tgz")
    with pytest.raises(FetchError, match="names a path on this device"):
        fetch({**pkg, "url": "file://server/p.tgz"}, tmp_path / "in" / "c.tgz")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.tgz", "b.tgz"]  # no partial files
    # Chunks: any order, duplicates ignored, each checked against the signed list.
    size = 4096
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    chunked = {
        **pkg,
        "url": "mqtt:chunks",
        "chunks": {"size": size, "sha256": [hashlib.sha256(p).hexdigest() for p in parts]},
    }
    got = fetch(
        chunked,
        tmp_path / "in" / "d.tgz",
        chunks=lambda: iter([(2, parts[2]), (0, parts[0]), (0, parts[0]), (1, parts[1])]),
    )
    assert got.read_bytes() == data
    with pytest.raises(FetchError, match="chunk 1's sha256"):
        fetch(chunked, tmp_path / "in" / "e.tgz", chunks=lambda: iter([(0, parts[0]), (1, parts[2])]))
    with pytest.raises(FetchError, match="1 of 3 chunks never came"):
        fetch(chunked, tmp_path / "in" / "e.tgz", chunks=lambda: iter([(0, parts[0]), (1, parts[1])]))


def test_an_unreadable_agent_record_is_kept_aside_not_forgotten(tmp_path):
    r = Record(tmp_path)
    r.data["releases"]["r1"] = {"state": "done"}
    r.save()
    assert Record(tmp_path).data["releases"] == {"r1": {"state": "done"}}
    r.path.write_text("{torn")
    assert Record(tmp_path).data["releases"] == {}
    assert [p.read_text() for p in r.dir.glob("agent.json.corrupt-*")] == ["{torn"]


def test_silent_devices_are_those_without_a_recent_heartbeat_or_whose_will_came():
    now = 1000.0
    st = {"time": now - 10, "heartbeat_s": 2, "current": {"version": "1.1.0"}, "last": {"result": "installed"}}
    found = {
        ("g", "fresh"): {"state": {**st, "time": now - 1}, "online": {"online": True}},
        ("g", "late"): {"state": st, "online": {"online": True}},
        ("g", "gone"): {"state": {**st, "time": now}, "online": {"online": False, "why": "connection lost"}},
    }
    by = {r["device"]: r for r in rows(found, now)}
    assert [by[d]["silent"] for d in ("fresh", "late", "gone")] == [False, True, True]
    assert by["late"]["silent_why"] == "no heartbeat for 10 s" and by["gone"]["silent_why"] == "connection lost"
    assert by["fresh"]["version"] == "1.1.0" and by["fresh"]["result"] == "installed"


def test_every_fleet_module_imports_without_torch():
    """Device side: the agent runs where torch (and the export-only packages) are not installed."""
    import pkgutil
    import subprocess
    import sys

    import edgesdk.fleet
    from fleet_util import ROOT

    mods = sorted(f"edgesdk.fleet.{m.name}" for m in pkgutil.iter_modules(edgesdk.fleet.__path__))
    assert {"edgesdk.fleet.agent", "edgesdk.fleet.rollout", "edgesdk.fleet.status"} <= set(mods)
    code = (
        "import sys, importlib\nfor n in ('torch', 'torchvision', 'onnx', 'onnxscript', 'skimage'):\n"
        "    sys.modules[n] = None\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in mods)
        + "from edgesdk.cli import main\nmain(['agent', '--help'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--device-id" in r.stdout, r.stderr
