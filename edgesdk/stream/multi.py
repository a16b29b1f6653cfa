"""Many cameras, one model: N sources batched into one inference call (`run --source A --source B`).

  capture threads   one per source: source.read() -> that source's queue (`depth` frames; live
                    sources drop their oldest frame, counted per source; files wait: every frame)
  batcher           (the calling thread) takes at most one frame from each source: once every
                    source still running has one waiting, or the oldest waiting frame has waited
                    `deadline_ms`, whichever comes first; preprocess each, stack to (B, H, W, 3),
                    one runner.infer -> scores (B,), maps (B, H, W), split back per source
  sink thread       records in batch order (each source's in capture order) -> every sink

The deadline bounds what a slow or cut camera costs the others: a frame waits at most
`deadline_ms` for batch-mates, then goes with whichever frames are there. File sources are always
ready, so their batches are full. Each record carries `source` (the URI's ?name=, else the URI with
secrets hidden) and `batch` (frames in its inference call); latency_ms.queue includes the batching
wait, latency_ms.infer is the whole batch's call. A source's threshold is its ?threshold=X (finite),
else the run's --threshold, else its own calibrated one (`calibrate --source A --source B` writes the
manifest's thresholds_by_source, by name), else the bundle's; the summary's `sources` says which
(threshold_source). Each source has its own drift alarms (stream/drift.py) against its own reference
(drift_sources.json from the same calibration; without one, image drift against its first frames):
events go into that source's records, carrying `source`. Frames, drops, reconnects, latency and
drift are counted per source: in the summary's `sources` and on the preview's /metrics (label
`source`). max_frames counts each source's frames. Under systemd the run sends READY, watchdog pings
while records come out, and STOPPING. Tiling (?tile=) and the hot model switch are for single-source
runs."""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.errors import OptionError, finite
from edgesdk.measure.metrics import LatencyWindow
from edgesdk.notify import Heartbeat, Notifier
from edgesdk.spec import source_name_problem
from edgesdk.stream.detector import Detector, DetectorOptions, Result
from edgesdk.stream.drift import KINDS, DriftMonitor, DriftOptions
from edgesdk.stream.drift_ref import Reference, load_source_references
from edgesdk.stream.sinkguard import open_guarded, public_uri
from edgesdk.stream.stages import READ_TIMEOUT_S, error_record, lower_priority, make_record
from edgesdk.stream.switch import model_id
from edgesdk.video import open_source
from edgesdk.video.options import Opt, foreign_query, parse_query
from edgesdk.video.sources import source_tiling

log = logging.getLogger("edgesdk.stream.multi")

OWN = {"name": Opt(""), "threshold": Opt(None, "float")}  # the loop's options on a source URI
DEFAULT_DEADLINE_MS = 10.0


def split_source(uri: str) -> tuple[str, str, float | None]:
    """(the URI for open_source, the source's name, its threshold or None) of `uri?name=&threshold=`."""
    base, _, query = uri.partition("?")
    shown = public_uri(uri)
    own = parse_query(shown, query, OWN, strict=False, what="source option")
    rest = foreign_query(query, OWN)
    inner = base + (f"?{rest}" if rest else "")
    thr = None if own["threshold"] is None else finite(own["threshold"], "threshold", shown)
    if source_tiling(inner) is not None:  # one detector scores every source's whole frames in one batch
        raise OptionError(
            f"{shown}: ?tile= scores one source tile by tile; a run of several sources scores whole frames"
        )
    if own["name"] and (why := source_name_problem(own["name"])):  # it names records, logs, labels, manifest keys
        raise OptionError(f"{shown}: source option name {why}")
    return inner, own["name"] or public_uri(inner), thr


class _Source:
    """One camera of the run: its source, queue, threshold (and where it came from), drift alarms and counters."""

    def __init__(self, uri: str, src, name: str, threshold: tuple[float, str], drift: DriftMonitor | None = None):
        self.uri, self.src, self.name, self.drift = uri, src, name, drift
        self.threshold, self.threshold_source = threshold
        self.queue: collections.deque = collections.deque()
        self.ended = False
        self.n = self.n_bad = self.n_errors = self.dropped = 0
        self.lat = LatencyWindow()

    def stats(self) -> dict:
        st = self.src.stats
        return {
            "uri": public_uri(self.uri),
            "frames": self.n,
            "anomalous_frames": self.n_bad,
            "errors": self.n_errors,
            "dropped_frames": self.dropped + st.get("dropped_at_source", 0),
            "reconnects": st.get("reconnects", 0),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "latency_ms": self.lat.stats(),
            "drift": self.drift.stats() if self.drift is not None else None,
        }


