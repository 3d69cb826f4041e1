"""Stateful resources, what is attached to them, and the function keep the logical ids deployed
stacks already have, whatever construct now holds them: a changed id would make CloudFormation
replace (and empty) the resource, or delete the old attachment after the new one was set."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from infra_support import Synth, example_config, synth

from infra.logical_ids import cdk_logical_id

# The ids the stack had before the constructs were split by concern (one construct held all).
STATEFUL = {
    "SnapsetTopicKey6C445C0D": "AWS::KMS::Key",
    "SnapsetTopic3ABDBC54": "AWS::SNS::Topic",
    "SnapsetIdempotencyTable95404CC0": "AWS::DynamoDB::Table",
    "SnapsetFunctionDlq1DD711A1": "AWS::SQS::Queue",
    "SnapsetSchedulerDlq4A1C152D": "AWS::SQS::Queue",
    "SnapsetRulesDlq1153AF7F": "AWS::SQS::Queue",
    "SnapsetLogs8F54DB25": "AWS::Logs::LogGroup",
    "SnapsetTopicopsexamplecomECC97009": "AWS::SNS::Subscription",
}
# Attachments to the resources above (see infra.logical_ids), and the function.
ATTACHED = {
    "SnapsetTopicPolicy9DE8EB0B": "AWS::SNS::TopicPolicy",
    "SnapsetSubscription09FF69001": "AWS::SNS::Subscription",
    "SnapsetSubscription1ACD5650D": "AWS::SNS::Subscription",
    "SnapsetFunctionDlqPolicy2280FB33": "AWS::SQS::QueuePolicy",
    "SnapsetSchedulerDlqPolicyCCBACCAF": "AWS::SQS::QueuePolicy",
    "SnapsetRulesDlqPolicy203F4EEC": "AWS::SQS::QueuePolicy",
    "SnapsetFunction003C2387": "AWS::Lambda::Function",
    "SnapsetFunctionEventInvokeConfigA9013228": "AWS::Lambda::EventInvokeConfig",
}


@pytest.fixture(scope="module")
def s() -> Synth:
    config: dict[str, Any] = example_config()
    config["notification_emails"] = ["ops@example.com"]
    config["subscriptions"] = [
        {"protocol": "sqs", "endpoint": "arn:aws:sqs:eu-central-1:123456789012:ops"},
        {"protocol": "https", "endpoint": "https://hooks.example.com/snapset"},
    ]
    return synth(config, nag=False)


def test_stateful_resources_keep_their_logical_ids(s: Synth) -> None:
    resources = s.raw["Resources"]
    assert {k: resources[k]["Type"] for k in STATEFUL if k in resources} == STATEFUL


def test_attached_resources_and_the_function_keep_their_logical_ids(s: Synth) -> None:
    resources = s.raw["Resources"]
    assert {k: resources[k]["Type"] for k in ATTACHED if k in resources} == ATTACHED
    # nothing else of these types is left at a new id
    kinds = set(ATTACHED.values())
    assert {k for k, r in resources.items() if r["Type"] in kinds} == set(ATTACHED) | {
        "SnapsetTopicopsexamplecomECC97009"
    }


@pytest.mark.parametrize(
    "path", [["A", "B", "Resource"], ["Snapset", "Default", "Queue", "Resource"], ["Top", "Top"]]
)
def test_the_id_function_is_cdks_own(path: list[str]) -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    scope: Construct = stack
    for component in path[:-1]:
        scope = Construct(scope, component)
    queue = sqs.CfnQueue(scope, path[-1])
    assert stack.get_logical_id(queue) == cdk_logical_id(path)
