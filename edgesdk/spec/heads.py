"""The manifest's `heads` field: a bundle whose graph holds more than one detector on one backbone pass
(a hybrid: zoo/hybrid.py). Each head's map is one of the graph's outputs, in the bundle threshold's
units (the head's own score divided by its own threshold), and anomaly_map is their maximum: a frame
is flagged when either head passes the threshold. Absent (bundles of one model, and those from before
heads): (). Standard library only.

  name        "segmenter" or "patchcore"
  output      the graph output holding this head's map (float32, batch x H x W)
  threshold   the head's own threshold in its own units (the graph divides by it), > 0
  units       its own units: "probability" or "z"
  kinds       true for the head that names defects: kind_map holds its kind per pixel; a region it does
              not fire on is of kind "unknown" (another head found it)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgesdk.spec.typed import SpecError

HEAD_NAMES = ("segmenter", "patchcore")
UNITS = ("probability", "z")
KEYS = ("name", "output", "threshold", "units", "kinds")


@dataclass(frozen=True)
class Head:
    name: str
    output: str
    threshold: float
    units: str
    kinds: bool = False


def heads_spec(
    value: Any, where: str, outputs: dict[str, tuple[tuple, str]], kinds: tuple[str, ...]
) -> tuple[Head, ...]:
    """The checked `heads` field; OUTPUTS: the manifest's outputs by name -> (shape, dtype). SpecError
    naming WHERE and the field on the first problem."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(f"{where}: field heads must be a list, got {type(value).__name__}")
    if len(value) == 1:
        raise SpecError(f"{where}: field heads lists one head; a bundle of one model has no heads field")
    out: list[Head] = []
    for i, d in enumerate(value):
        name = f"heads[{i}]"
        if not isinstance(d, dict):
            raise SpecError(f"{where}: field {name} must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(KEYS))
        if unknown:
            raise SpecError(f"{where}: unknown field {name}.{unknown[0]} (known: {', '.join(KEYS)})")
        missing = [k for k in KEYS[:4] if k not in d]
        if missing:
            raise SpecError(f"{where}: missing field {name}.{missing[0]}")
        head, output, thr, units, named = d["name"], d["output"], d["threshold"], d["units"], d.get("kinds", False)
        if head not in HEAD_NAMES:
            raise SpecError(f"{where}: field {name}.name must be one of {', '.join(HEAD_NAMES)}, got {head!r}")
        if head in [h.name for h in out]:
            raise SpecError(f"{where}: field {name}.name {head!r} is listed twice")
        if not isinstance(output, str) or output not in outputs or output in ("score", "anomaly_map"):
            raise SpecError(
                f"{where}: field {name}.output {output!r} must name one of the outputs besides score and anomaly_map"
            )
        if outputs[output][1] != "float32" or outputs[output][0] != outputs.get("anomaly_map", ((),))[0]:
            raise SpecError(f"{where}: field {name}.output {output!r} must be a float32 map shaped like anomaly_map")
        if output in [h.output for h in out]:
            raise SpecError(f"{where}: field {name}.output {output!r} is another head's output too")
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not (math.isfinite(thr) and thr > 0):
            raise SpecError(f"{where}: field {name}.threshold must be a finite number > 0, got {thr!r}")
        if units not in UNITS:
            raise SpecError(f"{where}: field {name}.units must be one of {', '.join(UNITS)}, got {units!r}")
        if not isinstance(named, bool):
            raise SpecError(f"{where}: field {name}.kinds must be true or false, got {named!r}")
        out.append(Head(head, output, float(thr), units, named))
    naming = [h for h in out if h.kinds]
    if len(naming) > 1:
        raise SpecError(f"{where}: field heads: only one head may name kinds, {len(naming)} do")
    if naming and (not kinds or "kind_map" not in outputs):
        raise SpecError(
            f"{where}: field heads: head {naming[0].name!r} names kinds, but the bundle has no kinds/kind_map"
        )
    return tuple(out)
