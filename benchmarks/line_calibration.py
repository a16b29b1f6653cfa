"""Line benchmark: does `edgesdk calibrate` restore recall and false alarms when the line's camera
pipeline (mp4v) differs from the training images (PNG)? And does the stream loop, with its sinks on,
keep up with the model?

    python benchmarks/line_calibration.py BUNDLE... --data data/brick [--frames 200]
        [--throughput-frames 150] [--rounds 15] [--mqtt mqtt://127.0.0.1:1883/line] [--json F]

For each bundle (a model trained on DATA/train/good):
  line.mp4   every DATA/test image once (good and defective, shuffled), mp4v: the line video
  good.mp4   FRAMES new good parts of the same line (fresh synthetic parts, never in the line video
             nor in training), mp4v: the known-good clip `calibrate` sees
then scores line.mp4 with the exported bundle and with the calibrated one, and reports defect-frame
recall and the false-alarm rate on good frames.

Throughput (same run, same calibrated bundle, same line video looped): the model alone (the
runner on preprocessed frames, back to back) against the whole loop (decode, resize, infer, regions,
sinks: jsonl, dir overlays of NG frames, the live preview, and mqtt when --mqtt names a broker),
each with 1 stream (all cores on one frame) and with 2 (a frame per core), in short rounds; a
loop's share is the median of its per-round ratios to the faster model-only mode. Prints a table
and writes JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.data import mvtec
from edgesdk.images import read_image
from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.detector import Detector, DetectorOptions
from edgesdk.stream.pipeline import run_stream
from edgesdk.table import table


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not wr.isOpened():
        raise OSError(f"{path}: OpenCV cannot write mp4v here")
    for f in frames:
        wr.write(f)
    wr.release()
    return path


def line_video(data: Path, out: Path, seed: int = 0) -> np.ndarray:
    """line.mp4 from DATA's test images in a shuffled order; returns the labels (N,) per frame."""
    items = mvtec.test_items(data)
    order = np.random.default_rng(seed).permutation(len(items))
    frames = [read_image(items[i].path) for i in order]
    write_mp4(out, frames)
    return np.array([items[i].label for i in order])


def good_clip(category: str, size: int, n: int, out: Path, seed: int = 1234) -> Path:
    """N new good parts from the sample-data generator (a different seed: parts never seen)."""
    from edgesdk.data.synth import SynthConfig, good_image, texture

    cfg = SynthConfig(size=size, seed=seed)
    tex, rng = texture(category), np.random.default_rng([seed, 7])
    return write_mp4(out, [good_image(tex, rng, cfg) for _ in range(n)])


def score(bundle: Path, video: Path, labels: np.ndarray) -> dict:
    recs: list[dict] = []
    run_stream(bundle, str(video), [], on_record=recs.append)
    flagged = np.array([r["is_anomalous"] for r in recs])
    if len(flagged) != len(labels):
        raise RuntimeError(f"{video}: {len(flagged)} frames scored, {len(labels)} expected")
    return {
        "recall": float(flagged[labels == 1].mean()),
        "false_alarm_rate": float(flagged[labels == 0].mean()),
        "threshold": Bundle.open(bundle).threshold,
        "frames": int(len(labels)),
    }


