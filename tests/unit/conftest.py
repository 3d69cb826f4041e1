from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localaws import ec2_images
from localaws.ec2_snapshots import SnapshotCompleter, install, installed_completer
from localaws.events import EventSink
from localaws.topic_queue import drain_notifications, subscribe_queue
from snapset import handler as handler_module
from snapset.settings import (
    ENV_DEPLOYED_COPIES,
    ENV_DEPLOYED_POLICIES,
    ENV_IDEMPOTENCY_TABLE,
    ENV_REPORT_BUCKET,
    ENV_STATE_MACHINE_ARN,
    ENV_TOPIC_ARN,
)

IDEMPOTENCY_TABLE = "snapset-idempotency"
REPORT_BUCKET = "snapset-reports"
# moto in-process runs no execution: StartExecution only records it, which is what unit tests
# of the hand-off read back.
FAN_OUT_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})

# Plain moto ignores ExcludeDataVolumeIds and CopyTagsFromSource; the local AWS's faithful
# CreateSnapshots fixes that in-process too. Snapshots stay pending (completed on request only).
# mutmut runs pytest more than once in one process and this module may run again: keep the
# completer installed first, which the tests' sets register with.
COMPLETER = installed_completer() or SnapshotCompleter(EventSink(), lambda: (), delay=None)
install(COMPLETER)
ec2_images.install()  # snapshot locks and AMI block-device mappings, which retention checks


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that Powertools and the handler read."""

    function_name: str = "snapset"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:snapset"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class Aws:
    ec2: Any
    sns: Any
    sqs: Any
    topic_arn: str
    queue_url: str
    s3: Any
    sfn: Any
    state_machine_arn: str

    def executions(self) -> list[dict[str, Any]]:
        """The fan-out state machine's executions, each with its parsed input."""
        listed = self.sfn.list_executions(stateMachineArn=self.state_machine_arn)["executions"]
        return [
            {
                **e,
                "input": json.loads(
                    self.sfn.describe_execution(executionArn=e["executionArn"])["input"]
                ),
            }
            for e in listed
        ]

    def full_reports(self) -> list[dict[str, Any]]:
        """Every full report stored in the report bucket so far, in key order."""
        listed = self.s3.list_objects_v2(Bucket=REPORT_BUCKET).get("Contents", [])
        return [
            json.loads(self.s3.get_object(Bucket=REPORT_BUCKET, Key=o["Key"])["Body"].read())
            for o in listed
        ]

    def messages(self) -> list[dict[str, Any]]:
        """Every SNS notification delivered to the subscribed queue so far (drained)."""
        return drain_notifications(self.sqs, self.queue_url)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    # moto loads ~1300 public AMIs per fresh EC2 backend unless told not to; the fleets use one
    # image id that moto accepts without them.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        topic_arn = sns.create_topic(Name="snapset-reports")["TopicArn"]
        queue_url, _ = subscribe_queue(sns, sqs, topic_arn, "reports")
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName=IDEMPOTENCY_TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=REPORT_BUCKET)
        monkeypatch.setenv(ENV_TOPIC_ARN, topic_arn)
        monkeypatch.setenv(ENV_IDEMPOTENCY_TABLE, IDEMPOTENCY_TABLE)
        monkeypatch.setenv(ENV_REPORT_BUCKET, REPORT_BUCKET)
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine_arn = sfn.create_state_machine(
            name="snapset-fan-out",
            definition=FAN_OUT_DEFINITION,
            roleArn="arn:aws:iam::123456789012:role/snapset-fan-out",
        )["stateMachineArn"]
        monkeypatch.setenv(ENV_STATE_MACHINE_ARN, machine_arn)
        # No deployed policy by default: a test that runs retention deploys its policy.
        monkeypatch.setenv(ENV_DEPLOYED_POLICIES, "{}")
        monkeypatch.setenv(ENV_DEPLOYED_COPIES, "{}")
        handler_module.settings.cache_clear()
        COMPLETER.reset()
        yield Aws(
            boto3.client("ec2", region_name="us-east-1"),
            sns,
            sqs,
            topic_arn,
            queue_url,
            s3,
            sfn,
            machine_arn,
        )
        handler_module.settings.cache_clear()


@pytest.fixture
def context() -> LambdaContext:
    return LambdaContext()


def deploy_policies(monkeypatch: pytest.MonkeyPatch, policies: dict[str, Any]) -> None:
    """As the stack would: the deployed policies' names and retention, for the next invocation."""
    monkeypatch.setenv(ENV_DEPLOYED_POLICIES, json.dumps(policies))
    handler_module.settings.cache_clear()
