"""The full run report in S3: every instance of a fleet whose SNS message must be trimmed, the
location in the message, and a failed write that still reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from localaws.fleet import launch_instance
from snapset.handler import handler
from snapset.outcomes import InstanceOutcome
from snapset.policy import Trigger, TriggerType
from snapset.report import MAX_MESSAGE_BYTES, RunReport, S3Location, build_report, fit_message
from snapset.report_archive import REPORT_PREFIX, archive_report, report_key
from tests.unit.conftest import REPORT_BUCKET, Aws, LambdaContext
from tests.unit.test_report import failed, started

TRIGGER = Trigger(
    type=TriggerType.SCHEDULE,
    id="nightly@2026-11-27T03:00:00Z",
    time=datetime(2026, 11, 27, 3, tzinfo=UTC),
)


def _report(outcomes: list[InstanceOutcome], trigger: Trigger = TRIGGER) -> RunReport:
    return build_report("nightly", trigger, False, outcomes)


def test_the_key_groups_a_triggers_deliveries_by_policy_and_day() -> None:
    key = report_key(_report([started(1)]), "0f1e-2d3c")
    assert key == "reports/nightly/2026/11/27/nightly_2026-11-27T03_00_00Z/0f1e-2d3c.json"
    assert key.startswith(REPORT_PREFIX)


def test_hostile_trigger_and_request_ids_stay_inside_the_prefix() -> None:
    trigger = TRIGGER.model_copy(update={"id": "../../x y/%2F?#"})
    key = report_key(_report([], trigger), "../etc")
    assert key == "reports/nightly/2026/11/27/.._.._x_y__2F__/.._etc.json"
    assert key.count("/") == 6


def test_a_large_fleets_full_report_is_stored_and_the_message_points_to_it(aws: Aws) -> None:
    # Big enough that SNS's 256 KB drops the successes from the message, not from S3.
    outcomes = [started(n, volumes=4) for n in range(600)] + [failed(n) for n in range(600, 605)]
    report = _report(outcomes)
    archived = archive_report(aws.s3, REPORT_BUCKET, report, "req-1")
    assert archived.full_report == S3Location(bucket=REPORT_BUCKET, key=report_key(report, "req-1"))
    assert archived.full_report_error is None
    [stored] = aws.full_reports()
    assert RunReport.model_validate(stored) == report
    assert len(stored["instances"]) == 605
    _, message = fit_message(archived)
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    body = json.loads(message)
    assert body["trimmed"] > 0
    assert body["full_report"] == {"bucket": REPORT_BUCKET, "key": archived.full_report.key}
    assert body["summary"] == stored["summary"]
    assert sum(i["status"] == "failed" for i in body["instances"]) == 5


def test_a_failed_write_is_reported_not_raised() -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    report = _report([started(1)])
    with Stubber(s3) as stub:
        stub.add_client_error(
            "put_object",
            service_error_code="AccessDenied",
            service_message="not authorized to perform s3:PutObject",
            http_status_code=403,
        )
        archived = archive_report(s3, "snapset-reports", report, "req-1")
    assert archived.full_report is None
    assert archived.full_report_error == (
        f"s3://snapset-reports/{report_key(report, 'req-1')}: AccessDenied: "
        "not authorized to perform s3:PutObject"
    )
    assert archived.instances == report.instances


def test_the_handler_stores_the_report_it_publishes(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = [launch_instance(aws.ec2, tags={"Backup": "daily"}) for _ in range(3)]
    payload = {"policy": "nightly", "target_tags": {"Backup": ["daily"]}, "request_id": "run-7"}
    result = handler(payload, context)
    [note] = aws.messages()
    message: dict[str, Any] = json.loads(note["Message"])
    [stored] = aws.full_reports()
    key = f"reports/nightly/{datetime.now(UTC):%Y/%m/%d}/run-7/{context.aws_request_id}.json"
    assert message["full_report"] == {"bucket": REPORT_BUCKET, "key": key}
    assert result == message
    # the stored report is the published one, without the pointer to itself
    assert stored == {**message, "full_report": None}
    assert {i["instance_id"] for i in stored["instances"]} == {i.instance_id for i in instances}


def test_the_run_reports_even_when_its_report_cannot_be_stored(
    aws: Aws, context: LambdaContext
) -> None:
    launch_instance(aws.ec2, tags={"Backup": "daily"})
    aws.s3.delete_bucket(Bucket=REPORT_BUCKET)
    payload = {"policy": "nightly", "target_tags": {"Backup": ["daily"]}, "request_id": "run-8"}
    result = handler(payload, context)
    [note] = aws.messages()
    message = json.loads(note["Message"])
    assert message["status"] == result["status"] == "succeeded"
    assert message["full_report"] is None
    assert message["full_report_error"].startswith(f"s3://{REPORT_BUCKET}/reports/nightly/")
    assert "NoSuchBucket" in message["full_report_error"]
