"""End to end through the deployed template: triggers reach the handler as AWS would send them."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from e2e_support import (
    ACCOUNT,
    SCHEDULED_TAGS,
    STOP_TAGS,
    Fleet,
    snapshots_of,
    tags_of,
    unique_time,
)

from localaws import LocalAws
from localaws.deploy import Deployment
from localaws.report_inbox import ReportInbox
from localaws.router import Router, instance_state_change_event

pytestmark = pytest.mark.e2e


def stop_event(aws: LocalAws, ec2: Any, instance_id: str) -> dict[str, Any]:
    ec2.stop_instances(InstanceIds=[instance_id])
    return instance_state_change_event(instance_id, "stopped", account=ACCOUNT, region=aws.region)


def test_schedule_snapshots_the_policy_targets_and_reports(
    router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    app = fleet.launch({**SCHEDULED_TAGS, "Name": "app"}, data=[{"Disk": "data", "App": "web"}])
    stopped = fleet.launch(SCHEDULED_TAGS, state="stopped")
    other = fleet.launch({"Backup": "nightly", "Environment": "dev"})
    when = unique_time()

    result = router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()

    trigger_id = f"nightly-app@{when:%Y-%m-%dT%H:%M:%SZ}"
    assert result["trigger"] == {
        "type": "schedule",
        "id": trigger_id,
        "time": f"{when:%Y-%m-%dT%H:%M:%SZ}",
    }
    assert result["status"] == "succeeded"
    assert {o["instance_id"] for o in result["instances"]} == {app.instance_id, stopped.instance_id}
    snaps = snapshots_of(ec2, trigger_id)
    # exclude_boot_volume: only the data volumes, one set per instance
    assert sorted(s["VolumeId"] for s in snaps) == sorted(
        app.data_volume_ids + stopped.data_volume_ids
    )
    app_snap = next(s for s in snaps if s["VolumeId"] == app.data_volume_ids[0])
    assert tags_of(app_snap) == {
        "Disk": "data",
        "App": "web",
        "CostCenter": "platform",
        "CreatedBy": "snapset-schedule",
        "snapset:policy": "nightly-app",
        "snapset:trigger-id": trigger_id,
        "snapset:instance-id": app.instance_id,
        "snapset:consistency": "crash",
    }
    assert app_snap["Description"] == f"Snapset nightly-app nightly set of {app.instance_id}"
    assert not set(other.volume_ids) & {s["VolumeId"] for s in snapshots_of(ec2)}
    (report,) = inbox.drain()
    assert (report.kind, report.status) == ("run", "succeeded")
    assert report.subject == "Snapset nightly-app: succeeded - 2 started, 0 skipped, 0 failed of 2"
    assert report.message["trigger"]["id"] == trigger_id
    assert report.attributes == {
        "status": "succeeded",
        "policy": "nightly-app",
        "trigger": "schedule",
        "kind": "run",
    }


def test_the_full_report_in_s3_is_the_published_one(
    local_aws: LocalAws,
    deployment: Deployment,
    router: Router,
    fleet: Fleet,
    inbox: ReportInbox,
) -> None:
    """Written by the function's own role (IAM enforced), where the message says, under the
    deployed bucket's report prefix, and the same report the SNS message carries."""
    launched = fleet.launch_many(3, SCHEDULED_TAGS)
    when = unique_time()
    result = router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()
    (report,) = inbox.drain()
    location = report.message["full_report"]
    assert report.message["full_report_error"] is None
    bucket = deployment.outputs["ReportBucket"]
    assert location["bucket"] == bucket
    day, trigger = f"{when:%Y/%m/%d}", f"nightly-app_{when:%Y-%m-%dT%H_%M_%SZ}"
    assert location["key"].startswith(f"reports/nightly-app/{day}/{trigger}/")
    assert result == report.message
    s3 = local_aws.client("s3")
    stored = json.loads(s3.get_object(Bucket=bucket, Key=location["key"])["Body"].read())
    assert stored == {**report.message, "full_report": None}
    assert {i["instance_id"] for i in stored["instances"]} == set(launched)
    # encrypted with the deployed report key, as the bucket's default says
    head = s3.head_object(Bucket=bucket, Key=location["key"])
    assert head["ServerSideEncryption"] == "aws:kms"
    # the function's role writes reports and nothing else: not outside the prefix, no reads
    credentials = {f"aws_{k}": v for k, v in router.function_credentials().items()}
    as_function = boto3.client(
        "s3", endpoint_url=local_aws.endpoint_url, region_name=local_aws.region, **credentials
    )
    with pytest.raises(ClientError, match="AccessDenied"):
        as_function.put_object(Bucket=bucket, Key="elsewhere/report.json", Body=b"{}")
    with pytest.raises(ClientError, match="AccessDenied"):
        as_function.get_object(Bucket=bucket, Key=location["key"])


