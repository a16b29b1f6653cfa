"""A custom line app: reject parts on the line and keep a shift tally, on the library's own calls.

    python samples/line_app.py BUNDLE SOURCE [--reject-after 2] [--log rejects.jsonl]

SOURCE is any source URI (file://line.mp4, v4l2:///dev/video0, rtsp://cam/stream, a folder).
A part is rejected when `--reject-after` consecutive frames are anomalous (one noisy frame is not a
defect). Stop with Ctrl-C: frames already read are scored and the tally is printed."""

from __future__ import annotations

import argparse
import json
import time

from edgesdk.stream.pipeline import run_stream
from edgesdk.table import table


class RejectGate:
    """Consecutive-anomaly debouncing: the kind of line logic that belongs in the app, not the model."""

    def __init__(self, reject_after: int, log_path: str | None):
        self.reject_after, self.run, self.rejects, self.frames = reject_after, 0, [], 0
        self.log = open(log_path, "a") if log_path else None

    def __call__(self, record: dict) -> None:  # called for every frame, in order
        self.frames += 1
        self.run = self.run + 1 if record["is_anomalous"] else 0
        if self.run == self.reject_after:
            worst = max(record["regions"], key=lambda r: r["peak"], default=None)
            event = {
                "time": time.time(),
                "frame_id": record["frame_id"],
                "score": record["score"],
                "bbox": worst["bbox"] if worst else None,
            }
            self.rejects.append(event)
            print(f"REJECT at frame {record['frame_id']}: score {record['score']:.2f}, region {event['bbox']}")
            if self.log:
                self.log.write(json.dumps(event) + "\n")
                self.log.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("source")
    ap.add_argument("--reject-after", type=int, default=2)
    ap.add_argument("--log", help="append reject events to this JSONL file")
    args = ap.parse_args()

    gate = RejectGate(args.reject_after, args.log)
    summary = run_stream(args.bundle, args.source, sinks=[], on_record=gate)  # SIGINT drains cleanly
    lat = summary["latency_ms"]["total"]
    print(
        table(
            [
                {
                    "frames": summary["frames"],
                    "anomalous": summary["anomalous_frames"],
                    "rejects": len(gate.rejects),
                    "dropped": summary["dropped_frames"],
                    "FPS": summary["fps"],
                    "p50 ms": lat["p50"],
                    "p99 ms": lat["p99"],
                }
            ],
            title="shift tally",
        )
    )


if __name__ == "__main__":
    main()
