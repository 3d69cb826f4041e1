"""The instances a policy targets: DescribeInstances, one call per page, and the local match an
instance event is checked with (which must agree with EC2's tag filters).

Every function takes its boto3 client as an argument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapset.errors import INSTANCE_NOT_FOUND
from snapset.outcomes import InstanceOutcome
from snapset.policy import SnapshotPolicy

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef

# EC2 accepts at most 200 values in one filter.
FILTER_VALUES_PER_CALL = 200
UNSNAPSHOTTABLE_STATES = {"terminated", "shutting-down"}


@dataclass(frozen=True)
class AttachedVolume:
    volume_id: str
    device_name: str
    is_root: bool


@dataclass(frozen=True)
class Instance:
    """What the engine needs to know of an instance, from DescribeInstances."""

    instance_id: str
    state: str
    tags: dict[str, str]
    volumes: tuple[AttachedVolume, ...]
    outpost_arn: str | None = None

    @classmethod
    def from_api(cls, raw: Any) -> Instance:
        root_device = raw.get("RootDeviceName")
        volumes = tuple(
            AttachedVolume(
                volume_id=m["Ebs"]["VolumeId"],
                device_name=m["DeviceName"],
                is_root=m["DeviceName"] == root_device,
            )
            for m in raw.get("BlockDeviceMappings", [])
            if "Ebs" in m and "VolumeId" in m["Ebs"]
        )
        return cls(
            instance_id=raw["InstanceId"],
            state=raw.get("State", {}).get("Name", "unknown"),
            tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
            volumes=volumes,
            outpost_arn=raw.get("OutpostArn"),
        )


@dataclass(frozen=True)
class Targets:
    """Instances found for a policy, and failures for requested IDs that do not exist."""

    instances: list[Instance]
    missing: list[InstanceOutcome] = field(default_factory=list)


def _describe(ec2: EC2Client, filters: Sequence[FilterTypeDef]) -> Iterable[Instance]:
    paginator = ec2.get_paginator("describe_instances")
    for page in paginator.paginate(Filters=list(filters), PaginationConfig={"PageSize": 1000}):
        for reservation in page.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                yield Instance.from_api(raw)


def tag_filters(tags: dict[str, list[str]]) -> list[FilterTypeDef]:
    return [{"Name": f"tag:{key}", "Values": list(values)} for key, values in tags.items()]


def find_targets(ec2: EC2Client, policy: SnapshotPolicy) -> Targets:
    """Resolve a policy's targets with DescribeInstances, one call per page.

    Targets are the union of `instance_ids` and instances matching every `target_tags` key. An ID
    that does not exist becomes a failed outcome (InvalidInstanceID.NotFound); filtering by
    `instance-id` instead of passing InstanceIds keeps one unknown ID from failing the whole call.
    """
    by_id = describe_instances(ec2, policy.instance_ids)
    found = {i.instance_id: i for i in by_id.instances}
    if policy.target_tags:
        for inst in _describe(ec2, tag_filters(policy.target_tags)):
            found[inst.instance_id] = inst
    return Targets(
        instances=sorted(found.values(), key=lambda i: i.instance_id), missing=by_id.missing
    )


def describe_instances(ec2: EC2Client, instance_ids: Sequence[str]) -> Targets:
    """Describe instances by id, `FILTER_VALUES_PER_CALL` ids per call; an id that does not
    exist is a failed outcome (InvalidInstanceID.NotFound), the others are unaffected."""
    found: dict[str, Instance] = {}
    ids = list(instance_ids)
    for start in range(0, len(ids), FILTER_VALUES_PER_CALL):
        chunk = ids[start : start + FILTER_VALUES_PER_CALL]
        for inst in _describe(ec2, [{"Name": "instance-id", "Values": chunk}]):
            found[inst.instance_id] = inst
    missing = [
        InstanceOutcome.failed(
            i, INSTANCE_NOT_FOUND, f"{i}: no such instance in this account and region"
        )
        for i in ids
        if i not in found
    ]
    return Targets(instances=sorted(found.values(), key=lambda i: i.instance_id), missing=missing)


def describe_instance(ec2: EC2Client, instance_id: str) -> Instance | None:
    """Describe one instance (for an instance event); None when it does not exist."""
    for inst in _describe(ec2, [{"Name": "instance-id", "Values": [instance_id]}]):
        return inst
    return None


def ec2_filter_match(value: str, pattern: str) -> bool:
    """Match a value as an EC2 filter would: `*` any run, `?` one character, `\\` escapes."""
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.fullmatch("".join(parts), value, re.DOTALL) is not None


def _tags_match(tags: dict[str, str], wanted: dict[str, list[str]]) -> bool:
    # An instance event is checked locally; it must agree with the schedule's EC2 tag filters.
    return all(
        key in tags and any(ec2_filter_match(tags[key], pattern) for pattern in patterns)
        for key, patterns in wanted.items()
    )


def matches_policy(instance: Instance, policy: SnapshotPolicy) -> bool:
    """Whether a policy targets this instance (by ID, or by carrying all its target tags)."""
    if instance.instance_id in policy.instance_ids:
        return True
    return bool(policy.target_tags) and _tags_match(instance.tags, policy.target_tags)
