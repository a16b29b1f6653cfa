"""The stream loop: source -> detector -> sinks, pipelined, each stage timed.

Three stages run concurrently, joined by bounded queues (never an unbounded backlog):
  capture thread    source.read() -> frames queue (live: `queue_depth` frames; files: twice that,
                    refilled in bursts)
  inference         preprocess, infer, regions -> results queue; `streams` threads (the calling
                    thread and streams - 1 more), each taking the next frame as it frees up
  sink thread       puts results back in capture order, makes each record, every sink writes
                    it, then `on_record`; for files it wakes for 4 results or after 10 ms
The queues are edgesdk.stream.handoff.Handoff: on 2 cores each wake-up of capture or sinks preempts
inference, so file sources (where throughput is what counts) hand frames and results over in
bursts; live sources hand each one over at once (latency is what counts).
File and folder sources apply backpressure: every frame is scored. Live sources (cameras, RTSP)
never wait: when inference is behind, the oldest queued frame is dropped and counted, so the
verdicts stay current. SIGINT/SIGTERM (when run from the main thread) stop the capture; frames
already read are still scored and written, then sinks close.

streams=1 (latency mode, the default): one frame in flight, ONNX Runtime's pool on every core.
streams=N (throughput mode, ONNX Runtime): N frames in flight on one shared session, each run on
cores/N threads. A small model parallelizes imperfectly inside one run, so on 2 cores two 1-thread
runs side by side score 8-21 % more frames a second than one 2-thread run (measured: PaDiM 154 vs
127 FPS, PatchCore 81 vs 75), at ~1.7x the latency per frame. For file backlogs and cameras faster
than the model.

Records keep stable names other tools read: frame_id, timestamp, score, is_anomalous, regions,
latency_ms (read, queue, preprocess, infer, postprocess, total = capture to verdict), model (which
model scored the frame: its model.onnx sha256, 12 hex digits). A folder image
that cannot be read is not scored: its record is frame_id, timestamp, source_time, name and `error`,
written by the sinks that take such records (jsonl, mqtt; not on_record, which gets verdicts), and
counted in the summary's `errors`; strict=True stops the run on it instead.

Sinks fail in two ways (video.sinks.Sink.evidence). A verdict sink (jsonl, mqtt) that fails stops the
run with an error naming it: verdicts are never lost silently. An evidence sink (dir, video, http
preview) that fails is counted, logged once per episode and tried again after a backoff, while the
verdict sinks carry on with every record; the counts are in the summary (sink_errors), the
preview's /metrics and the MQTT health topic.

The model can change under a running loop (_HotSwitch): given a path such as ROOT/current, which
`install` and `rollback` switch, the loop opens the new model off the hot path and the next frame is
scored by it, the camera untouched. Under systemd (Type=notify, edgesdk/deploy/service.py) a heartbeat
thread sends WATCHDOG=1 only while records come out of the sinks, or nothing is in flight and the source
is waiting (notify.Heartbeat, _Stages.moving): a stalled inference or sink stops the pings."""
from __future__ import annotations

import dataclasses
import logging
import operator
import os
import queue
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import cv2

from edgesdk.bundle import Bundle
from edgesdk.errors import OptionError
from edgesdk.measure.metrics import LatencyWindow
from edgesdk.notify import Heartbeat, Notifier
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.stream.drift import DriftOptions, LoopDrift
from edgesdk.stream.handoff import Handoff
from edgesdk.stream.sinkguard import open_guarded, public_uri
from edgesdk.stream.switch import _HotSwitch, _Models, bundle_folder, model_id
from edgesdk.video import open_source

_END = object()
SINK_BATCH, SINK_LINGER_S = 4, 0.010     # file sources: the sink thread's wake-up (results, at most s)
READ_TIMEOUT_S = 0.5                      # the capture thread's wait for a frame: how often it looks at `stop`

log = logging.getLogger("edgesdk.stream.pipeline")


def make_record(frame, result, threshold: float, read_ms: float, queue_ms: float = 0.0, model: str = "") -> dict:
    lat = {"read": read_ms, "queue": queue_ms, **result.latency_ms}
    lat["total"] = read_ms + queue_ms + result.latency_ms["total"]
    rec = {
        "frame_id": frame.frame_id, "timestamp": round(frame.timestamp, 6),
        "source_time": frame.source_time, "name": frame.name,
        "score": round(result.score, 5), "is_anomalous": bool(result.is_anomalous),
        "threshold": threshold, "regions": [r.to_dict() for r in result.regions],
        "latency_ms": {k: round(v, 3) for k, v in lat.items()},
    }
    if model:
        rec["model"] = model
    return rec