def model_only_fps(det: Detector, batches: list[np.ndarray], n: int, streams: int = 1) -> float:
    """The runner alone on preprocessed frames, back to back: `streams` threads on the one session
    (as the loop runs it), each taking every streams-th frame."""
    for b in batches[:5]:
        det.infer(b)  # warm: first runs allocate

    def work(first: int) -> None:
        for i in range(first, n, streams):
            det.infer(batches[i % len(batches)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    work(0)
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def stream_fps(bundle: Path, source: str, sinks: list[str], n: int, streams: int = 1, warm: int = 10) -> float:
    """The loop's steady rate: frames delivered through every sink per second, after `warm` frames
    (the model-only side is warmed too)."""
    done: list[float] = []
    run_stream(
        bundle,
        source,
        sinks,
        max_frames=n + warm,
        streams=streams,
        on_record=lambda rec: done.append(time.perf_counter()),
    )
    return (len(done) - 1 - warm) / (done[-1] - done[warm])


def throughput(
    bundle: Path, video: Path, n: int, rounds: int, work: Path, mqtt: str | None, streams: tuple[int, ...] = (1, 2)
) -> dict:
    """Model-only FPS in each mode (1 stream on every core; S streams of cores/S threads) and the
    stream loop's FPS in each mode with every-frame sinks on (jsonl, the live preview, mqtt when
    given), and in the last mode also with dir:// (two images per NG frame: the line video is 62 %
    defective, far above a real line). Measured in short adjacent rounds, their order rotating, so
    this shared machine's slow phases hit every side of a round. A loop's share is the median of
    its per-round ratios to the best model-only mode of that round (the fastest the model alone
    goes), and also to model-only in its own mode."""
    from edgesdk.stream.pipeline import stream_options
    from edgesdk.video.sources import VideoFileSource

    with VideoFileSource(video) as src:
        frames = [f.image for f in src]
    every = lambda: [f"jsonl://{work / 'r.jsonl'}", f"http://127.0.0.1:{free_port()}"] + ([mqtt] if mqtt else [])  # noqa: E731
    loops = {f"s{k}": (k, every) for k in streams}
    loops[f"s{streams[-1]}_with_dir"] = (streams[-1], lambda: every() + [f"dir://{work / 'ng'}"])
    model: dict[int, list[float]] = {k: [] for k in streams}
    loop: dict[str, list[float]] = {k: [] for k in loops}
    dets = {k: Detector(bundle, stream_options(DetectorOptions(), k)) for k in streams}
    try:
        batches = [dets[streams[0]].preprocess(f) for f in frames]
        sides = [lambda k=k: model[k].append(model_only_fps(dets[k], batches, n, k)) for k in streams]
        sides += [
            lambda k=k: loop[k].append(stream_fps(bundle, f"{video}?loop=1", loops[k][1](), n, loops[k][0]))
            for k in loops
        ]
        for r in range(rounds):
            for measure in sides[r % len(sides) :] + sides[: r % len(sides)]:
                measure()
    finally:
        for d in dets.values():
            d.close()
    best = np.max([model[k] for k in streams], axis=0)
    out = {
        "sinks": "jsonl, http" + (", mqtt" if mqtt else "") + " (+ dir)",
        "rounds_best_model_only_fps": best.tolist(),
    }
    for k in streams:
        out[f"model_only_fps_s{k}"] = float(np.median(model[k]))
        out[f"rounds_model_only_fps_s{k}"] = model[k]
    for name, fps in loop.items():
        fps_a = np.array(fps)
        out[f"loop_fps_{name}"] = float(np.median(fps_a))
        out[f"share_{name}"] = float(np.median(fps_a / best))
        out[f"share_{name}_iqr"] = [float(q) for q in np.percentile(fps_a / best, [25, 75])]
        out[f"share_{name}_vs_own_mode"] = float(np.median(fps_a / np.array(model[loops[name][0]])))
        out[f"rounds_loop_fps_{name}"] = fps
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--data", required=True, help="MVTec-layout sample category (data/brick, ...)")
    ap.add_argument("--frames", type=int, default=200, help="known-good frames for calibrate")
    ap.add_argument(
        "--throughput-frames",
        type=int,
        default=150,
        help="frames per side of a throughput pair (0: skip the throughput part)",
    )
    ap.add_argument("--rounds", type=int, default=15, help="throughput pairs")
    ap.add_argument("--mqtt", help="also publish every verdict to this broker, e.g. mqtt://127.0.0.1:1883/line")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    data = Path(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = read_image(mvtec.test_items(data)[0].path).shape[0]
        labels = line_video(data, tmp / "line.mp4")
        good = good_clip(data.name, size, args.frames, tmp / "good.mp4")
        for b in map(Path, args.bundles):
            model = Bundle.open(b).manifest.model["name"]
            before = score(b, tmp / "line.mp4", labels)
            st = calibrate(b, str(good), tmp / f"{b.name}-line", frames=args.frames, progress=False)
            after = score(tmp / f"{b.name}-line", tmp / "line.mp4", labels)
            rows.append(
                {
                    "bundle": str(b),
                    "model": model,
                    "good_clip_mean_z": st["mean"],
                    "good_clip_std_z": st["std"],
                    "threshold_before": before["threshold"],
                    "threshold_after": after["threshold"],
                    "recall_before": before["recall"],
                    "false_alarms_before": before["false_alarm_rate"],
                    "recall_after": after["recall"],
                    "false_alarms_after": after["false_alarm_rate"],
                    "line_frames": after["frames"],
                    "defect_frames": int(labels.sum()),
                }
            )
            if args.throughput_frames:
                rows[-1].update(
                    throughput(
                        tmp / f"{b.name}-line",
                        tmp / "line.mp4",
                        args.throughput_frames,
                        args.rounds,
                        tmp / f"{b.name}-sinks",
                        args.mqtt,
                    )
                )
    print(
        table(
            [
                {k.replace("_", " "): v for k, v in r.items() if not k.startswith("rounds") and not k.endswith("iqr")}
                for r in rows
            ],
            title=f"line video (mp4v) of {data}/test, calibrated on {args.frames} new good parts (mp4v)",
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
