"""The pacer: Snapset's share of an EC2 token bucket, on an injected clock."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from snapset import handler as handler_module
from snapset.clients import make_clients
from snapset.deadline import NEVER, Deadline
from snapset.pacing import (
    CREATE_SNAPSHOTS_BUCKET,
    DELETE_SNAPSHOT_BUCKET,
    DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET,
    BucketLimit,
    Pacer,
)
from snapset.run import Engine, build_engine
from snapset.settings import ENV_EC2_API_SHARE, ENV_EC2_RATE_SCALE
from snapset.triggers import parse_request
from tests.unit.conftest import Aws, LambdaContext

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@dataclass
class FakeTime:
    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def pacer(t: FakeTime, rate: float = 2.0, burst: int = 3) -> Pacer:
    return Pacer(rate, burst, clock=t.clock, sleep=t.sleep)


def test_the_burst_goes_at_once_then_calls_come_at_the_rate() -> None:
    t = FakeTime()
    p = pacer(t)
    for _ in range(3):
        assert p.acquire(NEVER)
    assert t.sleeps == []
    for _ in range(4):
        assert p.acquire(NEVER)
    assert t.sleeps == [0.5] * 4
    assert t.now == 2.0  # 7 calls: 3 of burst, then 4 at 2 per second


def test_idle_time_refills_up_to_the_burst_only() -> None:
    t = FakeTime()
    p = pacer(t)
    for _ in range(3):
        p.acquire(NEVER)
    t.now = 100.0  # a long quiet spell refills 3, not 200
    for _ in range(3):
        p.acquire(NEVER)
    assert t.sleeps == []
    p.acquire(NEVER)
    assert t.sleeps == [0.5]


def test_a_wait_past_the_deadline_declines_and_takes_nothing() -> None:
    t = FakeTime()
    p = pacer(t, rate=1.0, burst=1)
    deadline = Deadline(at=0.5, clock=t.clock)
    assert p.acquire(deadline)  # the burst token needs no wait
    assert not p.acquire(deadline)  # the next one comes at 1.0, past the deadline
    assert t.sleeps == []
    # nothing was reserved by the refusal: the next token still comes at 1.0
    assert p.acquire(NEVER)
    assert t.sleeps == [1.0]


def test_a_wait_that_ends_before_the_deadline_is_slept() -> None:
    t = FakeTime()
    p = pacer(t, rate=1.0, burst=1)
    p.acquire(NEVER)
    assert p.acquire(Deadline(at=1.01, clock=t.clock))
    assert t.sleeps == [1.0]


def test_several_tokens_at_once_for_a_whole_set() -> None:
    t = FakeTime()
    p = pacer(t, rate=2.0, burst=4)
    assert p.acquire(NEVER, tokens=3)
    assert p.acquire(NEVER, tokens=3)  # one left, two more at 2/s
    assert t.sleeps == [1.0]
    with pytest.raises(ValueError, match="5 tokens never fit a bucket of 4"):
        p.acquire(NEVER, tokens=5)


def test_concurrent_callers_queue_instead_of_sharing_a_token() -> None:
    t = FakeTime()
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            t.sleeps.append(seconds)

    p = Pacer(1.0, 1, clock=t.clock, sleep=sleep)
    threads = [threading.Thread(target=p.acquire, args=(NEVER,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # the clock stood still: each caller reserved the next token, so waits are 0 (burst), 1..4
    assert sorted(t.sleeps) == [1.0, 2.0, 3.0, 4.0]


def test_a_share_scales_refill_and_burst_and_the_time_scale_only_the_refill() -> None:
    half = Pacer.share_of(CREATE_SNAPSHOTS_BUCKET, 0.5)
    assert (half.rate, half.burst) == (2.5, 50)
    scaled = Pacer.share_of(DELETE_SNAPSHOT_BUCKET, 0.5, time_scale=20)
    assert (scaled.rate, scaled.burst) == (50.0, 50)
    tiny = Pacer.share_of(BucketLimit(burst=10, refill_per_second=5), 0.01)
    assert (tiny.rate, tiny.burst) == (0.05, 1)


def test_the_buckets_are_the_published_ones() -> None:
    limits = json.loads((FIXTURES / "aws_limits.json").read_text())
    for name, bucket in (
        ("create_snapshots_bucket", CREATE_SNAPSHOTS_BUCKET),
        ("delete_snapshot_bucket", DELETE_SNAPSHOT_BUCKET),
        ("unfiltered_describe_bucket", DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET),
    ):
        assert bucket == BucketLimit(**limits[name]["value"]), name


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_pacer_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate and burst"):
        Pacer(rate, burst)


def test_the_engine_paces_create_delete_and_sharing_checks_at_the_share() -> None:
    clients = make_clients(region="us-east-1")
    request = parse_request({"policy": "p", "instance_ids": ["i-0123456789abcdef0"]})
    engine = build_engine(
        clients, request, NEVER, idempotency=None, ec2_api_share=0.2, ec2_rate_scale=10
    )
    assert engine.budget.pacer is not None
    assert engine.delete_pacer is not None
    assert (engine.budget.pacer.rate, engine.budget.pacer.burst) == (10.0, 20)
    assert (engine.delete_pacer.rate, engine.delete_pacer.burst) == (10.0, 20)
    assert engine.check_pacer is not None
    assert (engine.check_pacer.rate, engine.check_pacer.burst) == (20.0, 10)
    # one bucket per API, as EC2's
    assert len({id(engine.budget.pacer), id(engine.delete_pacer), id(engine.check_pacer)}) == 3
    unpaced = build_engine(clients, request, NEVER, idempotency=None, ec2_api_share=None)
    assert unpaced.budget.pacer is None
    assert unpaced.delete_pacer is None
    assert unpaced.check_pacer is None


def test_the_handler_paces_at_the_deployed_share(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Engine] = []

    def recording(*args: Any, **kwargs: Any) -> Engine:
        built.append(build_engine(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(handler_module, "build_engine", recording)
    monkeypatch.setenv(ENV_EC2_API_SHARE, "0.3")
    monkeypatch.setenv(ENV_EC2_RATE_SCALE, "4")
    handler_module.settings.cache_clear()
    handler_module.handler({"policy": "p", "instance_ids": ["i-0123456789abcdef0"]}, context)
    [engine] = built
    assert engine.budget.pacer is not None
    assert (engine.budget.pacer.rate, engine.budget.pacer.burst) == (6.0, 30)
