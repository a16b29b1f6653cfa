"""The mqtt:// sink against a real mosquitto broker on loopback: the broker is stopped and restarted
mid-stream and no verdict is lost; verdicts written while it is down survive a restart of the sink."""

import json
import time

import pytest

from edgesdk.stream.pipeline import run_stream
from edgesdk.video import open_sink
from mqtt_broker import Broker, Subscriber, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs Debian's mosquitto broker (apt-get install mosquitto; .ci/run does)"
)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def test_broker_restart_mid_stream_loses_no_verdict(broker, bundle, tiny_data, tmp_path):
    sub = Subscriber(broker.port, "line1/verdicts")
    outbox = tmp_path / "outbox.db"
    down: list[int] = []

    def on_record(rec):
        if rec["frame_id"] == 19:  # kill the broker; frames 20..29 are scored while it is down
            broker.stop()
            time.sleep(0.5)
        if 20 <= rec["frame_id"] <= 29:
            down.append(rec["frame_id"])
        if rec["frame_id"] == 29:
            broker.start()

    summary = run_stream(
        bundle,
        str(tiny_data / "conveyor_brick.mkv"),
        [
            f"mqtt://127.0.0.1:{broker.port}/line1/verdicts?outbox={outbox}&drain=30&health=0.2",
            f"jsonl://{tmp_path / 'r.jsonl'}",
        ],
        on_record=on_record,
    )
    lines = [json.loads(s) for s in (tmp_path / "r.jsonl").read_text().splitlines()]
    want = {r["frame_id"] for r in lines}
    assert summary["frames"] == len(lines) == 60 and down == list(range(20, 30))
    got = sub.wait_for(want)
    # The health message that counts the reconnect may be the one the sink publishes as it closes:
    # wait for it (bounded) before the subscriber goes.
    deadline = time.monotonic() + 10
    while not any(h["reconnects"] >= 1 for h in sub.health) and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.close()
    assert got == want, f"lost verdicts: {sorted(want - got)}"
    # Same records as the file sink wrote, every copy; duplicates only as QoS 1 allows: a verdict in
    # flight when the broker went down, whose PUBACK (ours, or the subscriber's) was lost, is sent
    # again. How many that is depends on how far each side had got, so the bound is which frames: those
    # published before the broker was back, never one after.
    by_id = {r["frame_id"]: r for r in lines}
    assert all(m == by_id[m["frame_id"]] for m in sub.messages)
    seen: list[int] = [m["frame_id"] for m in sub.messages]
    assert {f for f in seen if seen.count(f) > 1} <= set(range(30))
    # The outbox drained; health reports the reconnect.
    import sqlite3

    assert sqlite3.connect(outbox).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert sub.health and max(h["reconnects"] for h in sub.health) >= 1


def test_verdicts_written_while_broker_is_down_are_delivered_by_the_next_run(bundle, tiny_data, tmp_path):
    from edgesdk.stream.detector import Detector
    from edgesdk.video import open_source

    broker = Broker(tmp_path)  # configured, not started: the line has no broker
    outbox = tmp_path / "outbox.db"
    uri = f"mqtt://127.0.0.1:{broker.port}/line2?outbox={outbox}&drain=0.2"
    sent = []
    with Detector(bundle) as det, open_source(str(tiny_data / "brick" / "test" / "good")) as src:
        with open_sink(uri) as sink:
            for frame in src:
                result = det.predict(frame.image)
                rec = {"frame_id": frame.frame_id, "score": round(result.score, 5)}
                sink.write(rec, frame, result)
                sent.append(rec)
            assert not sink.connected.is_set() and len(sink.outbox) == len(sent) == 6
    broker.start()
    try:
        sub = Subscriber(broker.port, "line2")
        with open_sink(uri.replace("drain=0.2", "drain=20")) as sink2:  # a new process would do the same
            assert sink2.connected.wait(10)
        got = sub.wait_for({r["frame_id"] for r in sent})
        sub.close()
        assert got == {r["frame_id"] for r in sent}
        assert sorted({m["frame_id"]: m for m in sub.messages}.values(), key=lambda m: m["frame_id"]) == sent
    finally:
        broker.stop()


def test_mqtt_uri_errors_name_the_problem():
    with pytest.raises(ValueError, match="give a topic"):
        open_sink("mqtt://127.0.0.1:1/")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['qso'\]"):
        open_sink("mqtt://127.0.0.1:1/t?qso=1")
