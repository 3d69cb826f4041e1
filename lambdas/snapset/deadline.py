"""The one deadline of a run: when it must stop starting work so its report still gets out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """A point on `clock` (monotonic seconds) after which no new work starts.

    Retries, retention and the engine all ask the same object, so a test can move time for all
    of them with one injected clock.
    """

    at: float = float("inf")
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(at=clock() + seconds, clock=clock)

    @classmethod
    def for_invocation(cls, remaining_ms: int, safety_margin_ms: int) -> Deadline:
        """The Lambda invocation's end less the safety margin kept for the report."""
        return cls.after(max(remaining_ms - safety_margin_ms, 0) / 1000)

    def now(self) -> float:
        return self.clock()

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.clock()

    def expired(self) -> bool:
        return self.clock() >= self.at


NEVER = Deadline()
