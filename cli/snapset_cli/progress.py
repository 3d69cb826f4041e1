"""A one-line progress bar on stderr for `snapset plan` and `snapset run` (terminals only)."""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Progress:
    """A one-line progress bar on stderr, advanced from worker threads.

    With a known total it draws a bar; without one (run_request finds its targets itself) it
    counts instances done, failed and in flight.
    """

    def __init__(
        self,
        stream: IO[str],
        label: str,
        total: int | None = None,
        *,
        width: int = 24,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._width = width
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._last_draw = float("-inf")
        self._last_len = 0
        self.done = 0
        self.failed = 0
        self.running = 0

    def set_total(self, total: int) -> None:
        with self._lock:
            self._total = total

    def wrap(self, fn: Callable[[T], R], is_failure: Callable[[R], bool]) -> Callable[[T], R]:
        """`fn`, counting each call as in flight, then done (and failed when `is_failure`)."""

        @functools.wraps(fn)
        def counted(item: T) -> R:
            self._update(running=1)
            try:
                result = fn(item)
            except BaseException:
                self._update(running=-1, done=1, failed=1)
                raise
            self._update(running=-1, done=1, failed=int(is_failure(result)))
            return result

        return counted

    def advance(self, *, failed: bool = False) -> None:
        """Count one item done (for callers that report only completions)."""
        self._update(done=1, failed=int(failed))

    def _update(self, *, running: int = 0, done: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.running += running
            self.done += done
            self.failed += failed
            now = self._clock()
            if now - self._last_draw >= self._min_interval:
                self._last_draw = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar as it stands."""
        elapsed = int((self._clock() if now is None else now) - self._start)
        clock = f"{elapsed // 60}:{elapsed % 60:02d}"
        failed = f", {self.failed} failed" if self.failed else ""
        if self._total:
            filled = min(self._width, self._width * self.done // self._total)
            bar = "#" * filled + "-" * (self._width - filled)
            return f"{self._label} [{bar}] {self.done}/{self._total}{failed} {clock}"
        return f"{self._label}: {self.done} done{failed}, {self.running} running {clock}"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self._stream.write("\r" + text.ljust(self._last_len))
        self._stream.flush()
        self._last_len = len(text)

    def close(self) -> None:
        """Draw the final state and end the line (nothing when nothing was ever drawn)."""
        with self._lock:
            if self._last_draw != float("-inf"):
                self._draw(self._clock())
                self._stream.write("\n")
                self._stream.flush()


def progress_wanted(args: argparse.Namespace, stream: IO[str]) -> bool:
    """Draw a bar only on a terminal, not with --no-progress, nor with -v (logs share stderr)."""
    if args.no_progress or getattr(args, "verbose", 0):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress_bar(
    args: argparse.Namespace, stream: IO[str], label: str, total: int | None = None
) -> Iterator[Progress | None]:
    """A bar on `stream` when `progress_wanted`, else None; closed when the block ends."""
    bar = Progress(stream, label, total) if progress_wanted(args, stream) else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
