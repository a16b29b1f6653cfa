"""Drift alarms on a real stream: false alarms on a long stable line, and how many frames after the
line moves each kind's event comes.

    python benchmarks/drift_false_alarms.py BUNDLE [--frames 20000] [--onset 300] [--runs 3]
        [--category brick] [--drift normal] [--json F]

BUNDLE is calibrated here (`edgesdk calibrate`, 200 good frames of synth://conveyor?defects=0&rails=1,
its own seed) so it carries a drift reference. Then, through the whole loop (run_stream, a jsonl sink):
  stable   FRAMES frames of the same line (another seed): every drift event is a false alarm
  ramp, shift, blur, texture   the line drifts at frame ONSET (synth://conveyor?drift=KIND, defaults
           of data/drift_synth.py), RUNS seeds each: frames from onset to the kind's event, and the
           events of every kind the episode raised (one per kind is the hysteresis working)
Prints a table and writes JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.drift import DriftOptions
from edgesdk.stream.pipeline import run_stream
from edgesdk.table import table

EXPECT = {"ramp": "brightness", "shift": "view_shift", "blur": "sharpness", "texture": "score_shift"}


def events_of(path: Path) -> list[dict]:
    return [e for line in path.read_text().splitlines() for e in json.loads(line).get("drift", [])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=20_000, help="frames of the stable stream")
    ap.add_argument("--onset", type=int, default=300, help="the frame the line starts to drift at")
    ap.add_argument("--after", type=int, default=400, help="frames streamed after the onset")
    ap.add_argument("--runs", type=int, default=3, help="seeds per drift kind")
    ap.add_argument("--category", default="brick")
    ap.add_argument("--drift", default="normal", help="off, low, normal or high")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    opts = DriftOptions.preset(a.drift)
    line = f"synth://conveyor?defects=0&rails=1&category={a.category}"
    rows, out = [], {"bundle": a.bundle, "line": line, "drift": a.drift, "onset": a.onset, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cal = Path(tmp) / "line"
        calibrate(a.bundle, f"{line}&seed=101", cal, frames=200, progress=False)
        t0 = time.perf_counter()
        s = run_stream(cal, f"{line}&seed=102", [f"jsonl://{tmp}/stable.jsonl"], max_frames=a.frames, drift=opts)
        false = events_of(Path(tmp) / "stable.jsonl")
        out["stable"] = {
            "frames": s["frames"],
            "false_alarms": len(false),
            "events": false,
            "wall_s": round(time.perf_counter() - t0, 1),
            "statistics": s["drift"]["statistics"],
        }
        rows.append(
            {
                "stream": f"stable, {s['frames']} frames",
                "expected event": "none",
                "false alarms": len(false),
                "frames to event (runs)": "",
                "events raised (all kinds)": "",
            }
        )
        for kind, expect in EXPECT.items():
            delays, raised = [], []
            for run in range(a.runs):
                p = Path(tmp) / f"{kind}{run}.jsonl"
                run_stream(
                    cal,
                    f"{line}&seed={200 + run}&drift={kind}&drift_at={a.onset}",
                    [f"jsonl://{p}"],
                    max_frames=a.onset + a.after,
                    drift=opts,
                )
                ev = events_of(p)
                mine = [e["frame_id"] - a.onset for e in ev if e["kind"] == expect]
                delays.append(mine[0] if mine else None)
                raised.append({k: sum(e["kind"] == k for e in ev) for k in sorted({e["kind"] for e in ev})})
            early = sum(e_ < 0 for e_ in delays if e_ is not None)
            out["kinds"][kind] = {"expected": expect, "frames_to_event": delays, "events": raised, "early": early}
            rows.append(
                {
                    "stream": f"{kind} at frame {a.onset}",
                    "expected event": expect,
                    "false alarms": early,
                    "frames to event (runs)": ", ".join("missed" if d is None else str(d) for d in delays),
                    "events raised (all kinds)": "; ".join(", ".join(f"{k} {n}" for k, n in r.items()) for r in raised),
                }
            )
    print(table(rows, title=f"drift alarms ({a.drift}) on {line}"))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
