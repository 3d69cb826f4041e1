"""Optional settings reach the template: Outpost grants, subscriptions, concurrency, layer."""

from __future__ import annotations

from typing import Any

import pytest
from infra_support import Synth, example_config, synth

OUTPOST = "arn:aws:outposts:eu-central-1:123456789012:outpost/op-0123456789abcdef0"
LAYER = "arn:aws:lambda:us-gov-west-1:123456789012:layer:powertools-mirror:3"


@pytest.fixture(scope="module")
def s() -> Synth:
    config: dict[str, Any] = example_config()
    config["policies"][0]["outpost_arn"] = OUTPOST
    config["policies"].append(
        {
            "policy": "hourly-db",
            "instance_ids": ["i-0123456789abcdef0"],
            "schedules": ["rate(1 hour)", {"expression": "cron(0 12 ? * MON-FRI *)"}],
            "on_instance_states": ["stopping", "shutting-down"],
        }
    )
    config.update(
        {
            "notification_emails": ["ops@example.com"],
            "subscriptions": [
                {"protocol": "sqs", "endpoint": "arn:aws:sqs:eu-central-1:123456789012:ops"},
                {"protocol": "https", "endpoint": "https://hooks.example.com/snapset"},
            ],
            "max_concurrency": 3,
            "lambda_memory_mb": 512,
            "lambda_timeout_seconds": 600,
            "log_retention_days": 365,
            "log_level": "DEBUG",
            "ec2_api_share": 0.25,
            "powertools_layer_arn": LAYER,
            "completion_events": False,
            "alarms": {"period_minutes": 15, "failed_instances_threshold": 3},
        }
    )
    return synth(config)


def test_outpost_arn_is_added_to_create_snapshots(s: Synth) -> None:
    (policy,) = [
        v for k, v in s.resources("AWS::IAM::Policy").items() if "CreateSnapshotsPolicy" in k
    ]
    create = next(
        st
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        if st["Sid"] == "CreateSnapshots"
    )
    assert OUTPOST in create["Resource"]
    assert len(create["Resource"]) == 4


def test_function_settings(s: Synth) -> None:
    fn = s.only("AWS::Lambda::Function")["Properties"]
    assert fn["ReservedConcurrentExecutions"] == 3
    assert fn["Environment"]["Variables"]["SNAPSET_FAN_OUT_CONCURRENCY"] == "2"
    assert (fn["MemorySize"], fn["Timeout"]) == (512, 600)
    assert fn["Layers"] == [LAYER]
    assert fn["Environment"]["Variables"]["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
    assert fn["Environment"]["Variables"]["SNAPSET_EC2_API_SHARE"] == "0.25"
    groups = s.resources("AWS::Logs::LogGroup").values()
    assert [g["Properties"]["RetentionInDays"] for g in groups] == [365, 365]


def test_subscriptions(s: Synth) -> None:
    subs = {
        (v["Properties"]["Protocol"], v["Properties"]["Endpoint"])
        for v in s.resources("AWS::SNS::Subscription").values()
    }
    assert subs == {
        ("email", "ops@example.com"),
        ("sqs", "arn:aws:sqs:eu-central-1:123456789012:ops"),
        ("https", "https://hooks.example.com/snapset"),
    }


def test_triggers_for_every_policy_and_no_completion_rule(s: Synth) -> None:
    schedules = [
        (v["Properties"]["ScheduleExpression"], v["Properties"]["ScheduleExpressionTimezone"])
        for v in s.resources("AWS::Scheduler::Schedule").values()
    ]
    assert schedules == [
        ("cron(30 3 * * ? *)", "Europe/Berlin"),
        ("cron(15 1 * * ? *)", "Europe/Berlin"),
        ("cron(0 1 * * ? *)", "Europe/Berlin"),
        ("rate(1 hour)", "UTC"),
        ("cron(0 12 ? * MON-FRI *)", "UTC"),
        ("rate(5 minutes)", "UTC"),  # the copy sweep
    ]
    patterns = [v["Properties"]["EventPattern"] for v in s.resources("AWS::Events::Rule").values()]
    assert [p["detail"]["state"] for p in patterns] == [["stopped"], ["stopping", "shutting-down"]]
    assert not any("$or" in p for p in patterns)


def test_alarm_settings(s: Synth) -> None:
    failed = [
        a["Properties"]
        for a in s.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "InstancesFailed"
    ]
    assert len(failed) == 5
    assert {(a["Threshold"], a["Period"]) for a in failed} == {(3, 900)}


def test_no_policy_with_retention_means_no_delete_grant() -> None:
    config: dict[str, Any] = example_config()
    for policy in config["policies"]:
        policy.pop("retention", None)
        for copy_rule in policy.get("copies", []):  # the copies' own retention deletes too
            copy_rule.pop("retention", None)
    actions = {
        action
        for res in synth(config, nag=False).resources("AWS::IAM::Policy").values()
        for st in res["Properties"]["PolicyDocument"]["Statement"]
        for action in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    assert "ec2:DescribeSnapshots" in actions
    assert "ec2:DeleteSnapshot" not in actions
