"""Work due at a time on the local AWS's clock: a heap of items, the pop of those due, and a
background thread that completes them when the earliest is due (and at least every second,
so a clock moved forward is noticed). The snapshot completer and the copy emulator both are
one (`ec2_snapshots.SnapshotCompleter`, `ec2_copies.CopyEmulator`)."""

from __future__ import annotations

import heapq
import logging
import threading
from typing import Any, Generic, Protocol, TypeVar

from localaws.clock import Clock

log = logging.getLogger("localaws.ec2")


class _Due(Protocol):
    # the clock's monotonic() deadline, or +inf when completion is manual
    @property
    def due(self) -> float: ...

    def __lt__(self, other: Any, /) -> bool: ...


T = TypeVar("T", bound=_Due)


class DueQueue(Generic[T]):
    """The heap, its lock and the thread; `complete_due` is the subclass's."""

    def __init__(self, clock: Clock, thread_name: str) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._heap: list[T] = []
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._thread_name = thread_name

    def _push(self, item: T) -> None:
        with self._cond:
            heapq.heappush(self._heap, item)
            self._cond.notify()

    def _pop(self, *, everything: bool) -> list[T]:
        """The items due by now (or all of them), earliest first."""
        now = self.clock.monotonic()
        with self._cond:
            taken = []
            while self._heap and (everything or self._heap[0].due <= now):
                taken.append(heapq.heappop(self._heap))
            return taken

    def complete_due(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread that completes items when they are due."""
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                timeout = 1.0
                if self._heap:
                    timeout = min(timeout, max(self._heap[0].due - self.clock.monotonic(), 0.0))
                if timeout > 0:
                    self._cond.wait(timeout)
                if self._stopped:
                    return
            try:
                self.complete_due()
            except Exception:
                log.exception("%s: completing what was due failed", self._thread_name)
