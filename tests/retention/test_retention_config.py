"""Validation of a policy's `retention` block (the model lives in snapset.policy)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from snapset.policy import Retention, SnapshotPolicy, describe_validation_error

BASE = {"policy": "nightly", "instance_ids": ["i-0123456789abcdef0"]}


def make(retention: Any) -> SnapshotPolicy:
    return SnapshotPolicy.model_validate({**BASE, "retention": retention})


@pytest.mark.parametrize(
    "retention",
    [
        {"count": 1},
        {"count": 1000},
        {"max_age_days": 1},
        {"max_age_days": 36500},
        {"count": 14, "max_age_days": 30},
    ],
)
def test_valid_retention(retention: dict[str, int]) -> None:
    assert make(retention).retention == Retention(**retention)


def test_retention_is_optional() -> None:
    assert SnapshotPolicy.model_validate(BASE).retention is None
    assert make(None).retention is None


@pytest.mark.parametrize(
    ("retention", "where", "message"),
    [
        ({"count": 0}, "retention.count", "greater than or equal to 1"),
        ({"count": 1001}, "retention.count", "less than or equal to 1000"),
        ({"max_age_days": 0}, "retention.max_age_days", "greater than or equal to 1"),
        ({"max_age_days": 36501}, "retention.max_age_days", "less than or equal to 36500"),
        ({"count": "14"}, "retention.count", "valid integer"),
        ({"count": 1.5}, "retention.count", "valid integer"),
        ({"count": True}, "retention.count", "valid integer"),
        ({}, "retention", "retention needs count and/or max_age_days"),
        ({"count": None, "max_age_days": None}, "retention", "needs count and/or max_age_days"),
        ({"count": 3, "days": 4}, "retention.days", "Extra inputs are not permitted"),
        ("14", "retention", "valid dictionary"),
    ],
)
def test_invalid_retention_names_the_field(retention: Any, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(retention)
    text = describe_validation_error(info.value)
    assert text.startswith(f"{where}: "), text
    assert message in text
