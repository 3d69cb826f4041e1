"""The fault-decision logic with a fake clock (exact rates, no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localaws.faults import (
    ErrorFault,
    FaultConfig,
    FaultInjector,
    FaultRule,
    Throttle,
    TokenBucket,
    error_response,
    throttling_error,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_exact_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Throttle(capacity=5, refill_per_second=2), clock)
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.49
    assert not bucket.try_take()
    clock.now += 0.01  # 0.5 s at 2/s: one token
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.now += 10  # refill is capped at the capacity
    assert sum(bucket.try_take() for _ in range(20)) == 5
    # Sustained (bucket empty): 10 s of a call every 10 ms lets through exactly 2/s.
    passed = 0
    for _ in range(1000):
        clock.now += 0.01
        passed += bucket.try_take()
    assert passed == pytest.approx(20, abs=1)


def test_rule_matching() -> None:
    assert FaultRule("*").matches("ec2", "CreateSnapshots")
    assert FaultRule("ec2:*").matches("ec2", None)
    assert FaultRule("EC2:createsnapshots").matches("ec2", "CreateSnapshots")
    assert not FaultRule("ec2:CreateSnapshots").matches("ec2", "CreateSnapshot")
    assert not FaultRule("ec2:CreateSnapshots").matches("sns", "CreateSnapshots")
    assert not FaultRule("sns:Publish").matches("sns", None)


def test_all_matching_rules_apply() -> None:
    injector = FaultInjector(FakeClock())
    injector.configure(
        FaultConfig(
            rules=(
                FaultRule("*", latency_ms=10),
                FaultRule("ec2:*", latency_ms=20),
                FaultRule("ec2:DescribeVolumes", error=ErrorFault(fail_next=1)),
            )
        )
    )
    decision = injector.decide("ec2", "DescribeVolumes")
    assert decision.latency_s == pytest.approx(0.03)
    assert decision.error is not None
    decision = injector.decide("sns", "Publish")
    assert decision.latency_s == pytest.approx(0.01)
    assert not decision.fails


def test_seeded_decisions_repeat_across_injectors() -> None:
    config = FaultConfig(rules=(FaultRule("*", error=ErrorFault(probability=0.3)),), seed=7)

    def run() -> list[bool]:
        injector = FaultInjector()
        injector.configure(config)
        return [injector.decide("ec2", "X").fails for _ in range(200)]

    first = run()
    assert first == run()
    assert 30 <= sum(first) <= 90


def test_config_round_trip() -> None:
    config = FaultConfig(
        rules=(
            FaultRule(
                "ec2:CreateSnapshots",
                latency_ms=5,
                throttle=Throttle(3, 1.5),
                error=ErrorFault(probability=0.1, fail_next=2, code="Unavailable", status=503),
            ),
        ),
        seed=3,
        snapshot_error_volumes=("vol-1",),
    )
    assert FaultConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "bad",
    [
        {"rules": [{"throttle": {"capacity": 0, "refill_per_second": 1}}]},
        {"rules": [{"error": {"probability": 2}}]},
        {"rules": [{"error": {"status": 200}}]},
        {"rules": [{"unknown": 1}]},
        {"unknown": 1},
    ],
)
def test_invalid_config(bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        FaultConfig.from_dict(bad)


def test_throttling_codes_per_service() -> None:
    assert throttling_error("ec2", "ec2") == (
        "RequestLimitExceeded",
        503,
        "Request limit exceeded.",
    )
    assert throttling_error("sns", "query")[:2] == ("Throttled", 429)
    assert throttling_error("sts", "query")[:2] == ("Throttling", 400)
    assert throttling_error("events", "json")[:2] == ("ThrottlingException", 400)


def test_error_bodies_escape_xml() -> None:
    status, _, body = error_response(
        "ec2", "ec2", code="InternalError", status=500, message="a<b&c", request_id="r"
    )
    assert status == 500
    assert b"a&lt;b&amp;c" in body


@given(
    capacity=st.integers(min_value=1, max_value=20),
    rate=st.floats(min_value=0.0, max_value=50.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200),
)
def test_token_bucket_never_exceeds_capacity_plus_rate(
    capacity: int, rate: float, gaps: list[float]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(Throttle(capacity, rate), clock)
    start, passed = clock.now, 0
    for gap in gaps:
        clock.now += gap
        passed += bucket.try_take()
    assert passed <= capacity + rate * (clock.now - start) + 1e-9
    assert passed >= min(len(gaps), capacity)  # the initial burst always gets through
