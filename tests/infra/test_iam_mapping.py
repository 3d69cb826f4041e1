"""Every AWS API call the function makes is granted to its role, and the role grants nothing else.

No guessing from the code's variable names: the calls are recorded. The deployed handler
(`snapset.handler.handler`, with the synthesized function's environment) runs in-process under
moto through a tour of its paths: a schedule run whose retention deletes sets beyond the
policy's count, an instance event, a completion event, a manual invoke, a fan-out, a policy's
pre and post scripts, and a policy's shares, copies and copy sweep. A hook on every botocore
client call (`BaseClient._make_api_call`, the path every operation and paginator page of every
client takes, whatever the client is named or whoever built it, Powertools included) records
`service:Operation` while the handler runs.
The role's actions are read from the synthesized template: every `AWS::IAM::Policy` attached to
the role that the function's `Role` names.

Permissions the tour cannot exercise are listed by hand below, each with its reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from infra_support import ROOT, Synth, synth
from moto import mock_aws
from moto.ec2.models import ec2_backends

from localaws import ec2_images, ec2_snapshots, ssm_commands
from localaws.event_patterns import apply_target_input, event_matches
from localaws.fleet import MOTO_ACCOUNT, DataVolume, launch_instance
from snapset import handler as handler_module

REGION = "us-east-1"
EVENTS = ROOT / "tests" / "fixtures" / "events"

# Granted because an action the code calls needs them too (authorized with it, never called).
IMPLIED = {
    # TagSpecifications on CreateSnapshots tag the new snapshots: ec2:CreateTags is authorized
    # with ec2:CreateAction=CreateSnapshots.
    "ec2:CreateSnapshots": {"ec2:CreateTags"},
    # The same for a copy's TagSpecifications (ec2:CreateAction=CopySnapshot).
    "ec2:CopySnapshot": {"ec2:CreateTags"},
    # Publishing to an SSE-KMS topic uses the topic's key on the publisher's behalf.
    "sns:Publish": {"kms:Decrypt", "kms:GenerateDataKey*"},
    # A PutObject to an SSE-KMS bucket makes S3 ask the bucket's key for a data key.
    "s3:PutObject": {"kms:GenerateDataKey"},
    # A GetObject of an SSE-KMS object makes S3 decrypt its data key with the bucket's key;
    # without s3:ListBucket a GetObject of a missing key is refused (403) instead of NoSuchKey.
    "s3:GetObject": {"kms:Decrypt", "s3:ListBucket"},
}
# Used by the Lambda service and runtime with the function's role, not by our code.
PLATFORM = {
    "logs:CreateLogStream": "Lambda writes the function's logs to its log group",
    "logs:PutLogEvents": "Lambda writes the function's logs to its log group",
    "xray:PutTraceSegments": "active tracing",
    "xray:PutTelemetryRecords": "active tracing",
    "sqs:SendMessage": "Lambda sends failed async invocations to the on-failure destination",
}
# Called by the code on paths the tour does not take.
NOT_TOURED = {
    "dynamodb:DeleteItem": "Powertools idempotency drops its record when a run raises",
    "dynamodb:GetItem": "Powertools reads an existing record only if the failed conditional "
    "PutItem did not return it (ReturnValuesOnConditionCheckFailure, boto3 >= 1.26.164)",
    "ssm:CancelCommand": "cancels a script still running at its timeout (the tour's scripts "
    "end in time; tests/unit/test_consistency.py pins the call, tests/e2e/test_scripts_e2e.py "
    "makes it with the deployed role)",
}


# --- recording ---------------------------------------------------------------------------------


@dataclass
class Recorder:
    """`service:Operation` of every botocore call made while `recording()` is on."""

    calls: set[str]
    on: bool = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False


@contextlib.contextmanager
def recorded_calls() -> Iterator[Recorder]:
    recorder = Recorder(set())
    original = BaseClient._make_api_call

    def make_api_call(self: BaseClient, operation_name: str, api_params: Any) -> Any:
        if recorder.on:
            # The IAM prefix is the service's signing name (ec2, sns, dynamodb, ...).
            recorder.calls.add(f"{self.meta.service_model.signing_name}:{operation_name}")
        return original(self, operation_name, api_params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseClient, "_make_api_call", make_api_call)
        yield recorder


# --- the template --------------------------------------------------------------------------------


def the_function(s: Synth) -> dict[str, Any]:
    """The function whose handler is Snapset's."""
    [function] = [
        f
        for f in s.resources("AWS::Lambda::Function").values()
        if f["Properties"]["Handler"] == "snapset.handler.handler"
    ]
    return function


