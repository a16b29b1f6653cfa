"""`edgesdk compare A B --images ... --out DIR`: both bundles scored over one archive by run.py (the
same engine and options), then what a roll-out needs to know: the flips (good -> NG and NG -> good,
with paths), each bundle's score distribution and how the two agree, and, where labels exist, AUROC
and recall of both. OUT holds A/ and B/ (two `edgesdk score` folders, so a killed compare resumes),
flips.csv (every flipped path) and compare.json (the returned record)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from edgesdk.errors import DataError, EdgesdkError
from edgesdk.fsutil import atomic_write_text, write_json
from edgesdk.measure.metrics import auroc
from edgesdk.scale import inputs, shards
from edgesdk.scale.run import ScoreOptions, score_archive

MARKER = "_compare.json"  # what makes a folder recognisably a compare output


def layout_labels(images: str | Path, paths: list[str]) -> dict[str, int] | None:
    """MVTec's test layout: IMAGES is a folder with good/ and at least one other folder beside it;
    a path under good/ is 0 (good), under any other first-level folder 1 (defective). None otherwise."""
    root = Path(images)
    if not root.is_dir() or not (root / "good").is_dir():
        return None
    out = {}
    for p in paths:
        first = Path(p).relative_to(root.resolve()).parts[0] if Path(p).is_relative_to(root.resolve()) else ""
        out[p] = 0 if first == "good" else 1
    return out if 0 < sum(out.values()) < len(out) else None


def csv_labels(path: str | Path) -> dict[str, int]:
    """A CSV of path,label (a header row is allowed): label 0/good/ok is good, 1/ng/bad/defect (or any
    other defect kind name) is defective; relative paths are relative to the CSV's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM is not part of the first path
    except OSError as e:
        raise DataError(f"--labels {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"--labels {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out: dict[str, int] = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DataError(f"--labels {path}: line {n}: expected path,label, got {row!r}")
        name, label = row[0].strip(), row[1].strip().lower()
        if n == 1 and label in ("label", "verdict", "class"):
            continue  # the header
        if not label:
            raise DataError(f"--labels {path}: line {n}: empty label for {name!r}")
        p = Path(name) if Path(name).is_absolute() else path.parent / name
        key, y = str(p.resolve()), 0 if label in ("0", "good", "ok") else 1
        if out.get(key, y) != y:  # one image labelled both ways: the metrics would depend on row order
            raise DataError(f"--labels {path}: line {n}: {name!r} is labelled both good and defective")
        out[key] = y
    if not out:
        raise DataError(f"--labels {path}: no path,label rows")
    return out


def _spread(s: np.ndarray) -> dict:
    return {"median": float(np.median(s)), "p95": float(np.percentile(s, 95)), "mean": float(s.mean())}


def compare_archives(
    a: str | Path,
    b: str | Path,
    images: str | Path,
    out: str | Path,
    opts: ScoreOptions = ScoreOptions(),
    labels: str | Path | None = None,
    first: int = 10,
) -> dict:
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise EdgesdkError(f"--out {out}: not empty and has no {MARKER}, so it is not an `edgesdk compare` folder")
    if out.is_symlink() and not out.exists():  # mkdir would say only "File exists"
        raise EdgesdkError(f"--out {out}: a symbolic link to {out.readlink()}, which does not exist; give a folder")
    paths = inputs.resolve(images)
    truth = csv_labels(labels) if labels is not None else layout_labels(images, paths)
    out.mkdir(parents=True, exist_ok=True)
    marker = {"kind": "edgesdk-compare", "a": str(a), "b": str(b), "images": str(images)}
    if not (out / MARKER).is_file():  # an existing one stays until both runs succeed: a refused run changes nothing
        write_json(out / MARKER, marker)
    runs = [score_archive(bundle, images, out / name, opts) for bundle, name in ((a, "A"), (b, "B"))]
    write_json(out / MARKER, marker)
    ta, tb = (shards.read_table(out / name) for name in ("A", "B"))
    pa_, pb_ = ta.column("path").to_pylist(), tb.column("path").to_pylist()
    if pa_ != pb_:  # one input list, one shard size: the same order; anything else is a bug to see
        raise RuntimeError(f"{out}: A and B scored different path lists")
    sa = np.array([np.nan if v is None else v for v in ta.column("score").to_pylist()], np.float64)
    sb = np.array([np.nan if v is None else v for v in tb.column("score").to_pylist()], np.float64)
    va, vb = ta.column("verdict").to_pylist(), tb.column("verdict").to_pylist()
    ok = ~(np.isnan(sa) | np.isnan(sb))  # both scored (an unreadable image is an error row in both)
    up = [p for p, x, y in zip(pa_, va, vb) if x == "good" and y == "NG"]
    down = [p for p, x, y in zip(pa_, va, vb) if x == "NG" and y == "good"]
    rows = [(p, "good->NG") for p in up] + [(p, "NG->good") for p in down]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "flip", "score_a", "score_b"])
    index = {p: i for i, p in enumerate(pa_)}
    w.writerows([(p, f, sa[index[p]], sb[index[p]]) for p, f in rows])
    atomic_write_text(out / "flips.csv", buf.getvalue())
    both = ok.sum() > 1 and np.std(sa[ok]) > 0 and np.std(sb[ok]) > 0
    result = {
        "a": runs[0],
        "b": runs[1],
        "n_images": len(pa_),
        "n_scored_both": int(ok.sum()),
        "flips": {
            "good_to_ng": len(up),
            "ng_to_good": len(down),
            "first_good_to_ng": up[:first],
            "first_ng_to_good": down[:first],
            "file": str(out / "flips.csv"),
        },
        "ng_a": sum(v == "NG" for v in va),
        "ng_b": sum(v == "NG" for v in vb),
        "shift": {
            "a": _spread(sa[ok]) if ok.any() else None,
            "b": _spread(sb[ok]) if ok.any() else None,
            "median_b_minus_a": float(np.median(sb[ok] - sa[ok])) if ok.any() else None,
            "correlation": float(np.corrcoef(sa[ok], sb[ok])[0, 1]) if both else None,
        },
        "labels": _label_metrics(pa_, sa, sb, va, vb, truth) if truth else None,
    }
    write_json(out / "compare.json", json.loads(json.dumps(result)))
    return result


def _label_metrics(paths, sa, sb, va, vb, truth: dict[str, int]) -> dict | None:
    """AUROC and recall (share of defective images called NG) of both, on the labelled scored images."""
    sel = [i for i, p in enumerate(paths) if p in truth and not (np.isnan(sa[i]) or np.isnan(sb[i]))]
    if not sel:
        return None
    y = np.array([truth[paths[i]] for i in sel])
    out: dict = {"n_labelled": len(sel), "n_defective": int(y.sum())}
    for name, s, v in (("a", sa, va), ("b", sb, vb)):
        ng = np.array([v[i] == "NG" for i in sel])
        out[name] = {
            "image_auroc": auroc(s[sel], y) if 0 < y.sum() < len(y) else None,
            "recall": float(ng[y == 1].mean()) if y.sum() else None,
            "false_ng_rate": float(ng[y == 0].mean()) if (y == 0).any() else None,
        }
    return out
