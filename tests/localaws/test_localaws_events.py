"""EventBridge events emitted when CreateSnapshots snapshots complete, checked against the
documented shapes copied into tests/fixtures/events/."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from localaws_testlib import Instance, load_event_fixture

from localaws import LocalAws

MULTI = "EBS Multi-Volume Snapshots Completion Status"
SINGLE = "EBS Snapshot Notification"
SNAPSHOT_ARN = re.compile(r"^arn:aws:ec2::us-east-1:snapshot/(snap-[0-9a-f]+)$")
VOLUME_ARN = re.compile(r"^arn:aws:ec2::us-east-1:volume/(vol-[0-9a-f]+)$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _shape(value: Any) -> Any:
    """Keys and value types, recursively (lists: the shape of their first item)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _snapshot(ec2: Any, inst: Instance, **kwargs: Any) -> dict[str, str]:
    """CreateSnapshots; returns {snapshot_id: volume_id}."""
    response = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id}, **kwargs
    )
    return {s["SnapshotId"]: s["VolumeId"] for s in response["Snapshots"]}


def test_succeeded_event_matches_the_documented_shape(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    aws.set_snapshot_delay(None)
    inst = make_instance()
    created = _snapshot(ec2, inst)
    assert aws.drain_events() == []  # nothing before completion
    aws.complete_snapshots()

    events = aws.drain_events()
    assert len(events) == 1
    event = events[0]
    fixture = load_event_fixture("ebs-multi-volume-completion-succeeded")
    assert _shape(event) == _shape(fixture)
    assert event["detail-type"] == MULTI
    assert event["source"] == "aws.ec2"
    assert event["version"] == "0"
    assert event["region"] == "us-east-1"
    assert event["account"] == "123456789012"
    assert UUID.match(event["id"])
    assert TIME.match(event["time"])

    detail = event["detail"]
    assert detail["event"] == "createSnapshots"
    assert detail["result"] == "succeeded"
    assert detail["cause"] == ""
    assert detail["request-id"] == ""
    assert MILLIS.match(detail["startTime"])
    assert MILLIS.match(detail["endTime"])
    assert detail["startTime"] <= detail["endTime"]

    resource_ids = [SNAPSHOT_ARN.match(arn).group(1) for arn in event["resources"]]  # type: ignore[union-attr]
    assert sorted(resource_ids) == sorted(created)
    pairs = {}
    for entry in detail["snapshots"]:
        snap = SNAPSHOT_ARN.match(entry["snapshot_id"])
        vol = VOLUME_ARN.match(entry["source"])
        assert snap
        assert vol
        assert entry["status"] == "completed"
        pairs[snap.group(1)] = vol.group(1)
    assert pairs == created
    assert aws.drain_events() == []  # drained


def test_events_without_drain_are_kept(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    aws.set_snapshot_delay(None)
    _snapshot(ec2, make_instance())
    aws.complete_snapshots()
    assert len(aws.events()) == 1
    assert len(aws.events()) == 1
    assert len(aws.drain_events()) == 1
    assert aws.events() == []


def test_event_emitted_by_the_timer(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    created = _snapshot(ec2, make_instance())
    deadline = time.monotonic() + 5
    events: list[dict[str, Any]] = []
    while not events and time.monotonic() < deadline:
        time.sleep(0.1)
        events = aws.events()
    assert [e["detail-type"] for e in events] == [MULTI]
    assert len(events[0]["resources"]) == len(created)


def test_failed_volume(aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]) -> None:
    aws.set_snapshot_delay(None)
    inst = make_instance()
    bad = inst.data_volume_ids[1]
    aws.set_faults(snapshot_error_volumes=[bad])
    created = _snapshot(ec2, inst)
    bad_snap = next(s for s, v in created.items() if v == bad)
    aws.complete_snapshots()

    states = {
        s["SnapshotId"]: s["State"]
        for s in ec2.describe_snapshots(SnapshotIds=list(created))["Snapshots"]
    }
    assert states == {s: ("error" if s == bad_snap else "completed") for s in created}

    events = aws.drain_events()
    by_type = {e["detail-type"]: e for e in events}
    assert sorted(by_type) == [MULTI, SINGLE]

    multi = by_type[MULTI]
    assert _shape(multi) == _shape(load_event_fixture("ebs-multi-volume-completion-failed"))
    assert multi["detail"]["result"] == "failed"
    assert bad_snap in multi["detail"]["cause"]
    statuses = {
        SNAPSHOT_ARN.match(e["snapshot_id"]).group(1): e["status"]  # type: ignore[union-attr]
        for e in multi["detail"]["snapshots"]
    }
    assert statuses == {s: ("error" if s == bad_snap else "completed") for s in created}

    single = by_type[SINGLE]
    assert _shape(single) == _shape(load_event_fixture("ebs-snapshot-notification-failed"))
    assert single["detail"]["event"] == "createSnapshot"
    assert single["detail"]["result"] == "failed"
    assert single["detail"]["snapshot_id"] == f"arn:aws:ec2::us-east-1:snapshot/{bad_snap}"
    assert single["detail"]["source"] == f"arn:aws:ec2::us-east-1:volume/{bad}"
    assert single["resources"] == [single["detail"]["snapshot_id"]]
    assert single["detail"]["cause"]


def test_events_reach_moto_default_event_bus(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    aws.set_snapshot_delay(None)
    sqs, events = aws.client("sqs"), aws.client("events")
    queue_url = sqs.create_queue(QueueName="snapshot-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name="ebs-completion",
        EventPattern=json.dumps({"source": ["aws.ec2"], "detail-type": [MULTI]}),
    )
    events.put_targets(Rule="ebs-completion", Targets=[{"Id": "q", "Arn": queue_arn}])

    created = _snapshot(ec2, make_instance())
    aws.complete_snapshots()

    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    delivered = json.loads(messages[0]["Body"])
    assert delivered["detail-type"] == MULTI
    assert delivered["account"] == "123456789012"  # moto alone drops it from the envelope
    assert delivered["source"] == "aws.ec2"
    assert delivered["detail"]["result"] == "succeeded"
    assert len(delivered["resources"]) == len(created)


def test_reset_drops_events_and_pending_snapshots(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    aws.set_snapshot_delay(None)
    _snapshot(ec2, make_instance())
    aws.reset()
    assert aws.complete_snapshots() == []
    assert aws.events() == []