def granted_actions(s: Synth) -> set[str]:
    """Every action of every policy attached to the function's role."""
    role_id = the_function(s)["Properties"]["Role"]["Fn::GetAtt"][0]
    out: set[str] = set()
    for policy in s.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert st["Effect"] == "Allow"
            out.update(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    return out


def schedule_input(s: Synth, policy: str) -> dict[str, Any]:
    """The deployed schedule's input, with Scheduler's context attributes filled in."""
    attributes = {
        "<aws.scheduler.scheduled-time>": "2026-11-27T02:30:00Z",
        "<aws.scheduler.schedule-arn>": f"arn:aws:scheduler:{REGION}:{MOTO_ACCOUNT}:schedule/x",
        "<aws.scheduler.execution-id>": "00000000-0000-0000-0000-000000000001",
        "<aws.scheduler.attempt-number>": "1",
    }
    for schedule in s.resources("AWS::Scheduler::Schedule").values():
        text = schedule["Properties"]["Target"]["Input"]
        for attribute, value in attributes.items():
            text = text.replace(attribute, value)
        payload: dict[str, Any] = json.loads(text)
        if payload.get("policy") == policy:
            return payload
    raise LookupError(policy)


# --- the tour ------------------------------------------------------------------------------------


@dataclass
class Context:
    function_name: str = "snapset"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{MOTO_ACCOUNT}:function:snapset"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def _event(name: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return {**event, **changes}


def _function_environment(
    s: Synth, topic_arn: str, table: str, bucket: str, state_machine_arn: str
) -> dict[str, str]:
    """The synthesized function's variables, its topic, table, bucket and state machine
    references resolved."""
    env = {}
    for key, value in the_function(s)["Properties"]["Environment"]["Variables"].items():
        if isinstance(value, str):
            env[key] = value
        elif key == "SNAPSET_TOPIC_ARN":
            env[key] = topic_arn
        elif key == "SNAPSET_IDEMPOTENCY_TABLE":
            env[key] = table
        elif key == "SNAPSET_REPORT_BUCKET":
            env[key] = bucket
        elif key == "SNAPSET_STATE_MACHINE_ARN":
            env[key] = state_machine_arn
        else:
            raise AssertionError(f"teach the tour to resolve {key}: {value}")
    return env


def _backdated_sets(ec2: Any, instance_id: str, volume_id: str, policy: str, n: int) -> None:
    """`n` completed sets of `policy`, one and more days old (retention's history)."""
    snapshots = ec2_backends[MOTO_ACCOUNT][REGION].snapshots
    for age in range(1, n + 1):
        tags = {
            "snapset:policy": policy,
            "snapset:trigger-id": f"{policy}@old-{age}",
            "snapset:instance-id": instance_id,
        }
        sid = ec2.create_snapshot(
            VolumeId=volume_id,
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )["SnapshotId"]
        snapshots[sid].start_time = datetime.now(UTC) - timedelta(days=age)


def _fan_out(
    ec2: Any,
    sfn: Any,
    machine: str,
    instance_id: str,
    monkeypatch: pytest.MonkeyPatch,
    recorder: Recorder,
) -> None:
    """A run handed off (1% of EC2's buckets, 30 s of invocation: two instances do not fit),
    then the tasks its execution sends: a batch, its retention, the aggregation."""
    other = launch_instance(ec2, tags={"Backup": "fanned"})
    monkeypatch.setenv("SNAPSET_EC2_API_SHARE", "0.01")
    handler_module.settings.cache_clear()
    payload = {"policy": "nightly-app", "instance_ids": [instance_id, other.instance_id]}
    with recorder.recording():
        answer = handler_module.handler(payload, Context(remaining_ms=30_000))
    assert answer["status"] == "handed_off", answer
    [execution] = sfn.list_executions(stateMachineArn=machine)["executions"]
    run = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])["run"]
    run = {**run, "worker_share": 0.5, "retention": True}
    batch = {"index": 0, "instance_ids": [instance_id, other.instance_id]}
    with recorder.recording():
        created = handler_module.handler(
            {"snapset_task": "batch", "run": run, "batch": batch}, Context()
        )
        retained = handler_module.handler(
            {"snapset_task": "retain", "run": run, "batch": batch}, Context()
        )
        handler_module.handler(
            {"snapset_task": "aggregate", "run": run, "created": [created], "retained": [retained]},
            Context(),
        )
    # the trigger delivered again after its execution closed: it reports that execution
    sfn.stop_execution(executionArn=execution["executionArn"])
    with recorder.recording():
        again = handler_module.handler(payload, Context(remaining_ms=30_000))
    assert again["duplicate"] is True, again
    monkeypatch.delenv("SNAPSET_EC2_API_SHARE")
    handler_module.settings.cache_clear()


