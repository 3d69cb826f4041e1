"""The AWS budget profile: EC2's published buckets on every EC2 API the function calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from localaws import LocalAws
from localaws.aws_budget import EC2_BUCKETS, aws_budget, function_overrides

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LIMITS = json.loads((FIXTURES / "aws_limits.json").read_text())
# Where the EC2 API reference puts each API (the fixture's buckets).
CATEGORY = {
    "CreateSnapshots": "create_snapshots_bucket",
    "DeleteSnapshot": "delete_snapshot_bucket",
    "CreateTags": "create_tags_bucket",
    "DescribeInstances": "filtered_describe_bucket",
    "DescribeVolumes": "filtered_describe_bucket",
    "DescribeSnapshots": "filtered_describe_bucket",
    "DescribeImages": "filtered_describe_bucket",
    "DescribeLockedSnapshots": "filtered_describe_bucket",
    "DescribeSnapshotAttribute": "unfiltered_describe_bucket",
    "CopySnapshot": "unlisted_mutating_bucket",
    "ModifySnapshotAttribute": "unlisted_mutating_bucket",
}


def test_every_api_the_function_calls_has_its_published_bucket() -> None:
    # the EC2 half of what the IAM mapping test records the deployed handler calling
    called = {
        "CreateSnapshots", "CreateTags", "DeleteSnapshot", "DescribeImages",
        "DescribeInstances", "DescribeLockedSnapshots", "DescribeSnapshotAttribute",
        "DescribeSnapshots", "DescribeVolumes", "CopySnapshot", "ModifySnapshotAttribute",
    }  # fmt: skip
    assert set(EC2_BUCKETS) == called
    for api, category in CATEGORY.items():
        published = LIMITS[category]["value"]
        assert EC2_BUCKETS[api] == (published["burst"], published["refill_per_second"]), api


def test_the_time_scale_multiplies_every_refill_and_keeps_every_burst() -> None:
    rules = {rule.api: rule.throttle for rule in aws_budget(50)}
    for api, (burst, refill) in EC2_BUCKETS.items():
        bucket = rules[f"ec2:{api}"]
        assert bucket is not None
        assert (bucket.capacity, bucket.refill_per_second) == (burst, refill * 50)
    with pytest.raises(ValueError, match="time_scale must be positive"):
        aws_budget(0)


def test_the_function_gets_the_same_scale_and_a_scaled_invocation() -> None:
    assert function_overrides(50, timeout_seconds=300, safety_margin_ms=10_000) == {
        "remaining_ms": 6000,
        "env_overrides": {"SNAPSET_EC2_RATE_SCALE": "50", "SNAPSET_SAFETY_MARGIN_MS": "200"},
    }


def _outcomes(call: Any, n: int) -> list[str]:
    results = []
    for _ in range(n):
        try:
            call()
            results.append("ok")
        except ClientError as exc:
            results.append(exc.response["Error"]["Code"])
    return results


def test_the_server_throttles_each_api_on_its_own_bucket(aws: LocalAws) -> None:
    aws.freeze_clock()
    aws.set_faults(*aws_budget(10))
    ec2 = aws.client("ec2", max_attempts=1)
    [volume] = [ec2.create_volume(Size=1, AvailabilityZone=f"{aws.region}a")["VolumeId"]]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    attribute = lambda: ec2.describe_snapshot_attribute(  # noqa: E731
        SnapshotId=snapshot, Attribute="createVolumePermission"
    )
    # the unfiltered bucket holds 50; the filtered Describe calls are untouched by it
    assert _outcomes(attribute, 51) == ["ok"] * 50 + ["RequestLimitExceeded"]
    assert _outcomes(lambda: ec2.describe_volumes(VolumeIds=[volume]), 3) == ["ok"] * 3
    aws.advance_clock(0.015)  # 10 per second x 10: one and a half tokens
    assert _outcomes(attribute, 2) == ["ok", "RequestLimitExceeded"]
