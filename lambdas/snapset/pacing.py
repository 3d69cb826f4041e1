"""Pacing: Snapset spends at most its share of each EC2 token bucket it writes to.

EC2 throttles per account and region with a token bucket per API (EC2 API reference, "Request
throttling"): CreateSnapshots and DeleteSnapshot hold 100 tokens and refill 5 per second;
DescribeSnapshotAttribute, which retention calls once per snapshot it would delete, draws on the
unfiltered Describe bucket (50, refilling 10 per second). Every
other workload of the account draws on the same buckets, so a backup run that takes every token
starves them. A `Pacer` is a client-side token bucket at `share` of EC2's (burst and refill both
scaled), which the run asks before each call; AWS's own refusals are still retried (see
`snapshots.RetryBudget`). botocore's adaptive retry mode limits a client only after it has been
throttled, and never below a rate it has not measured, so it cannot keep a run under a share.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from snapset.deadline import Deadline


@dataclass(frozen=True)
class BucketLimit:
    """One of EC2's published token buckets: its capacity and its refill per second."""

    burst: int
    refill_per_second: float


# EC2 API reference, "Request throttling", resource-intensive and mutating actions.
CREATE_SNAPSHOTS_BUCKET = BucketLimit(burst=100, refill_per_second=5.0)
DELETE_SNAPSHOT_BUCKET = BucketLimit(burst=100, refill_per_second=5.0)
# Retention's sharing check, one call per snapshot: an unfiltered, unpaginated non-mutating action.
DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET = BucketLimit(burst=50, refill_per_second=10.0)

DEFAULT_EC2_API_SHARE = 0.5


class Pacer:
    """A thread-safe token bucket: `acquire` waits its turn, in arrival order, or declines when
    the wait would pass the deadline. It starts full, as EC2's buckets do after a quiet spell,
    unless `start_full` is False: a fan-out worker that follows another on the same share must
    not spend a burst its predecessor already spent."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        start_full: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a pacer needs a positive rate and burst (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst) if start_full else 0.0
        self._updated = clock()

    @classmethod
    def share_of(
        cls,
        bucket: BucketLimit,
        share: float,
        *,
        time_scale: float = 1.0,
        start_full: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Pacer:
        """`share` of `bucket`: its refill (times `time_scale`, the local AWS's time-scaled
        profile) and its burst, at least one token."""
        return cls(
            bucket.refill_per_second * share * time_scale,
            max(1, math.floor(bucket.burst * share)),
            start_full=start_full,
            clock=clock,
            sleep=sleep,
        )

    def acquire(self, deadline: Deadline, tokens: int = 1) -> bool:
        """Take `tokens` (one per call), sleeping until the bucket has them; False, taking
        nothing, when they would come only after `deadline`. Tokens are reserved before the
        sleep, so concurrent callers queue instead of racing for the same refill."""
        if tokens > self.burst:
            raise ValueError(f"{tokens} tokens never fit a bucket of {self.burst}")
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            wait = max(0.0, (tokens - self._tokens) / self.rate)
            if wait > 0 and wait >= deadline.remaining():
                return False
            self._tokens -= tokens
        if wait > 0:
            self._sleep(wait)
        return True
