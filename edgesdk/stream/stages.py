"""The three stages of the stream loop (stream/pipeline.py runs them; its docstring has the whole
design): the capture thread (source -> frames queue), the inference streams (frames -> results
queue) and the sink thread (results back in capture order -> records -> every sink), with what they
count; and the records they write."""

from __future__ import annotations

import os
import queue
import threading
import time

from edgesdk.measure.metrics import LatencyWindow
from edgesdk.stream.detector import Detector
from edgesdk.stream.drift import LoopDrift
from edgesdk.stream.handoff import Handoff
from edgesdk.stream.switch import _Models, model_id

END = object()
SINK_BATCH, SINK_LINGER_S = 4, 0.010  # file sources: the sink thread's wake-up (results, at most s)
READ_TIMEOUT_S = 0.5  # the capture thread's wait for a frame: how often it looks at `stop`


def make_record(frame, result, threshold: float, read_ms: float, queue_ms: float = 0.0, model: str = "") -> dict:
    lat = {"read": read_ms, "queue": queue_ms, **result.latency_ms}
    lat["total"] = read_ms + queue_ms + result.latency_ms["total"]
    rec = {
        "frame_id": frame.frame_id,
        "timestamp": round(frame.timestamp, 6),
        "source_time": frame.source_time,
        "name": frame.name,
        "score": round(result.score, 5),
        "is_anomalous": bool(result.is_anomalous),
        "threshold": threshold,
        "regions": [r.to_dict() for r in result.regions],
        "latency_ms": {k: round(v, 3) for k, v in lat.items()},
    }
    if result.tiles:  # scored tile by tile (stream/tiling.py): how many, next to the latency they cost
        rec["tiles"] = result.tiles
    if model:
        rec["model"] = model
    return rec


def error_record(frame) -> dict:
    """The record of a frame the source could not read (a corrupt image in a folder): where it was
    and why, no verdict. Written to the sinks that take such records (`takes_errors`: jsonl, mqtt)."""
    return {
        "frame_id": frame.frame_id,
        "timestamp": round(frame.timestamp, 6),
        "source_time": frame.source_time,
        "name": frame.name,
        "error": frame.error,
    }


