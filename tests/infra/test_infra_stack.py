"""The synthesized template of the shipped example: the contract with the Lambda, IAM, encryption.

One synth per module (module-scoped fixture); the stack is env-agnostic like a credential-less
`cdk synth`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import Validations
from aws_cdk.assertions import Match
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from cfnlint.api import lint
from infra_support import ROOT, Synth, example_config, synth

from app import build_app
from infra.config import ConfigError, load_config
from infra.function import HANDLER
from snapset.settings import (
    ENV_DEPLOYED_COPIES,
    ENV_DEPLOYED_POLICIES,
    ENV_EC2_API_SHARE,
    ENV_FAN_OUT_CONCURRENCY,
    ENV_IDEMPOTENCY_TABLE,
    ENV_MAX_WORKERS,
    ENV_REPORT_BUCKET,
    ENV_SAFETY_MARGIN_MS,
    ENV_STATE_MACHINE_ARN,
    ENV_TOPIC_ARN,
    METRICS_NAMESPACE,
    SERVICE_NAME,
    Settings,
)
from snapset.triggers import (
    EVENT_JSON_ATTR,
    SCHEDULE_ARN_ATTR,
    SCHEDULED_TIME_ATTR,
    parse_request,
    with_deployed_retention,
)

SCHEDULED_TIME = "2026-11-27T01:30:00Z"
SCHEDULE_ARN = "arn:aws:scheduler:eu-central-1:123456789012:schedule/default/nightly"


@pytest.fixture(scope="module")
def s() -> Synth:
    return synth()


@pytest.fixture(scope="module")
def config() -> Any:
    return load_config(example_config())


def ref(s: Synth, type_: str) -> dict[str, str]:
    (logical_id,) = s.resources(type_)
    return {"Ref": logical_id}


def logical_id(s: Synth, type_: str, **props: Any) -> str:
    matches = [
        k
        for k, v in s.resources(type_).items()
        if all(v["Properties"].get(p) == want for p, want in props.items())
    ]
    assert len(matches) == 1, matches
    return matches[0]


def statements(s: Synth, policy_path_part: str) -> list[dict[str, Any]]:
    """Statements of the IAM::Policy whose logical id contains `policy_path_part`."""
    (policy,) = [v for k, v in s.resources("AWS::IAM::Policy").items() if policy_path_part in k]
    found: list[dict[str, Any]] = policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def by_sid(s: Synth, policy_path_part: str) -> dict[str, dict[str, Any]]:
    return {st["Sid"]: st for st in statements(s, policy_path_part) if "Sid" in st}


def topic_key_id(s: Synth) -> str:
    """The topic's key (the stack has another one, the report bucket's)."""
    return logical_id(s, "AWS::KMS::Key", Description="Snapset: encrypts the report topic")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the function ---------------------------------------------------------------------------


def test_function_runtime_architecture_handler_tracing(s: Synth) -> None:
    fn = s.only("AWS::Lambda::Function")["Properties"]
    assert fn["Runtime"] == "python3.14"
    assert fn["Architectures"] == ["arm64"]
    assert fn["Handler"] == HANDLER == "snapset.handler.handler"
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert fn["MemorySize"] == 256
    assert fn["Timeout"] == 300
    assert fn["ReservedConcurrentExecutions"] == 5


def test_function_environment_is_the_lambda_contract(s: Synth) -> None:
    env = s.only("AWS::Lambda::Function")["Properties"]["Environment"]["Variables"]
    assert env == {
        ENV_TOPIC_ARN: ref(s, "AWS::SNS::Topic"),
        ENV_MAX_WORKERS: "8",
        ENV_IDEMPOTENCY_TABLE: ref(s, "AWS::DynamoDB::Table"),
        ENV_REPORT_BUCKET: ref(s, "AWS::S3::Bucket"),
        ENV_SAFETY_MARGIN_MS: "10000",
        ENV_EC2_API_SHARE: "0.5",
        # the reserved concurrency (5) less one for the triggers
        ENV_FAN_OUT_CONCURRENCY: "4",
        ENV_DEPLOYED_POLICIES: '{"nightly-app":{"count":7},"on-stop":{"max_age_days":30},'
        '"db-consistent":{"count":7},"dr-nightly":{"count":7}}',
        ENV_DEPLOYED_COPIES: '{"dr-nightly":{"copies":[{"region":"us-west-2",'
        '"retention":{"count":3},"copy_tags":true},{"region":"eu-west-1","copy_tags":true}],'
        '"share_with_accounts":["111122223333"]}}',
        # by the state machine's name, not a reference (which would make a cycle)
        ENV_STATE_MACHINE_ARN: {
            "Fn::Join": [
                "",
                [
                    "arn:",
                    {"Ref": "AWS::Partition"},
                    ":states:",
                    {"Ref": "AWS::Region"},
                    ":",
                    {"Ref": "AWS::AccountId"},
                    ":stateMachine:"
                    + s.only("AWS::StepFunctions::StateMachine")["Properties"]["StateMachineName"],
                ],
            ]
        },
        "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
        "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
    assert SERVICE_NAME == "snapset"
    assert METRICS_NAMESPACE == "Snapset"
    # The Lambda's own settings parser accepts these values once the tokens resolve.
    resolved = {k: v for k, v in env.items() if isinstance(v, str)}
    resolved[ENV_TOPIC_ARN] = "arn:aws:sns:eu-central-1:123456789012:Snapset-Topic"
    resolved[ENV_IDEMPOTENCY_TABLE] = "Snapset-IdempotencyTable"
    resolved[ENV_REPORT_BUCKET] = "snapset-reports-0a1b2c3d"
    resolved[ENV_STATE_MACHINE_ARN] = (
        "arn:aws:states:eu-central-1:123456789012:stateMachine:Snapset-FanOut-F402FADA"
    )
    resolved["AWS_REGION"] = "eu-central-1"  # set by Lambda
    settings = Settings.from_env(resolved)
    assert (settings.max_workers, settings.safety_margin_ms) == (8, 10_000)
    assert (settings.ec2_api_share, settings.ec2_rate_scale) == (0.5, 1.0)


def test_powertools_layer_is_region_agnostic_and_pinned(s: Synth) -> None:
    """The layer is the release the tests ran: Powertools' public SSM parameter for the version
    pinned in lambdas/requirements.txt, resolved by CloudFormation at deploy time."""
    (layer,) = s.only("AWS::Lambda::Function")["Properties"]["Layers"]
    parameter = s.raw["Parameters"][layer["Ref"]]
    pinned = re.search(
        r"^aws-lambda-powertools==(\S+)$",
        (ROOT / "lambdas" / "requirements.txt").read_text(),
        re.MULTILINE,
    )
    assert pinned is not None
    assert parameter == {
        "Type": "AWS::SSM::Parameter::Value<String>",
        "Default": f"/aws/service/powertools/python/arm64/python3.14/{pinned.group(1)}",
    }
    fn = s.only("AWS::Lambda::Function")["Properties"]
    assert (fn["Runtime"], fn["Architectures"]) == ("python3.14", ["arm64"])


@pytest.mark.parametrize("region", ["us-gov-west-1", "cn-north-1"])
def test_synth_fails_where_powertools_publishes_no_parameter(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "123456789012")
    monkeypatch.setenv("CDK_DEFAULT_REGION", region)
    app = cdk.App(context={"snapset": example_config()})
    with pytest.raises(
        ConfigError, match=f"no layer parameter in {region}: set powertools_layer_arn"
    ):
        build_app(app, nag=False)


def test_code_asset_is_the_lambdas_dir_without_requirements(s: Synth) -> None:
    key = s.only("AWS::Lambda::Function")["Properties"]["Code"]["S3Key"]
    asset = s.outdir / f"asset.{key.removesuffix('.zip')}"
    files = {p.relative_to(asset).as_posix() for p in asset.rglob("*") if p.is_file()}
    assert "snapset/handler.py" in files
    assert "snapset/policy.py" in files
    assert not any(f.endswith("requirements.txt") or "__pycache__" in f for f in files)


def test_log_groups_with_retention_are_the_functions_and_the_state_machines(s: Synth) -> None:
    groups = s.resources("AWS::Logs::LogGroup")
    assert {g["Properties"]["RetentionInDays"] for g in groups.values()} == {90}
    fn = s.only("AWS::Lambda::Function")["Properties"]
    machine = s.only("AWS::StepFunctions::StateMachine")["Properties"]
    [destination] = machine["LoggingConfiguration"]["Destinations"]
    used = {
        fn["LoggingConfig"]["LogGroup"]["Ref"],
        destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0],
    }
    assert used == set(groups)


def test_async_invocations_retry_twice_then_go_to_the_dlq(s: Synth) -> None:
    cfg = s.only("AWS::Lambda::EventInvokeConfig")["Properties"]
    assert cfg["MaximumRetryAttempts"] == 2
    assert cfg["MaximumEventAgeInSeconds"] == 3600
    dlq = cfg["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
    assert "FunctionDlq" in dlq


# --- schedules ------------------------------------------------------------------------------


def test_one_schedule_per_policy_schedule_with_time_zone(s: Synth, config: Any) -> None:
    schedules = s.resources("AWS::Scheduler::Schedule")
    expected = [(sc.expression, sc.timezone) for p in config.policies for sc in p.schedules]
    got = [
        (v["Properties"]["ScheduleExpression"], v["Properties"]["ScheduleExpressionTimezone"])
        for k, v in schedules.items()
        if "CopySweep" not in k  # the copy sweep's (tests/infra/test_copy_grants.py)
    ]
    assert (
        got
        == expected
        == [
            ("cron(30 3 * * ? *)", "Europe/Berlin"),
            ("cron(15 1 * * ? *)", "Europe/Berlin"),
            ("cron(0 1 * * ? *)", "Europe/Berlin"),
        ]
    )
    for sched in schedules.values():
        props = sched["Properties"]
        assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
        assert props["State"] == "ENABLED"
        target = props["Target"]
        assert target["RetryPolicy"] == {
            "MaximumRetryAttempts": 3,
            "MaximumEventAgeInSeconds": 3600,
        }
        assert "SchedulerDlq" in target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
        assert "SchedulerRole" in target["RoleArn"]["Fn::GetAtt"][0]
        assert target["Arn"]["Fn::GetAtt"][0] == logical_id(
            s, "AWS::Lambda::Function", Handler=HANDLER
        )


def test_schedule_input_parses_back_into_the_policy(s: Synth, config: Any) -> None:
    sched = next(iter(s.resources("AWS::Scheduler::Schedule").values()))
    raw = sched["Properties"]["Target"]["Input"]
    # What Scheduler delivers: its context attributes filled in.
    delivered = raw.replace(SCHEDULED_TIME_ATTR, SCHEDULED_TIME).replace(
        SCHEDULE_ARN_ATTR, SCHEDULE_ARN
    )
    request = parse_request(json.loads(delivered))
    assert request.trigger.type.value == "schedule"
    assert request.trigger.time == datetime(2026, 11, 27, 1, 30, tzinfo=UTC)
    assert request.policy == config.policies[0].snapshot_policy()


def test_scheduler_role_invokes_only_the_function(s: Synth) -> None:
    role = next(v for k, v in s.resources("AWS::IAM::Role").items() if "SchedulerRole" in k)[
        "Properties"
    ]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    sts = statements(s, "SchedulerRole")
    fn_id = logical_id(s, "AWS::Lambda::Function", Handler=HANDLER)
    assert [(st["Action"], st["Resource"]) for st in sts] == [
        ("lambda:InvokeFunction", {"Fn::GetAtt": [fn_id, "Arn"]}),
        ("sqs:SendMessage", sts[1]["Resource"]),
    ]
    assert "SchedulerDlq" in sts[1]["Resource"]["Fn::GetAtt"][0]


# --- event rules ----------------------------------------------------------------------------


def rules(s: Synth) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in s.resources("AWS::Events::Rule").items()}


def test_instance_state_rule_per_policy(s: Synth, config: Any) -> None:
    instance_rules = [
        r for r in rules(s).values() if "EC2 Instance State-change Notification" in str(r)
    ]
    wanted = [p for p in config.policies if p.on_instance_states]
    assert len(instance_rules) == len(wanted) == 1
    rule = instance_rules[0]
    assert rule["EventPattern"] == {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["stopped"]},
    }
    (target,) = rule["Targets"]
    assert set(target["InputTransformer"]) == {"InputTemplate"}  # no InputPathsMap needed
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600}
    assert "RulesDlq" in target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]


def test_instance_rule_input_parses_back_into_the_policy(s: Synth, config: Any) -> None:
    (rule,) = [r for r in rules(s).values() if "InputTransformer" in str(r)]
    template = rule["Targets"][0]["InputTransformer"]["InputTemplate"]
    event = {
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-11-27T10:00:00Z",
        "region": "eu-central-1",
        "resources": ["arn:aws:ec2:eu-central-1:123456789012:instance/i-0123456789abcdef0"],
        "detail": {"instance-id": "i-0123456789abcdef0", "state": "stopped"},
    }
    delivered = template.replace(EVENT_JSON_ATTR, json.dumps(event))
    request = parse_request(json.loads(delivered))
    assert request.trigger.type.value == "instance_event"
    assert request.trigger.id == event["id"]
    assert request.event_instance_id == "i-0123456789abcdef0"
    assert request.policy == config.policies[1].snapshot_policy()


def test_completion_rule_delivers_raw_events(s: Synth) -> None:
    (rule,) = [r for r in rules(s).values() if "$or" in r["EventPattern"]]
    assert rule["EventPattern"] == {
        "source": ["aws.ec2"],
        "$or": [
            {
                "detail-type": ["EBS Multi-Volume Snapshots Completion Status"],
                "detail": {"event": ["createSnapshots"]},
            },
            {
                "detail-type": ["EBS Snapshot Notification"],
                "detail": {"event": ["createSnapshot"], "result": ["failed"]},
            },
        ],
    }
    (target,) = rule["Targets"]
    assert not {"Input", "InputPath", "InputTransformer"} & set(target)
    assert "RulesDlq" in target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]


def test_rules_may_invoke_the_function_and_dead_letter(s: Synth) -> None:
    perms = s.resources("AWS::Lambda::Permission")
    rule_ids = set(s.resources("AWS::Events::Rule"))
    assert {p["Properties"]["SourceArn"]["Fn::GetAtt"][0] for p in perms.values()} == rule_ids
    for perm in perms.values():
        assert perm["Properties"]["Principal"] == "events.amazonaws.com"
        assert perm["Properties"]["Action"] == "lambda:InvokeFunction"
    queue_policy = next(
        v for k, v in s.resources("AWS::SQS::QueuePolicy").items() if "RulesDlq" in k
    )
    allowed = [
        st["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]
        for st in queue_policy["Properties"]["PolicyDocument"]["Statement"]
        if st["Effect"] == "Allow"
    ]
    assert set(allowed) == rule_ids


# --- the function's IAM ---------------------------------------------------------------------

PARTITION = {"Ref": "AWS::Partition"}
REGION = {"Ref": "AWS::Region"}
ACCOUNT = {"Ref": "AWS::AccountId"}


def ec2_arn(resource: str, account: bool = True) -> dict[str, Any]:
    parts: list[Any] = ["arn:", PARTITION, ":ec2:", REGION]
    parts += [":", ACCOUNT, f":{resource}/*"] if account else [f"::{resource}/*"]
    return {"Fn::Join": ["", parts]}


def test_create_snapshots_scoped_to_account_and_region(s: Synth) -> None:
    st = by_sid(s, "CreateSnapshotsPolicy")["CreateSnapshots"]
    assert st["Action"] == "ec2:CreateSnapshots"
    assert st["Resource"] == [
        ec2_arn("instance"),
        ec2_arn("volume"),
        ec2_arn("snapshot", account=False),
    ]
    assert "Condition" not in st


def test_create_tags_only_on_new_snapshots(s: Synth) -> None:
    st = by_sid(s, "CreateSnapshotsPolicy")["TagSnapshotsAtCreation"]
    assert st["Action"] == "ec2:CreateTags"
    assert st["Resource"] == ec2_arn("snapshot", account=False)
    assert st["Condition"] == {"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}}


def test_only_unscopable_describes_get_resource_star(s: Synth) -> None:
    star = {
        a
        for part in ("FunctionRoleDefaultPolicy", "CreateSnapshotsPolicy", "RetentionPolicy")
        for st in statements(s, part)
        if st["Resource"] == "*"
        for a in as_list(st["Action"])
    }
    assert star == {
        "ec2:DescribeInstances",
        "ec2:DescribeSnapshots",
        "ec2:DescribeVolumes",
        "ec2:DescribeImages",
        "ec2:DescribeLockedSnapshots",
        "xray:PutTelemetryRecords",
        "xray:PutTraceSegments",
    }


def test_retention_grants(s: Synth) -> None:
    sids = by_sid(s, "RetentionPolicy")
    delete = sids["RetentionDeleteOwnSnapshots"]
    assert delete["Action"] == "ec2:DeleteSnapshot"
    assert delete["Resource"] == ec2_arn("snapshot", account=False)
    # only snapshots of the deployed policies that have retention (all shipped ones do)
    assert delete["Condition"] == {
        "StringEquals": {
            "aws:ResourceTag/snapset:policy": [
                "nightly-app",
                "on-stop",
                "db-consistent",
                "dr-nightly",
            ]
        }
    }
    attr = sids["RetentionDescribeSnapshotAttribute"]
    assert attr["Action"] == "ec2:DescribeSnapshotAttribute"
    assert attr["Resource"] == ec2_arn("snapshot", account=False)
    unscoped = sids["RetentionDescribeUnscopable"]
    assert sorted(unscoped["Action"]) == ["ec2:DescribeImages", "ec2:DescribeLockedSnapshots"]


def test_publish_key_and_idempotency_grants(s: Synth) -> None:
    sids = by_sid(s, "FunctionRoleDefaultPolicy")
    assert sids["PublishReports"]["Action"] == "sns:Publish"
    assert sids["PublishReports"]["Resource"] == ref(s, "AWS::SNS::Topic")
    key_id = topic_key_id(s)
    assert sorted(sids["UseTopicKey"]["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert sids["UseTopicKey"]["Resource"] == {"Fn::GetAtt": [key_id, "Arn"]}
    table_id = next(iter(s.resources("AWS::DynamoDB::Table")))
    assert sorted(sids["IdempotencyRecords"]["Action"]) == [
        "dynamodb:DeleteItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
    assert sids["IdempotencyRecords"]["Resource"] == {"Fn::GetAtt": [table_id, "Arn"]}
    dest = sids["AsyncFailureDestination"]
    assert dest["Action"] == "sqs:SendMessage"
    assert "FunctionDlq" in dest["Resource"]["Fn::GetAtt"][0]


def test_no_action_wildcard_and_no_managed_policies(s: Synth) -> None:
    for policy in s.resources("AWS::IAM::Policy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert st["Effect"] == "Allow"
            for action in as_list(st["Action"]):
                assert not action.endswith("*") or action == "kms:GenerateDataKey*"
    for role in s.resources("AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]


def test_function_created_after_all_its_policies(s: Synth) -> None:
    fn = s.only("AWS::Lambda::Function")
    policies = set(s.resources("AWS::IAM::Policy"))
    assert {p for p in policies if "Scheduler" not in p and "StateMachine" not in p} == set(
        fn["DependsOn"]
    )


# --- encryption and the topic ---------------------------------------------------------------


def test_topic_encrypted_with_rotating_cmk(s: Synth) -> None:
    key_id = topic_key_id(s)
    key = s.resources("AWS::KMS::Key")[key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    topic = s.only("AWS::SNS::Topic")["Properties"]
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    cw = next(
        st
        for st in key["KeyPolicy"]["Statement"]
        if st.get("Sid") == "AllowCloudWatchAlarmsToUseTheKey"
    )
    assert cw["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert sorted(cw["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    # only this account's alarms may use the key, as only they may publish to the topic
    assert cw["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
        "ArnLike": {
            "aws:SourceArn": {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        ":cloudwatch:",
                        {"Ref": "AWS::Region"},
                        ":",
                        {"Ref": "AWS::AccountId"},
                        ":alarm:*",
                    ],
                ]
            }
        },
    }


def test_topic_policy_ssl_only_and_only_lambda_and_alarms_publish(s: Synth) -> None:
    doc = s.only("AWS::SNS::TopicPolicy")["Properties"]["PolicyDocument"]["Statement"]
    role_arn = {
        "Fn::GetAtt": [next(k for k in s.resources("AWS::IAM::Role") if "FunctionRole" in k), "Arn"]
    }
    allows = [st for st in doc if st["Effect"] == "Allow"]
    assert {json.dumps(st["Principal"], sort_keys=True) for st in allows} == {
        json.dumps({"AWS": role_arn}, sort_keys=True),
        json.dumps({"Service": "cloudwatch.amazonaws.com"}, sort_keys=True),
    }
    alarms = next(st for st in allows if st["Principal"] == {"Service": "cloudwatch.amazonaws.com"})
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert alarms["Condition"]["ArnLike"]["aws:SourceArn"] == {
        "Fn::Join": ["", ["arn:", PARTITION, ":cloudwatch:", REGION, ":", ACCOUNT, ":alarm:*"]]
    }
    denies = {st.get("Sid"): st for st in doc if st["Effect"] == "Deny"}
    assert denies["AllowPublishThroughSSLOnly"]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    assert denies["OnlySnapsetPublishes"]["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": role_arn},
        "Bool": {"aws:PrincipalIsAWSService": "false"},
    }


def test_no_placeholder_subscription_and_a_warning_without_any(s: Synth) -> None:
    assert s.resources("AWS::SNS::Subscription") == {}
    warnings = [
        entry.data
        for c in s.stack.node.find_all()
        for entry in c.node.metadata
        if entry.type == "aws:cdk:warning"
    ]
    assert any("the report topic has no subscription" in str(w) for w in warnings), warnings


def test_no_warning_once_a_subscription_is_configured() -> None:
    config = example_config()
    config["notification_emails"] = ["ops@example.com"]
    app = synth(config, nag=False)
    sub = app.only("AWS::SNS::Subscription")["Properties"]
    assert (sub["Protocol"], sub["Endpoint"]) == ("email", "ops@example.com")
    warnings = [e.data for c in app.stack.node.find_all() for e in c.node.metadata]
    assert not any("no subscription" in str(w) for w in warnings)


def test_queues_encrypted_ssl_only_and_kept_14_days(s: Synth) -> None:
    queues = s.resources("AWS::SQS::Queue")
    assert len(queues) == 3
    for q in queues.values():
        assert q["Properties"]["SqsManagedSseEnabled"] is True
        assert q["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    for policy in s.resources("AWS::SQS::QueuePolicy").values():
        deny = policy["Properties"]["PolicyDocument"]["Statement"][0]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_idempotency_table(s: Synth) -> None:
    s.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
            "TimeToLiveSpecification": {"AttributeName": "expiration", "Enabled": True},
            "SSESpecification": {"SSEEnabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        },
    )


# --- alarms and outputs ---------------------------------------------------------------------


def test_alarms_go_to_the_topic_and_ignore_missing_data(s: Synth) -> None:
    alarms = s.resources("AWS::CloudWatch::Alarm")
    # errors, throttles, 3 DLQs, 3 fan-out execution outcomes, failed instances per policy,
    # script failures of the one policy with scripts, copy failures of the one with copies
    assert len(alarms) == 2 + 3 + 3 + 4 + 1 + 1
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [ref(s, "AWS::SNS::Topic")]
        assert props["TreatMissingData"] == "notBreaching"
    names = {
        (a["Properties"].get("Namespace"), a["Properties"].get("MetricName"))
        for a in alarms.values()
    }
    assert names == {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/States", "ExecutionsFailed"),
        ("AWS/States", "ExecutionsTimedOut"),
        ("AWS/States", "ExecutionsAborted"),
        ("Snapset", "InstancesFailed"),
        ("Snapset", "PostScriptFailures"),
        ("Snapset", "CopyFailures"),
    }
    machine = {"Ref": next(iter(s.resources("AWS::StepFunctions::StateMachine")))}
    for alarm in alarms.values():
        if alarm["Properties"].get("Namespace") == "AWS/States":
            assert alarm["Properties"]["Dimensions"] == [
                {"Name": "StateMachineArn", "Value": machine}
            ]


def test_failed_instances_alarm_matches_the_emitted_emf_dimensions(s: Synth, config: Any) -> None:
    # Powertools Metrics adds `service` (POWERTOOLS_SERVICE_NAME) to the handler's `policy`.
    for policy in config.policies:
        s.template.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "Namespace": "Snapset",
                "MetricName": "InstancesFailed",
                "Dimensions": Match.array_equals(
                    [
                        {"Name": "policy", "Value": policy.name},
                        {"Name": "service", "Value": "snapset"},
                    ]
                ),
                "Statistic": "Sum",
                "Threshold": 1,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            },
        )


def test_emf_dimensions_as_powertools_emits_them() -> None:
    metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
    metrics.add_dimension(name="policy", value="nightly-app")
    metrics.add_metric(name="InstancesFailed", unit=MetricUnit.Count, value=1)
    emf = metrics.serialize_metric_set()
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Snapset"
    assert sorted(directive["Dimensions"][0]) == ["policy", "service"]
    assert (emf["policy"], emf["service"]) == ("nightly-app", "snapset")
    metrics.clear_metrics()


def test_outputs(s: Synth, config: Any) -> None:
    outputs = s.raw["Outputs"]
    assert outputs["TopicArn"]["Value"] == ref(s, "AWS::SNS::Topic")
    fn_ref = ref(s, "AWS::Lambda::Function")
    assert outputs["FunctionName"]["Value"] == fn_ref
    parts = outputs["ExampleInvokeCommand"]["Value"]["Fn::Join"][1]
    assert parts[0] == "aws lambda invoke --function-name "
    assert parts[1] == fn_ref
    tail = parts[2]
    assert "--cli-binary-format raw-in-base64-out" in tail
    payload = tail.split("--payload '", 1)[1].rsplit("' ", 1)[0]
    request = parse_request(json.loads(payload))
    assert request.trigger.type.value == "manual"
    # the payload carries no retention: a deployed policy runs with the stack's own
    env = s.only("AWS::Lambda::Function")["Properties"]["Environment"]["Variables"]
    deployed = Settings.from_env(
        {
            ENV_TOPIC_ARN: "arn:aws:sns:eu-central-1:123456789012:Snapset-Topic",
            ENV_IDEMPOTENCY_TABLE: "Snapset-IdempotencyTable",
            ENV_REPORT_BUCKET: "snapset-reports-0a1b2c3d",
            ENV_STATE_MACHINE_ARN: "arn:aws:states:eu-central-1:123456789012:stateMachine:x",
            ENV_DEPLOYED_POLICIES: env[ENV_DEPLOYED_POLICIES],
            ENV_DEPLOYED_COPIES: env[ENV_DEPLOYED_COPIES],
            "AWS_REGION": "eu-central-1",
        }
    ).deployed_policies
    request = with_deployed_retention(request, deployed)
    assert request.policy == config.policies[0].snapshot_policy()


# --- checks ---------------------------------------------------------------------------------


PARTITION_REGION = "arn:<AWS::Partition>:ec2:<AWS::Region>"
MACHINE_NAME = "Snapset-fan-out-3744576c"
MACHINE_EXECUTIONS = (
    "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
    '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"SnapsetFanOutStateMachine50ADDD47"}]}]}'
)
EXPECTED_ACKS = {
    "Function/FunctionDlq": {"AwsSolutions-SQS3"},
    "Triggers/SchedulerDlq": {"AwsSolutions-SQS3"},
    "Triggers/RulesDlq": {"AwsSolutions-SQS3"},
    "Function/FunctionRole/DefaultPolicy": {
        "AwsSolutions-IAM5[Resource::*]",  # X-Ray
        "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
        "AwsSolutions-IAM5[Resource::<SnapsetReports608494F0.Arn>/reports/*]",
        "AwsSolutions-IAM5[Resource::<SnapsetReports608494F0.Arn>/runs/*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:"
        f"<AWS::AccountId>:execution:{MACHINE_NAME}:*]",
    },
    "Reports/Reports": {"AwsSolutions-S1"},
    "FanOut/StateMachine/Role/DefaultPolicy": {
        "AwsSolutions-IAM5[Resource::*]",  # X-Ray and log delivery
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::<SnapsetReports608494F0>/*]",
        "AwsSolutions-IAM5[Resource::<SnapsetFunction003C2387.Arn>:*]",
    },
    "FanOut/StateMachine/DistributedMapPolicy": {
        f"AwsSolutions-IAM5[Resource::{MACHINE_EXECUTIONS}:*]",
        f"AwsSolutions-IAM5[Resource::{MACHINE_EXECUTIONS}/*:*]",
    },
    "Function/CreateSnapshotsPolicy": {
        "AwsSolutions-IAM5[Resource::*]",
        f"AwsSolutions-IAM5[Resource::{PARTITION_REGION}:<AWS::AccountId>:instance/*]",
        f"AwsSolutions-IAM5[Resource::{PARTITION_REGION}:<AWS::AccountId>:volume/*]",
        f"AwsSolutions-IAM5[Resource::{PARTITION_REGION}::snapshot/*]",
    },
    "Function/RetentionPolicy": {
        "AwsSolutions-IAM5[Resource::*]",
        f"AwsSolutions-IAM5[Resource::{PARTITION_REGION}::snapshot/*]",
    },
    "Function/ScriptsPolicy": {
        "AwsSolutions-IAM5[Resource::*]",
        f"AwsSolutions-IAM5[Resource::{PARTITION_REGION}:<AWS::AccountId>:instance/*]",
    },
    "Function/CopiesPolicy": {
        "AwsSolutions-IAM5[Resource::*]",
        f"AwsSolutions-IAM5[Resource::{PARTITION_REGION}::snapshot/*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:us-west-2::snapshot/*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:eu-west-1::snapshot/*]",
    },
}


def test_cdk_nag_runs_and_has_no_unacknowledged_findings(s: Synth) -> None:
    # AwsSolutions ran as a validation plugin during synth (a finding would have raised).
    report = json.loads((s.outdir / "validation-report.json").read_text())
    nag = [r for r in report["pluginReports"] if r["pluginName"] != "Construct Annotations"]
    assert nag == []


def test_cdk_nag_acknowledgments_are_exactly_the_documented_ones(s: Synth) -> None:
    acks: dict[str, set[str]] = {}
    for construct in s.stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                path = construct.node.path.removeprefix("Snapset/Snapset/")
                for rule, reason in entry.data.items():
                    assert len(reason) > 40, (path, rule, reason)
                    acks.setdefault(path, set()).add(rule.removeprefix("Annotation::"))
    assert acks == EXPECTED_ACKS


def test_nag_fails_synth_without_acknowledgments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infra.nag.acknowledge", lambda *_a, **_k: None)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        synth()


def test_cfn_lint_reports_nothing(s: Synth) -> None:
    matches = lint(
        json.dumps(s.raw),
        regions=["us-east-1", "eu-central-1", "ap-southeast-2"],
    )
    assert [str(m) for m in matches] == []
