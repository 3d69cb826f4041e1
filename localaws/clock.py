"""The local AWS's clock: real time by default, frozen and advanced by tests.

Everything in localaws that waits or ages reads this clock: the fault injector's token buckets,
the completion delay of CreateSnapshots snapshots, and snapshot lock expiry. Tests freeze it and
move it forward (`POST /_localaws/clock`, `LocalAws.freeze_clock()` / `advance_clock(s)`), so no
test passes or fails because the machine was fast or slow.

`CLOCK` is the process's clock (the server's, or the in-process one under `mock_aws`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["CLOCK", "Clock"]


class Clock:
    """Real time, plus an offset; frozen, it stands still until advanced."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._real_monotonic = monotonic
        self._real_wall = wall
        self._lock = threading.Lock()
        self._offset = 0.0
        self._frozen: tuple[float, datetime] | None = None

    def monotonic(self) -> float:
        with self._lock:
            base = self._frozen[0] if self._frozen else self._real_monotonic()
            return base + self._offset

    def now(self) -> datetime:
        with self._lock:
            base = self._frozen[1] if self._frozen else self._real_wall()
            return base + timedelta(seconds=self._offset)

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def freeze(self) -> None:
        """Stop time where it is (already frozen: nothing changes)."""
        with self._lock:
            if self._frozen is None:
                self._frozen = (self._real_monotonic(), self._real_wall())

    def advance(self, seconds: float) -> None:
        """Move time forward (frozen or not)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds

    def reset(self) -> None:
        """Real time again, without offset."""
        with self._lock:
            self._frozen = None
            self._offset = 0.0

    def state(self) -> dict[str, Any]:
        return {"frozen": self.frozen, "offset_seconds": self._offset, "now": self.now()}


CLOCK = Clock()