def error_record(frame) -> dict:
    """The record of a frame the source could not read (a corrupt image in a folder): where it was
    and why, no verdict. Written to the sinks that take such records (`takes_errors`: jsonl, mqtt)."""
    return {"frame_id": frame.frame_id, "timestamp": round(frame.timestamp, 6), "source_time": frame.source_time,
            "name": frame.name, "error": frame.error}


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
    """The capture, inference and sink threads of one run, and what they count."""

    def __init__(self, src, outs, models: _Models, depth: int, max_frames: int | None, on_record,
                 stop: threading.Event, drift: LoopDrift | None = None):
        self.src, self.outs, self.models, self.max_frames, self.drift = src, outs, models, max_frames, drift
        self.on_record, self.stop = on_record, stop
        live = src.live
        self.frames = Handoff(depth) if live else Handoff(2 * depth, refill_at=depth // 2)
        self.results = Handoff(2 * max(depth, SINK_BATCH))
        self.linger = 0.0 if live else SINK_LINGER_S
        self.take = threading.Lock()               # a frame and its sequence number are taken together
        self.seq = 0
        self.dropped = self.n = self.n_bad = self.n_errors = 0
        self.lat: dict[str, LatencyWindow] = {}    # fixed memory however long the line runs
        self.sink_ms = LatencyWindow()
        self.errors: list[BaseException] = []
        # progress, for the watchdog (moving): frames put in, dropped and through the sinks, and when
        self.n_put = self.n_done = 0
        self.t_read = self.t_done = time.monotonic()
        self.model_runs: list[dict] = []          # each model's first frame, in record order
        self.capture_t = threading.Thread(target=self._capture, name="edgesdk-capture", daemon=True)
        self.sink_t = threading.Thread(target=self._deliver, name="edgesdk-sinks", daemon=True)

    def _put_frame(self, item) -> bool:
        if self.src.live:                          # keep the newest, count what is dropped
            self.dropped += self.frames.put_drop_oldest(item)
            return True
        while not self.stop.is_set():              # backpressure, but never deaf to a stop
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
                        continue                   # a live source with nothing yet (or reconnecting)
                    break
                t1 = time.perf_counter()
                # read = decoding/copying; waiting for a camera to deliver is not latency of this frame
                self.n_put += self._put_frame((frame, max(0.0, (t1 - t0) * 1e3 - frame.wait_ms), t1))
                n += 1
        except BaseException as e:                 # reported by run_stream, after the drain
            self.errors.append(e)
        finally:
            self.frames.put(_END, urgent=True)     # the inference threads always drain, so this returns

    def infer(self) -> None:
        """One inference stream: take the next frame, score it, pass it on with its sequence number.
        After an error anywhere, frames are still taken (so capture never blocks) but not scored."""
        while True:
            with self.take:
                item = self.frames.get()
                if item is _END:
                    self.frames.put(_END)          # for the other streams; a slot was just freed
                    return
                seq, self.seq = self.seq, self.seq + 1
                det = self.models.take()           # in capture order: a switch is one point in the stream
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
            self.results.put((seq, out))           # None keeps the order whole after an error

    def _deliver(self) -> None:
        lower_priority()
        pending: dict[int, tuple | None] = {}      # results that overtook an earlier frame (streams > 1)
        nxt = 0
        while True:
            for item in self.results.get_batch(SINK_BATCH, self.linger):
                if item is _END:
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
            if self.drift is not None:             # events go into this frame's record: record["drift"]
                self.drift.observe(record, frame.image, det.bundle)
            if not self.model_runs or self.model_runs[-1]["model"] != record["model"]:
                self.model_runs.append({"model": record["model"], "bundle": str(det.bundle.path),
                                        "first_frame": frame.frame_id})
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


def _whole(n) -> bool:
    """N is a whole number >= 1 (a count of frames or streams; True is not one)."""
    try:
        return not isinstance(n, bool) and operator.index(n) >= 1
    except TypeError:                               # 1.5, "2", None
        return False


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                          # not Linux
        return os.cpu_count() or 1


def stream_options(opts: DetectorOptions, streams: int) -> DetectorOptions:
    """The detector settings of the loop: no spinning pool threads (capture and sinks share the
    CPU with inference), and with N streams, cores/N threads per run unless threads is set."""
    if not _whole(streams):
        raise OptionError(f"streams {streams!r}: a whole number, at least 1")
    if streams > 1 and opts.backend != "onnxruntime":
        raise ValueError(f"streams {streams}: several frames in flight share one ONNX Runtime session; "
                         f"the {opts.backend} backend runs one stream (use streams=1)")
    threads = opts.threads or (max(1, usable_cores() // streams) if streams > 1 else 0)
    return dataclasses.replace(opts, spin=False, threads=threads)


def run_stream(bundle: str | Path | Bundle, source: str, sinks: list[str],
               opts: DetectorOptions = DetectorOptions(), max_frames: int | None = None, on_record=None,
               queue_depth: int = 4, stop: threading.Event | None = None, streams: int = 1,
               strict: bool = False, drift: DriftOptions = DriftOptions()) -> dict:
    """Score `source` into each sink until it ends, `max_frames` (None: no limit; else at least 1),
    or `stop` is set (SIGINT/SIGTERM set it when called from the main thread). Returns a summary with
    latency percentiles, drops and `errors`: folder images that could not be read, each recorded by
    the sinks that take such records (jsonl, mqtt) and skipped; strict=True makes the first fatal.
    `streams`: frames in flight at once (see the module's notes); records stay in capture order.
    `drift`: the drift alarms' sensitivity (stream/drift.py); an event is in its frame's record as
    `drift` (a list), on the preview's /metrics and the MQTT health topic, and logged.

    `bundle` may be an installed slot (ROOT/current): a bundle path is watched, and when it comes to
    name another model (install, rollback) or on SIGHUP, the new one is swapped in between frames
    (_HotSwitch); each record's `model` names the model that scored it. Under systemd (NOTIFY_SOCKET)
    the loop sends READY, WATCHDOG while it makes progress, STATUS, RELOADING and STOPPING (notify.py)."""
    if max_frames is not None and not _whole(max_frames):
        raise OptionError(f"max_frames {max_frames!r}: a whole number, at least 1 (None for no limit)")
    stop = stop or threading.Event()
    det_opts = stream_options(opts, streams)
    notifier = Notifier()
    path = None if isinstance(bundle, Bundle) else bundle     # a path is watched for a new model
    watch = path is not None
    target = os.path.realpath(path) if path is not None else ""   # before opening: a switch meanwhile is seen
    reload = threading.Event()
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda *_: stop.set())
        if watch:
            old_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload.set())
    cv_threads = cv2.getNumThreads()
    # OpenCV's own pool (resize, labelling) would wake threads on the cores ONNX Runtime is using,
    # for work too small to gain from them; restored when the loop ends.
    cv2.setNumThreads(1)
    try:
        with ExitStack() as stack:
            stack.callback(notifier.close)
            models = _Models(Detector(bundle_folder(path) if path is not None else bundle, det_opts))
            stack.callback(models.close)
            src = stack.enter_context(open_source(source, errors="raise" if strict else "record"))
            outs = [stack.enter_context(open_guarded(s)) for s in sinks]
            watch_drift = LoopDrift(drift, models.det.bundle) if drift.enabled else None
            st = _Stages(src, outs, models, max(1, queue_depth, streams), max_frames, on_record, stop, watch_drift)
            switch = _HotSwitch(path, target, models, det_opts, notifier, reload) if path is not None else None

            def health() -> dict:
                return {"dropped_frames": st.dropped + src.stats.get("dropped_at_source", 0),
                        "reconnects": src.stats.get("reconnects", 0), "sinks": {g.uri: g.health() for g in outs},
                        **({"drift": watch_drift.stats()} if watch_drift else {})}

            for out in outs:       # sinks that report health (preview, mqtt) see drops, reconnects, sink errors
                if hasattr(out.sink, "attach"):
                    out.sink.attach(health)
            helpers = [threading.Thread(target=st.infer, name=f"edgesdk-infer-{i + 1}", daemon=True)
                       for i in range(streams - 1)]
            beat = Heartbeat(notifier, st.moving, _status(st, models), switch.tick if switch else None)
            t_start = time.perf_counter()
            for t in [st.capture_t, st.sink_t, *helpers]:
                t.start()
            notifier.ready(f"scoring {public_uri(source)} with model {model_id(models.det)}")
            if switch or notifier.enabled:
                beat.start()
            try:
                st.infer()                         # this thread is the first stream
            finally:
                beat.stop()
                notifier.stopping(f"stopping after {st.n} frames")
                for t in helpers:
                    t.join()
                st.results.put(_END, urgent=True)
                st.sink_t.join()
                st.capture_t.join()
                if switch:
                    switch.join(5.0)               # a model still loading is dropped by models.close
            wall = time.perf_counter() - t_start
            source_stats = dict(src.stats)
    finally:
        cv2.setNumThreads(cv_threads)
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    if st.errors:
        raise st.errors[0]
    n = st.n
    return {"frames": n, "anomalous_frames": st.n_bad, "errors": st.n_errors, "dropped_frames": st.dropped,
            "wall_s": wall, "fps": n / wall if wall else 0.0, "source": source, "sinks": [g.uri for g in outs],
            "sink_errors": {g.uri: g.errors for g in outs}, "sink_skipped_frames": {g.uri: g.skipped for g in outs},
            "stopped": stop.is_set(), "streams": streams, "threads_per_stream": det_opts.threads,
            "source_stats": source_stats, "model": model_id(models.det), "models": st.model_runs,
            "model_switch_errors": switch.errors if switch else 0,
            "drift": watch_drift.stats() if watch_drift else None,
            "latency_ms": {**{k: v.stats() for k, v in st.lat.items()}, "sink": st.sink_ms.stats()}}


def _status(st: _Stages, models: _Models):
    """The STATUS line systemctl shows: frames, the rate since the last line, drops, the model."""
    last = [time.monotonic(), 0]

    def status() -> str:
        now, n = time.monotonic(), st.n
        fps = (n - last[1]) / max(now - last[0], 1e-6)
        last[:] = [now, n]
        drops = st.dropped + st.src.stats.get("dropped_at_source", 0)
        return (f"{n} frames, {fps:.1f} FPS, model {model_id(models.det)}"
                + (f", {drops} dropped" if drops else ""))
    return status
