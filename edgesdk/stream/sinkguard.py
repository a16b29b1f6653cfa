"""The stream loop's sinks in two classes (video.base.Sink.evidence). A verdict sink (jsonl, mqtt) that
fails stops the run with an error naming it: verdicts are never lost silently. An evidence sink (dir,
video, http preview) that fails is counted, logged once per episode and tried again after a backoff,
while the verdict sinks carry on with every record. No torch."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edgesdk.fsutil import OutputError
from edgesdk.video import open_sink
from edgesdk.video.options import public_uri  # sources and sinks are named the same way
from edgesdk.video.sinks import sink_path
from edgesdk.video.sources import source_path

EVIDENCE_RETRY_S, EVIDENCE_RETRY_MAX_S = 2.0, 30.0  # a failed evidence sink's backoff, doubling up to the max

log = logging.getLogger("edgesdk.stream.pipeline")


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        names = [str(f) for f in (e.filename, e.filename2) if f is not None]
        return e.strerror + (f": {' -> '.join(names)}" if names else "")
    return str(e) if isinstance(e, OSError) and str(e) else f"{type(e).__name__}: {e}"


def _named_error(e: BaseException, msg: str) -> Exception:
    """An OSError (keeping errno) or RuntimeError whose message is MSG alone, for the CLI's one line."""
    if isinstance(e, OSError):
        err = OSError(msg)
        err.errno = e.errno
        return err
    return RuntimeError(msg)


class SinkGuard:
    """One open sink in the loop, by its public URI. A verdict sink's failure is raised, naming the
    sink. An evidence sink's failure is counted and logged at the start and end of each episode (not
    per frame); frames inside its backoff are skipped and counted; it is tried again after
    EVIDENCE_RETRY_S, doubling up to EVIDENCE_RETRY_MAX_S, so a disk that frees up resumes."""

    def __init__(self, uri: str, sink):
        self.uri, self.sink = public_uri(uri), sink
        self.evidence = bool(getattr(sink, "evidence", False))
        self.errors = self.skipped = 0
        self.failing = False  # inside an episode of failures
        self.retry_at, self.backoff = 0.0, EVIDENCE_RETRY_S
        self._episode = (0, 0)  # (errors, skipped) when the episode began

    def write(self, record: dict, frame, result) -> None:
        if not self.sink.wants(record):
            return
        if self.failing and time.monotonic() < self.retry_at:
            self.skipped += 1
            return
        try:
            self.sink.write(record, frame, result)
        except Exception as e:
            if not self.evidence:
                raise _named_error(
                    e,
                    f"{self.uri}: the verdict sink failed ({_describe(e)}); the run "
                    "stops so that no verdict is lost silently",
                ) from e
            self._failed(e)
            return
        if self.failing:
            self.failing = False
            failed, skipped = self.errors - self._episode[0], self.skipped - self._episode[1]
            log.warning(
                "%s: evidence sink working again after %d failed writes; %d frames have no evidence",
                self.uri,
                failed,
                failed + skipped,
            )

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        if self.failing:
            self.backoff = min(2 * self.backoff, EVIDENCE_RETRY_MAX_S)
            log.debug("%s: evidence sink still failing: %s", self.uri, _describe(e))
        else:
            self.failing, self.backoff = True, EVIDENCE_RETRY_S
            self._episode = (self.errors - 1, self.skipped)
            log.warning(
                "%s: evidence sink failed (%s); the verdicts carry on without it, and it is tried "
                "again in %g s (then less often)",
                self.uri,
                _describe(e),
                self.backoff,
            )
        self.retry_at = time.monotonic() + self.backoff

    def health(self) -> dict:
        return {"errors": self.errors, "skipped_frames": self.skipped, "degraded": self.failing}

    def close(self) -> None:
        try:
            self.sink.close()
        except Exception as e:
            if not self.evidence:
                raise _named_error(e, f"{self.uri}: the verdict sink failed to close ({_describe(e)})") from e
            self.errors += 1
            log.warning("%s: evidence sink failed to close (%s)", self.uri, _describe(e))

    def __enter__(self) -> "SinkGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_guarded(uri: str) -> SinkGuard:
    """open_sink(uri) in a SinkGuard; a sink that cannot open at all (a port in use, a folder under a
    file) is an error naming the sink, of either class: the run never starts without it."""
    try:
        sink = open_sink(uri)
    except OSError as e:
        raise _named_error(e, f"{public_uri(uri)}: cannot open this sink ({_describe(e)})") from e
    return SinkGuard(uri, sink)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # through symlinks and hard links
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def refuse_sinks_on_sources(sources: list[str], sinks: list[str]) -> None:
    """OutputError, before anything opens, for a file sink that is a source of the same run: a video
    or JSONL file would be written over (or appended to) the input being read, a dir:// source folder
    would get this run's frames among its images, scored by the next run."""
    for sink in sinks:
        out = sink_path(sink)
        for src in sources:
            inp = source_path(src)
            if out is not None and inp is not None and _same(out, inp):
                raise OutputError(
                    f"{public_uri(sink)}: is this run's source {public_uri(src)}; a sink never writes "
                    "over its input: give the sink another name"
                )
