"""In-process moto for retention tests, with the local AWS's snapshot locks and AMI mappings.

moto (5.2) has no DescribeLockedSnapshots, no `block-device-mapping.snapshot-id` filter on
DescribeImages, and RegisterImage ignores BlockDeviceMappings. `localaws.ec2_images.install`
(installed at import, as tests/unit installs the faithful CreateSnapshots) adds them through
moto's own classes: locks are made with LockSnapshot, and an image registered on a snapshot
makes DeleteSnapshot fail with InvalidSnapshot.InUse, as on AWS.

Snapshot sets are built with CreateSnapshot + TagSpecifications and their StartTime and state set
on moto's backend objects, since history spreads over days. This works whether or not the local
AWS's faithful CreateSnapshots (tests/unit) is installed in the same session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.ec2.models import ec2_backends

from localaws.ec2_images import install, snapshot_lock
from localaws.fleet import MOTO_ACCOUNT, DataVolume, FleetInstance, launch_instance
from snapset.policy import TAG_INSTANCE_ID, TAG_POLICY, TAG_TRIGGER_ID

REGION = "us-east-1"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
# LockSnapshot arguments per lock state ("expired": locked, then aged on the backend).
LOCK_ARGS: dict[str, dict[str, Any]] = {
    "governance": {"LockMode": "governance", "LockDuration": 1},
    "compliance": {"LockMode": "compliance", "LockDuration": 1},
    "compliance-cooloff": {"LockMode": "compliance", "LockDuration": 1, "CoolOffPeriod": 1},
    "expired": {"LockMode": "governance", "LockDuration": 1},
}

install()


def managed_tags(policy: str, trigger_id: str, instance_id: str) -> dict[str, str]:
    return {TAG_POLICY: policy, TAG_TRIGGER_ID: trigger_id, TAG_INSTANCE_ID: instance_id}


@dataclass
class Locks:
    """`locks[snapshot_id] = state` locks the snapshot with LockSnapshot into that state."""

    ec2: Any
    backend: Any

    def __setitem__(self, snapshot_id: str, state: str) -> None:
        self.ec2.lock_snapshot(SnapshotId=snapshot_id, **LOCK_ARGS[state])
        if state == "expired":
            lock = snapshot_lock(self.backend.snapshots[snapshot_id])
            assert lock is not None
            assert lock.duration_start is not None
            lock.created_on -= timedelta(days=2)
            lock.duration_start -= timedelta(days=2)
        [info] = self.ec2.describe_locked_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        assert info["LockState"] == state


@dataclass
class Aws:
    ec2: Any
    backend: Any
    locks: Locks = field(init=False)

    def __post_init__(self) -> None:
        self.locks = Locks(self.ec2, self.backend)

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
        return image_id

    def existing(self) -> set[str]:
        return set(self.backend.snapshots)


@pytest.fixture
def aws(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """A fresh in-process moto (with the local AWS's patches installed above).

    moto's default public AMIs (and their snapshots, owned by other accounts) take seconds to
    load per test; they are left out unless a test asks with `indirect` parameter True.
    """
    load_amis = bool(getattr(request, "param", False))
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "true" if load_amis else "false")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        backend = ec2_backends[MOTO_ACCOUNT][REGION]
        yield Aws(ec2, backend)


@pytest.fixture
def instances(aws: Aws) -> list[FleetInstance]:
    """Three instances with a root and one data volume each."""
    return [launch_instance(aws.ec2, data_volumes=[DataVolume()]) for _ in range(3)]


@pytest.fixture
def retention_log() -> Iterator[list[logging.LogRecord]]:
    """What retention and its protection checks log for operators, read from their own loggers
    (whatever the handler's Powertools logger does to propagation), in order."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    loggers = [logging.getLogger(f"snapset.{name}") for name in ("retention", "protections")]
    keep, levels = Keep(), [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.setLevel(logging.DEBUG)
    yield records
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(keep)
        logger.setLevel(level)


def logged(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records]
