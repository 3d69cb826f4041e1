"""Helpers shared by the end-to-end tests (a uniquely named module: `conftest` is ambiguous)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from localaws import LocalAws
from localaws.fleet import DataVolume, FleetInstance, launch_instance
from localaws.router import Router

ACCOUNT = "123456789012"
SCHEDULED_TAGS = {"Backup": "nightly", "Environment": "prod"}  # cdk.json: nightly-app
STOP_TAGS = {"SnapshotOnStop": "true"}  # cdk.json: on-stop
_TIMES = itertools.count()


def unique_time() -> datetime:
    """A distinct scheduled time per call: distinct trigger ids across tests."""
    return datetime(2026, 1, 1, 2, 30, tzinfo=UTC) + timedelta(minutes=next(_TIMES))


@dataclass
class Fleet:
    ec2: Any
    instances: list[FleetInstance] = field(default_factory=list)

    def launch(
        self,
        tags: Mapping[str, str],
        data: Sequence[Mapping[str, str]] = ({"Disk": "data"},),
        state: str = "running",
    ) -> FleetInstance:
        instance = launch_instance(
            self.ec2,
            tags=tags,
            data_volumes=[DataVolume(tags=dict(t)) for t in data],
            state=state,
        )
        self.instances.append(instance)
        return instance

    def launch_many(self, count: int, tags: Mapping[str, str]) -> list[str]:
        """`count` instances with a root volume only, in one RunInstances call."""
        reservation = self.ec2.run_instances(
            ImageId="ami-03cf127a",
            MinCount=count,
            MaxCount=count,
            InstanceType="t3.micro",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )
        ids = [i["InstanceId"] for i in reservation["Instances"]]
        self.instances += [FleetInstance(i, "", (), dict(tags)) for i in ids]
        return ids

    def untag(self) -> None:
        ids = [i.instance_id for i in self.instances]
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            keys = {
                t["Key"]
                for r in self.ec2.describe_instances(InstanceIds=chunk)["Reservations"]
                for i in r["Instances"]
                for t in i.get("Tags", [])
            }
            if keys:
                self.ec2.delete_tags(Resources=chunk, Tags=[{"Key": k} for k in keys])


def snapshots_of(ec2: Any, trigger_id: str | None = None, **tags: str) -> list[dict[str, Any]]:
    """Our snapshots, optionally of one trigger id and with tag values."""
    filters = [{"Name": "owner-id", "Values": [ACCOUNT]}]
    if trigger_id is not None:
        filters.append({"Name": "tag:snapset:trigger-id", "Values": [trigger_id]})
    filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    out: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_snapshots").paginate(Filters=filters):
        out += page["Snapshots"]
    return out


def tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def ids_of(ec2: Any, trigger_id: str) -> set[str]:
    return {s["SnapshotId"] for s in snapshots_of(ec2, trigger_id)}


def nightly_history(
    local_aws: LocalAws, router: Router, ec2: Any, days: list[int]
) -> list[tuple[str, set[str]]]:
    """One completed nightly set per entry of `days`, backdated that many days."""
    history = []
    for age in days:
        when = unique_time()
        router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()
        trigger_id = f"nightly-app@{when:%Y-%m-%dT%H:%M:%SZ}"
        snapshot_ids = ids_of(ec2, trigger_id)
        local_aws.complete_snapshots()
        local_aws.set_snapshot_start_times(
            sorted(snapshot_ids), datetime.now(UTC) - timedelta(days=age)
        )
        history.append((trigger_id, snapshot_ids))
    return history
