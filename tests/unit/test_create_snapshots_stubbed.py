"""The exact CreateSnapshots request for every option, pinned with botocore's Stubber."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from snapset.errors import ROOT_VOLUME_EXCLUDED, TOO_MANY_EXCLUSIONS
from snapset.outcomes import InstanceStatus
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.snapshots import (
    AttachedVolume,
    Instance,
    snapshot_instance,
)

IID = "i-0123456789abcdef0"
ROOT = "vol-00000000000000001"
DATA1 = "vol-00000000000000002"
DATA2 = "vol-00000000000000003"
OUTPOST = "arn:aws:outposts:us-east-1:123456789012:outpost/op-0123456789abcdef0"
WHEN = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
MANAGED = [
    {"Key": "snapset:policy", "Value": "nightly"},
    {"Key": "snapset:trigger-id", "Value": "nightly@2026-11-27T03:00:00Z"},
    {"Key": "snapset:instance-id", "Value": IID},
]


def instance(extra_data: int = 2, state: str = "running") -> Instance:
    volumes = [AttachedVolume(ROOT, "/dev/xvda", True)]
    volumes += [
        AttachedVolume(f"vol-{n:017x}", f"/dev/sd{chr(ord('f') + n)}", False)
        for n in range(2, 2 + extra_data)
    ]
    return Instance(instance_id=IID, state=state, tags={}, volumes=tuple(volumes))


def request(**fields: Any) -> SnapshotRequest:
    policy = SnapshotPolicy.model_validate({"policy": "nightly", "instance_ids": [IID], **fields})
    trigger = Trigger(type=TriggerType.SCHEDULE, id="nightly@2026-11-27T03:00:00Z", time=WHEN)
    return SnapshotRequest(policy=policy, trigger=trigger)


def snapshot_response(*volume_ids: str) -> dict[str, Any]:
    return {
        "Snapshots": [
            {
                "SnapshotId": f"snap-{n:017x}",
                "VolumeId": v,
                "State": "pending",
                "VolumeSize": 8,
                "Encrypted": True,
            }
            for n, v in enumerate(volume_ids, start=1)
        ]
    }


@pytest.fixture
def ec2() -> Any:
    return boto3.client("ec2", region_name="us-east-1")


def run(
    ec2: Any,
    req: SnapshotRequest,
    inst: Instance,
    expected: dict[str, Any] | None,
    response: dict[str, Any] | None = None,
    error: tuple[str, int] | None = None,
    describe_volumes: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> Any:
    with Stubber(ec2) as stub:
        if describe_volumes is not None:
            stub.add_response("describe_volumes", describe_volumes[1], describe_volumes[0])
        if expected is not None:
            if not req.policy.dry_run:
                # A set an earlier delivery of this trigger made is looked up first.
                stub.add_response(
                    "describe_snapshots",
                    {"Snapshots": []},
                    {
                        "OwnerIds": ["self"],
                        "Filters": [
                            {"Name": "tag:snapset:trigger-id", "Values": [req.trigger.id]},
                            {"Name": "tag:snapset:instance-id", "Values": [IID]},
                            {"Name": "tag:snapset:policy", "Values": [req.policy.name]},
                        ],
                    },
                )
            if error is not None:
                stub.add_client_error(
                    "create_snapshots",
                    service_error_code=error[0],
                    service_message=f"{error[0]} happened",
                    http_status_code=error[1],
                    expected_params=expected,
                )
            else:
                stub.add_response("create_snapshots", response or {}, expected)
        outcome = snapshot_instance(ec2, req, inst, ec2_create=ec2)
        stub.assert_no_pending_responses()
    return outcome


def test_defaults_send_copy_tags_and_managed_tags(ec2: Any) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(ec2, request(), instance(), expected, snapshot_response(ROOT, DATA1, DATA2))
    assert outcome.status is InstanceStatus.STARTED
    assert [s.volume_id for s in outcome.snapshots] == [ROOT, DATA1, DATA2]
    assert outcome.snapshots[0].state == "pending"
    assert outcome.snapshots[0].encrypted is True


def test_every_option_together(ec2: Any) -> None:
    req = request(
        exclude_boot_volume=True,
        exclude_data_volume_ids=[DATA2, "vol-0000000000000ffff"],  # the second is not attached
        tags={"Name": "{policy}-{instance_id}", "When": "{timestamp}", "Why": "{trigger}"},
        description="Snapset {policy} of {instance_id} at {timestamp}",
        outpost_arn=OUTPOST,
    )
    expected = {
        "InstanceSpecification": {
            "InstanceId": IID,
            "ExcludeBootVolume": True,
            "ExcludeDataVolumeIds": [DATA2],
        },
        "TagSpecifications": [
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": "Name", "Value": f"nightly-{IID}"},
                    {"Key": "When", "Value": "2026-11-27T03:00:00Z"},
                    {"Key": "Why", "Value": "schedule"},
                    *MANAGED,
                ],
            }
        ],
        "DryRun": False,
        "Description": f"Snapset nightly of {IID} at 2026-11-27T03:00:00Z",
        "OutpostArn": OUTPOST,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(ec2, req, instance(), expected, snapshot_response(DATA1))
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.excluded_volume_ids == (DATA2,)


def test_copy_tags_off_omits_the_parameter(ec2: Any) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
    }
    outcome = run(
        ec2, request(copy_tags_from_source=None), instance(), expected, snapshot_response(ROOT)
    )
    assert outcome.status is InstanceStatus.STARTED


def test_merged_exclusions_from_ids_and_volume_tags(ec2: Any) -> None:
    req = request(exclude_data_volume_ids=[DATA1], exclude_data_volume_tags={"NoBackup": ["true"]})
    describe = (
        {
            "Filters": [
                {"Name": "attachment.instance-id", "Values": [IID]},
                {"Name": "tag:NoBackup", "Values": ["true"]},
            ]
        },
        {"Volumes": [{"VolumeId": DATA2}, {"VolumeId": DATA1}]},
    )
    expected = {
        "InstanceSpecification": {
            "InstanceId": IID,
            "ExcludeBootVolume": False,
            "ExcludeDataVolumeIds": [DATA1, DATA2],
        },
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(
        ec2, req, instance(), expected, snapshot_response(ROOT), describe_volumes=describe
    )
    assert outcome.excluded_volume_ids == (DATA1, DATA2)


def test_dry_run_operation_means_it_would_succeed(ec2: Any) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": True,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(ec2, request(dry_run=True), instance(), expected, error=("DryRunOperation", 412))
    assert outcome.status is InstanceStatus.DRY_RUN_OK
    assert outcome.error is None


@pytest.mark.parametrize(
    ("code", "http"),
    [
        ("UnauthorizedOperation", 403),
        ("InvalidInstanceID.NotFound", 400),
        ("IncorrectState", 400),
        ("ConcurrentSnapshotLimitExceeded", 400),
        ("SnapshotCreationPerVolumeRateExceeded", 400),
        ("RequestLimitExceeded", 503),
    ],
)
def test_each_error_code_is_a_failed_outcome_naming_the_instance(
    ec2: Any, code: str, http: int
) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": code == "UnauthorizedOperation",
        "CopyTagsFromSource": "volume",
    }
    req = request(dry_run=code == "UnauthorizedOperation")
    outcome = run(ec2, req, instance(), expected, error=(code, http))
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == code
    assert IID in outcome.error.message


def test_root_volume_in_data_exclusions_fails_without_calling_aws(ec2: Any) -> None:
    outcome = run(ec2, request(exclude_data_volume_ids=[ROOT]), instance(), None)
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == ROOT_VOLUME_EXCLUDED
    assert "exclude_boot_volume" in outcome.error.message
    assert ROOT in outcome.error.message


def test_root_volume_matched_by_tag_is_dropped_when_boot_is_excluded(ec2: Any) -> None:
    req = request(exclude_boot_volume=True, exclude_data_volume_tags={"NoBackup": ["*"]})
    describe = ({"Filters": ANY}, {"Volumes": [{"VolumeId": ROOT}, {"VolumeId": DATA1}]})
    expected = {
        "InstanceSpecification": {
            "InstanceId": IID,
            "ExcludeBootVolume": True,
            "ExcludeDataVolumeIds": [DATA1],
        },
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(
        ec2, req, instance(), expected, snapshot_response(DATA2), describe_volumes=describe
    )
    assert outcome.status is InstanceStatus.STARTED


def test_root_volume_matched_by_tag_fails_when_boot_is_kept(ec2: Any) -> None:
    req = request(exclude_data_volume_tags={"NoBackup": ["*"]})
    describe = ({"Filters": ANY}, {"Volumes": [{"VolumeId": ROOT}]})
    outcome = run(ec2, req, instance(), None, describe_volumes=describe)
    assert outcome.error is not None
    assert outcome.error.code == ROOT_VOLUME_EXCLUDED


def test_more_than_40_exclusions_after_merging_fails(ec2: Any) -> None:
    inst = instance(extra_data=42)
    ids = [v.volume_id for v in inst.volumes if not v.is_root]
    req = request(exclude_data_volume_ids=ids[:30], exclude_data_volume_tags={"Scratch": ["yes"]})
    describe = ({"Filters": ANY}, {"Volumes": [{"VolumeId": v} for v in ids[25:]]})
    outcome = run(ec2, req, inst, None, describe_volumes=describe)
    assert outcome.error is not None
    assert outcome.error.code == TOO_MANY_EXCLUSIONS
    assert "42" in outcome.error.message


def test_everything_excluded_is_skipped_without_calling_aws(ec2: Any) -> None:
    outcome = run(
        ec2,
        request(exclude_boot_volume=True, exclude_data_volume_ids=[DATA1, DATA2]),
        instance(),
        None,
    )
    assert outcome.status is InstanceStatus.SKIPPED
    assert outcome.reason is not None
    assert "nothing to snapshot" in outcome.reason


@pytest.mark.parametrize("state", ["terminated", "shutting-down"])
def test_terminated_or_shutting_down_is_skipped(ec2: Any, state: str) -> None:
    outcome = run(ec2, request(), instance(state=state), None)
    assert outcome.status is InstanceStatus.SKIPPED
    assert outcome.reason == f"instance is {state}"
