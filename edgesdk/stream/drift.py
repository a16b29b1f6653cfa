"""Drift alarms: the loop watches what it sees and says when the line has moved from its calibration.

Two families of checks, each one alarm with hysteresis (one event per episode):
  score_shift   scores of frames judged good, standardised by the calibration's good scores, in a
                two-sided CUSUM (mean shifts of about `cusum_k` std and more), and the median of all
                scores of the last 2 x `window` frames against the calibration median (a shift so
                large that few frames are judged good any more)
  brightness    mean grey level, contrast (log std of grey) and sharpness (log variance of the
  contrast      Laplacian: a dusty or defocused lens), each the mean of the last `window` frames in
  sharpness     units of the calibration frames' own spread (floored, so a very steady camera does
                not alarm on noise)
  view_shift    the whole view moved (camera knocked): phase correlation of the mean of the last
                `view_window` downscaled grey frames against the calibration frames' mean; the moving
                parts average out, the fixed scene (belt edges, rails, fixtures) stays. A view with no
                fixed structure (its calibration windows already disagree by half the alarm level, as
                on synth://conveyor without ?rails=1) is not checked, and the log says so
All image statistics are taken on a SIDE x SIDE grey copy of the frame, so they cost the same
whatever the camera's resolution. The references are the bundle's drift.json, written by
`edgesdk calibrate` (reference.py); without one the score check is off and the image references
are taken from the run's first `warmup` frames (logged).

An alarm is raised when its statistic reaches its level and re-armed only after the statistic has
stayed under half the level for `rearm` frames; each event names its kind, the statistic, its value,
the reference, the level and the frame."""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, fields, replace

import numpy as np

from edgesdk.errors import OptionError, finite
from edgesdk.stream.drift_ref import (
    IMAGE_STATS,
    MIN_RESPONSE,
    SIDE,
    VIEW_WINDOW,
    Reference,
    ReferenceBuilder,
    grey_small,
    image_stats,
    load_reference,
    shift_of,
)

KINDS = ("score_shift", *IMAGE_STATS, "view_shift")
# The view's phase correlation (a (SIDE, SIDE) DFT, the loop's costliest statistic) runs on every VIEW_EVERY-th
# frame: its window's mean moves by 1/view_window a frame, and a knock is still seen within VIEW_EVERY frames.
VIEW_EVERY = 4
log = logging.getLogger("edgesdk.stream.drift")


@dataclass(frozen=True)
class DriftOptions:
    """Sensitivity of the drift alarms (`--drift off|low|normal|high`, or these knobs)."""

    enabled: bool = True
    window: int = 30  # frames in the image statistics' window (the score median: twice that)
    cusum_k: float = 1.0  # score CUSUM: shifts below k std are tolerated
    cusum_h: float = 12.0  # score CUSUM: alarm level
    median_z: float = 1.5  # score median: alarm at this many std off the calibration median
    image_z: float = 4.0  # brightness/contrast/sharpness: alarm at this many (floored) std
    view_shift: float = 0.03  # view: alarm at this fraction of the frame's side
    view_window: int = VIEW_WINDOW  # frames averaged for the view: at least the time a part takes to cross it
    rearm: int = 60  # frames under half the level before an alarm can fire again
    warmup: int = 100  # frames that make the image reference when the bundle has none

    PRESETS = {
        "low": {"cusum_h": 20.0, "median_z": 2.5, "image_z": 6.0, "view_shift": 0.05},
        "normal": {},
        "high": {"cusum_k": 0.75, "cusum_h": 8.0, "median_z": 1.0, "image_z": 3.0, "view_shift": 0.02},
    }

    @classmethod
    def preset(cls, name: str) -> "DriftOptions":
        if name == "off":
            return cls(enabled=False)
        if name not in cls.PRESETS:
            raise OptionError(f"--drift {name!r}: one of off, {', '.join(cls.PRESETS)}")
        return cls(**cls.PRESETS[name])  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "enabled":
                if not isinstance(v, bool):
                    raise OptionError(f"drift option enabled: True or False, got {v!r}")
                continue
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise OptionError(f"drift option {f.name}: a whole number >= 1, got {v!r}")
            x = finite(v, f.name, "drift option")
            if x <= 0:
                raise OptionError(f"drift option {f.name} must be > 0, got {v!r}")
            if f.type == "float":  # "1.5" passes finite(); the loop's arithmetic needs the number itself
                object.__setattr__(self, f.name, x)