class MultiLoop:
    """The capture threads, batcher and sink thread of one multi-source run, and what they count."""

    def __init__(self, det: Detector, cams: list[_Source], outs, depth, max_frames, on_record, stop, deadline_ms):
        self.det, self.cams, self.outs, self.depth, self.max_frames = det, cams, outs, depth, max_frames
        self.on_record, self.stop, self.deadline = on_record, stop, deadline_ms / 1e3
        self.cond = threading.Condition()
        self.results: queue.Queue = queue.Queue(maxsize=4)  # batches of results, bounded
        self.errors: list[BaseException] = []
        self.batches = self.batched = 0
        self.lat: dict[str, LatencyWindow] = {}
        self.t_done = time.monotonic()  # when the last record went through the sinks (the watchdog's progress)

    def capture(self, cam: _Source) -> None:
        n = 0
        try:
            while not self.stop.is_set() and (self.max_frames is None or n < self.max_frames):
                t0 = time.perf_counter()
                frame = cam.src.read(timeout=READ_TIMEOUT_S)
                if frame is None:
                    if cam.src.live and not cam.src.ended:
                        continue
                    break
                t1 = time.perf_counter()
                item = (frame, max(0.0, (t1 - t0) * 1e3 - frame.wait_ms), t1)
                with self.cond:
                    if cam.src.live and len(cam.queue) >= self.depth:  # keep the newest, count the drop
                        cam.queue.popleft()
                        cam.dropped += 1
                    while len(cam.queue) >= self.depth and not self.stop.is_set():  # files: backpressure
                        self.cond.wait(0.1)
                    cam.queue.append(item)
                    self.cond.notify_all()
                n += 1
        except BaseException as e:  # reported after the drain; the other cameras stop too
            self.errors.append(e)
            self.stop.set()
        finally:
            with self.cond:
                cam.ended = True
                self.cond.notify_all()

    def next_batch(self) -> list[tuple[_Source, tuple]] | None:
        """At most one frame per source (see the module's notes), or None once every source ended."""
        with self.cond:
            while not any(c.queue for c in self.cams):
                if all(c.ended for c in self.cams):
                    return None
                self.cond.wait(0.1)
            oldest = min(c.queue[0][2] for c in self.cams if c.queue)
            while True:
                left = oldest + self.deadline - time.perf_counter()
                if left <= 0 or all(c.queue or c.ended for c in self.cams):
                    break
                self.cond.wait(left)
            batch = [(c, c.queue.popleft()) for c in self.cams if c.queue]
            self.cond.notify_all()  # room in the file sources' queues
            return batch

    def infer(self) -> None:
        """The batcher: this thread takes batches, scores them and hands the results to the sinks."""
        while (batch := self.next_batch()) is not None:
            if self.errors:
                continue  # drain without scoring, so capture never blocks
            try:
                self.results.put(self.score(batch))
            except BaseException as e:
                self.errors.append(e)
                self.stop.set()

    def score(self, batch) -> list:
        """[(cam, frame, result or None, read_ms, queue_ms, B)]: one infer call on the readable frames."""
        det, t_start = self.det, time.perf_counter()
        good = [(c, item) for c, item in batch if not item[0].error]
        pre, tensors = [], []
        for _, (frame, _, _) in good:
            t0 = time.perf_counter()
            tensors.append(det.preprocess(frame.image))  # (1, H, W, 3)
            pre.append((time.perf_counter() - t0) * 1e3)
        out: list[tuple] = []
        if good:
            t0 = time.perf_counter()
            outs = det.infer_outputs(np.concatenate(tensors))
            scores, maps = outs["score"], outs["anomaly_map"]  # (B,), (B, H, W)
            kinds = outs["kind_map"] if det.kinds else None  # (B, H, W) kind indices of a supervised model
            known = outs[det.known_output] if det.known_output else None  # (B, H, W) a hybrid's naming head
            infer_ms = (time.perf_counter() - t0) * 1e3
            self.batches, self.batched = self.batches + 1, self.batched + len(good)
            for i, (cam, (frame, read_ms, t_read)) in enumerate(good):
                t0 = time.perf_counter()
                score = float(scores[i])
                kind_map = kinds[i] if kinds is not None else None
                known_map = known[i] if known is not None else None
                regions = det.regions(maps[i], frame.image.shape, cam.threshold, kind_map, known_map)
                post = (time.perf_counter() - t0) * 1e3
                lat = {"preprocess": pre[i], "infer": infer_ms, "postprocess": post}
                lat["total"] = sum(lat.values())
                res = Result(score, score > cam.threshold, maps[i], regions, lat, kind_map=kind_map)
                out.append((cam, frame, res, read_ms, (t_start - t_read) * 1e3, len(good)))
        out += [(c, item[0], None, 0.0, 0.0, 0) for c, item in batch if item[0].error]
        return out

    def deliver(self) -> None:
        lower_priority()
        while (batch := self.results.get()) is not None:
            if self.errors:
                continue
            try:
                for item in batch:
                    self.emit(*item)
            except BaseException as e:
                self.errors.append(e)
                self.stop.set()

    def emit(self, cam: _Source, frame, result, read_ms: float, queue_ms: float, size: int) -> None:
        if result is None:  # a frame the source could not read: counted, recorded by the sinks that take it
            cam.n_errors += 1
            record = {**error_record(frame), "source": cam.name}
            for s in self.outs:
                if getattr(s.sink, "takes_errors", False):
                    s.write(record, frame, None)
            return
        record = make_record(frame, result, cam.threshold, read_ms, queue_ms, model_id(self.det))
        record["source"], record["batch"] = cam.name, size
        if cam.drift is not None and (
            events := cam.drift.update(frame.frame_id, frame.image, result.score, not result.is_anomalous)
        ):
            record["drift"] = [{**e, "source": cam.name} for e in events]
        for k, v in record["latency_ms"].items():
            self.lat.setdefault(k, LatencyWindow()).add(v)
        cam.lat.add(record["latency_ms"]["total"])
        cam.n += 1
        cam.n_bad += record["is_anomalous"]
        for s in self.outs:
            s.write(record, frame, result)
        if self.on_record is not None:
            self.on_record(record)
        self.t_done = time.monotonic()

    def moving(self, window: float) -> bool:
        """Progress for systemd's watchdog: a record within WINDOW s, or no frame waiting (cameras
        between frames or reconnecting). Frames waiting and no record out: a stalled batcher or sink."""
        return time.monotonic() - self.t_done < window or not any(c.queue for c in self.cams)

    def status(self) -> str:
        n, drops = sum(c.n for c in self.cams), sum(c.stats()["dropped_frames"] for c in self.cams)
        return f"{n} frames from {len(self.cams)} sources, model {model_id(self.det)}" + (
            f", {drops} dropped" if drops else ""
        )

    def health(self) -> dict:
        """What the preview's /metrics and the MQTT health topic show: totals and each source's."""
        per = {c.name: c.stats() for c in self.cams}
        drift = {n: s["drift"] for n, s in per.items() if s["drift"] is not None}
        return {
            "dropped_frames": sum(s["dropped_frames"] for s in per.values()),
            "reconnects": sum(s["reconnects"] for s in per.values()),
            "sinks": {g.uri: g.health() for g in self.outs},
            "sources": per,
            # events of every camera by kind (each camera's own: its `drift`, and drift.sources)
            **(
                {"drift": {"events": {k: sum(d["events"][k] for d in drift.values()) for k in KINDS}, "sources": drift}}
                if drift
                else {}
            ),
        }