def test_stop_event_snapshots_the_instance_and_reports(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    db = fleet.launch({**STOP_TAGS, "Name": "db"}, data=[{"Disk": "a"}, {"Disk": "b"}])
    event = stop_event(local_aws, ec2, db.instance_id)

    (invocation,) = router.route_event(event)

    assert "InstanceRule1onstop" in invocation.source
    result = invocation.unwrap()
    assert result["trigger"]["type"] == "instance_event"
    assert result["trigger"]["id"] == event["id"]
    snaps = snapshots_of(ec2, event["id"])
    assert sorted(s["VolumeId"] for s in snaps) == sorted(db.volume_ids)  # root included
    assert len({s["StartTime"] for s in snaps}) == 1
    (report,) = inbox.drain()
    assert (report.kind, report.status, report.attributes["trigger"]) == (
        "run",
        "succeeded",
        "instance_event",
    )


def test_event_for_an_instance_outside_the_policy_does_nothing(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    outsider = fleet.launch({"Name": "outsider"})
    event = stop_event(local_aws, ec2, outsider.instance_id)

    (invocation,) = router.route_event(event)  # the rule matches on state; the handler decides

    assert invocation.unwrap() == {
        "status": "ignored",
        "instance_id": outsider.instance_id,
        "reason": "instance is not a target of policy 'on-stop'",
    }
    assert snapshots_of(ec2, event["id"]) == []
    assert not set(outsider.volume_ids) & {s["VolumeId"] for s in snapshots_of(ec2)}
    assert inbox.drain() == []


def test_manual_invoke_runs_with_the_deployed_functions_environment(
    local_aws: LocalAws,
    deployment: Deployment,
    router: Router,
    fleet: Fleet,
    inbox: ReportInbox,
    ec2: Any,
) -> None:
    target = fleet.launch({"Name": "manual"}, data=[{"Disk": "keep"}, {"Skip": "yes"}])
    payload = {
        "policy": "adhoc",
        "instance_ids": [target.instance_id],
        "exclude_data_volume_tags": {"Skip": ["yes"]},
        "request_id": "e2e-manual-1",
    }

    result = router.invoke(payload).unwrap()

    assert result["trigger"]["id"] == "e2e-manual-1"
    snaps = snapshots_of(ec2, "e2e-manual-1")
    assert sorted(s["VolumeId"] for s in snaps) == sorted(
        [target.root_volume_id, target.data_volume_ids[0]]
    )
    # the report went to the deployed topic (SNAPSET_TOPIC_ARN of the deployed function) ...
    (report,) = inbox.drain()
    assert report.topic_arn == deployment.topic_arn
    assert report.attributes["trigger"] == "manual"
    # ... and the set was recorded in the deployed idempotency table (SNAPSET_IDEMPOTENCY_TABLE)
    env = router.function_environment()
    assert env["SNAPSET_IDEMPOTENCY_TABLE"] == deployment.idempotency_table
    items = local_aws.client("dynamodb").scan(TableName=deployment.idempotency_table)["Items"]
    assert any(
        target.instance_id in json.dumps(item) and item.get("status", {}).get("S") == "COMPLETED"
        for item in items
    )


def test_dry_run_creates_nothing(
    router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    target = fleet.launch({"Name": "dry"})
    payload = {"policy": "dry", "instance_ids": [target.instance_id], "dry_run": True}

    result = router.invoke(payload).unwrap()

    assert result["status"] == "dry_run"
    assert [o["status"] for o in result["instances"]] == ["dry_run_ok"]
    assert not set(target.volume_ids) & {s["VolumeId"] for s in snapshots_of(ec2)}
    (report,) = inbox.drain()
    assert report.status == "dry_run"


def test_completion_event_gives_a_completion_report(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    app = fleet.launch(SCHEDULED_TAGS, data=[{"Disk": "a"}, {"Disk": "b"}])
    when = unique_time()
    router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()
    inbox.drain()

    completed = local_aws.complete_snapshots()
    (invocation,) = router.route_emitted_events()

    assert "CompletionRule" in invocation.source
    assert invocation.payload["detail-type"] == "EBS Multi-Volume Snapshots Completion Status"
    result = invocation.unwrap()
    assert result["kind"] == "completion"
    (completion,) = result["reports"]
    assert completion["instance_id"] == app.instance_id
    assert completion["trigger"]["id"] == f"nightly-app@{when:%Y-%m-%dT%H:%M:%SZ}"
    assert sorted(completed) == sorted(
        s["SnapshotId"] for s in snapshots_of(ec2, completion["trigger"]["id"])
    )
    (report,) = inbox.drain()
    assert (report.kind, report.status) == ("completion", "succeeded")
    assert report.message["kind"] == "completion"