def lower_priority(step: int = 5) -> None:
    """Sinks (PNG/JPEG encodes, network) yield the CPU to inference when both want it, so a burst of
    NG images on a live camera delays evidence, not verdicts: the calling thread runs `step` nice
    levels lower (Linux schedules threads by their own nice value). A sink that falls behind still
    holds the loop back through its bounded queue (files: every frame; cameras: drops, counted)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + step)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass


class Stages:
    """The capture, inference and sink threads of one run, and what they count."""

    def __init__(
        self,
        src,
        outs,
        models: _Models,
        depth: int,
        max_frames: int | None,
        on_record,
        stop: threading.Event,
        drift: LoopDrift | None = None,
    ):
        self.src, self.outs, self.models, self.max_frames, self.drift = src, outs, models, max_frames, drift
        self.on_record, self.stop = on_record, stop
        live = src.live
        self.frames = Handoff(depth) if live else Handoff(2 * depth, refill_at=depth // 2)
        self.results = Handoff(2 * max(depth, SINK_BATCH))
        self.linger = 0.0 if live else SINK_LINGER_S
        self.take = threading.Lock()  # a frame and its sequence number are taken together
        self.seq = 0
        self.dropped = self.n = self.n_bad = self.n_errors = 0
        self.lat: dict[str, LatencyWindow] = {}  # fixed memory however long the line runs
        self.sink_ms = LatencyWindow()
        self.errors: list[BaseException] = []
        # progress, for the watchdog (moving): frames put in, dropped and through the sinks, and when
        self.n_put = self.n_done = 0
        self.t_read = self.t_done = time.monotonic()
        self.model_runs: list[dict] = []  # each model's first frame, in record order
        self.capture_t = threading.Thread(target=self._capture, name="edgesdk-capture", daemon=True)
        self.sink_t = threading.Thread(target=self._deliver, name="edgesdk-sinks", daemon=True)

    def _put_frame(self, item) -> bool:
        if self.src.live:  # keep the newest, count what is dropped
            self.dropped += self.frames.put_drop_oldest(item)
            return True
        while not self.stop.is_set():  # backpressure, but never deaf to a stop
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def moving(self, window: float) -> bool:
        """Whether the loop made progress in the last WINDOW seconds: a record went through the sinks,
        or nothing is in flight and the source's read keeps returning (a live camera between frames, a
        stream reconnecting). Frames in flight and no record out means a stalled inference or sink."""
        now = time.monotonic()
        if now - self.t_done < window:
            return True
        # a waiting read returns every READ_TIMEOUT_S: that long plus the window is alive
        return self.n_put - self.dropped - self.n_done <= 0 and now - self.t_read < window + READ_TIMEOUT_S

    def _capture(self) -> None:
        n = 0
        try:
            while not self.stop.is_set() and (self.max_frames is None or n < self.max_frames):
                t0 = time.perf_counter()
                frame = self.src.read(timeout=READ_TIMEOUT_S)
                self.t_read = time.monotonic()
                if frame is None:
                    if self.src.live and not self.src.ended:
                        continue  # a live source with nothing yet (or reconnecting)
                    break
                t1 = time.perf_counter()
                # read = decoding/copying; waiting for a camera to deliver is not latency of this frame
                self.n_put += self._put_frame((frame, max(0.0, (t1 - t0) * 1e3 - frame.wait_ms), t1))
                n += 1
        except BaseException as e:  # reported by run_stream, after the drain
            self.errors.append(e)
        finally:
            self.frames.put(END, urgent=True)  # the inference threads always drain, so this returns

    def infer(self) -> None:
        """One inference stream: take the next frame, score it, pass it on with its sequence number.
        After an error anywhere, frames are still taken (so capture never blocks) but not scored."""
        while True:
            with self.take:
                item = self.frames.get()
                if item is END:
                    self.frames.put(END)  # for the other streams; a slot was just freed
                    return
                seq, self.seq = self.seq, self.seq + 1
                det = self.models.take()  # in capture order: a switch is one point in the stream
            out = None
            try:
                if not self.errors:
                    frame, read_ms, t_read = item
                    queue_ms = (time.perf_counter() - t_read) * 1e3
                    out = (frame, None if frame.error else det.predict(frame.image), read_ms, queue_ms, det)
            except BaseException as e:
                self.errors.append(e)
                self.stop.set()
            finally:
                self.models.done(det)
            self.results.put((seq, out))  # None keeps the order whole after an error

    def _deliver(self) -> None:
        lower_priority()
        pending: dict[int, tuple | None] = {}  # results that overtook an earlier frame (streams > 1)
        nxt = 0
        while True:
            for item in self.results.get_batch(SINK_BATCH, self.linger):
                if item is END:
                    return
                pending[item[0]] = item[1]
                while nxt in pending:
                    out = pending.pop(nxt)
                    nxt += 1
                    if out is not None and not self.errors:
                        self._emit(*out)
                    self.n_done += 1
                    self.t_done = time.monotonic()

    def _emit(self, frame, result, read_ms: float, queue_ms: float, det: Detector) -> None:
        if result is None:
            return self._emit_error(frame)
        t0 = time.perf_counter()
        try:
            record = make_record(frame, result, det.threshold, read_ms, queue_ms, model_id(det))
            if self.drift is not None:  # events go into this frame's record: record["drift"]
                self.drift.observe(record, frame.image, det.bundle)
            if not self.model_runs or self.model_runs[-1]["model"] != record["model"]:
                self.model_runs.append(
                    {"model": record["model"], "bundle": str(det.bundle.path), "first_frame": frame.frame_id}
                )
            for k, v in record["latency_ms"].items():
                if k not in self.lat:
                    self.lat[k] = LatencyWindow()
                self.lat[k].add(v)
            self.n += 1
            self.n_bad += record["is_anomalous"]
            for s in self.outs:
                s.write(record, frame, result)
            if self.on_record is not None:
                self.on_record(record)
        except BaseException as e:
            self.errors.append(e)
            self.stop.set()
        self.sink_ms.add((time.perf_counter() - t0) * 1e3)

    def _emit_error(self, frame) -> None:
        """A frame the source could not read: counted, and recorded by the sinks that take it."""
        self.n_errors += 1
        try:
            record = error_record(frame)
            for s in self.outs:
                if getattr(s.sink, "takes_errors", False):
                    s.write(record, frame, None)
        except BaseException as e:
            self.errors.append(e)
            self.stop.set()
