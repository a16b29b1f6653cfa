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
cores/N threads. A small model parallelizes imperfectly inside one run, so two 1-thread runs side by
side score more frames a second than one 2-thread run, at a higher latency per frame (docs/LINE.md
has the measurement and its command). For file backlogs and cameras faster than the model.

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
is waiting (notify.Heartbeat, stages.Stages.moving): a stalled inference or sink stops the pings."""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import cv2

from edgesdk.bundle import Bundle
from edgesdk.errors import OptionError
from edgesdk.notify import Heartbeat, Notifier
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.stream.drift import DriftOptions, LoopDrift
from edgesdk.stream.multi import DEFAULT_DEADLINE_MS, run_multi
from edgesdk.stream.sinkguard import open_guarded, public_uri, refuse_sinks_on_sources
from edgesdk.stream.stages import END, Stages
from edgesdk.stream.switch import _HotSwitch, _Models, bundle_folder, model_id
from edgesdk.stream.tiling import TileSpec
from edgesdk.video import open_source
from edgesdk.video.sources import source_tiling

log = logging.getLogger("edgesdk.stream.pipeline")


def _whole(n) -> bool:
    """N is a whole number >= 1 (a count of frames or streams; True is not one)."""
    try:
        return not isinstance(n, bool) and operator.index(n) >= 1
    except TypeError:  # 1.5, "2", None
        return False


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def stream_options(opts: DetectorOptions, streams: int) -> DetectorOptions:
    """The detector settings of the loop: no spinning pool threads (capture and sinks share the
    CPU with inference), and with N streams, cores/N threads per run unless threads is set."""
    if not _whole(streams):
        raise OptionError(f"streams {streams!r}: a whole number, at least 1")
    if streams > 1 and opts.backend != "onnxruntime":
        raise ValueError(
            f"streams {streams}: several frames in flight share one ONNX Runtime session; "
            f"the {opts.backend} backend runs one stream (use streams=1)"
        )
    threads = opts.threads or (max(1, usable_cores() // streams) if streams > 1 else 0)
    return dataclasses.replace(opts, spin=False, threads=threads)


def run_stream(
    bundle: str | Path | Bundle,
    source: str | list[str],
    sinks: list[str],
    opts: DetectorOptions = DetectorOptions(),
    max_frames: int | None = None,
    on_record=None,
    queue_depth: int = 4,
    stop: threading.Event | None = None,
    streams: int = 1,
    strict: bool = False,
    drift: DriftOptions = DriftOptions(),
    batch_deadline_ms: float = DEFAULT_DEADLINE_MS,
) -> dict:
    """Score `source` into each sink until it ends, `max_frames` (None: no limit; else at least 1),
    or `stop` is set (SIGINT/SIGTERM set it when called from the main thread). Returns a summary with
    latency percentiles, drops and `errors`: folder images that could not be read, each recorded by
    the sinks that take such records (jsonl, mqtt) and skipped; strict=True makes the first fatal.
    `streams`: frames in flight at once (see the module's notes); records stay in capture order.
    Several sources (a list) are batched into one inference call (stream/multi.py: each waits at most
    `batch_deadline_ms` for the others); records carry `source`, the summary's `sources` counts each.
    `drift`: the drift alarms' sensitivity (stream/drift.py); an event is in its frame's record as
    `drift` (a list), on the preview's /metrics and the MQTT health topic, and logged.

    `bundle` may be an installed slot (ROOT/current): a bundle path is watched, and when it comes to
    name another model (install, rollback) or on SIGHUP, the new one is swapped in between frames
    (_HotSwitch); each record's `model` names the model that scored it. Under systemd (NOTIFY_SOCKET)
    the loop sends READY, WATCHDOG while it makes progress, STATUS, RELOADING and STOPPING (notify.py)."""
    if max_frames is not None and not _whole(max_frames):
        raise OptionError(f"max_frames {max_frames!r}: a whole number, at least 1 (None for no limit)")
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise OptionError("--source: no source given")
    refuse_sinks_on_sources(sources, sinks)
    stop = stop or threading.Event()
    det_opts = stream_options(opts, streams)
    if len(sources) > 1 and streams > 1:
        raise OptionError(f"streams {streams}: several sources are batched into one inference call; use streams=1")
    if len(sources) == 1 and (tiles := source_tiling(sources[0])) is not None:  # ?tile=&overlap=: tile by tile
        det_opts = dataclasses.replace(det_opts, tile=TileSpec(*tiles))
    notifier = Notifier()
    path = None if isinstance(bundle, Bundle) else bundle  # a path is watched for a new model
    watch = path is not None
    target = os.path.realpath(path) if path is not None else ""  # before opening: a switch meanwhile is seen
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
        if len(sources) != 1:
            folder = bundle_folder(path) if path is not None else bundle
            return run_multi(
                folder,
                sources,
                sinks,
                det_opts,
                max_frames,
                on_record,
                stop,
                strict,
                batch_deadline_ms,
                queue_depth,
                drift,
            )
        source = sources[0]
        with ExitStack() as stack:
            stack.callback(notifier.close)
            models = _Models(Detector(bundle_folder(path) if path is not None else bundle, det_opts))
            stack.callback(models.close)
            src = stack.enter_context(open_source(source, errors="raise" if strict else "record"))
            outs = [stack.enter_context(open_guarded(s)) for s in sinks]
            watch_drift = LoopDrift(drift, models.det.bundle) if drift.enabled else None
            st = Stages(src, outs, models, max(1, queue_depth, streams), max_frames, on_record, stop, watch_drift)
            switch = _HotSwitch(path, target, models, det_opts, notifier, reload) if path is not None else None

            def health() -> dict:
                return {
                    "dropped_frames": st.dropped + src.stats.get("dropped_at_source", 0),
                    "reconnects": src.stats.get("reconnects", 0),
                    "sinks": {g.uri: g.health() for g in outs},
                    **({"drift": watch_drift.stats()} if watch_drift else {}),
                }

            for out in outs:  # sinks that report health (preview, mqtt) see drops, reconnects, sink errors
                if hasattr(out.sink, "attach"):
                    out.sink.attach(health)
            helpers = [
                threading.Thread(target=st.infer, name=f"edgesdk-infer-{i + 1}", daemon=True)
                for i in range(streams - 1)
            ]
            beat = Heartbeat(notifier, st.moving, _status(st, models), switch.tick if switch else None)
            t_start = time.perf_counter()
            c_start = time.process_time()  # every thread of the process: CPU per frame, per core
            for t in [st.capture_t, st.sink_t, *helpers]:
                t.start()
            notifier.ready(f"scoring {public_uri(source)} with model {model_id(models.det)}")
            if switch or notifier.enabled:
                beat.start()
            try:
                st.infer()  # this thread is the first stream
            finally:
                beat.stop()
                notifier.stopping(f"stopping after {st.n} frames")
                for t in helpers:
                    t.join()
                st.results.put(END, urgent=True)
                st.sink_t.join()
                st.capture_t.join()
                if switch:
                    switch.join(5.0)  # a model still loading is dropped by models.close
            wall = time.perf_counter() - t_start
            cpu = time.process_time() - c_start
            source_stats = dict(src.stats)
    finally:
        cv2.setNumThreads(cv_threads)
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    if st.errors:
        raise st.errors[0]
    n = st.n
    return {
        "frames": n,
        "anomalous_frames": st.n_bad,
        "errors": st.n_errors,
        "dropped_frames": st.dropped,
        "wall_s": wall,
        "cpu_s": cpu,
        "fps": n / wall if wall else 0.0,
        "source": source,
        "sinks": [g.uri for g in outs],
        "sink_errors": {g.uri: g.errors for g in outs},
        "sink_skipped_frames": {g.uri: g.skipped for g in outs},
        "stopped": stop.is_set(),
        "streams": streams,
        "threads_per_stream": det_opts.threads,
        "source_stats": source_stats,
        "model": model_id(models.det),
        "models": st.model_runs,
        "model_switch_errors": switch.errors if switch else 0,
        "drift": watch_drift.stats() if watch_drift else None,
        "latency_ms": {**{k: v.stats() for k, v in st.lat.items()}, "sink": st.sink_ms.stats()},
    }


def _status(st: Stages, models: _Models):
    """The STATUS line systemctl shows: frames, the rate since the last line, drops, the model."""
    last = [time.monotonic(), 0]

    def status() -> str:
        now, n = time.monotonic(), st.n
        fps = (n - last[1]) / max(now - last[0], 1e-6)
        last[:] = [now, n]
        drops = st.dropped + st.src.stats.get("dropped_at_source", 0)
        return f"{n} frames, {fps:.1f} FPS, model {model_id(models.det)}" + (f", {drops} dropped" if drops else "")

    return status