def _scripts(s: Synth, ec2: Any, recorder: Recorder) -> None:
    """The policy with pre and post scripts runs them through SSM around its CreateSnapshots."""
    boto3.client("ssm", region_name=REGION).create_document(
        Name="snapset-fsfreeze",
        Content=(ROOT / "examples" / "ssm" / "snapset-fsfreeze.yaml").read_text(),
        DocumentType="Command",
        DocumentFormat="YAML",
    )
    db = launch_instance(ec2, tags={"Backup": "db"})
    with recorder.recording():
        report = handler_module.handler(schedule_input(s, "db-consistent"), Context())
    [outcome] = report["instances"]
    assert outcome["instance_id"] == db.instance_id
    assert outcome["consistency"] == "application", outcome


def sweep_input(s: Synth) -> dict[str, Any]:
    """The deployed copy sweep schedule's input."""
    [payload] = [
        json.loads(schedule["Properties"]["Target"]["Input"])
        for schedule in s.resources("AWS::Scheduler::Schedule").values()
        if "copy_sweep" in json.loads(schedule["Properties"]["Target"]["Input"])
    ]
    return payload


def _copies(s: Synth, ec2: Any, recorder: Recorder) -> None:
    """The policy with copies and a share: its set's completion event shares the set and starts
    its copies, and the copy sweep reports them once completed and runs each destination's
    retention, then tags the set done."""
    dr = launch_instance(ec2, tags={"Backup": "dr"})
    with recorder.recording():
        handler_module.handler(schedule_input(s, "dr-nightly"), Context())
    if (completer := ec2_snapshots.installed_completer()) is not None:
        completer.complete_all()  # the faithful CreateSnapshots (tests/unit) leaves sets pending
    mine = [{"Name": "tag:snapset:instance-id", "Values": [dr.instance_id]}]
    snaps = ec2.describe_snapshots(Filters=mine)["Snapshots"]
    event = _event("ebs-multi-volume-completion-succeeded")
    event["resources"] = [f"arn:aws:ec2::{REGION}:snapshot/{x['SnapshotId']}" for x in snaps]
    event["detail"]["snapshots"] = [
        {
            "snapshot_id": f"arn:aws:ec2::{REGION}:snapshot/{x['SnapshotId']}",
            "source": f"arn:aws:ec2::{REGION}:volume/{x['VolumeId']}",
            "status": "completed",
        }
        for x in snaps
    ]
    with recorder.recording():
        completed = handler_module.handler(rule_input(s, event), Context())
        swept = handler_module.handler(sweep_input(s), Context())
    [report] = completed["reports"]
    assert report["shares"]["shared"], report
    assert swept["reported"] == 1, swept
    done = {
        t["Value"]
        for x in ec2.describe_snapshots(Filters=mine)["Snapshots"]
        for t in x["Tags"]
        if t["Key"] == "snapset:copies"
    }
    assert done == {"done"}


def rule_input(s: Synth, event: dict[str, Any]) -> Any:
    """What the deployed rule that matches `event` delivers to the function."""
    [payload] = [
        apply_target_input(target, event, f"arn:aws:events:::rule/{name}", name)
        for name, rule in s.resources("AWS::Events::Rule").items()
        if event_matches(rule["Properties"]["EventPattern"], event)
        for target in rule["Properties"]["Targets"]
    ]
    return payload