def _threshold(det: Detector, opts: DetectorOptions, name: str, uri_threshold: float | None) -> tuple[float, str]:
    """A source's threshold and where it came from: its ?threshold=, else the run's (opts.threshold), else
    its own calibrated one (the manifest's thresholds_by_source, by name), else the bundle's."""
    by_source = det.bundle.manifest.thresholds_by_source
    if uri_threshold is not None:
        return uri_threshold, "uri"
    if opts.threshold is not None:
        return det.threshold, "option"
    if name in by_source:
        return finite(
            by_source[name].value, f"thresholds_by_source[{name!r}].value", str(det.bundle.path)
        ), "calibrated"
    if by_source:
        log.warning(
            "source %r has no calibrated threshold in %s (it has %s): it uses the bundle's threshold %.4g",
            name,
            det.bundle.path,
            ", ".join(map(repr, sorted(by_source))),
            det.threshold,
        )
    return det.threshold, "bundle"


def _drift(opts: DriftOptions, refs: dict[str, Reference], name: str) -> DriftMonitor | None:
    """A source's drift alarms against its own reference (`calibrate` with several sources), else against
    its first frames (image drift only): a reference made on another camera would alarm on the view."""
    if not opts.enabled:
        return None
    if name not in refs:
        log.info("drift: source %r has no reference of its own in the bundle: score drift not checked for it", name)
    return DriftMonitor(opts, refs.get(name))


