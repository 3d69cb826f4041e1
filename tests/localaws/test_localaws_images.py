"""Snapshot locks and AMI-backed snapshots on the local AWS, written from the EC2 API reference
(LockSnapshot, UnlockSnapshot, DescribeLockedSnapshots, RegisterImage, DescribeImages'
``block-device-mapping.*`` filters, DeleteSnapshot), through boto3 against the server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from localaws_testlib import Instance

from localaws import LocalAws

CLOCK_SLACK = timedelta(seconds=5)


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


def _snapshot(ec2: Any, size: int = 8) -> str:
    volume_id = ec2.create_volume(Size=size, AvailabilityZone="us-east-1a")["VolumeId"]
    snapshot_id: str = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    return snapshot_id


def _locked(ec2: Any, *snapshot_ids: str, **kwargs: Any) -> list[dict[str, Any]]:
    if snapshot_ids:
        kwargs["SnapshotIds"] = list(snapshot_ids)
    snapshots: list[dict[str, Any]] = ec2.describe_locked_snapshots(**kwargs)["Snapshots"]
    return snapshots


def lock_state(*states: str) -> list[dict[str, Any]]:
    return [{"Name": "lock-state", "Values": list(states)}]


def _near_now(moment: datetime) -> bool:
    return abs(moment - datetime.now(UTC)) < CLOCK_SLACK


def _register(ec2: Any, *mappings: tuple[str, str], name: str = "snapset-test") -> str:
    image_id: str = ec2.register_image(
        Name=name,
        RootDeviceName=mappings[0][0],
        BlockDeviceMappings=[{"DeviceName": d, "Ebs": {"SnapshotId": s}} for d, s in mappings],
    )["ImageId"]
    return image_id


def _images_with(ec2: Any, *snapshot_ids: str) -> list[str]:
    images = ec2.describe_images(
        Owners=["self"],
        Filters=[{"Name": "block-device-mapping.snapshot-id", "Values": list(snapshot_ids)}],
    )["Images"]
    return sorted(i["ImageId"] for i in images)


def _my_snapshot_ids(ec2: Any) -> set[str]:
    return {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


# --- LockSnapshot / DescribeLockedSnapshots --------------------------------------------------


def test_governance_lock_is_described_with_its_duration(ec2: Any) -> None:
    sid, unlocked = _snapshot(ec2), _snapshot(ec2)
    locked = ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=7)
    assert locked["SnapshotId"] == sid
    assert locked["LockState"] == "governance"

    [info] = _locked(ec2, sid, unlocked)  # an unlocked snapshot is not listed
    assert info["SnapshotId"] == sid
    assert info["OwnerId"] == "123456789012"
    assert info["LockState"] == "governance"
    assert info["LockDuration"] == 7
    assert _near_now(info["LockCreatedOn"])
    assert _near_now(info["LockDurationStartTime"])
    assert info["LockExpiresOn"] == info["LockDurationStartTime"] + timedelta(days=7)
    assert "CoolOffPeriod" not in info


def test_compliance_lock_with_cooling_off_then_without(ec2: Any) -> None:
    cooling, immediate = _snapshot(ec2), _snapshot(ec2)
    ec2.lock_snapshot(SnapshotId=cooling, LockMode="compliance", CoolOffPeriod=2, LockDuration=1)
    ec2.lock_snapshot(SnapshotId=immediate, LockMode="compliance", LockDuration=1)

    info = {s["SnapshotId"]: s for s in _locked(ec2, cooling, immediate)}
    assert info[cooling]["LockState"] == "compliance-cooloff"
    assert info[cooling]["CoolOffPeriod"] == 2
    assert info[cooling]["CoolOffPeriodExpiresOn"] == info[cooling]["LockCreatedOn"] + timedelta(
        hours=2
    )
    assert info[immediate]["LockState"] == "compliance"
    assert "CoolOffPeriod" not in info[immediate]


def test_lock_until_an_expiration_date(ec2: Any) -> None:
    sid = _snapshot(ec2)
    until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", ExpirationDate=until)
    [info] = _locked(ec2, sid)
    assert info["LockExpiresOn"] == until
    assert "LockDuration" not in info


def test_an_expired_lock_reports_expired_and_protects_nothing(aws: LocalAws, ec2: Any) -> None:
    frozen = aws.freeze_clock()
    sid = _snapshot(ec2)
    # One second after the server's frozen time (not ours: a slow machine may be well past it),
    # so the lock below expires only when the clock is advanced.
    soon = datetime.fromisoformat(frozen["now"]) + timedelta(seconds=1)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", ExpirationDate=soon)
    aws.advance_clock(0.5)
    with pytest.raises(ClientError) as exc:
        ec2.delete_snapshot(SnapshotId=sid)
    assert _code(exc) == "IncorrectState"
    assert _locked(ec2, sid)[0]["LockState"] == "compliance"

    aws.advance_clock(1.0)  # past the expiration date
    assert _locked(ec2, sid)[0]["LockState"] == "expired"
    assert [s["SnapshotId"] for s in _locked(ec2, Filters=lock_state("expired"))] == [sid]
    ec2.delete_snapshot(SnapshotId=sid)
    assert _locked(ec2, sid) == []


def test_lock_state_filter_and_pagination(ec2: Any) -> None:
    governance = [_snapshot(ec2) for _ in range(6)]
    compliance = _snapshot(ec2)
    for sid in governance:
        ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1)
    ec2.lock_snapshot(SnapshotId=compliance, LockMode="compliance", LockDuration=1)

    assert [s["SnapshotId"] for s in _locked(ec2, Filters=lock_state("compliance"))] == [compliance]
    assert _locked(ec2, Filters=lock_state("compliance-cooloff", "expired")) == []

    first = ec2.describe_locked_snapshots(Filters=lock_state("governance"), MaxResults=5)
    assert len(first["Snapshots"]) == 5
    rest = ec2.describe_locked_snapshots(
        Filters=lock_state("governance"), MaxResults=5, NextToken=first["NextToken"]
    )
    assert "NextToken" not in rest
    assert sorted(s["SnapshotId"] for s in first["Snapshots"] + rest["Snapshots"]) == sorted(
        governance
    )


def test_the_lock_duration_of_a_pending_snapshot_starts_when_it_completes(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    aws.set_snapshot_delay(None)  # CreateSnapshots snapshots stay pending until asked
    inst = make_instance(data_volume_tags=())
    [snap] = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})[
        "Snapshots"
    ]
    ec2.lock_snapshot(SnapshotId=snap["SnapshotId"], LockMode="governance", LockDuration=2)
    [pending] = _locked(ec2, snap["SnapshotId"])
    assert pending["LockState"] == "governance"
    assert "LockDurationStartTime" not in pending
    assert "LockExpiresOn" not in pending

    aws.complete_snapshots()
    [completed] = _locked(ec2, snap["SnapshotId"])
    assert _near_now(completed["LockDurationStartTime"])
    assert completed["LockExpiresOn"] == completed["LockDurationStartTime"] + timedelta(days=2)


# --- modifying and removing locks ------------------------------------------------------------


def test_governance_lock_blocks_delete_until_unlocked(ec2: Any) -> None:
    sid = _snapshot(ec2)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1)
    with pytest.raises(ClientError) as exc:
        ec2.delete_snapshot(SnapshotId=sid)
    assert _code(exc) == "IncorrectState"
    assert sid in _my_snapshot_ids(ec2)

    assert ec2.unlock_snapshot(SnapshotId=sid)["SnapshotId"] == sid
    assert _locked(ec2, sid) == []
    ec2.delete_snapshot(SnapshotId=sid)
    assert sid not in _my_snapshot_ids(ec2)


def test_governance_and_cooling_off_locks_can_be_changed_freely(ec2: Any) -> None:
    sid = _snapshot(ec2)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=10)
    created = _locked(ec2, sid)[0]["LockCreatedOn"]
    ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=2)  # shorter
    ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", CoolOffPeriod=1, LockDuration=3)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1)  # cooling off
    [info] = _locked(ec2, sid)
    assert (info["LockState"], info["LockDuration"]) == ("governance", 1)
    assert info["LockCreatedOn"] == created  # modified, not re-created


def test_compliance_lock_can_only_be_extended_and_never_unlocked(ec2: Any) -> None:
    sid = _snapshot(ec2)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", LockDuration=5)
    refused = [
        {"LockMode": "governance", "LockDuration": 5},
        {"LockMode": "compliance", "LockDuration": 4},
        {"LockMode": "compliance", "LockDuration": 6, "CoolOffPeriod": 1},
    ]
    for change in refused:
        with pytest.raises(ClientError) as exc:
            ec2.lock_snapshot(SnapshotId=sid, **change)
        assert _code(exc) == "IncorrectState", change
    with pytest.raises(ClientError) as exc:
        ec2.unlock_snapshot(SnapshotId=sid)
    assert _code(exc) == "IncorrectState"

    ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", LockDuration=6)
    [info] = _locked(ec2, sid)
    assert (info["LockState"], info["LockDuration"]) == ("compliance", 6)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"LockMode": "governance"}, "InvalidParameterCombination"),
        (
            {"LockMode": "governance", "LockDuration": 1, "ExpirationDate": datetime(2099, 1, 1)},
            "InvalidParameterCombination",
        ),
        (
            {"LockMode": "governance", "LockDuration": 1, "CoolOffPeriod": 1},
            "InvalidParameterCombination",
        ),
        ({"LockMode": "compliance", "LockDuration": 36501}, "InvalidParameterValue"),
        (
            {"LockMode": "compliance", "LockDuration": 1, "CoolOffPeriod": 73},
            "InvalidParameterValue",
        ),
        (
            {"LockMode": "governance", "ExpirationDate": datetime(2020, 1, 1)},
            "InvalidParameterValue",
        ),
    ],
)
def test_invalid_locks_are_rejected(ec2: Any, params: dict[str, Any], code: str) -> None:
    sid = _snapshot(ec2)
    with pytest.raises(ClientError) as exc:
        ec2.lock_snapshot(SnapshotId=sid, **params)
    assert _code(exc) == code
    assert _locked(ec2, sid) == []


def test_lock_of_unknown_snapshot_and_dry_run(ec2: Any) -> None:
    with pytest.raises(ClientError) as exc:
        ec2.lock_snapshot(
            SnapshotId="snap-0123456789abcdef0", LockMode="governance", LockDuration=1
        )
    assert _code(exc) == "InvalidSnapshot.NotFound"

    sid = _snapshot(ec2)
    with pytest.raises(ClientError) as exc:
        ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1, DryRun=True)
    assert _code(exc) == "DryRunOperation"
    assert _locked(ec2, sid) == []


# --- RegisterImage with your snapshots, DescribeImages filters, DeleteSnapshot ----------------


def test_registered_image_references_the_snapshot_which_cannot_be_deleted(ec2: Any) -> None:
    sid = _snapshot(ec2, size=12)
    before = _my_snapshot_ids(ec2)
    image_id = _register(ec2, ("/dev/xvda", sid))

    assert _my_snapshot_ids(ec2) == before  # no snapshot of moto's own for the image
    [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert image["RootDeviceName"] == "/dev/xvda"
    assert image["RootDeviceType"] == "ebs"
    [mapping] = image["BlockDeviceMappings"]
    assert mapping["DeviceName"] == "/dev/xvda"
    assert mapping["Ebs"]["SnapshotId"] == sid
    assert mapping["Ebs"]["VolumeSize"] == 12  # defaults to the snapshot's size

    assert _images_with(ec2, sid) == [image_id]
    with pytest.raises(ClientError) as exc:
        ec2.delete_snapshot(SnapshotId=sid)
    assert _code(exc) == "InvalidSnapshot.InUse"
    assert image_id in exc.value.response["Error"]["Message"]

    ec2.deregister_image(ImageId=image_id)
    assert _images_with(ec2, sid) == []
    ec2.delete_snapshot(SnapshotId=sid)
    assert sid not in _my_snapshot_ids(ec2)


def test_a_snapshot_in_two_images_stays_in_use_until_both_are_gone(ec2: Any) -> None:
    sid = _snapshot(ec2)
    first = _register(ec2, ("/dev/xvda", sid), name="first")
    second = _register(ec2, ("/dev/xvda", sid), name="second")
    assert _images_with(ec2, sid) == sorted([first, second])
    ec2.deregister_image(ImageId=second)
    with pytest.raises(ClientError) as exc:
        ec2.delete_snapshot(SnapshotId=sid)
    assert _code(exc) == "InvalidSnapshot.InUse"
    ec2.deregister_image(ImageId=first)
    ec2.delete_snapshot(SnapshotId=sid)


def test_mapping_filters_match_any_mapping_and_any_value(ec2: Any) -> None:
    root, data, other = _snapshot(ec2), _snapshot(ec2, size=20), _snapshot(ec2)
    image_id = _register(ec2, ("/dev/xvda", root), ("/dev/sdf", data))
    other_image = _register(ec2, ("/dev/xvda", other), name="other")

    assert _images_with(ec2, data) == [image_id]
    assert _images_with(ec2, data, "snap-0123456789abcdef0") == [image_id]
    assert _images_with(ec2, data, other) == sorted([image_id, other_image])
    assert _images_with(ec2, "snap-0123456789abcdef0") == []

    def images(name: str, *values: str) -> list[str]:
        found = ec2.describe_images(
            Owners=["self"], Filters=[{"Name": name, "Values": list(values)}]
        )["Images"]
        return sorted(i["ImageId"] for i in found)

    assert images("block-device-mapping.device-name", "/dev/sdf") == [image_id]
    assert images("block-device-mapping.volume-size", "20") == [image_id]
    assert images("block-device-mapping.snapshot-id", "snap-*") == sorted([image_id, other_image])


def test_snapshot_filter_works_beside_moto_s_own_images(
    ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    inst = make_instance(data_volume_tags=())
    moto_image = ec2.create_image(InstanceId=inst.instance_id, Name="from-instance")["ImageId"]
    sid = _snapshot(ec2)
    assert _images_with(ec2, sid) == []  # plain moto fails here once you own an image
    [moto_mapping] = ec2.describe_images(ImageIds=[moto_image])["Images"][0]["BlockDeviceMappings"]
    assert _images_with(ec2, moto_mapping["Ebs"]["SnapshotId"]) == [moto_image]


def test_register_image_with_an_unknown_snapshot_is_rejected(ec2: Any) -> None:
    with pytest.raises(ClientError) as exc:
        _register(ec2, ("/dev/xvda", "snap-0123456789abcdef0"))
    assert _code(exc) == "InvalidSnapshot.NotFound"
    assert ec2.describe_images(Owners=["self"])["Images"] == []
