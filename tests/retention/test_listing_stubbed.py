"""Retention's listing call for call (botocore Stubber, exact parameters): one paginated
DescribeSnapshots per 200 instances, every chunk's snapshots kept, the account filter as EC2
spells it, and a page without a `Snapshots` member read as empty."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import boto3
from botocore.stub import Stubber

from snapset.policy import TAG_INSTANCE_ID, TAG_POLICY, TAG_TRIGGER_ID
from snapset.retention import list_instances_snapshots
from tests.retention.conftest import NOW, REGION

ACCOUNT = "123456789012"
# EC2 accepts at most 200 values in one filter (EC2 API reference, "Filtering").
FILTER_VALUES_MAX = 200


def _snapshot(sid: str, instance_id: str) -> dict[str, Any]:
    return {
        "SnapshotId": sid,
        "State": "completed",
        "StartTime": NOW - timedelta(days=1),
        "OwnerId": ACCOUNT,
        "Tags": [
            {"Key": TAG_POLICY, "Value": "nightly"},
            {"Key": TAG_INSTANCE_ID, "Value": instance_id},
            {"Key": TAG_TRIGGER_ID, "Value": "t"},
        ],
    }


def _params(chunk: list[str], account: str | None) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [
        {"Name": f"tag:{TAG_POLICY}", "Values": ["nightly"]},
        {"Name": f"tag:{TAG_INSTANCE_ID}", "Values": chunk},
    ]
    if account is not None:
        filters.append({"Name": "owner-id", "Values": [account]})
    return {"OwnerIds": ["self"], "Filters": filters, "MaxResults": 1000}


def test_every_chunk_of_200_instances_is_listed_and_kept() -> None:
    ids = [f"i-{n:017x}" for n in range(FILTER_VALUES_MAX + 1)]
    first, second = ids[:FILTER_VALUES_MAX], ids[FILTER_VALUES_MAX:]
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [_snapshot("snap-00000000000000001", first[0])]},
            _params(first, ACCOUNT),
        )
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [_snapshot("snap-00000000000000002", second[0])]},
            _params(second, ACCOUNT),
        )
        records = list_instances_snapshots(ec2, "nightly", ids, ACCOUNT)
        stub.assert_no_pending_responses()
    # the first chunk's snapshot is not lost when the second chunk is listed
    assert [r.snapshot_id for r in records] == ["snap-00000000000000001", "snap-00000000000000002"]


def test_a_page_without_snapshots_is_empty() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", {}, _params(["i-0123456789abcdef0"], None))
        assert list_instances_snapshots(ec2, "nightly", ["i-0123456789abcdef0"]) == []
        stub.assert_no_pending_responses()
