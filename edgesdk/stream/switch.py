"""A new model under a running loop: `edgesdk run ROOT/current` follows the `current` symlink that
`install` and `rollback` switch, opening the new model off the hot path and handing it to the next
frame, the camera untouched. No torch."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import numpy as np

from edgesdk.notify import Notifier
from edgesdk.spec import MANIFEST
from edgesdk.stream.detector import Detector, DetectorOptions

log = logging.getLogger("edgesdk.stream.pipeline")


def model_id(det: Detector) -> str:
    """Which model scored a record: the first 12 hex digits of its model.onnx's sha256 (as in the
    bundle's manifest and a package's package.json), so a hot switch shows in the records."""
    return det.bundle.onnx_sha256[:12]


def bundle_folder(path: str | Path) -> Path:
    """PATH, or PATH/bundle when PATH is an installed slot: `edgesdk run ROOT/current` runs the model
    `install` and `rollback` point `current` at (edgesdk/deploy/layout.py)."""
    p = Path(path)
    if not (p / MANIFEST).is_file() and (p / "bundle" / MANIFEST).is_file():
        return p / "bundle"
    return p


class _Models:
    """The detector the inference threads take for their next frame, and how many frames each detector
    has in flight. A hot switch swaps a new one in between frames; the old one is closed once the frames
    it took have finished on it."""

    def __init__(self, det: Detector):
        self.det = det
        self.busy = {det: 0}
        self.cv = threading.Condition()
        self.closed = False

    def take(self) -> Detector:
        with self.cv:
            det = self.det
            self.busy[det] += 1
            return det

    def done(self, det: Detector) -> None:
        with self.cv:
            self.busy[det] -= 1
            self.cv.notify_all()

    def swap(self, new: Detector) -> Detector | None:
        """NEW for the next frame; the old detector (to retire), or None when the run has ended (NEW is closed)."""
        with self.cv:
            if not self.closed:
                old, self.det = self.det, new
                self.busy[new] = 0
                return old
        new.close()
        return None

    def retire(self, old: Detector) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.closed or self.busy[old] == 0)
            if self.closed:  # close() closes it
                return
            del self.busy[old]
        old.close()

    def close(self) -> None:
        with self.cv:
            dets, self.busy, self.closed = list(self.busy), {}, True
            self.cv.notify_all()
        for det in dets:
            det.close()


class _HotSwitch:
    """A new model without restarting the camera: the bundle path run_stream was given is resolved on
    every heartbeat tick (ROOT/current is a symlink that `install` and `rollback` replace) and again on
    SIGHUP. A change opens the new bundle (its sha256s checked) and detector in a background thread and
    scores one blank frame on it (its first run's allocations stay off the hot path); then the next frame
    is taken by it. A bundle that fails is logged and the running model kept, until the next change or
    SIGHUP. systemd hears RELOADING=1, then READY=1 either way."""

    def __init__(
        self,
        path: str | Path,
        target: str,
        models: _Models,
        opts: DetectorOptions,
        notifier: Notifier,
        reload: threading.Event,
    ):
        self.path, self.target, self.models, self.notifier = str(path), target, models, notifier
        # an --engine plan belongs to the first model; a new one finds its own in BUNDLE/engines/
        self.opts = dataclasses.replace(opts, engine=None)
        self.reload = reload  # set by SIGHUP
        self.loader: threading.Thread | None = None
        self.errors = 0

    def tick(self) -> None:
        if self.loader is not None and self.loader.is_alive():
            return
        target = os.path.realpath(self.path)
        if target == self.target and not self.reload.is_set():
            return
        self.reload.clear()
        self.target = target  # a failed target is not retried every tick
        self.loader = threading.Thread(target=self._load, args=(target,), name="edgesdk-model-switch", daemon=True)
        self.loader.start()

    def _load(self, target: str) -> None:
        old = self.models.det
        self.notifier.reloading(f"loading the model at {target}")
        try:
            det = Detector(bundle_folder(target), self.opts)
            try:
                det.predict(np.zeros((*det.size, 3), np.uint8))
            except BaseException:
                det.close()
                raise
        except Exception as e:
            self.errors += 1
            log.error(
                "%s -> %s: the new model cannot be used (%s); still scoring with model %s from %s",
                self.path,
                target,
                e,
                model_id(old),
                old.bundle.path,
            )
            self.notifier.ready(f"kept model {model_id(old)}: {target} failed to open")
            return
        prev = self.models.swap(det)
        if prev is None:
            return
        log.warning(
            "%s -> %s: switched model %s -> %s between frames", self.path, target, model_id(prev), model_id(det)
        )
        self.notifier.ready(f"model {model_id(det)} from {target}")
        self.models.retire(prev)

    def join(self, timeout: float = 60.0) -> None:
        if self.loader is not None:
            self.loader.join(timeout)