def run_multi(
    bundle: str | Path | Bundle,
    sources: list[str],
    sinks: list[str],
    opts: DetectorOptions,
    max_frames: int | None,
    on_record,
    stop: threading.Event,
    strict: bool = False,
    deadline_ms: float = DEFAULT_DEADLINE_MS,
    queue_depth: int = 4,
    drift: DriftOptions = DriftOptions(enabled=False),
) -> dict:
    """Score every source into each sink, frames of all sources batched into one inference call
    (the module's notes). OPTS are the loop's detector options (pipeline.stream_options)."""
    deadline_ms = finite(deadline_ms, "batch deadline (ms)")
    if deadline_ms < 0:
        raise OptionError(f"batch deadline {deadline_ms:g} ms: at least 0")
    parsed = [split_source(u) for u in sources]
    names = [name for _, name, _ in parsed]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise OptionError(f"--source: two sources are named {dup[0]!r}; give each its own ?name=")
    notifier = Notifier()  # under systemd (Type=notify): READY, watchdog pings while records come out, STOPPING
    with ExitStack() as stack:
        stack.callback(notifier.close)
        # a TensorRT engine is picked for its profile to take one frame per source (engines.find_engine)
        det = stack.enter_context(Detector(bundle, dataclasses.replace(opts, batch=len(parsed))))
        refs = load_source_references(det.bundle) if drift.enabled else {}  # a bad file stops the start
        cams = []
        for uri, name, thr in parsed:
            src = stack.enter_context(open_source(uri, errors="raise" if strict else "record"))
            cams.append(_Source(uri, src, name, _threshold(det, opts, name, thr), _drift(drift, refs, name)))
        outs = [stack.enter_context(open_guarded(s)) for s in sinks]
        loop = MultiLoop(det, cams, outs, max(1, queue_depth), max_frames, on_record, stop, deadline_ms)
        for out in outs:
            if hasattr(out.sink, "attach"):
                out.sink.attach(loop.health)
        threads = [
            threading.Thread(target=loop.capture, args=(c,), name=f"edgesdk-capture-{i + 1}", daemon=True)
            for i, c in enumerate(cams)
        ]
        sink_t = threading.Thread(target=loop.deliver, name="edgesdk-sinks", daemon=True)
        t_start = time.perf_counter()
        c_start = time.process_time()  # every thread of the process: CPU per frame, per core
        for t in [*threads, sink_t]:
            t.start()
        log.info("scoring %d sources batched with model %s", len(cams), model_id(det))
        notifier.ready(f"scoring {len(cams)} sources batched with model {model_id(det)}")
        beat = Heartbeat(notifier, loop.moving, loop.status)
        if notifier.enabled:
            beat.start()
        try:
            loop.infer()
        finally:
            beat.stop()
            notifier.stopping(f"stopping after {sum(c.n for c in cams)} frames")
            stop_after = stop.is_set()
            loop.results.put(None)
            sink_t.join()
            for t in threads:
                t.join()
        wall = time.perf_counter() - t_start
        cpu = time.process_time() - c_start
        health = loop.health()
    if loop.errors:
        raise loop.errors[0]
    n = sum(c.n for c in cams)
    return {
        "frames": n,
        "anomalous_frames": sum(c.n_bad for c in cams),
        "errors": sum(c.n_errors for c in cams),
        "dropped_frames": sum(c.dropped for c in cams),
        "wall_s": wall,
        "cpu_s": cpu,
        "fps": n / wall if wall else 0.0,
        "source": names,
        "sources": health["sources"],
        "batches": loop.batches,
        "mean_batch": loop.batched / loop.batches if loop.batches else 0.0,
        "batch_deadline_ms": deadline_ms,
        "sinks": [g.uri for g in outs],
        "sink_errors": {g.uri: g.errors for g in outs},
        "sink_skipped_frames": {g.uri: g.skipped for g in outs},
        "stopped": stop_after,
        "streams": 1,
        "threads_per_stream": opts.threads,
        "model": model_id(det),
        "drift": health.get("drift"),
        "latency_ms": {k: v.stats() for k, v in loop.lat.items()},
    }
