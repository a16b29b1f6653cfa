"""The stream loop's queue: bounded, in order, and waking the other side in bursts (a blocked
producer only once the queue has drained to its refill mark; a lingering consumer once `batch`
items are there, after `linger`, or at an urgent item)."""

import queue
import threading
import time

import pytest

from edgesdk.stream.handoff import Handoff


def _started(fn) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    t = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    t.start()
    return t, done


def test_blocked_producer_waits_for_the_refill_mark_then_fills_in_a_burst():
    h = Handoff(4, refill_at=1)
    for i in range(4):
        h.put(i)
    _, done = _started(lambda: h.put(4))
    assert not done.wait(0.2)  # full: blocked
    assert [h.get(), h.get()] == [0, 1]  # 2 left: still above the refill mark
    assert not done.wait(0.2)
    assert h.get() == 2  # 1 left: the producer is woken
    assert done.wait(5)
    assert [h.get(), h.get()] == [3, 4] and len(h) == 0


def test_timeouts_raise_like_queue_queue():
    h = Handoff(1)
    with pytest.raises(queue.Empty):
        h.get(timeout=0.01)
    h.put("a")
    with pytest.raises(queue.Full):
        h.put("b", timeout=0.01)


def test_live_put_drops_the_oldest_and_counts():
    h = Handoff(2)
    assert [h.put_drop_oldest(i) for i in range(5)] == [0, 0, 1, 1, 1]
    assert [h.get(), h.get()] == [3, 4]


def test_get_batch_lingers_for_a_batch_and_an_urgent_item_ends_the_wait():
    h = Handoff(8)
    h.put(0)
    t0 = time.perf_counter()
    assert h.get_batch(batch=4, linger=0.15) == [0]  # one item: returned after the linger
    assert time.perf_counter() - t0 >= 0.14

    got: list = []
    t, _ = _started(lambda: got.extend(h.get_batch(batch=4, linger=30)))
    for i in range(1, 5):
        h.put(i)
    t.join(5)
    assert got == [1, 2, 3, 4]  # the 4th item ends the 30 s linger

    t, _ = _started(lambda: got.extend(h.get_batch(batch=4, linger=30)))
    h.put("x")
    h.put("end", urgent=True)  # the end of a stream is not held back 30 s
    t.join(5)
    assert got[-2:] == ["x", "end"]