class Alarm:
    """Hysteresis on one ratio (statistic / level): raised at ratio >= 1, re-armed after `rearm`
    frames in a row under 0.5."""

    def __init__(self, rearm: int):
        self.rearm, self.armed, self.quiet, self.ratio = rearm, True, 0, 0.0

    def update(self, ratio: float) -> bool:
        self.ratio = ratio
        if self.armed:
            if ratio >= 1.0:
                self.armed, self.quiet = False, 0
                return True
            return False
        self.quiet = self.quiet + 1 if ratio < 0.5 else 0
        if self.quiet >= self.rearm:
            self.armed = True
        return False


class Window:
    """The mean of the last N values, kept as a running sum; arrays (the view) work too."""

    def __init__(self, n: int):
        self.items: deque = deque(maxlen=n)
        self.sum: float | np.ndarray = 0.0

    def add(self, x) -> None:
        if len(self.items) == self.items.maxlen:
            self.sum = self.sum - self.items[0]
        self.items.append(x)
        self.sum = self.sum + x

    @property
    def full(self) -> bool:
        return len(self.items) == self.items.maxlen

    def mean(self):
        return self.sum / max(1, len(self.items))


class DriftMonitor:
    """Running drift statistics of one stream; `update` once per scored frame, in capture order,
    returns the events that frame raised (usually none)."""

    def __init__(self, opts: DriftOptions, reference: Reference | None):
        self.opts = opts
        self.alarms = {k: Alarm(opts.rearm) for k in KINDS}
        self.alarms["view_shift"] = Alarm(max(1, opts.rearm // VIEW_EVERY))  # it sees every VIEW_EVERY-th frame
        self.n = 0  # frames seen
        self.events = {k: 0 for k in KINDS}
        self.values: dict[str, float] = {}
        self.image_win = {k: Window(opts.window) for k in IMAGE_STATS}
        self.view_win = Window(opts.view_window)
        self.builder: ReferenceBuilder | None = None
        self.view_on = False
        self.ref: Reference | None = None
        self.use(reference)

    def use(self, reference: Reference | None) -> None:
        """Take REFERENCE (a new model's); without one the score check is off and the image reference
        stays the one in use (it describes the camera, not the model), or at the start comes from the
        next `warmup` frames."""
        self.cusum = [0.0, 0.0]  # up, down
        self.scores = Window(2 * self.opts.window)
        self.score_vals: deque[float] = deque(maxlen=2 * self.opts.window)
        if reference is not None:
            self.ref, self.builder = reference, None
            self._view_check()
        elif self.ref is not None:  # the camera's reference outlives the model: only its scores are unknown
            if self.ref.score is not None:
                log.info("drift: the new model has no drift reference: score drift is not checked for it")
            self.ref = replace(self.ref, score=None)
        elif self.builder is None:
            log.info(
                "drift: the bundle has no drift reference (made by `edgesdk calibrate`): score drift is not "
                "checked; image drift is measured against the first %d frames of this run",
                self.opts.warmup,
            )
            self.ref, self.builder = None, ReferenceBuilder()

    def _view_check(self) -> None:
        assert self.ref is not None
        self.view_on = self.ref.view_noise <= self.opts.view_shift / 2
        if not self.view_on:
            log.info(
                "drift: the view (%s) has no fixed structure to register (its own windows disagree by %.3g of "
                "the side): camera shifts are not checked",
                self.ref.source,
                self.ref.view_noise,
            )

    def update(self, frame_id: int, image: np.ndarray, score: float, judged_good: bool) -> list[dict]:
        small = grey_small(image)
        stats = image_stats(small)
        if self.builder is not None:  # no image reference yet: this frame helps make it
            self.builder.add(small, stats)
            if self.builder.n >= self.opts.warmup:
                self.ref, self.builder = self.builder.reference(None, f"first {self.opts.warmup} frames"), None
                self._view_check()
            return []
        ref = self.ref
        assert ref is not None
        events: list[dict] = []
        if ref.score is not None:
            events += self._score(frame_id, score, judged_good, ref.score)
        for k in IMAGE_STATS:
            w = self.image_win[k]
            w.add(stats[k])
            if w.full:
                mean, std = ref.image[k]
                value = float(w.mean())
                z = (value - mean) / std
                self.values[k] = z
                if self.alarms[k].update(abs(z) / self.opts.image_z):
                    events.append(
                        self._event(
                            k, frame_id, f"{k}, mean of {self.opts.window} frames", value, mean, z, self.opts.image_z
                        )
                    )
        self.view_win.add(small)
        self.n += 1
        if self.view_on and self.view_win.full and self.n % VIEW_EVERY == 0:
            shift, response = shift_of(ref.view, self.view_win.mean())
            # a weak peak (the window's mean and the reference share too little fixed structure) is
            # no measurement: the alarm keeps its state
            if response >= MIN_RESPONSE:
                self.values["view_shift"] = shift
            if response >= MIN_RESPONSE and self.alarms["view_shift"].update(shift / self.opts.view_shift):
                events.append(
                    self._event(
                        "view_shift",
                        frame_id,
                        "shift of the mean view (fraction of the side)",
                        shift,
                        0.0,
                        shift,
                        self.opts.view_shift,
                    )
                )
        for e in events:
            self.events[e["kind"]] += 1
            log.warning(
                "drift: %s at frame %d: %s = %.4g (reference %.4g, deviation %.3g, alarm at %.3g)",
                e["kind"],
                frame_id,
                e["statistic"],
                e["value"],
                e["reference"],
                e["deviation"],
                e["level"],
            )
        return events

    def _score(self, frame_id: int, score: float, judged_good: bool, ref: dict) -> list[dict]:
        o = self.opts
        z = (score - ref["mean"]) / ref["std"]
        if not math.isfinite(z):
            return []
        if judged_good:  # the CUSUM sees good verdicts only: defects are what the threshold is for
            up, down = self.cusum
            self.cusum = [
                min(2 * o.cusum_h, max(0.0, up + z - o.cusum_k)),
                min(2 * o.cusum_h, max(0.0, down - z - o.cusum_k)),
            ]
        self.score_vals.append(z)
        med = float(np.median(self.score_vals)) - (ref["p50"] - ref["mean"]) / ref["std"]
        if len(self.score_vals) < self.score_vals.maxlen:  # type: ignore[operator]
            med = 0.0
        cus = max(self.cusum)
        self.values["score_cusum"], self.values["score_median_z"] = cus, med
        r_cus, r_med = cus / o.cusum_h, abs(med) / o.median_z
        if not self.alarms["score_shift"].update(max(r_cus, r_med)):
            return []
        if r_cus >= r_med:
            up = self.cusum[0] >= self.cusum[1]
            return [
                self._event(
                    "score_shift",
                    frame_id,
                    f"CUSUM of good scores ({'up' if up else 'down'}, z units)",
                    cus,
                    0.0,
                    cus,
                    o.cusum_h,
                )
            ]
        m = med * ref["std"] + ref["p50"]
        return [
            self._event(
                "score_shift", frame_id, f"median score of {2 * o.window} frames", m, ref["p50"], med, o.median_z
            )
        ]

    @staticmethod
    def _event(
        kind: str, frame_id: int, statistic: str, value: float, reference: float, deviation: float, level: float
    ) -> dict:
        return {
            "kind": kind,
            "frame_id": frame_id,
            "statistic": statistic,
            "value": round(float(value), 5),
            "reference": round(float(reference), 5),
            "deviation": round(float(deviation), 4),
            "level": float(level),
        }

    def stats(self) -> dict:
        """For /metrics and the MQTT health topic: events per kind, the current statistics, and where
        the reference came from."""
        return {
            "events": dict(self.events),
            "statistics": {k: round(v, 4) for k, v in self.values.items()},
            "reference": self.ref.source if self.ref is not None else "warming up",
            "score_checked": self.ref is not None and self.ref.score is not None,
        }


class LoopDrift:
    """The stream loop's drift alarms: one DriftMonitor, its score reference following the model that
    scored each frame (a hot switch brings the new bundle's drift.json; the image statistics go on)."""

    def __init__(self, opts: DriftOptions, bundle):
        self.opts, self.model = opts, str(bundle.path)
        self.monitor = DriftMonitor(opts, load_reference(bundle))  # a bad drift.json stops the start

    def observe(self, record: dict, image: np.ndarray, bundle) -> None:
        """Update on one scored frame; the events it raised go into RECORD["drift"]."""
        if str(bundle.path) != self.model:
            self.model = str(bundle.path)
            try:
                ref = load_reference(bundle)
            except ValueError as e:  # the new model scores on; only its score drift goes unchecked
                log.warning("drift: %s; score drift is not checked for this model", e)
                ref = None
            self.monitor.use(ref)
        events = self.monitor.update(record["frame_id"], image, record["score"], not record["is_anomalous"])
        if events:
            record["drift"] = events

    def stats(self) -> dict:
        return self.monitor.stats()


__all__ = ["KINDS", "SIDE", "DriftMonitor", "DriftOptions", "LoopDrift", "Reference"]
