"""The stream loop: source -> detector -> sinks, every frame scored (none dropped), each stage timed.

Records keep stable names other tools read: frame_id, timestamp, score, is_anomalous, regions,
latency_ms (read, preprocess, infer, postprocess, total; sink time of the frame goes to the summary)."""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from edgesdk.metrics import latency_stats
from edgesdk.runtime import Detector, DetectorOptions
from edgesdk.video import open_sink, open_source


def make_record(frame, result, threshold: float, read_ms: float) -> dict:
    lat = {"read": read_ms, **result.latency_ms}
    lat["total"] = read_ms + result.latency_ms["total"]
    return {
        "frame_id": frame.frame_id, "timestamp": round(frame.timestamp, 6),
        "source_time": frame.source_time, "name": frame.name,
        "score": round(result.score, 5), "is_anomalous": bool(result.is_anomalous),
        "threshold": threshold, "regions": [r.to_dict() for r in result.regions],
        "latency_ms": {k: round(v, 3) for k, v in lat.items()},
    }


def run_stream(bundle: str | Path, source: str, sinks: list[str], opts: DetectorOptions = DetectorOptions(),
               max_frames: int | None = None, on_record=None) -> dict:
    """Score every frame of `source` into each sink; returns a summary with latency percentiles."""
    records_lat: dict[str, list[float]] = {}
    sink_ms: list[float] = []
    n = n_bad = 0
    with ExitStack() as stack:
        det = stack.enter_context(Detector(bundle, opts))
        src = stack.enter_context(open_source(source))
        outs = [stack.enter_context(open_sink(s)) for s in sinks]
        t_start = time.perf_counter()
        while max_frames is None or n < max_frames:
            t0 = time.perf_counter()
            frame = src.read()
            if frame is None:
                break
            read_ms = (time.perf_counter() - t0) * 1e3
            result = det.predict(frame.image)
            record = make_record(frame, result, det.threshold, read_ms)
            t1 = time.perf_counter()
            for s in outs:
                s.write(record, frame, result)
            sink_ms.append((time.perf_counter() - t1) * 1e3)
            for k, v in record["latency_ms"].items():
                records_lat.setdefault(k, []).append(v)
            n += 1
            n_bad += record["is_anomalous"]
            if on_record is not None:
                on_record(record)
        wall = time.perf_counter() - t_start
    return {"frames": n, "anomalous_frames": n_bad, "wall_s": wall, "fps": n / wall if wall else 0.0,
            "source": source, "sinks": sinks,
            "latency_ms": {**{k: latency_stats(v) for k, v in records_lat.items()},
                           "sink": latency_stats(sink_ms)}}
