"""In-process moto for retention tests, with what moto lacks added through moto's own classes.

moto (5.2) has no DescribeLockedSnapshots, no `block-device-mapping.snapshot-id` filter on
DescribeImages, and RegisterImage ignores BlockDeviceMappings (it makes its own snapshot). The
`aws` fixture adds the first two for the duration of a test (monkeypatch), and `Aws.register_ami`
points a registered image at an existing snapshot as AWS would, so DeleteSnapshot on it also
fails with moto's own InvalidSnapshot.InUse.

Snapshot sets are built with CreateSnapshot + TagSpecifications and their StartTime and state set
on moto's backend objects, since history spreads over days. This works whether or not the local
AWS's faithful CreateSnapshots (tests/unit) is installed in the same session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from localaws.fleet import MOTO_ACCOUNT, DataVolume, FleetInstance, launch_instance
from snapset.policy import TAG_INSTANCE_ID, TAG_POLICY, TAG_TRIGGER_ID

REGION = "us-east-1"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BDM_SNAPSHOT_FILTER = "block-device-mapping.snapshot-id"


def managed_tags(policy: str, trigger_id: str, instance_id: str) -> dict[str, str]:
    return {TAG_POLICY: policy, TAG_TRIGGER_ID: trigger_id, TAG_INSTANCE_ID: instance_id}


@dataclass
class Aws:
    ec2: Any
    backend: Any
    # snapshot id -> lock state, served by the DescribeLockedSnapshots shim
    locks: dict[str, str] = field(default_factory=dict)

    def snapshot(
        self,
        volume_id: str,
        tags: dict[str, str],
        *,
        days_ago: float = 0,
        state: str = "completed",
    ) -> str:
        """One snapshot with exactly these tags, started `days_ago` before NOW, in `state`."""
        kwargs: dict[str, Any] = {"VolumeId": volume_id}
        if tags:
            kwargs["TagSpecifications"] = [
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
        sid: str = self.ec2.create_snapshot(**kwargs)["SnapshotId"]
        snap = self.backend.snapshots[sid]
        snap.start_time = NOW - timedelta(days=days_ago)
        snap.status = state
        snap.localaws_progress = "100%" if state == "completed" else "0%"
        return sid

    def snapshot_set(
        self,
        instance: FleetInstance,
        policy: str,
        trigger_id: str,
        *,
        days_ago: float,
        states: Sequence[str] = (),
    ) -> list[str]:
        """A set as CreateSnapshots makes it: one snapshot per volume, one StartTime, our tags.

        `states` gives each volume's snapshot state (default: all completed).
        """
        tags = managed_tags(policy, trigger_id, instance.instance_id)
        return [
            self.snapshot(
                vid, tags, days_ago=days_ago, state=states[i] if i < len(states) else "completed"
            )
            for i, vid in enumerate(instance.volume_ids)
        ]

    def register_ami(self, snapshot_id: str) -> str:
        image_id: str = self.ec2.register_image(
            Name=f"from-{snapshot_id}",
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot_id}}],
        )["ImageId"]
        ami = self.backend.amis[image_id]
        self.backend.snapshots.pop(ami.ebs_snapshot.id, None)  # moto's own stand-in snapshot
        ami.ebs_snapshot = self.backend.snapshots[snapshot_id]
        ami.ebs_snapshot.from_ami = image_id
        return image_id

    def existing(self) -> set[str]:
        return set(self.backend.snapshots)


def _describe_locked_snapshots(self: Any) -> ActionResult:
    locks: dict[str, str] = getattr(self.ec2_backend, "retention_test_locks", {})
    ids = self._get_param("SnapshotIds", []) or list(locks)
    return ActionResult(
        {
            "Snapshots": [
                {
                    "OwnerId": self.ec2_backend.account_id,
                    "SnapshotId": sid,
                    "LockState": locks[sid],
                    "LockDuration": 1,
                }
                for sid in ids
                if sid in locks
            ]
        }
    )


_moto_ami_filter = Ami.get_filter_value


def _ami_filter_value(self: Any, filter_name: str, method_name: str | None = None) -> Any:
    if filter_name == BDM_SNAPSHOT_FILTER:
        return [m["Ebs"]["SnapshotId"] for m in self.block_device_mappings if "Ebs" in m]
    return _moto_ami_filter(self, filter_name, method_name)


@pytest.fixture
def aws(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """A fresh in-process moto with the shims above.

    moto's default public AMIs (and their snapshots, owned by other accounts) take seconds to
    load per test; they are left out unless a test asks with `indirect` parameter True.
    """
    if not getattr(request, "param", False):
        monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.setattr(
        ElasticBlockStore, "describe_locked_snapshots", _describe_locked_snapshots, raising=False
    )
    monkeypatch.setattr(Ami, "get_filter_value", _ami_filter_value)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        backend = ec2_backends[MOTO_ACCOUNT][REGION]
        world = Aws(ec2, backend)
        setattr(backend, "retention_test_locks", world.locks)  # noqa: B010
        yield world


@pytest.fixture
def instances(aws: Aws) -> list[FleetInstance]:
    """Three instances with a root and one data volume each."""
    return [launch_instance(aws.ec2, data_volumes=[DataVolume()]) for _ in range(3)]
