"""Stateful resources keep the logical ids deployed stacks already have, whatever construct now
holds them: a changed id would make CloudFormation replace (and empty) the resource."""

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


@pytest.fixture(scope="module")
def s() -> Synth:
    config: dict[str, Any] = example_config()
    config["notification_emails"] = ["ops@example.com"]
    return synth(config, nag=False)


def test_stateful_resources_keep_their_logical_ids(s: Synth) -> None:
    resources = s.raw["Resources"]
    assert {k: resources[k]["Type"] for k in STATEFUL if k in resources} == STATEFUL


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
