"""What the command groups share: argparse types, the runtime flags, and printing (--json or a table).
Standard library only at import (and edgesdk.table, which is): `edgesdk --help` loads no numpy."""

from __future__ import annotations

import argparse
import json

from edgesdk.table import table

FORCE_HELP = (
    "replace --out even when it is neither empty nor an edgesdk {} folder (never a folder that is, "
    "holds or lies inside an input)"
)


def emit(args, obj: dict, text: str) -> None:
    """One JSON object with --json, else TEXT."""
    print(json.dumps(obj, indent=2, default=str) if getattr(args, "json", False) else text)


def stage_table(by_stage: dict, title: str) -> str:
    """One row per pipeline stage from {stage: latency_stats(...)}; stages with no samples are skipped."""
    return table(
        [
            {
                "stage": k,
                "p50 ms": v["p50"],
                "p90 ms": v["p90"],
                "p99 ms": v["p99"],
                "mean ms": v["mean"],
                "max ms": v["max"],
            }
            for k, v in by_stage.items()
            if v.get("n")
        ],
        title=title,
    )


def progress_on(args) -> bool:
    """Progress and info lines on stderr: not with --json (a script reads it) nor -q."""
    return not getattr(args, "json", False) and not getattr(args, "quiet", False)


def finite_float(text: str) -> float:
    """An argparse type: a finite number (inf and nan are refused; they would disable a check)."""
    from edgesdk.errors import OptionError, finite

    try:
        return finite(text, "value")
    except OptionError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number") from None


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, hours, a latency budget)."""
    x = finite_float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return x


def count(text: str) -> int:
    """argparse type of --max-frames, --frames, --streams: a whole number >= 1 (0 would score nothing)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def batch(text: str) -> tuple[int, int, int]:
    """argparse type of --batch MIN:OPT:MAX (one number: all three)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:1:4") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError(f"--batch {text!r}: need MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def dla(text: str) -> int:
    try:
        core = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dla {text!r}: expected a DLA core (0, 1) or -1 for the GPU") from None
    if core < -1:
        raise argparse.ArgumentTypeError(f"--dla {text!r}: a DLA core is 0 or more; -1 means the GPU only")
    return core


def max_pixels_arg(s: argparse.ArgumentParser) -> None:
    """--max-pixels of the commands that read image folders and stop at an image over the limit."""
    s.add_argument(
        "--max-pixels",
        type=count,
        metavar="N",
        help="an image over N pixels (width x height) is an error, never decoded (default: 50000000, "
        "or $EDGESDK_MAX_PIXELS)",
    )


def runtime_args(s: argparse.ArgumentParser) -> None:
    """The flags of every command that scores frames with a bundle."""
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    s.add_argument("--engine", help="tensorrt: plan file (default: the match in BUNDLE/engines/)")
    s.add_argument("--providers", default="auto", help="ONNX Runtime provider, or auto")
    s.add_argument("--threshold", type=finite_float, help="override the bundle's threshold")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def detector_opts(args):
    from edgesdk.stream.detector import DetectorOptions

    return DetectorOptions(backend=args.backend, providers=args.providers, threshold=args.threshold, engine=args.engine)