def tour(s: Synth, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, extra: Path | None) -> None:
    """Run the handler through its paths, recording its calls."""
    ec2_images.install()  # snapshot locks and AMI filters, which retention asks about
    ssm_commands.install()  # Run Command's lifecycle and DescribeInstanceInformation (scripts)
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        topic_arn = boto3.client("sns", region_name=REGION).create_topic(Name="r")["TopicArn"]
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName="idempotency",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        boto3.client("s3", region_name=REGION).create_bucket(Bucket="reports")
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(
            name="fan-out",
            definition=json.dumps({"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}),
            roleArn=f"arn:aws:iam::{MOTO_ACCOUNT}:role/fan-out",
        )["stateMachineArn"]
        env = _function_environment(s, topic_arn, "idempotency", "reports", machine)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        nightly = launch_instance(
            ec2,
            tags={"Backup": "nightly", "Environment": "prod", "SnapshotOnStop": "true"},
            data_volumes=[DataVolume(tags={"Disk": "data"})],
        )
        _backdated_sets(ec2, nightly.instance_id, nightly.volume_ids[-1], "nightly-app", 9)
        payload = schedule_input(s, "nightly-app")
        handler_module.settings.cache_clear()
        handler_module.session.cache_clear()
        state_change = _event("ec2-instance-state-change")
        state_change["detail"] = {"instance-id": nightly.instance_id, "state": "stopped"}
        completion = _event("ebs-multi-volume-completion-succeeded")
        mine = [{"Name": "tag:snapset:instance-id", "Values": [nightly.instance_id]}]
        try:
            with recorder.recording():
                run = handler_module.handler(payload, Context())
                handler_module.handler(payload, Context())  # a redelivery
            ec2.stop_instances(InstanceIds=[nightly.instance_id])
            with recorder.recording():
                handler_module.handler(rule_input(s, state_change), Context())
            completion["resources"] = [
                f"arn:aws:ec2::{REGION}:snapshot/{snap['SnapshotId']}"
                for snap in ec2.describe_snapshots(Filters=mine)["Snapshots"]
            ]
            with recorder.recording():
                handler_module.handler(rule_input(s, completion), Context())
                handler_module.handler(
                    {"policy": "adhoc", "instance_ids": [nightly.instance_id]}, Context()
                )
                if extra is not None:  # a module of the runtime package, for the negative test
                    exec(compile(extra.read_text(), str(extra), "exec"), {"__name__": "snapset.x"})
            _fan_out(ec2, sfn, machine, nightly.instance_id, monkeypatch, recorder)
            _scripts(s, ec2, recorder)
            _copies(s, ec2, recorder)
        finally:
            handler_module.settings.cache_clear()
            handler_module.session.cache_clear()
        [outcome] = run["instances"]
        assert outcome["retention"]["deleted"], "the tour's retention deleted nothing"


@pytest.fixture(scope="module")
def s() -> Synth:
    return synth(nag=False)


@pytest.fixture(scope="module")
def toured(s: Synth) -> set[str]:
    with pytest.MonkeyPatch.context() as monkeypatch, recorded_calls() as recorder:
        tour(s, recorder, monkeypatch, None)
    return recorder.calls


def required(calls: set[str]) -> set[str]:
    return calls.union(*(IMPLIED.get(c, set()) for c in calls))


def test_the_tour_records_the_runs_calls(toured: set[str]) -> None:
    assert {
        "ec2:CreateSnapshots",
        "ec2:DescribeInstances",
        "ec2:DescribeSnapshots",
        "ec2:DeleteSnapshot",
        "ec2:DescribeImages",
        "ec2:DescribeLockedSnapshots",
        "sns:Publish",
        "dynamodb:PutItem",
        "states:StartExecution",
        "states:DescribeExecution",
        "s3:GetObject",
        "s3:PutObject",
        "ssm:DescribeInstanceInformation",
        "ssm:SendCommand",
        "ssm:ListCommandInvocations",
        "ec2:CopySnapshot",
        "ec2:ModifySnapshotAttribute",
        "ec2:CreateTags",
    } <= toured


def test_every_call_is_granted(s: Synth, toured: set[str]) -> None:
    missing = sorted(required(toured) - granted_actions(s))
    assert not missing, f"the function calls what its role does not grant: {missing}"


def test_the_role_grants_nothing_the_function_does_not_call(s: Synth, toured: set[str]) -> None:
    extra = granted_actions(s) - required(toured) - set(PLATFORM) - set(NOT_TOURED)
    assert not extra, f"the role grants actions the function never calls: {sorted(extra)}"


def test_the_hand_lists_are_really_granted(s: Synth) -> None:
    assert set(PLATFORM) | set(NOT_TOURED) <= granted_actions(s)


def test_a_call_through_any_client_is_recorded(s: Synth, tmp_path: Path) -> None:
    """A client under any name, built anywhere (here: a runtime module's private attribute)."""
    extra = tmp_path / "probe.py"
    extra.write_text(
        "import boto3\n"
        "class Wiper:\n"
        "    def __init__(self):\n"
        "        self._c = boto3.session.Session().client('ec2', region_name='us-east-1')\n"
        "    def wipe(self):\n"
        "        self._c.delete_volume(VolumeId='vol-12345678')\n"
        "try:\n"
        "    Wiper().wipe()\n"
        "except Exception:\n"
        "    pass\n"
    )
    with pytest.MonkeyPatch.context() as monkeypatch, recorded_calls() as recorder:
        tour(s, recorder, monkeypatch, extra)
    assert "ec2:DeleteVolume" in recorder.calls
    assert "ec2:DeleteVolume" not in granted_actions(s)  # so test_every_call_is_granted fails
