"""EC2 CreateSnapshots on the local AWS, written from the API reference
(tests/fixtures/create_snapshots.txt, a copy of the boto3 EC2.Client.create_snapshots page)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from localaws_testlib import FIXTURES, Instance

from localaws import LocalAws, LocalAwsError

MaybeInstance = Callable[..., Instance]


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = exc.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def _my_snapshots(ec2: Any, inst: Instance) -> list[dict[str, Any]]:
    """Snapshots of the instance's volumes (moto also lists its AMIs' snapshots)."""
    volume_ids = [inst.root_volume_id, *inst.data_volume_ids]
    snapshots: list[dict[str, Any]] = ec2.describe_snapshots(
        Filters=[{"Name": "volume-id", "Values": volume_ids}]
    )["Snapshots"]
    return snapshots


def _tags(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


# --- which volumes -----------------------------------------------------------------------------


def test_all_attached_volumes_by_default(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    snaps = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})
    assert sorted(s["VolumeId"] for s in snaps["Snapshots"]) == sorted(
        [inst.root_volume_id, *inst.data_volume_ids]
    )


def test_exclude_boot_volume(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeBootVolume": True}
    )
    assert sorted(s["VolumeId"] for s in snaps["Snapshots"]) == sorted(inst.data_volume_ids)


def test_exclude_data_volume_ids(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance(data_volume_tags=[{}, {}, {}])
    excluded = [inst.data_volume_ids[0], inst.data_volume_ids[2]]
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeDataVolumeIds": excluded}
    )
    assert sorted(s["VolumeId"] for s in snaps["Snapshots"]) == sorted(
        [inst.root_volume_id, inst.data_volume_ids[1]]
    )
    assert {s["VolumeId"] for s in _my_snapshots(ec2, inst)}.isdisjoint(excluded)


def test_exclude_boot_and_data_volumes_together(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    snaps = ec2.create_snapshots(
        InstanceSpecification={
            "InstanceId": inst.instance_id,
            "ExcludeBootVolume": True,
            "ExcludeDataVolumeIds": [inst.data_volume_ids[0]],
        }
    )
    assert [s["VolumeId"] for s in snaps["Snapshots"]] == [inst.data_volume_ids[1]]


# --- rejected requests -------------------------------------------------------------------------


def test_root_volume_in_exclusions_is_rejected(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={
                "InstanceId": inst.instance_id,
                "ExcludeDataVolumeIds": [inst.root_volume_id],
            }
        )
    code, status, message = _error(exc)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "root volume" in message
    assert "ExcludeBootVolume" in message
    assert _my_snapshots(ec2, inst) == []


def test_more_than_40_excluded_ids_are_rejected(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    ids = [f"vol-{i:017x}" for i in range(41)]
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeDataVolumeIds": ids}
        )
    code, status, message = _error(exc)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "40" in message


def test_40_excluded_ids_pass_the_count_check(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    ids = [f"vol-{i:017x}" for i in range(40)]
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeDataVolumeIds": ids}
        )
    # Not a count error: the (made-up) IDs themselves are what's wrong.
    assert _error(exc)[0] == "InvalidVolume.NotFound"


def test_nonexistent_volume_in_exclusions(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={
                "InstanceId": inst.instance_id,
                "ExcludeDataVolumeIds": ["vol-0123456789abcdef0"],
            }
        )
    code, status, _ = _error(exc)
    assert (code, status) == ("InvalidVolume.NotFound", 400)


def test_malformed_volume_id_in_exclusions(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeDataVolumeIds": ["x"]}
        )
    assert _error(exc)[0] == "InvalidVolumeID.Malformed"


def test_volume_of_another_instance_in_exclusions(ec2: Any, make_instance: MaybeInstance) -> None:
    inst, other = make_instance(), make_instance()
    for foreign in (other.data_volume_ids[0], other.root_volume_id):
        with pytest.raises(ClientError) as exc:
            ec2.create_snapshots(
                InstanceSpecification={
                    "InstanceId": inst.instance_id,
                    "ExcludeDataVolumeIds": [foreign],
                }
            )
        code, status, message = _error(exc)
        assert (code, status) == ("InvalidParameterValue", 400)
        assert foreign in message


def test_detached_volume_in_exclusions(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    loose = ec2.create_volume(Size=1, AvailabilityZone=inst.availability_zone)["VolumeId"]
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeDataVolumeIds": [loose]}
        )
    assert _error(exc)[:2] == ("InvalidParameterValue", 400)


def test_unknown_instance(ec2: Any) -> None:
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(InstanceSpecification={"InstanceId": "i-0123456789abcdef0"})
    assert _error(exc)[:2] == ("InvalidInstanceID.NotFound", 400)


def test_instances_launched_after_a_lookup_are_found_and_unknown_ones_still_are_not(
    ec2: Any, make_instance: MaybeInstance
) -> None:
    """The server finds an instance by id through an index (moto scans every reservation):
    one made after the index was built, or after a terminated one, is still found."""
    first = make_instance()
    ec2.create_snapshots(InstanceSpecification={"InstanceId": first.instance_id})
    ec2.terminate_instances(InstanceIds=[first.instance_id])
    later = make_instance()
    made = ec2.create_snapshots(InstanceSpecification={"InstanceId": later.instance_id})
    assert {s["VolumeId"] for s in made["Snapshots"]} == {
        later.root_volume_id,
        *later.data_volume_ids,
    }
    for instance_id, code in (
        (first.instance_id, "IncorrectState"),
        ("i-0123456789abcdef0", "InvalidInstanceID.NotFound"),
    ):
        with pytest.raises(ClientError) as exc:
            ec2.create_snapshots(InstanceSpecification={"InstanceId": instance_id})
        assert _error(exc)[0] == code


def test_malformed_instance_id(ec2: Any) -> None:
    for bad_id in ["i-xyz", "0123456789abcdef0", "vol-0123456789abcdef0", "i-0123", ""]:
        with pytest.raises(ClientError) as exc:
            ec2.create_snapshots(InstanceSpecification={"InstanceId": bad_id})
        assert _error(exc)[:2] == ("InvalidInstanceID.Malformed", 400), bad_id


def test_terminated_instance(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    ec2.terminate_instances(InstanceIds=[inst.instance_id])
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})
    assert _error(exc)[:2] == ("IncorrectState", 400)


def test_stopped_instance_can_be_snapshotted(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    ec2.stop_instances(InstanceIds=[inst.instance_id])
    snaps = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})
    assert len(snaps["Snapshots"]) == 3


def test_dry_run_valid_request(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id}, DryRun=True)
    assert _error(exc)[:2] == ("DryRunOperation", 412)
    assert _my_snapshots(ec2, inst) == []


def test_dry_run_still_validates(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={
                "InstanceId": inst.instance_id,
                "ExcludeDataVolumeIds": [inst.root_volume_id],
            },
            DryRun=True,
        )
    assert _error(exc)[0] == "InvalidParameterValue"


def test_dry_run_false_creates(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id}, DryRun=False
    )
    assert len(snaps["Snapshots"]) == 3


def test_copy_tags_from_source_other_than_volume(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id}, CopyTagsFromSource="instance"
        )
    assert _error(exc)[:2] == ("InvalidParameterValue", 400)


def test_aws_prefixed_tag_key_is_rejected(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id},
            TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": [{"Key": "aws:backup", "Value": "x"}]}
            ],
        )
    assert _error(exc)[:2] == ("InvalidParameterValue", 400)
    assert _my_snapshots(ec2, inst) == []


def test_tag_specification_for_another_resource_type(
    ec2: Any, make_instance: MaybeInstance
) -> None:
    inst = make_instance()
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id},
            TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}],
        )
    assert _error(exc)[0] == "InvalidParameterValue"


# --- tags and description ----------------------------------------------------------------------


def test_copy_tags_from_source_copies_each_volumes_own_tags(
    ec2: Any, make_instance: MaybeInstance
) -> None:
    inst = make_instance(
        data_volume_tags=[{"Name": "data-a", "tier": "gold"}, {"Name": "data-b", "owner": "db"}]
    )
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeBootVolume": True},
        CopyTagsFromSource="volume",
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [{"Key": "set", "Value": "s1"}, {"Key": "tier", "Value": "from-request"}],
            }
        ],
    )["Snapshots"]
    by_volume = {s["VolumeId"]: _tags(s) for s in snaps}
    a, b = inst.data_volume_ids
    # Each snapshot gets its own source volume's tags plus the request's; on a key clash the
    # request's TagSpecifications win (our choice, see localaws/README.md).
    assert by_volume[a] == {"Name": "data-a", "tier": "from-request", "set": "s1"}
    assert by_volume[b] == {"Name": "data-b", "owner": "db", "tier": "from-request", "set": "s1"}
    described = {s["VolumeId"]: _tags(s) for s in _my_snapshots(ec2, inst)}
    assert described == by_volume


def test_without_copy_tags_only_request_tags(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance(data_volume_tags=[{"Name": "data-a"}])
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeBootVolume": True},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "set", "Value": "s1"}]}],
    )["Snapshots"]
    assert [_tags(s) for s in snaps] == [{"set": "s1"}]


def test_description_propagated_to_every_snapshot(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id}, Description="nightly set"
    )["Snapshots"]
    assert {s["Description"] for s in snaps} == {"nightly set"}
    assert {s["Description"] for s in _my_snapshots(ec2, inst)} == {"nightly set"}


# --- response and state ------------------------------------------------------------------------


def test_response_fields(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance(encrypted=[True, False])
    snaps = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})[
        "Snapshots"
    ]
    volumes = {v["VolumeId"]: v for v in ec2.describe_volumes()["Volumes"]}
    assert len(snaps) == 3
    for snap in snaps:
        assert snap["State"] == "pending"
        assert snap["SnapshotId"].startswith("snap-")
        assert snap["OwnerId"].isdigit()
        assert isinstance(snap["Progress"], str)
        assert snap["Progress"] != "100%"
        assert isinstance(snap["StartTime"], datetime)
        volume = volumes[snap["VolumeId"]]
        assert snap["VolumeSize"] == volume["Size"]
        assert snap["Encrypted"] == volume["Encrypted"]
    # "This is the same for all snapshots initiated by the same request."
    assert len({s["StartTime"] for s in snaps}) == 1
    assert {s["VolumeId"]: s["Encrypted"] for s in snaps}[inst.data_volume_ids[0]] is True


def test_pending_then_completed_after_the_delay(
    aws: LocalAws, ec2: Any, make_instance: MaybeInstance
) -> None:
    aws.freeze_clock()  # the delay runs on the server's clock, moved by the test alone
    aws.set_snapshot_delay(1.0)
    inst = make_instance()
    ids = [
        s["SnapshotId"]
        for s in ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})[
            "Snapshots"
        ]
    ]
    described = ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]
    assert {(s["State"], s["Progress"]) for s in described} == {("pending", "0%")}
    aws.advance_clock(0.9)
    described = ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]
    assert {s["State"] for s in described} == {"pending"}  # not due yet
    aws.advance_clock(0.1)
    described = ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]
    assert {(s["State"], s["Progress"]) for s in described} == {("completed", "100%")}


def test_manual_completion(aws: LocalAws, ec2: Any, make_instance: MaybeInstance) -> None:
    aws.set_snapshot_delay(None)
    inst = make_instance()
    ids = [
        s["SnapshotId"]
        for s in ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})[
            "Snapshots"
        ]
    ]
    aws.freeze_clock()
    aws.advance_clock(3600)  # far past any delay: nothing completes on its own
    states = {s["State"] for s in ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]}
    assert states == {"pending"}
    assert sorted(aws.complete_snapshots()) == sorted(ids)
    states = {s["State"] for s in ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]}
    assert states == {"completed"}
    assert aws.complete_snapshots() == []


def test_pending_snapshots_filterable_by_status(
    aws: LocalAws, ec2: Any, make_instance: MaybeInstance
) -> None:
    aws.set_snapshot_delay(None)
    inst = make_instance()
    ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.instance_id})
    pending = ec2.describe_snapshots(Filters=[{"Name": "status", "Values": ["pending"]}])[
        "Snapshots"
    ]
    assert len(pending) == 3


def test_plain_create_snapshot_is_untouched(ec2: Any, make_instance: MaybeInstance) -> None:
    inst = make_instance()
    snap = ec2.create_snapshot(VolumeId=inst.data_volume_ids[0])
    assert snap["State"] == "completed"  # moto's own behaviour for the single-volume API


def test_reference_copy_documents_the_rules() -> None:
    """Guard: the rules above come from this copy of the API reference."""
    text = (FIXTURES / "create_snapshots.txt").read_text()
    assert "If you specify the ID of the root volume, the request fails" in text
    assert "You can specify up to 40 volume IDs per request." in text
    assert "the error response is DryRunOperation" in text
    assert "CopyTagsFromSource='volume'" in text


# --- seeded history (control API) ----------------------------------------------------------------


def test_seeded_sets_are_completed_backdated_and_tagged_like_the_calls_sets(
    aws: LocalAws, ec2: Any, make_instance: MaybeInstance
) -> None:
    inst = make_instance()
    ec2.create_tags(Resources=[inst.data_volume_ids[0]], Tags=[{"Key": "Team", "Value": "db"}])
    when = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    made = aws.seed_snapshot_sets(
        [{"instance_id": inst.instance_id, "tags": {"snapset:policy": "p"}, "start_time": when}],
        exclude_boot_volume=True,
    )
    snaps = _my_snapshots(ec2, inst)
    assert sorted(s["SnapshotId"] for s in snaps) == sorted(made)
    assert sorted(s["VolumeId"] for s in snaps) == sorted(inst.data_volume_ids)
    assert {s["State"] for s in snaps} == {"completed"}
    assert {s["Progress"] for s in snaps} == {"100%"}
    assert {s["StartTime"] for s in snaps} == {when}
    by_volume = {s["VolumeId"]: _tags(s) for s in snaps}
    # the volume's tags are copied (CopyTagsFromSource='volume'), the set's tags win
    assert by_volume[inst.data_volume_ids[0]] == {"Team": "db", "snapset:policy": "p"}
    found = ec2.describe_snapshots(Filters=[{"Name": "tag:snapset:policy", "Values": ["p"]}])
    assert len(found["Snapshots"]) == len(made)  # the tag index knows them


def test_a_seeded_set_for_an_unknown_instance_is_a_400_naming_it(
    aws: LocalAws, make_instance: MaybeInstance
) -> None:
    inst = make_instance()
    sets = [
        {"instance_id": inst.instance_id, "tags": {}, "start_time": "2026-11-20T01:00:00+00:00"},
        {"instance_id": "i-0123456789abcdef0", "tags": {}, "start_time": "2026-11-20T01:00:00"},
    ]
    with pytest.raises(LocalAwsError, match=r"400.*sets\[1\] \(i-0123456789abcdef0\).*NotFound"):
        aws.seed_snapshot_sets(sets)
