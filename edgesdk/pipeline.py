"""The stream loop: source -> detector -> sinks, pipelined, each stage timed.

Three stages run concurrently, joined by bounded queues (never an unbounded backlog):
  capture thread   source.read() -> frames queue (`queue` frames deep)
  calling thread   preprocess, infer, postprocess -> results queue
  sink thread      every sink writes the record, then `on_record`
File and folder sources apply backpressure: every frame is scored. Live sources (cameras, RTSP)
never wait: when inference is behind, the oldest queued frame is dropped and counted, so the
verdicts stay current. SIGINT/SIGTERM (when run from the main thread) stop the capture; frames
already read are still scored and written, then sinks close.

Records keep stable names other tools read: frame_id, timestamp, score, is_anomalous, regions,
latency_ms (read, queue, preprocess, infer, postprocess, total = capture to verdict)."""
from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import cv2

from edgesdk.metrics import LatencyWindow
from edgesdk.runtime import Detector, DetectorOptions
from edgesdk.video import open_sink, open_source

_END = object()


def make_record(frame, result, threshold: float, read_ms: float, queue_ms: float = 0.0) -> dict:
    lat = {"read": read_ms, "queue": queue_ms, **result.latency_ms}
    lat["total"] = read_ms + queue_ms + result.latency_ms["total"]
    return {
        "frame_id": frame.frame_id, "timestamp": round(frame.timestamp, 6),
        "source_time": frame.source_time, "name": frame.name,
        "score": round(result.score, 5), "is_anomalous": bool(result.is_anomalous),
        "threshold": threshold, "regions": [r.to_dict() for r in result.regions],
        "latency_ms": {k: round(v, 3) for k, v in lat.items()},
    }


def lower_priority(step: int = 5) -> None:
    """Sinks (PNG/JPEG encodes, network) yield the CPU to inference when both want it, so a burst of
    NG images on a live camera delays evidence, not verdicts: the calling thread runs `step` nice
    levels lower (Linux schedules threads by their own nice value). A sink that falls behind still
    holds the loop back through its bounded queue (files: every frame; cameras: drops, counted)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + step)
    except (AttributeError, OSError):       # not Linux, or not permitted: run at normal priority
        pass


class _Stages:
    """The capture and sink threads of one run, and what they count."""

    def __init__(self, src, outs, depth: int, max_frames: int | None, on_record, stop: threading.Event):
        self.src, self.outs, self.max_frames, self.on_record, self.stop = src, outs, max_frames, on_record, stop
        self.frames: queue.Queue = queue.Queue(maxsize=depth)
        self.results: queue.Queue = queue.Queue(maxsize=depth)
        self.dropped = 0
        self.sink_ms = LatencyWindow()
        self.errors: list[BaseException] = []
        self.capture_t = threading.Thread(target=self._capture, name="edgesdk-capture", daemon=True)
        self.sink_t = threading.Thread(target=self._deliver, name="edgesdk-sinks", daemon=True)

    def _put_frame(self, item) -> None:
        if not self.src.live:
            while not self.stop.is_set():          # backpressure, but never deaf to a stop
                try:
                    self.frames.put(item, timeout=0.1)
                    return
                except queue.Full:
                    pass
            return
        while True:                                # live: keep the newest, count what is dropped
            try:
                self.frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _capture(self) -> None:
        n = 0
        try:
            while not self.stop.is_set() and (self.max_frames is None or n < self.max_frames):
                t0 = time.perf_counter()
                frame = self.src.read(timeout=0.5)
                if frame is None:
                    if self.src.live and not self.src.ended:
                        continue                   # a live source with nothing yet (or reconnecting)
                    break
                t1 = time.perf_counter()
                # read = decoding/copying; waiting for a camera to deliver is not latency of this frame
                self._put_frame((frame, max(0.0, (t1 - t0) * 1e3 - frame.wait_ms), t1))
                n += 1
        except BaseException as e:                 # reported by run_stream, after the drain
            self.errors.append(e)
        finally:
            self.frames.put(_END)                  # the calling thread always drains, so this returns

    def _deliver(self) -> None:
        lower_priority()
        while (item := self.results.get()) is not _END:
            if self.errors:
                continue                           # keep draining so inference never blocks
            record, frame, result = item
            t0 = time.perf_counter()
            try:
                for s in self.outs:
                    s.write(record, frame, result)
                if self.on_record is not None:
                    self.on_record(record)
            except BaseException as e:
                self.errors.append(e)
                self.stop.set()
            self.sink_ms.add((time.perf_counter() - t0) * 1e3)


def run_stream(bundle: str | Path, source: str, sinks: list[str], opts: DetectorOptions = DetectorOptions(),
               max_frames: int | None = None, on_record=None, queue_depth: int = 4,
               stop: threading.Event | None = None) -> dict:
    """Score `source` into each sink until it ends, `max_frames`, or `stop` is set (SIGINT/SIGTERM
    set it when called from the main thread). Returns a summary with latency percentiles and drops."""
    stop = stop or threading.Event()
    lat: dict[str, LatencyWindow] = {}          # fixed memory however long the line runs
    n = n_bad = 0
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    cv_threads = cv2.getNumThreads()
    # OpenCV's own pool (resize, labelling) would wake threads on the cores ONNX Runtime is using,
    # for work too small to gain from them; restored when the loop ends.
    cv2.setNumThreads(1)
    try:
        with ExitStack() as stack:
            # Capture and sinks share the CPU with inference here: no spinning pool threads.
            det = stack.enter_context(Detector(bundle, dataclasses.replace(opts, spin=False)))
            src = stack.enter_context(open_source(source))
            outs = [stack.enter_context(open_sink(s)) for s in sinks]
            st = _Stages(src, outs, max(1, queue_depth), max_frames, on_record, stop)
            for out in outs:       # sinks that report health (preview) see drops and reconnects
                if hasattr(out, "attach"):
                    out.attach(lambda: {"dropped_frames": st.dropped + src.stats.get("dropped_at_source", 0),
                                        "reconnects": src.stats.get("reconnects", 0)})
            t_start = time.perf_counter()
            st.capture_t.start()
            st.sink_t.start()
            try:
                while (item := st.frames.get()) is not _END:
                    frame, read_ms, t_read = item
                    if st.errors:
                        continue
                    queue_ms = (time.perf_counter() - t_read) * 1e3
                    result = det.predict(frame.image)
                    record = make_record(frame, result, det.threshold, read_ms, queue_ms)
                    st.results.put((record, frame, result))
                    for k, v in record["latency_ms"].items():
                        lat.setdefault(k, LatencyWindow()).add(v)
                    n += 1
                    n_bad += record["is_anomalous"]
            except BaseException as e:
                st.errors.append(e)
                stop.set()
                while st.frames.get() is not _END:   # unblock the capture thread
                    pass
            finally:
                st.results.put(_END)
                st.sink_t.join()
                st.capture_t.join()
            wall = time.perf_counter() - t_start
            source_stats = dict(src.stats)
    finally:
        cv2.setNumThreads(cv_threads)
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    if st.errors:
        raise st.errors[0]
    return {"frames": n, "anomalous_frames": n_bad, "dropped_frames": st.dropped, "wall_s": wall,
            "fps": n / wall if wall else 0.0, "source": source, "sinks": sinks, "stopped": stop.is_set(),
            "source_stats": source_stats,
            "latency_ms": {**{k: v.stats() for k, v in lat.items()}, "sink": st.sink_ms.stats()}}
