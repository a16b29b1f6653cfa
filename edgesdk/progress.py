"""Progress of long stages: a tqdm bar on a terminal; elsewhere (a log file, a pipe, CI) one line when
a stage starts and one when it ends, never redraws; nothing at all while `quiet()` is on (`edgesdk -q`).

    with bar(total=len(paths), desc="fit padim", unit="img") as b:
        for ...: b.update(n)

Standard library and tqdm only: the device side uses it too."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import IO, Any, Iterable, Iterator, Sized

_QUIET = [False]  # one process, one switch: set by the CLI for the command it runs


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """While inside: no progress bars and no info lines (say). Restored on exit."""
    before, _QUIET[0] = _QUIET[0], on
    try:
        yield
    finally:
        _QUIET[0] = before


def is_quiet() -> bool:
    return _QUIET[0]


def say(text: str, file: IO[str] | None = None) -> None:
    """An info line (what is being done, a gate's attempt): printed unless quiet."""
    if not _QUIET[0]:
        print(text, file=file or sys.stderr, flush=True)


class _Lines:
    """tqdm's interface, written as two lines: `DESC: TOTAL UNIT ...` and `DESC: PCT% N/TOTAL UNIT in S s`."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, file: IO[str]):
        self.iterable, self.desc, self.unit, self.file, self.n = iterable, desc, unit, file, 0
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.t0, self.closed, self.postfix = time.perf_counter(), False, ""
        print(f"{desc}: {'' if self.total is None else f'{self.total} '}{unit} ...", file=file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:  # shown on the end line
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        pct = f"{100 * self.n // self.total}% " if self.total else ""
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        print(
            f"{self.desc}: {pct}{done} {self.unit} in {time.perf_counter() - self.t0:.1f} s"
            + (f" ({self.postfix})" if self.postfix else ""),
            file=self.file,
            flush=True,
        )

    def __iter__(self) -> Iterator:
        for x in self.iterable or ():
            yield x
            self.n += 1
        self.close()

    def __enter__(self) -> "_Lines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(_Lines):
    def __init__(self, iterable: Iterable | None) -> None:  # noqa: D107 - writes nothing
        self.iterable, self.n, self.closed, self.postfix = iterable, 0, True, ""


def bar(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    file: IO[str] | None = None,
) -> Any:
    """A progress bar with tqdm's interface (update, close, iteration, `with`): tqdm where FILE
    (default stderr) is a terminal, two lines per stage elsewhere, silent when not ENABLED or quiet."""
    file = file or sys.stderr
    if not enabled or _QUIET[0]:
        return _Silent(iterable)
    if not (hasattr(file, "isatty") and file.isatty()):
        return _Lines(iterable, total, desc, unit, file)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=file)
