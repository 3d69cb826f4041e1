"""Retention with copies and shares (in-process moto): a set whose copies are still being made
is kept, a share Snapset made itself protects nothing while any other share still does, and a
region's copies are retained under their own keys, never mixed with sets made there."""

from __future__ import annotations

from typing import Any

import pytest

from localaws.fleet import FleetInstance
from snapset.policy import (
    COPIES_PENDING,
    TAG_COPIES,
    TAG_COPY_INSTANCE_ID,
    TAG_COPY_POLICY,
    TAG_COPY_SOURCE_REGION,
    TAG_COPY_TRIGGER_ID,
    SnapshotPolicy,
)
from snapset.retention import apply_retention, copy_set_tags
from snapset.retention_preview import KEEP, REASON_COPIES_PENDING, preview_retention
from tests.retention.conftest import NOW, Aws, managed_tags

OWN = "111122223333"
OTHER = "444455556666"


def _policy(**fields: Any) -> SnapshotPolicy:
    return SnapshotPolicy.model_validate(
        {"policy": "nightly", "instance_ids": ["i-0123456789abcdef0"], **fields}
    )


def _history(aws: Aws, inst: FleetInstance, oldest_tags: dict[str, str]) -> list[str]:
    """Three completed sets, 3, 2 and 1 days old; the oldest with `oldest_tags` added."""
    vol = inst.root_volume_id
    tags = managed_tags("nightly", "d3", inst.instance_id) | oldest_tags
    oldest = aws.snapshot(vol, tags, days_ago=3)
    for day in (2, 1):
        aws.snapshot(vol, managed_tags("nightly", f"d{day}", inst.instance_id), days_ago=day)
    return [oldest]


def test_a_set_whose_copies_are_pending_is_kept(aws: Aws, instances: list[FleetInstance]) -> None:
    inst = instances[0]
    [oldest] = _history(aws, inst, {TAG_COPIES: COPIES_PENDING})
    result = apply_retention(aws.ec2, _policy(retention={"count": 1}), inst.instance_id, "now", NOW)
    assert oldest in aws.existing()
    assert len(result.deleted) == 1  # the 2-day-old set, which has no copies pending


@pytest.mark.parametrize(
    ("shared_with", "kept"),
    [([OWN], False), ([OTHER], True), ([OWN, OTHER], True)],
    ids=["own-share", "other-account", "both"],
)
def test_only_a_share_snapset_did_not_make_protects_a_set(
    aws: Aws, instances: list[FleetInstance], shared_with: list[str], kept: bool
) -> None:
    inst = instances[0]
    [oldest] = _history(aws, inst, {})
    aws.ec2.modify_snapshot_attribute(
        SnapshotId=oldest,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=shared_with,
    )
    policy = _policy(retention={"count": 2}, share_with_accounts=[OWN])
    apply_retention(aws.ec2, policy, inst.instance_id, "now", NOW)
    assert (oldest in aws.existing()) is kept


def test_copies_are_retained_under_their_own_keys_and_source_region(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    inst = instances[0]
    vol = inst.root_volume_id

    def copy(trigger: str, days: int, source_region: str = "eu-west-1") -> str:
        tags = {
            TAG_COPY_POLICY: "nightly",
            TAG_COPY_TRIGGER_ID: trigger,
            TAG_COPY_INSTANCE_ID: inst.instance_id,
            TAG_COPY_SOURCE_REGION: source_region,
        }
        return aws.snapshot(vol, tags, days_ago=days)

    # As at home, the set just made (c1) counts toward nothing: `count` older ones stay.
    old_copy, _, _ = copy("c3", 3), copy("c2", 2), copy("c1", 1)
    other_region_copy = copy("x3", 3, source_region="ap-south-1")
    home_set = aws.snapshot(vol, managed_tags("nightly", "h3", inst.instance_id), days_ago=3)
    policy = _policy(retention={"count": 1})
    result = apply_retention(
        aws.ec2, policy, inst.instance_id, "c1", NOW, keys=copy_set_tags("eu-west-1")
    )
    assert result.deleted == (old_copy,)
    assert {other_region_copy, home_set} <= aws.existing()


def test_the_preview_says_a_set_is_kept_for_its_pending_copies(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    inst = instances[0]
    [oldest] = _history(aws, inst, {TAG_COPIES: COPIES_PENDING})
    preview = preview_retention(aws.ec2, _policy(retention={"count": 1}), inst.instance_id, NOW)
    [decision] = [d for d in preview.sets if d.trigger_id == "d3"]
    assert (decision.action, decision.reason) == (KEEP, REASON_COPIES_PENDING)
    assert oldest in decision.snapshot_ids
