"""The outputs of `edgesdk bench` (measure/benchmark.py): its result as terminal table rows, Markdown
with the machine's provenance, a PNG latency box plot drawn with OpenCV, and JSON without the
per-call samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# "bundle" is the bundle's folder name: two bundles of one model and precision (an A/B of quantization
# options, say) are otherwise indistinguishable rows.
COLUMNS = [
    ("bundle", "bundle"),
    ("model", "model"),
    ("backend", "backend"),
    ("precision", "precision"),
    ("batch", "batch"),
    ("status", "status"),
    ("model_mb", "MB"),
    ("image_auroc", "image AUROC"),
    ("aupro", "AUPRO"),
    ("pixel_f1", "pixel F1"),
    ("pixel_iou", "pixel IoU"),
    ("min_ms", "min ms"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("fps", "FPS"),
    ("cold_start_ms", "cold start ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("rss_mb", "RSS MB"),
    ("vs_torch", "vs torch"),
    ("noisy", "noisy"),
]


def _cell(row: dict, key: str):
    return Path(row["bundle"]).name if key == "bundle" and row.get("bundle") else row.get(key)


def cores_text(provenance: dict) -> str:
    """'16 cores', or '2 of 16 cores' for a run pinned to fewer (taskset, a cpuset)."""
    total = provenance["cores"]
    used = provenance.get("cores_usable", total)  # absent from results written before it was recorded
    return f"{total} cores" if used == total else f"{used} of {total} cores"


def table_rows(result: dict) -> list[dict]:
    return [{label: _cell(r, key) for key, label in COLUMNS} for r in result["rows"]]


def markdown(result: dict) -> str:
    from edgesdk.table import fmt

    head = [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(_cell(r, k), 3) for k, _ in COLUMNS) + " |" for r in result["rows"]]
    p = result["provenance"]
    why = [f"- {r['backend']}: {r['reason']}" for r in result["rows"] if r.get("reason")]
    return (
        "\n".join(
            lines
            + [
                "",
                f"{p['cpu']}, {cores_text(p)}, {p['os']}; INT8 instructions: "
                f"{', '.join(p.get('int8_isa', [])) or 'none'}; harness overhead "
                f"{result['harness_overhead_ms'] * 1e3:.1f} µs per call.",
                *sorted(set(why)),
            ]
        )
        + "\n"
    )


def plot(result: dict, path: str | Path, width: int = 900) -> None:
    """Box plot of per-call latency per row (whiskers p1-p99, box p25-p75, p50 line), drawn with OpenCV."""
    import cv2

    timed = [r for r in result["rows"] if r.get("_ms")]
    h_row, left, top = 36, 340, 40
    img = np.full((top + h_row * max(len(timed), 1) + 40, width, 3), 255, np.uint8)
    hi = max((np.percentile(r["_ms"], 99) for r in timed), default=1.0) * 1.1
    sx = lambda v: int(left + (width - left - 20) * v / hi)  # noqa: E731
    cv2.putText(
        img,
        "latency per call, ms (whiskers p1-p99, box p25-p75, line p50)",
        (10, 24),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.55,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    y0 = img.shape[0] - 20
    for t in np.linspace(0, hi, 6):
        cv2.putText(img, f"{t:.1f}", (sx(t) - 10, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.line(img, (sx(t), top - 6), (sx(t), y0), (225, 225, 225), 1)
    for i, r in enumerate(timed):  # grid first, so it never crosses the labels
        y = top + i * h_row + h_row // 2
        p1, p25, p50, p75, p99 = np.percentile(r["_ms"], [1, 25, 50, 75, 99])
        label = f"{_cell(r, 'bundle') or r['model']} {r['backend']} {r['precision']} b{r['batch']}"
        cv2.putText(img, label, (10, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.line(img, (sx(p1), y), (sx(p99), y), (90, 90, 90), 1)
        cv2.rectangle(img, (sx(p25), y - 10), (sx(p75), y + 10), (200, 140, 60), -1)
        cv2.line(img, (sx(p50), y - 12), (sx(p50), y + 12), (0, 0, 200), 2)
        cv2.putText(img, f"{p50:.2f}", (sx(p99) + 6, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 200), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: could not write the plot")


def for_json(result: dict) -> dict:
    return {**result, "rows": [{k: v for k, v in r.items() if k != "_ms"} for r in result["rows"]]}
