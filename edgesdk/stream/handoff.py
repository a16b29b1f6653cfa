"""A bounded FIFO between the stream loop's threads that wakes the other side in bursts.

On a 2-core CPU, inference keeps both cores busy. Each time the capture or the sink thread wakes,
it preempts an inference thread. queue.Queue wakes a blocked producer on every get and a waiting
consumer on every put: ~10 context switches a frame in the loop, against 0.5 for inference alone
(measured with getrusage; STFPM in throughput mode lost 9 % of its frame rate that way).

Handoff:
  put             blocks while full, then sleeps until only `refill_at` items are left, so a
                  file source decodes several frames in one go (backpressure, never unbounded)
  put_drop_oldest never blocks: a live camera's newest frame replaces the oldest, counted
  get             one item (the inference streams)
  get_batch       everything waiting, once `batch` items are there or `linger` seconds after the
                  first arrived (the sink thread: one wake-up for several records)
"""

from __future__ import annotations

import queue
import threading
from collections import deque


class Handoff:
    def __init__(self, maxsize: int, refill_at: int | None = None):
        self.maxsize = max(1, maxsize)
        self.refill_at = self.maxsize - 1 if refill_at is None else max(0, min(refill_at, self.maxsize - 1))
        self.items: deque = deque()
        self.wake_at = 1  # items that wake a consumer (get_batch raises it)
        self.flush = False  # an urgent item arrived: a lingering consumer stops
        lock = threading.Lock()
        self.not_full, self.not_empty = threading.Condition(lock), threading.Condition(lock)

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item, timeout: float | None = None, urgent: bool = False) -> None:
        """Append, waiting for room (raises queue.Full after `timeout`). `urgent` wakes a lingering
        consumer at once (the end of the stream)."""
        with self.not_full:
            if len(self.items) >= self.maxsize and not self.not_full.wait_for(
                lambda: len(self.items) <= self.refill_at, timeout
            ):
                raise queue.Full
            self._append(item, urgent)

    def put_drop_oldest(self, item) -> int:
        """Append without waiting; when full, the oldest item is dropped. Returns how many were dropped."""
        with self.not_full:
            dropped = 0
            while len(self.items) >= self.maxsize:
                self.items.popleft()
                dropped += 1
            self._append(item, False)
            return dropped

    def _append(self, item, urgent: bool) -> None:
        self.items.append(item)
        self.flush = self.flush or urgent
        if urgent or len(self.items) == 1 or len(self.items) >= self.wake_at:
            self.not_empty.notify()

    def get(self, timeout: float | None = None):
        """The oldest item (raises queue.Empty after `timeout`)."""
        with self.not_empty:
            if not self.items and not self.not_empty.wait_for(lambda: self.items, timeout):
                raise queue.Empty
            item = self.items.popleft()
            if len(self.items) == self.refill_at:
                self.not_full.notify()
            return item

    def get_batch(self, batch: int = 1, linger: float = 0.0) -> list:
        """Every waiting item, in order: waits for the first, then up to `linger` s for `batch`."""
        with self.not_empty:
            self.not_empty.wait_for(lambda: self.items)
            if len(self.items) < batch and linger > 0:
                self.wake_at = batch
                self.not_empty.wait_for(lambda: len(self.items) >= batch or self.flush, linger)
                self.wake_at = 1
            out = list(self.items)
            self.items.clear()
            self.flush = False
            self.not_full.notify_all()
            return out
