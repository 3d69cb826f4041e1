"""How a CreateSnapshots error bears on a retry, and the retry budget's backoff, exactly."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from snapset import snapshots
from snapset.deadline import Deadline
from snapset.snapshots import RetryBudget, create_error_kind


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "CreateSnapshots",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("RequestLimitExceeded", 503), "refused"),
        (client_error("SnapshotCreationPerVolumeRateExceeded", 400), "refused"),
        (client_error("ConcurrentSnapshotLimitExceeded", 400), "refused"),
        (client_error("InternalError", 500), "unconfirmed"),
        (client_error("ServiceUnavailable", 503), "unconfirmed"),
        # an unknown code is judged by its status: 500 and above may have made the set
        (client_error("SomethingNew", 500), "unconfirmed"),
        (client_error("SomethingNew", 502), "unconfirmed"),
        (client_error("SomethingNew", 499), "permanent"),
        (client_error("UnauthorizedOperation", 403), "permanent"),
        (client_error("InvalidParameterValue", 400), "permanent"),
        (EndpointConnectionError(endpoint_url="https://ec2"), "unconfirmed"),
        (ReadTimeoutError(endpoint_url="https://ec2"), "unconfirmed"),
        (ValueError("a bug"), "permanent"),
    ],
)
def test_each_error_is_refused_unconfirmed_or_permanent(exc: Exception, kind: str) -> None:
    assert create_error_kind(exc) == kind


@pytest.fixture
def slept() -> list[float]:
    return []


def budget(slept: list[float], remaining: float = 1000.0, **fields: Any) -> RetryBudget:
    return RetryBudget(
        deadline=Deadline(at=remaining, clock=lambda: 0.0), sleep=slept.append, **fields
    )


@pytest.mark.parametrize("attempt", [0, 1, 3, 4])
def test_the_backoff_is_full_jitter_up_to_base_times_two_to_the_attempt(
    slept: list[float], attempt: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    monkeypatch.setattr(snapshots.random, "uniform", uniform)
    assert budget(slept, base_delay=0.5, max_delay=20.0).wait(attempt)
    assert bounds == [(0, 0.5 * 2**attempt)]
    assert slept == [0.5 * 2**attempt]


def test_the_backoff_is_capped_at_max_delay(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots.random, "uniform", lambda low, high: high)
    assert budget(slept, base_delay=1.0, max_delay=20.0).wait(10)
    assert slept == [20.0]


def test_without_a_minimum_a_retry_may_come_at_once(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots.random, "uniform", lambda low, high: low)
    assert budget(slept).wait(0)
    assert slept == [0.0]


def test_a_minimum_raises_the_delay(slept: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots.random, "uniform", lambda low, high: low)
    assert budget(slept).wait(0, minimum=5.0)
    assert slept == [5.0]


def test_a_delay_that_reaches_the_deadline_is_not_slept(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots.random, "uniform", lambda low, high: high)
    assert not budget(slept, remaining=2.0, base_delay=1.0).wait(1)  # 2 s would end at it
    assert budget(slept, remaining=2.01, base_delay=1.0).wait(1)
    assert slept == [2.0]


def test_no_retry_past_max_retries(slept: list[float]) -> None:
    assert not budget(slept, max_retries=3).wait(3)
    assert slept == []
