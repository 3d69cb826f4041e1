"""Build small EC2 fleets (instances with root and data volumes, tags) on a local AWS.

Used by the demo, the end-to-end tests, the unit flow tests (in-process moto) and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# moto ships this Amazon Linux image id in every region; its root device is /dev/sda1.
DEFAULT_IMAGE_ID = "ami-03cf127a"
MOTO_ACCOUNT = "123456789012"
_DATA_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnopqrstuvwxyz"] + [
    f"/dev/xvd{a}{b}" for a in "bcd" for b in "abcdefghijklmnopqrstuvwxyz"
]


@dataclass(frozen=True)
class DataVolume:
    size: int = 10
    tags: Mapping[str, str] = field(default_factory=dict)
    encrypted: bool = False


@dataclass(frozen=True)
class FleetInstance:
    instance_id: str
    root_volume_id: str
    data_volume_ids: tuple[str, ...]
    tags: Mapping[str, str]

    @property
    def volume_ids(self) -> tuple[str, ...]:
        return (self.root_volume_id, *self.data_volume_ids)


def _tag_spec(resource: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
    if not tags:
        return []
    return [{"ResourceType": resource, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def launch_instance(
    ec2: Any,
    *,
    tags: Mapping[str, str] | None = None,
    root_tags: Mapping[str, str] | None = None,
    data_volumes: Sequence[DataVolume] = (),
    state: str = "running",
) -> FleetInstance:
    """Launch one instance, attach its data volumes, and bring it to `state`.

    `state` is running, stopped or terminated.
    """
    tags = dict(tags or {})
    reservation = ec2.run_instances(
        ImageId=DEFAULT_IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        TagSpecifications=_tag_spec("instance", tags),
    )
    raw = reservation["Instances"][0]
    instance_id = raw["InstanceId"]
    zone = raw["Placement"]["AvailabilityZone"]
    root_volume_id = raw["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    if root_tags:
        ec2.create_tags(
            Resources=[root_volume_id], Tags=[{"Key": k, "Value": v} for k, v in root_tags.items()]
        )
    data_ids = []
    for device, spec in zip(_DATA_DEVICES, data_volumes, strict=False):
        volume = ec2.create_volume(
            Size=spec.size,
            AvailabilityZone=zone,
            Encrypted=spec.encrypted,
            TagSpecifications=_tag_spec("volume", spec.tags),
        )
        ec2.attach_volume(VolumeId=volume["VolumeId"], InstanceId=instance_id, Device=device)
        data_ids.append(volume["VolumeId"])
    if state == "stopped":
        ec2.stop_instances(InstanceIds=[instance_id])
    elif state == "terminated":
        ec2.terminate_instances(InstanceIds=[instance_id])
    elif state != "running":
        raise ValueError(f"state must be running, stopped or terminated (got {state!r})")
    return FleetInstance(instance_id, root_volume_id, tuple(data_ids), tags)


def snapshots_by_volume(
    ec2: Any, tags: Mapping[str, Sequence[str]] | None = None, account: str = MOTO_ACCOUNT
) -> dict[str, list[dict[str, Any]]]:
    """Our account's snapshots grouped by source volume, optionally filtered by tag values.

    moto ignores `OwnerIds=["self"]` (it returns the public AMI snapshots too), so the owner is
    filtered explicitly.
    """
    api_filters = [{"Name": "owner-id", "Values": [account]}]
    api_filters += [{"Name": f"tag:{k}", "Values": list(v)} for k, v in (tags or {}).items()]
    grouped: dict[str, list[dict[str, Any]]] = {}
    paginator = ec2.get_paginator("describe_snapshots")
    for page in paginator.paginate(OwnerIds=["self"], Filters=api_filters):
        for snap in page["Snapshots"]:
            grouped.setdefault(snap["VolumeId"], []).append(snap)
    return grouped
