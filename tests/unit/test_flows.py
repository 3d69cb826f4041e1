"""Whole flows through the handler on in-process moto, down to the SNS report on an SQS queue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localaws.fleet import DataVolume, launch_instance, snapshots_by_volume
from snapset.errors import InvalidInput
from snapset.handler import handler
from snapset.report import RunReport
from tests.conftest import load_event
from tests.unit.conftest import Aws, LambdaContext

REPORT_KEYS = {"schema_version", "policy", "trigger", "dry_run", "status", "summary", "instances"}
INSTANCE_KEYS = {"instance_id", "status", "snapshots", "excluded_volume_ids", "error", "reason"}
SNAPSHOT_KEYS = {"snapshot_id", "volume_id", "state", "volume_size", "encrypted"}


def only_report(aws: Aws) -> tuple[dict[str, Any], RunReport]:
    notes = aws.messages()
    assert len(notes) == 1, notes
    note = notes[0]
    body = json.loads(note["Message"])
    # The published contract: documented keys are present with their documented types.
    assert body.keys() >= REPORT_KEYS
    assert body["schema_version"] == 1
    assert {"type", "id", "time"} <= body["trigger"].keys()
    assert {"instances", "started", "skipped", "failed", "snapshots"} <= body["summary"].keys()
    for inst in body["instances"]:
        assert inst.keys() >= INSTANCE_KEYS
        for snap in inst["snapshots"]:
            assert snap.keys() >= SNAPSHOT_KEYS
    assert len(note["Subject"]) <= 100
    attrs = {k: v["Value"] for k, v in note["MessageAttributes"].items()}
    assert attrs["status"] == body["status"]
    assert attrs["policy"] == body["policy"]
    assert attrs["trigger"] == body["trigger"]["type"]
    return note, RunReport.model_validate(body)


def test_tag_targeted_fleet_with_boot_excluded_and_volume_tag_exclusion(
    aws: Aws, context: LambdaContext
) -> None:
    a = launch_instance(
        aws.ec2,
        tags={"Backup": "daily", "Name": "web-1"},
        data_volumes=[DataVolume(tags={"Role": "data"}), DataVolume(tags={"NoBackup": "true"})],
    )
    b = launch_instance(aws.ec2, tags={"Backup": "hourly"}, data_volumes=[DataVolume()])
    outsider = launch_instance(aws.ec2, tags={"Backup": "never"}, data_volumes=[DataVolume()])
    payload = {
        "policy": "nightly",
        "target_tags": {"Backup": ["daily", "hourly"]},
        "exclude_boot_volume": True,
        "exclude_data_volume_tags": {"NoBackup": ["true"]},
        "tags": {"Name": "{policy}-{instance_id}"},
        "description": "Snapset {policy} {timestamp}",
        "request_id": "run-1",
    }
    result = handler(payload, context)
    note, report = only_report(aws)
    assert result == json.loads(note["Message"])
    assert report.status == "succeeded"
    assert report.trigger.type == "manual"
    assert report.trigger.id == "run-1"
    by_id = {i.instance_id: i for i in report.instances}
    assert set(by_id) == {a.instance_id, b.instance_id}
    assert outsider.instance_id not in by_id
    assert by_id[a.instance_id].excluded_volume_ids == (a.data_volume_ids[1],)
    assert [s.volume_id for s in by_id[a.instance_id].snapshots] == [a.data_volume_ids[0]]
    assert [s.volume_id for s in by_id[b.instance_id].snapshots] == list(b.data_volume_ids)
    assert report.summary.snapshots == 2
    made = snapshots_by_volume(aws.ec2, {"snapset:policy": ["nightly"]})
    assert set(made) == {a.data_volume_ids[0], b.data_volume_ids[0]}
    snap = made[a.data_volume_ids[0]][0]
    tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
    assert tags["Name"] == f"nightly-{a.instance_id}"
    assert tags["snapset:trigger-id"] == "run-1"
    assert tags["snapset:instance-id"] == a.instance_id
    assert snap["Description"].startswith("Snapset nightly 20")


def test_stopped_terminated_unknown_and_fully_excluded_instances(
    aws: Aws, context: LambdaContext
) -> None:
    stopped = launch_instance(aws.ec2, tags={"Backup": "yes"}, state="stopped")
    gone = launch_instance(aws.ec2, tags={"Backup": "yes"}, state="terminated")
    bare = launch_instance(aws.ec2, tags={"Backup": "yes"}, data_volumes=[DataVolume()])
    unknown = "i-0000000000000dead"
    payload = {
        "policy": "mixed",
        "target_tags": {"Backup": ["yes"]},
        "instance_ids": [unknown, bare.instance_id],
        "exclude_data_volume_ids": list(bare.data_volume_ids),
    }
    handler(payload, context)
    note, report = only_report(aws)
    by_id = {i.instance_id: i for i in report.instances}
    assert by_id[stopped.instance_id].status == "started"  # stopped instances can be snapshotted
    assert by_id[gone.instance_id].status == "skipped"
    assert by_id[gone.instance_id].reason == "instance is terminated"
    assert by_id[unknown].status == "failed"
    assert by_id[unknown].error is not None
    assert by_id[unknown].error.code == "InvalidInstanceID.NotFound"
    assert unknown in by_id[unknown].error.message
    # bare's only data volume is excluded, its root is kept
    assert [s.volume_id for s in by_id[bare.instance_id].snapshots] == [bare.root_volume_id]
    assert report.status == "partial"
    assert report.summary.failed == 1
    assert "partial" in note["Subject"]


def test_all_volumes_excluded_is_skipped(aws: Aws, context: LambdaContext) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "yes"}, data_volumes=[DataVolume()])
    handler(
        {
            "policy": "p",
            "instance_ids": [inst.instance_id],
            "exclude_boot_volume": True,
            "exclude_data_volume_ids": list(inst.data_volume_ids),
        },
        context,
    )
    _, report = only_report(aws)
    (outcome,) = report.instances
    assert outcome.status == "skipped"
    assert outcome.reason is not None
    assert outcome.reason.startswith("nothing to snapshot")
    assert snapshots_by_volume(aws.ec2) == {}


def test_instance_event_for_a_target_snapshots_it(aws: Aws, context: LambdaContext) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "on-stop"}, data_volumes=[DataVolume()])
    event = load_event("ec2-instance-state-change")
    event["detail"]["instance-id"] = inst.instance_id
    policy = {"policy": "on-stop", "target_tags": {"Backup": ["on-stop"]}}
    handler({"policy": policy, "event": event}, context)
    _, report = only_report(aws)
    assert report.trigger.type == "instance_event"
    assert report.trigger.id == event["id"]
    assert [i.instance_id for i in report.instances] == [inst.instance_id]
    assert report.summary.snapshots == 2


def test_instance_event_for_an_outsider_is_ignored_silently(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "nope"})
    event = load_event("ec2-instance-state-change")
    event["detail"]["instance-id"] = inst.instance_id
    result = handler(
        {"policy": {"policy": "on-stop", "target_tags": {"Backup": ["on-stop"]}}, "event": event},
        context,
    )
    assert result["status"] == "ignored"
    assert aws.messages() == []
    assert snapshots_by_volume(aws.ec2) == {}


def test_dry_run_creates_nothing(aws: Aws, context: LambdaContext) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "yes"})
    handler({"policy": "p", "instance_ids": [inst.instance_id], "dry_run": True}, context)
    _, report = only_report(aws)
    assert report.dry_run is True
    assert report.status == "dry_run"
    assert report.instances[0].status == "dry_run_ok"
    assert snapshots_by_volume(aws.ec2) == {}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"policy": "p"}, "instance_ids and/or target_tags"),
        ({"policy": "p", "instance_ids": ["web-1"]}, "instance_ids.0"),
        ({"policy": "p", "instance_ids": ["i-12345678"], "dry_run": "no"}, "dry_run"),
        ({"policy": "p", "instance_ids": ["i-12345678"], "tags": {"aws:x": "1"}}, "reserved"),
        ({"policy": "p", "instance_ids": ["i-12345678"], "colour": "red"}, "colour"),
        ({"policy": "p", "instance_ids": ["i-12345678"], "description": "{when}"}, "{when}"),
    ],
)
def test_invalid_manual_payload_publishes_a_failure_report_naming_the_field(
    aws: Aws, context: LambdaContext, payload: dict[str, Any], field: str
) -> None:
    inst = launch_instance(aws.ec2)
    result = handler(payload, context)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "InvalidInput"
    assert field in result["error"]["message"]
    # nothing ran, dry or not: a subscriber routing dry runs elsewhere still gets the failure
    assert result["dry_run"] is False
    _, report = only_report(aws)
    assert report.error is not None
    assert field in report.error.message
    assert snapshots_by_volume(aws.ec2) == {}
    # nothing was even looked at: the report lists no instance, the existing one included
    assert report.instances == ()
    assert inst.instance_id not in json.dumps(result)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "input must be a JSON object, got list"),
        ("snapshot please", "input must be a JSON object, got str"),
        ({"instance_ids": ["i-12345678"]}, "invalid manual payload: policy: Field required"),
        (load_event("ec2-instance-state-change"), "state-change event arrived without its policy"),
        (
            {"detail-type": "Something Else", "source": "aws.ec2", "detail": {}},
            "unsupported event detail-type 'Something Else'",
        ),
    ],
)
def test_input_naming_no_policy_fails_the_invocation(
    aws: Aws, context: LambdaContext, event: Any, message: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        handler(event, context)
    assert message in raised.value.message
    assert aws.messages() == []
