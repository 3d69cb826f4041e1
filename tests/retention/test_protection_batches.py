"""Protection checks in batches: out of time, the unchecked sets are kept; an image listing
without the optional keys protects nothing by mistake and crashes nothing."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from snapset.deadline import Deadline
from snapset.protections import ami_backed_ids, locked_ids, protected_ids

REGION = "us-east-1"
SETS = [[f"snap-{s:04x}{v:013x}" for v in range(2)] for s in range(3)]
IDS = [sid for ids in SETS for sid in ids]


def _batch_checks(stub: Stubber) -> None:
    stub.add_response("describe_locked_snapshots", {"Snapshots": []}, {"SnapshotIds": IDS})
    stub.add_response("describe_images", {"Images": []})


def test_out_of_time_the_sets_not_yet_checked_for_sharing_are_kept() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    expired = iter([False, True])  # the first set is checked, then time runs out
    deadline = Deadline(at=1.0, clock=lambda: float(next(expired, True)))
    with Stubber(ec2) as stub:
        _batch_checks(stub)
        for sid in SETS[0]:  # only the first set's sharing is asked about
            stub.add_response(
                "describe_snapshot_attribute",
                {"CreateVolumePermissions": []},
                {"SnapshotId": sid, "Attribute": "createVolumePermission"},
            )
        protected, errors = protected_ids(ec2, SETS, deadline)
        stub.assert_no_pending_responses()
    assert protected == set(SETS[1] + SETS[2])
    [error] = errors
    assert (error.code, error.snapshot_id) == ("Timeout", None)
    assert error.message == (
        "out of invocation time: kept 2 set(s) unchecked; the next run continues"
    )


@pytest.mark.parametrize(
    "images",
    [{}, {"Images": [{"ImageId": "ami-1"}]}, {"Images": [{"BlockDeviceMappings": [{}]}]}],
    ids=["no-images-key", "image-without-mappings", "mapping-without-ebs"],
)
def test_an_image_listing_without_optional_keys_backs_nothing(images: dict[str, Any]) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response("describe_images", images)
        assert ami_backed_ids(ec2, IDS) == set()
        stub.assert_no_pending_responses()


def test_a_lock_listing_without_snapshots_locks_nothing() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response("describe_locked_snapshots", {}, {"SnapshotIds": IDS})
        assert locked_ids(ec2, IDS) == set()
        stub.assert_no_pending_responses()


def _moto_sets(ec2: Any, n: int) -> list[list[str]]:
    volume = ec2.create_volume(Size=1, AvailabilityZone=f"{REGION}a")["VolumeId"]
    return [[ec2.create_snapshot(VolumeId=volume)["SnapshotId"]] for _ in range(n)]


@pytest.mark.parametrize("workers", [1, 4])
def test_sharing_checks_on_threads_protect_what_the_sequential_ones_do(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        sets = _moto_sets(ec2, 8)
        for n, account in ((1, "111122223333"), (4, "444455556666"), (6, "999988887777")):
            ec2.modify_snapshot_attribute(
                SnapshotId=sets[n][0],
                Attribute="createVolumePermission",
                OperationType="add",
                UserIds=[account],
            )
        failing = sets[3][0]
        real = ec2.describe_snapshot_attribute

        def refuse_one(**kwargs: Any) -> Any:
            if kwargs["SnapshotId"] == failing:
                raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "x"}}, "D")
            return real(**kwargs)

        monkeypatch.setattr(ec2, "describe_snapshot_attribute", refuse_one)
        protected, errors = protected_ids(
            ec2, sets, own_shares=frozenset({"999988887777"}), workers=workers
        )
    # shared with another account, or not known: kept; shared with the policy's own: not
    assert protected == {sets[1][0], sets[3][0], sets[4][0]}
    [error] = errors
    assert (error.code, error.snapshot_id) == ("RequestLimitExceeded", failing)


def test_out_of_time_before_the_threads_start_every_set_is_kept() -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        sets = _moto_sets(ec2, 5)
        protected, errors = protected_ids(ec2, sets, Deadline(at=0.0, clock=lambda: 1.0), workers=4)
    assert protected == {sid for s in sets for sid in s}
    [error] = errors
    assert (
        error.message == "out of invocation time: kept 5 set(s) unchecked; the next run continues"
    )
