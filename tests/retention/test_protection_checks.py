"""Retention's protection checks call for call (botocore Stubber, exact parameters): every
candidate snapshot is asked about, in batches of at most 200 ids (EC2's filter limit), through
every page, and only what no check protects is deleted."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from snapset.errors import UNEXPECTED_ERROR
from snapset.policy import TAG_INSTANCE_ID, TAG_POLICY, TAG_TRIGGER_ID, SnapshotPolicy
from snapset.retention import apply_retention
from tests.retention.conftest import NOW, REGION, logged

INSTANCE = "i-0123456789abcdef0"
VOLUMES = 40  # an instance with 40 volumes makes sets of 40 snapshots
# EC2 accepts at most 200 values in one filter (EC2 API reference, "Filtering").
FILTER_VALUES_MAX = 200


def _sets(n: int) -> list[list[str]]:
    """Snapshot ids of `n` sets, oldest first."""
    return [[f"snap-{s:04x}{v:013x}" for v in range(VOLUMES)] for s in range(n)]


def _listing(sets: list[list[str]]) -> dict[str, Any]:
    return {
        "Snapshots": [
            {
                "SnapshotId": sid,
                "State": "completed",
                "StartTime": NOW - timedelta(days=len(sets) - n),
                "OwnerId": "123456789012",
                "Tags": [
                    {"Key": TAG_POLICY, "Value": "nightly"},
                    {"Key": TAG_INSTANCE_ID, "Value": INSTANCE},
                    {"Key": TAG_TRIGGER_ID, "Value": f"t{n}"},
                ],
            }
            for n, ids in enumerate(sets)
            for sid in ids
        ]
    }


def _images_params(chunk: list[str]) -> dict[str, Any]:
    return {
        "Owners": ["self"],
        "IncludeDisabled": True,
        "IncludeDeprecated": True,
        "Filters": [{"Name": "block-device-mapping.snapshot-id", "Values": chunk}],
    }


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_every_candidate_is_checked_in_batches_through_every_page(
    dry_run: bool, retention_log: list[logging.LogRecord]
) -> None:
    t = _sets(7)  # t[6], the newest, is kept by count=1; t[0]..t[5] are candidates
    candidates = [sid for ids in t[:6] for sid in ids]
    assert len(candidates) > FILTER_VALUES_MAX
    first, second = candidates[:FILTER_VALUES_MAX], candidates[FILTER_VALUES_MAX:]
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_snapshots",
            _listing(t),
            {
                "OwnerIds": ["self"],
                "Filters": [
                    {"Name": f"tag:{TAG_POLICY}", "Values": ["nightly"]},
                    {"Name": f"tag:{TAG_INSTANCE_ID}", "Values": [INSTANCE]},
                ],
                "MaxResults": 1000,
            },
        )
        # locks: the first batch over two pages; an expired lock protects nothing
        stub.add_response(
            "describe_locked_snapshots",
            {
                "Snapshots": [
                    {"SnapshotId": t[1][0], "LockState": "governance"},
                    {"SnapshotId": t[0][0], "LockState": "expired"},
                    {"LockState": "governance"},
                ],
                "NextToken": "page-2",
            },
            {"SnapshotIds": first},
        )
        stub.add_response(
            "describe_locked_snapshots",
            {"Snapshots": [{"SnapshotId": t[2][5], "LockState": "compliance-cooloff"}]},
            {"SnapshotIds": first, "NextToken": "page-2"},
        )
        stub.add_response("describe_locked_snapshots", {"Snapshots": []}, {"SnapshotIds": second})
        # AMIs: one, in the second batch, backed by a snapshot of t[5]
        stub.add_response(
            "describe_images",
            {"Images": [{"ImageId": "ami-1", "BlockDeviceMappings": [{"DeviceName": "/dev/sdf"}]}]},
            _images_params(first),
        )
        stub.add_response(
            "describe_images",
            {
                "Images": [
                    {
                        "ImageId": "ami-2",
                        "BlockDeviceMappings": [
                            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": t[5][3]}}
                        ],
                    }
                ]
            },
            _images_params(second),
        )
        # sharing: asked of every snapshot of the sets nothing protects yet; t[3] is shared
        for ids in (t[0], t[3], t[4]):
            for sid in ids:
                shared = [{"Group": "all"}] if sid == t[3][7] else []
                stub.add_response(
                    "describe_snapshot_attribute",
                    {"SnapshotId": sid, "CreateVolumePermissions": shared},
                    {"SnapshotId": sid, "Attribute": "createVolumePermission"},
                )
        doomed = t[0] + t[4]
        if not dry_run:
            for sid in doomed:
                stub.add_response("delete_snapshot", {}, {"SnapshotId": sid})
        policy = SnapshotPolicy.model_validate(
            {
                "policy": "nightly",
                "instance_ids": [INSTANCE],
                "retention": {"count": 1},
                "dry_run": dry_run,
            }
        )
        result = apply_retention(ec2, policy, INSTANCE, "run-now", NOW)
        stub.assert_no_pending_responses()
    assert result.errors == ()
    assert result.deleted == tuple(doomed)
    assert result.kept == 7 - 2
    assert result.dry_run is dry_run
    verb = "would delete" if dry_run else "deleted"
    summary = f"{verb} 80 snapshot(s) of 2 set(s), kept 5 set(s), 0 left, 0 error(s)"
    assert logged(retention_log) == [("INFO", f"retention nightly {INSTANCE}: {summary}")]


def test_a_bug_deletes_nothing_and_is_reported_with_its_traceback(
    retention_log: list[logging.LogRecord],
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    listing = _listing(_sets(3))
    del listing["Snapshots"][0]["StartTime"]  # as if AWS changed shape: a KeyError in retention
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", listing)
        policy = SnapshotPolicy.model_validate(
            {"policy": "nightly", "instance_ids": [INSTANCE], "retention": {"count": 1}}
        )
        result = apply_retention(ec2, policy, INSTANCE, "run-now", NOW)
        stub.assert_no_pending_responses()
    assert result.deleted == ()
    [error] = result.errors
    assert (error.snapshot_id, error.code) == (None, UNEXPECTED_ERROR)
    assert error.message == f"{INSTANCE}: KeyError('StartTime')"
    assert logged(retention_log) == [("ERROR", f"unexpected error in retention for {INSTANCE}")]
    assert retention_log[0].exc_info is not None
