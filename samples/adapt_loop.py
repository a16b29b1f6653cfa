"""The operator loop on a device: false alarms the operator confirmed as good parts go into the model.

    python samples/adapt_loop.py BUNDLE --flagged flagged/ --confirmed ok.txt --good good/ \
        --val labelled/ --out bundles/brick-adapted

`edgesdk run ... --sink dir://flagged/` saves every flagged frame as frame_NNNNNN.png (+ an overlay).
The operator looks at the overlays and lists, in ok.txt (one per line, `#` comments), the frames that
were good parts after all. This script moves those frames into GOOD (kept there for the next round),
then adapts the bundle on every frame GOOD holds (no torch) into OUT: a new bundle, gated on the
labelled set VAL so that defect recall cannot fall. The original bundle is left as it was."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from edgesdk.stream.adapt import AdaptOptions, adapt


def move_confirmed(flagged: Path, confirmed: Path, good: Path) -> list[str]:
    """Move each frame listed in CONFIRMED from FLAGGED into GOOD (overlays stay); returns the names."""
    names = [line.split("#")[0].strip() for line in confirmed.read_text().splitlines()]
    good.mkdir(parents=True, exist_ok=True)
    moved = []
    for name in filter(None, names):
        src = flagged / Path(name).name  # a bare file name: nothing outside FLAGGED is moved
        if not src.is_file():
            raise SystemExit(f"{confirmed}: {name} is not a frame in {flagged}")
        shutil.move(src, good / f"{flagged.name}_{src.name}")  # unique across rounds of the loop
        moved.append(src.name)
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--flagged", type=Path, required=True, help="the dir:// sink's folder")
    ap.add_argument("--confirmed", type=Path, required=True, help="frame names the operator confirmed as good")
    ap.add_argument("--good", type=Path, required=True, help="confirmed-good frames, kept across rounds")
    ap.add_argument("--val", required=True, help="labelled images (good/, one folder per defect) for the gate")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    moved = move_confirmed(args.flagged, args.confirmed, args.good)
    print(f"{len(moved)} confirmed false alarms moved to {args.good}")
    r = adapt(args.bundle, args.out, AdaptOptions(good=str(args.good), val=args.val), progress=False)
    g, t = r["gate"], r["threshold"]
    size = f"N {r['n_before']} -> {r['n_after']}" if "n_after" in r else f"bank {r['bank_size']} rows"
    print(
        f"{r['model']}: learned from {len(r['fit_frames'])} frames ({size}), threshold {t['old']:.2f} -> "
        f"{t['new']:.2f}, held-out false alarms {r['false_alarms']['old_on_holdout']:.2f} -> "
        f"{r['false_alarms']['new_on_holdout']:.2f}"
    )
    print(f"gate on {g['val']}: recall {g['recall']['old']:.2f} -> {g['recall']['new']:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
