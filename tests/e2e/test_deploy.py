"""The deployment: what the local CloudFormation did not do is listed exactly, nothing is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localaws import LocalAws
from localaws.deploy import BOOTSTRAP_VERSION_PARAMETER, Deployment
from localaws.substitutes import FIXED, NOT_APPLIED, NOT_CREATED, SUBSTITUTED
from localaws.synth import PROJECT_ROOT, Synthesized

pytestmark = pytest.mark.e2e

# What moto 5.2.5's CloudFormation does not do for this stack, and what deploy does instead.
# A change here means the stack or the local AWS changed: update it knowingly.
_ALARM = ("AWS::CloudWatch::Alarm", SUBSTITUTED, "cloudwatch:PutMetricAlarm")
_QUEUE_POLICY = ("AWS::SQS::QueuePolicy", SUBSTITUTED, "sqs:SetQueueAttributes(Policy)")
_TABLE = "AWS::DynamoDB::Table"
_FUNCTION = "AWS::Lambda::Function"
_BUCKET = "AWS::S3::Bucket"
EXPECTED_SUBSTITUTIONS = [
    ("CDKMetadata", "AWS::CDK::Metadata", NOT_CREATED, "-"),
    ("SnapsetAlarmsCopyFailuresAlarm3drnightly6879BB8D", *_ALARM),
    ("SnapsetAlarmsFanOutAbortedAlarmA5A52D6E", *_ALARM),
    ("SnapsetAlarmsFanOutFailedAlarm2A0009BE", *_ALARM),
    ("SnapsetAlarmsFanOutTimedOutAlarm092C0A70", *_ALARM),
    ("SnapsetAlarmsFunctionDlqAlarmF68AA805", *_ALARM),
    ("SnapsetAlarmsFunctionErrorsAlarm50222F6A", *_ALARM),
    ("SnapsetAlarmsFunctionThrottlesAlarm7E474812", *_ALARM),
    ("SnapsetAlarmsInstancesFailedAlarm0nightlyappE41ACB65", *_ALARM),
    ("SnapsetAlarmsInstancesFailedAlarm1onstopC11D54E9", *_ALARM),
    ("SnapsetAlarmsInstancesFailedAlarm2dbconsistent775F5FCE", *_ALARM),
    ("SnapsetAlarmsInstancesFailedAlarm3drnightly35074C70", *_ALARM),
    ("SnapsetAlarmsPostScriptFailuresAlarm2dbconsistent02DB195F", *_ALARM),
    ("SnapsetAlarmsRulesDlqAlarmB2D2C28E", *_ALARM),
    ("SnapsetAlarmsSchedulerDlqAlarm6C6558CD", *_ALARM),
    ("SnapsetFunctionDlqPolicy2280FB33", *_QUEUE_POLICY),
    (
        "SnapsetFunctionEventInvokeConfigA9013228",
        "AWS::Lambda::EventInvokeConfig",
        SUBSTITUTED,
        "lambda:PutFunctionEventInvokeConfig",
    ),
    ("SnapsetReportsPolicy4AF6662D", "AWS::S3::BucketPolicy", SUBSTITUTED, "s3:PutBucketPolicy"),
    ("SnapsetRulesDlqPolicy203F4EEC", *_QUEUE_POLICY),
    ("SnapsetSchedulerDlqPolicyCCBACCAF", *_QUEUE_POLICY),
    (
        "SnapsetTopicPolicy9DE8EB0B",
        "AWS::SNS::TopicPolicy",
        SUBSTITUTED,
        "sns:SetTopicAttributes(Policy)",
    ),
    (
        "SnapsetTriggersCopySweepSchedule0D9ACBFC",
        "AWS::Scheduler::Schedule",
        SUBSTITUTED,
        "scheduler:CreateSchedule",
    ),
    (
        "SnapsetTriggersSchedule0x0nightlyappA39D8889",
        "AWS::Scheduler::Schedule",
        SUBSTITUTED,
        "scheduler:CreateSchedule",
    ),
    (
        "SnapsetTriggersSchedule2x0dbconsistent76D733E7",
        "AWS::Scheduler::Schedule",
        SUBSTITUTED,
        "scheduler:CreateSchedule",
    ),
    (
        "SnapsetTriggersSchedule3x0drnightlyB1624983",
        "AWS::Scheduler::Schedule",
        SUBSTITUTED,
        "scheduler:CreateSchedule",
    ),
    ("SnapsetTopicKey6C445C0D", "AWS::KMS::Key", FIXED, "KeyPolicy"),
    ("SnapsetReportsReportKey62CACF66", "AWS::KMS::Key", FIXED, "KeyPolicy"),
    ("SnapsetReports608494F0", _BUCKET, FIXED, "LifecycleConfiguration"),
    ("SnapsetReports608494F0", _BUCKET, FIXED, "PublicAccessBlockConfiguration"),
    ("SnapsetReports608494F0", _BUCKET, FIXED, "OwnershipControls"),
    ("SnapsetReports608494F0", _BUCKET, FIXED, "BucketEncryption"),
    ("SnapsetIdempotencyTable95404CC0", _TABLE, FIXED, "TimeToLiveSpecification"),
    ("SnapsetIdempotencyTable95404CC0", _TABLE, FIXED, "PointInTimeRecoverySpecification"),
    ("SnapsetIdempotencyTable95404CC0", _TABLE, NOT_APPLIED, "SSESpecification"),
    ("SnapsetFunction003C2387", _FUNCTION, NOT_APPLIED, "Layers"),
    ("SnapsetFunction003C2387", _FUNCTION, NOT_APPLIED, "Architectures"),
    ("SnapsetFunction003C2387", _FUNCTION, NOT_APPLIED, "TracingConfig"),
    ("SnapsetFunction003C2387", _FUNCTION, NOT_APPLIED, "LoggingConfig"),
]


def test_the_substitution_list_is_exact(deployment: Deployment) -> None:
    assert [s.key() for s in deployment.substitutions] == EXPECTED_SUBSTITUTIONS


def test_every_template_resource_is_deployed_or_substituted(
    local_aws: LocalAws, deployment: Deployment
) -> None:
    created = {
        r["LogicalResourceId"]
        for r in local_aws.client("cloudformation").list_stack_resources(
            StackName=deployment.stack_name
        )["StackResourceSummaries"]
        if r.get("LogicalResourceId")
    }
    substituted = {
        s.logical_id for s in deployment.substitutions if s.action in (SUBSTITUTED, NOT_CREATED)
    }
    assert created | substituted == set(deployment.template["Resources"])
    assert not created & substituted
    assert set(deployment.physical_ids) >= created | {
        s.logical_id for s in deployment.substitutions if s.action == SUBSTITUTED
    }


def test_the_deployed_function_environment_equals_the_templates(
    local_aws: LocalAws, deployment: Deployment
) -> None:
    config = local_aws.client("lambda").get_function_configuration(
        FunctionName=deployment.function_name
    )
    template_env = deployment.template_function_environment()
    assert config["Environment"]["Variables"] == template_env
    assert template_env["SNAPSET_TOPIC_ARN"] == deployment.topic_arn
    assert template_env["SNAPSET_IDEMPOTENCY_TABLE"] == deployment.idempotency_table
    assert config["Handler"] == "snapset.handler.handler"
    assert config["Timeout"] == 300


def test_bootstrap_and_assets_are_staged_as_the_default_synthesizer_expects(
    local_aws: LocalAws, synth: Synthesized, deployment: Deployment
) -> None:
    version = local_aws.client("ssm").get_parameter(Name=BOOTSTRAP_VERSION_PARAMETER)
    assert int(version["Parameter"]["Value"]) >= 6  # the template's CheckBootstrapVersion rule
    code = deployment.template["Resources"]["SnapsetFunction003C2387"]["Properties"]["Code"]
    bucket = f"cdk-hnb659fds-assets-123456789012-{local_aws.region}"
    assert code["S3Bucket"] == {"Fn::Sub": "cdk-hnb659fds-assets-${AWS::AccountId}-${AWS::Region}"}
    body = local_aws.client("s3").get_object(Bucket=bucket, Key=code["S3Key"])["Body"].read()
    assert any(a.object_key == code["S3Key"] and a.data == body for a in synth.assets)
    assert b"snapset/handler.py" in body


def test_the_deployed_schedule_and_rules_are_the_templates(
    local_aws: LocalAws, deployment: Deployment
) -> None:
    schedule_id = deployment.logical_ids("AWS::Scheduler::Schedule")[0]
    props = deployment.template["Resources"][schedule_id]["Properties"]
    got = local_aws.client("scheduler").get_schedule(Name=deployment.physical_id(schedule_id))
    assert got["ScheduleExpression"] == props["ScheduleExpression"]
    assert got["ScheduleExpressionTimezone"] == props["ScheduleExpressionTimezone"]
    assert got["Target"]["Input"] == props["Target"]["Input"]
    assert got["Target"]["RetryPolicy"] == props["Target"]["RetryPolicy"]
    events = local_aws.client("events")
    for rule_id in deployment.logical_ids("AWS::Events::Rule"):
        rule_props = deployment.template["Resources"][rule_id]["Properties"]
        rule = events.describe_rule(Name=deployment.physical_id(rule_id))
        assert json.loads(rule["EventPattern"]) == rule_props["EventPattern"]
        (target,) = events.list_targets_by_rule(Rule=deployment.physical_id(rule_id))["Targets"]
        assert target.get("InputTransformer") == rule_props["Targets"][0].get("InputTransformer")


@pytest.mark.skipif(
    not (PROJECT_ROOT / "node_modules" / ".bin" / "cdk").exists() or shutil.which("node") is None,
    reason="the npm CDK CLI is not installed",
)
def test_in_process_synthesis_equals_cdk_synth(synth: Synthesized, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--quiet", "-o", str(tmp_path)],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    cli = json.loads((tmp_path / f"{synth.artifact_id}.template.json").read_text())
    assert cli == synth.template
    manifest = json.loads((tmp_path / f"{synth.artifact_id}.assets.json").read_text())
    zips = {k for k, v in manifest["files"].items() if v["source"]["packaging"] == "zip"}
    assert zips == {a.asset_hash for a in synth.assets if a.packaging == "zip"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in zips)
