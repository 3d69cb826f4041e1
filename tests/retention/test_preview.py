"""The retention preview (`snapset plan`) fails closed as retention does: a check that cannot be
made keeps what it was about, as `unchecked`, and says which check failed and why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from localaws.fleet import FleetInstance
from snapset.policy import Retention, SnapshotPolicy
from snapset.retention import SnapshotRecord, SnapshotSet
from snapset.retention_preview import (
    DELETE,
    KEEP,
    REASON_CURRENT,
    REASON_LOCKED,
    REASON_NEWER_UNSETTLED,
    REASON_NEWEST,
    REASON_PENDING,
    REASON_UNCHECKED,
    REASON_WITHIN_AGE,
    REASON_WITHIN_COUNT,
    explain_retention,
    preview_retention,
)
from tests.retention.conftest import NOW, Aws
from tests.retention.test_retention_moto import policy


def completed_sets(aws: Aws, inst: FleetInstance, days: range) -> dict[int, list[str]]:
    return {d: aws.snapshot_set(inst, "nightly", f"nightly-d{d}", days_ago=d) for d in days}


def refusing(code: str, api: str, message: str) -> Any:
    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": message}}, api)

    return refuse


def decisions(preview: Any) -> dict[str, tuple[str, str, str]]:
    return {d.trigger_id: (d.action, d.reason, d.detail) for d in preview.sets}


@pytest.mark.parametrize(
    ("method", "api"),
    [
        ("describe_locked_snapshots", "DescribeLockedSnapshots"),
        ("describe_images", "DescribeImages"),
    ],
)
def test_a_failed_lock_or_image_check_keeps_every_candidate_unchecked(
    aws: Aws, instances: list[FleetInstance], method: str, api: str
) -> None:
    a = instances[0]
    sets = completed_sets(aws, a, range(1, 6))
    setattr(aws.ec2, method, refusing("UnauthorizedOperation", api, "not allowed"))
    preview = preview_retention(aws.ec2, policy(count=1), a.instance_id, NOW)
    [error] = preview.errors
    assert (error.snapshot_id, error.code) == (None, "UnauthorizedOperation")
    assert error.message == f"{api} failed, 4 set(s) kept unchecked: not allowed"
    got = decisions(preview)
    assert got["nightly-d1"][:2] == (KEEP, REASON_NEWEST)
    for d in range(2, 6):
        unchecked = f"{REASON_UNCHECKED}: {', '.join(sorted(sets[d]))}"
        assert got[f"nightly-d{d}"] == (KEEP, REASON_UNCHECKED, unchecked)


def test_a_failed_sharing_check_keeps_that_set_unchecked(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = completed_sets(aws, a, range(1, 6))
    real = aws.ec2.describe_snapshot_attribute
    refuse = refusing("RequestLimitExceeded", "DescribeSnapshotAttribute", "slow down")

    def flaky(**kwargs: Any) -> Any:
        return refuse() if kwargs["SnapshotId"] == sets[3][1] else real(**kwargs)

    aws.ec2.describe_snapshot_attribute = flaky
    preview = preview_retention(aws.ec2, policy(count=1), a.instance_id, NOW)
    [error] = preview.errors
    assert (error.snapshot_id, error.code) == (sets[3][1], "RequestLimitExceeded")
    assert error.message == "DescribeSnapshotAttribute failed, kept its set: slow down"
    got = decisions(preview)
    assert got["nightly-d3"] == (KEEP, REASON_UNCHECKED, f"{REASON_UNCHECKED}: {sets[3][1]}")
    assert [got[f"nightly-d{d}"][0] for d in (2, 4, 5)] == [DELETE] * 3


def test_a_failed_listing_previews_nothing_and_says_why(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    completed_sets(aws, a, range(1, 4))
    aws.ec2.describe_snapshots = refusing("UnauthorizedOperation", "DescribeSnapshots", "denied")
    preview = preview_retention(aws.ec2, policy(count=1), a.instance_id, NOW)
    assert preview.sets == ()
    [error] = preview.errors
    assert (error.snapshot_id, error.code) == (None, "UnauthorizedOperation")
    assert error.message == f"{a.instance_id}: listing snapshots: denied"


def test_naive_now_and_missing_retention_are_programming_errors(aws: Aws) -> None:
    no_retention = SnapshotPolicy(policy="p", instance_ids=["i-0123456789abcdef0"])
    with pytest.raises(ValueError, match=r"^policy 'p' has no retention$"):
        preview_retention(aws.ec2, no_retention, "i-0123456789abcdef0", NOW)
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(ValueError, match=r"^now must be timezone-aware$"):
        preview_retention(aws.ec2, policy(count=1), "i-0123456789abcdef0", naive)


def _set(trigger_id: str, days_ago: int, *states: str) -> SnapshotSet:
    return SnapshotSet(
        trigger_id,
        tuple(
            SnapshotRecord(f"snap-{trigger_id}-{n}", state, NOW - timedelta(days=days_ago), {})
            for n, state in enumerate(states or ("completed",))
        ),
    )


def test_every_kept_set_says_why_in_words() -> None:
    """What `snapset plan` prints for each kept set: the reason and its detail."""
    blocked = explain_retention(
        [
            _set("a", 6),
            _set("b", 5),
            _set("c", 4, "completed", "pending", "recoverable"),
            _set("d", 1),
        ],
        Retention(count=1),
        NOW,
    )
    assert [(d.trigger_id, d.action, d.reason, d.detail) for d in blocked] == [
        ("d", KEEP, REASON_NEWEST, "the newest completed set is always kept"),
        ("c", KEEP, REASON_PENDING, "snapshots still pending, recoverable"),
        ("b", KEEP, REASON_NEWER_UNSETTLED, "a newer set is pending or failed"),
        ("a", KEEP, REASON_NEWER_UNSETTLED, "a newer set is pending or failed"),
    ]
    by_count = explain_retention(
        [_set("x", 3), _set("y", 2), _set("z", 1)], Retention(count=3), NOW
    )
    assert [(d.trigger_id, d.reason, d.detail) for d in by_count[1:]] == [
        ("y", REASON_WITHIN_COUNT, "1 newer completed set, count is 3"),
        ("x", REASON_WITHIN_COUNT, "2 newer completed sets, count is 3"),
    ]
    # beyond count (one newer set, count 1) but young enough: kept by age, and said so
    by_age = explain_retention(
        [_set("p", 2), _set("q", 1)], Retention(count=1, max_age_days=10), NOW
    )
    assert [(d.trigger_id, d.reason, d.detail) for d in by_age] == [
        ("q", REASON_NEWEST, "the newest completed set is always kept"),
        ("p", REASON_WITHIN_AGE, "2 days old, max_age_days is 10"),
    ]


def test_failed_sets_current_set_and_protected_snapshots_are_named() -> None:
    failed = explain_retention(
        [_set("f", 3, "error"), _set("g", 2, "error"), _set("n", 1)], Retention(count=3), NOW
    )
    assert [(d.trigger_id, d.reason, d.detail) for d in failed] == [
        ("n", REASON_NEWEST, "the newest completed set is always kept"),
        # a failed set is not pending: kept by count, unless a newer one failed too
        ("g", REASON_WITHIN_COUNT, "1 newer completed set, count is 3"),
        ("f", REASON_NEWER_UNSETTLED, "a newer set is pending or failed"),
    ]
    sets = [_set("old", 3, "completed", "completed", "completed"), _set("new", 1), _set("now", 0)]
    protections = {"snap-old-0": REASON_LOCKED, "snap-old-2": REASON_LOCKED}
    decided = explain_retention(sets, Retention(count=1), NOW, "now", protections)
    assert [(d.trigger_id, d.action, d.reason, d.detail) for d in decided] == [
        ("now", KEEP, REASON_CURRENT, "the set this run started"),
        ("new", KEEP, REASON_NEWEST, "the newest completed set is always kept"),
        ("old", KEEP, REASON_LOCKED, f"{REASON_LOCKED}: snap-old-0, snap-old-2"),
    ]
