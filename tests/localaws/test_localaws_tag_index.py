"""The indexed tag lookup (`localaws.ec2_tag_index`) answers exactly as moto's scan does.

In-process moto (``mock_aws``): the comparison needs moto's backend. Each test compares, for
every resource, the indexed ``get_tags`` with moto's own (a scan of every tag in the region),
and tag-filtered Describe calls with the index on and off, after creating, retagging, untagging
and deleting resources. The fixture leaves the patch as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.ec2.models import ec2_backends

from localaws import ec2_tag_index
from localaws.fleet import MOTO_ACCOUNT

REGION = "us-east-1"
IMAGE = "ami-12c6146b"  # one of moto's images that exists without the default AMIs


@dataclass
class Ec2:
    client: Any
    backend: Any


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ec2]:
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    was_installed = ec2_tag_index.installed()
    ec2_tag_index.install()
    try:
        with mock_aws():
            yield Ec2(boto3.client("ec2", region_name=REGION), ec2_backends[MOTO_ACCOUNT][REGION])
    finally:
        if not was_installed:
            ec2_tag_index.uninstall()


def _tags(key_values: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in key_values.items()]


def _spec(resource_type: str, key_values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource_type, "Tags": _tags(key_values)}]


def _resources(backend: Any) -> list[Any]:
    instances = [i for r in backend.reservations.values() for i in r.instances]
    return [
        *instances,
        *backend.volumes.values(),
        *backend.snapshots.values(),
        *backend.amis.values(),
        *backend.vpcs.values(),
    ]


def _strip(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("describe_instances", {"Filters": [{"Name": "tag:policy", "Values": ["nightly"]}]}),
    ("describe_instances", {"Filters": [{"Name": "tag:policy", "Values": ["night*", "?eekly"]}]}),
    ("describe_instances", {"Filters": [{"Name": "tag-key", "Values": ["team"]}]}),
    ("describe_instances", {"Filters": [{"Name": "tag-value", "Values": ["weekly"]}]}),
    ("describe_instances", {}),
    ("describe_volumes", {"Filters": [{"Name": "tag:skip", "Values": ["yes"]}]}),
    ("describe_volumes", {"Filters": [{"Name": "tag-key", "Values": ["skip", "team"]}]}),
    ("describe_volumes", {}),
    (
        "describe_snapshots",
        {
            "OwnerIds": ["self"],
            "Filters": [
                {"Name": "tag:snapset:policy", "Values": ["nightly"]},
                {"Name": "tag:snapset:instance-id", "Values": ["i-0", "i-1"]},
            ],
        },
    ),
    ("describe_snapshots", {"OwnerIds": ["self"]}),
    (
        "describe_snapshots",
        {"Filters": [{"Name": "tag:snapset:trigger-id", "Values": ["t*", "x"]}]},
    ),
    (
        "describe_snapshots",
        {
            "Filters": [
                {"Name": "tag:snapset:policy", "Values": ["weekly", "monthly"]},
                {"Name": "tag:snapset:trigger-id", "Values": ["t2"]},
                {"Name": "tag-key", "Values": ["snapset:instance-id"]},
            ]
        },
    ),
    ("describe_snapshots", {"Filters": [{"Name": "tag:snapset:policy", "Values": ["[n]ightly"]}]}),
    ("describe_tags", {}),
    ("describe_tags", {"Filters": [{"Name": "resource-type", "Values": ["snapshot"]}]}),
]


def assert_same_as_moto(ec2: Ec2) -> None:
    """Every resource's tags, and every query, the same with the index and with moto's scan."""
    resources = _resources(ec2.backend)
    assert resources
    for resource in resources:
        assert ec2_tag_index.get_tags(resource) == ec2_tag_index.moto_get_tags(resource), (
            resource.id
        )
    indexed = [_strip(getattr(ec2.client, name)(**kwargs)) for name, kwargs in QUERIES]
    ec2_tag_index.uninstall()
    try:
        scanned = [_strip(getattr(ec2.client, name)(**kwargs)) for name, kwargs in QUERIES]
    finally:
        ec2_tag_index.install()
    for (name, kwargs), mine, theirs in zip(QUERIES, indexed, scanned, strict=True):
        assert mine == theirs, (name, kwargs)


def _launch(ec2: Ec2, tags: dict[str, str], volume_tags: dict[str, str]) -> tuple[str, str]:
    instance = ec2.client.run_instances(
        ImageId=IMAGE,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=_spec("instance", tags),
    )["Instances"][0]
    volume_id = ec2.client.create_volume(
        Size=8,
        AvailabilityZone=instance["Placement"]["AvailabilityZone"],
        TagSpecifications=_spec("volume", volume_tags) if volume_tags else [],
    )["VolumeId"]
    ec2.client.attach_volume(
        VolumeId=volume_id, InstanceId=instance["InstanceId"], Device="/dev/sdf"
    )
    return instance["InstanceId"], volume_id


def _snapshot(ec2: Ec2, volume_id: str, tags: dict[str, str]) -> str:
    snapshot_id: str = ec2.client.create_snapshot(
        VolumeId=volume_id, TagSpecifications=_spec("snapshot", tags)
    )["SnapshotId"]
    return snapshot_id


@pytest.fixture
def fleet(ec2: Ec2) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"instances": [], "volumes": [], "snapshots": []}
    for index, policy in enumerate(["nightly", "weekly", "nightly", "monthly"]):
        instance_id, volume_id = _launch(
            ec2,
            {"policy": policy, "Name": f"web-{index}", **({"team": "a"} if index % 2 else {})},
            {"skip": "yes"} if index % 2 else {},
        )
        ids["instances"].append(instance_id)
        ids["volumes"].append(volume_id)
        for trigger in ("t1", "t2"):
            ids["snapshots"].append(
                _snapshot(
                    ec2,
                    volume_id,
                    {
                        "snapset:policy": policy,
                        "snapset:instance-id": f"i-{index % 2}",
                        "snapset:trigger-id": trigger,
                    },
                )
            )
    return ids


def test_same_tags_and_answers_as_moto_after_creating(ec2: Ec2, fleet: dict[str, Any]) -> None:
    assert ec2_tag_index.installed()
    assert_same_as_moto(ec2)
    reservations = ec2.client.describe_instances(
        Filters=[{"Name": "tag:policy", "Values": ["nightly"]}]
    )["Reservations"]
    found = [i["InstanceId"] for r in reservations for i in r["Instances"]]
    assert found == [fleet["instances"][0], fleet["instances"][2]]


def test_same_after_retagging_and_untagging(ec2: Ec2, fleet: dict[str, Any]) -> None:
    first, second, third, _ = fleet["instances"]
    ec2.client.create_tags(
        Resources=[first, fleet["volumes"][0]],
        Tags=_tags({"policy": "weekly", "added": "1", "skip": "yes"}),
    )
    # the overwritten key keeps its place: moto's order is the dict's insertion order
    assert [t["key"] for t in ec2_tag_index.get_tags(ec2.backend.get_instance(first))] == [
        "policy",
        "Name",
        "added",
        "skip",
    ]
    assert_same_as_moto(ec2)

    ec2.client.delete_tags(Resources=[second], Tags=[{"Key": "policy", "Value": "not-its-value"}])
    ec2.client.delete_tags(Resources=[second], Tags=[{"Key": "team", "Value": "a"}])
    ec2.client.delete_tags(Resources=[third], Tags=[{"Key": "policy"}])
    ec2.client.delete_tags(Resources=[first], Tags=[{"Key": k} for k in ("policy", "Name")])
    ec2.client.delete_tags(Resources=[fleet["snapshots"][0]], Tags=[{"Key": "snapset:policy"}])
    assert_same_as_moto(ec2)

    # every tag gone: moto keeps the resource's (empty) entry; both answer []
    ec2.client.delete_tags(Resources=[first], Tags=[{"Key": k} for k in ("added", "skip")])
    assert ec2_tag_index.get_tags(ec2.backend.get_instance(first)) == []
    assert_same_as_moto(ec2)


def test_same_after_deleting_resources(ec2: Ec2, fleet: dict[str, Any]) -> None:
    for snapshot_id in fleet["snapshots"][:3]:
        ec2.client.delete_snapshot(SnapshotId=snapshot_id)
    ec2.client.detach_volume(VolumeId=fleet["volumes"][1], InstanceId=fleet["instances"][1])
    ec2.client.delete_volume(VolumeId=fleet["volumes"][1])
    ec2.client.terminate_instances(InstanceIds=[fleet["instances"][0]])
    assert_same_as_moto(ec2)
    # new resources after deletions
    instance_id, volume_id = _launch(ec2, {"policy": "nightly"}, {"skip": "yes"})
    _snapshot(ec2, volume_id, {"snapset:policy": "nightly", "snapset:instance-id": "i-1"})
    ec2.client.create_tags(Resources=[instance_id], Tags=_tags({"team": "b"}))
    assert_same_as_moto(ec2)


def test_untagged_resources_and_other_resource_types(ec2: Ec2) -> None:
    instance_id, volume_id = _launch(ec2, {"policy": "nightly"}, {})
    vpc_id = ec2.client.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    ec2.client.create_tags(Resources=[vpc_id], Tags=_tags({"Name": "net"}))
    image_id = ec2.client.create_image(InstanceId=instance_id, Name="img")["ImageId"]
    ec2.client.create_tags(Resources=[image_id], Tags=_tags({"policy": "nightly"}))
    assert ec2_tag_index.get_tags(ec2.backend.get_volume(volume_id)) == []
    [vpc_tag] = ec2_tag_index.get_tags(ec2.backend.get_vpc(vpc_id))
    assert vpc_tag == {"resource_id": vpc_id, "key": "Name", "value": "net", "resource_type": "vpc"}
    assert_same_as_moto(ec2)


def test_an_id_with_pattern_characters_goes_through_moto(ec2: Ec2) -> None:
    """moto matches the id as an fnmatch pattern: such an id matches other ids; we keep that."""
    _launch(ec2, {"policy": "nightly"}, {"skip": "yes"})
    _launch(ec2, {"policy": "weekly"}, {"skip": "no"})

    @dataclass
    class Odd:
        id: str
        ec2_backend: Any

    odd = Odd("vol-*", ec2.backend)
    expected = ec2_tag_index.moto_get_tags(odd)
    assert len(expected) == 2  # both volumes' tags: a pattern, not an id
    assert ec2_tag_index.get_tags(odd) == expected
    assert ec2_tag_index.get_tags(Odd("", ec2.backend)) == []


def test_lookups_do_not_scan_the_tag_store(
    ec2: Ec2, fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    scans: list[Any] = []
    moto_describe_tags = ec2.backend.describe_tags

    def counting(*args: Any, **kwargs: Any) -> Any:
        scans.append(kwargs)
        return moto_describe_tags(*args, **kwargs)

    monkeypatch.setattr(ec2.backend, "describe_tags", counting)  # this backend only
    ec2.client.describe_instances(Filters=[{"Name": "tag:policy", "Values": ["nightly"]}])
    ec2.client.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:snapset:policy", "Values": ["nightly"]}]
    )
    ec2.client.describe_volumes(Filters=[{"Name": "tag:skip", "Values": ["yes"]}])
    assert scans == []

    ec2_tag_index.uninstall()
    try:
        ec2.client.describe_instances(Filters=[{"Name": "tag:policy", "Values": ["nightly"]}])
    finally:
        ec2_tag_index.install()
    assert len(scans) >= len(fleet["instances"])  # moto's: one scan per instance, at least


def test_install_is_idempotent() -> None:
    was_installed = ec2_tag_index.installed()
    try:
        ec2_tag_index.install()
        ec2_tag_index.install()
        assert ec2_tag_index.installed()
        ec2_tag_index.uninstall()
        assert not ec2_tag_index.installed()
    finally:
        if was_installed:
            ec2_tag_index.install()


def test_snapshots_by_id_and_tag_are_moto_s_answer(ec2: Ec2, fleet: dict[str, Any]) -> None:
    wanted = fleet["snapshots"][::3]
    kwargs = {
        "SnapshotIds": wanted,
        "Filters": [{"Name": "tag:snapset:trigger-id", "Values": ["t1"]}],
    }
    mine = _strip(ec2.client.describe_snapshots(**kwargs))
    ec2_tag_index.uninstall()
    try:
        theirs = _strip(ec2.client.describe_snapshots(**kwargs))
    finally:
        ec2_tag_index.install()
    assert mine == theirs
    assert 0 < len(mine["Snapshots"]) < len(wanted)  # the tag filter left some out
    with pytest.raises(ClientError, match=r"InvalidSnapshot\.NotFound"):
        ec2.client.describe_snapshots(SnapshotIds=[*wanted, "snap-0123456789abcdef0"])
