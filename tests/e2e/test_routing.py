"""Routing: EventBridge pattern matching and target input, and the deployed rules' behaviour."""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e_support import ACCOUNT, STOP_TAGS, Fleet, unique_time
from moto.events.models import EventPattern

from localaws import LocalAws
from localaws.deploy import Deployment
from localaws.event_patterns import UnsupportedPattern, apply_target_input, event_matches, json_path
from localaws.report_inbox import ReportInbox
from localaws.router import Router, instance_state_change_event
from snapset.policy import TriggerType
from snapset.triggers import parse_request

pytestmark = pytest.mark.e2e

EVENT = instance_state_change_event(
    "i-0123456789abcdef0", "stopped", account=ACCOUNT, region="us-east-1", event_id="e-1"
)
PATTERNS_AND_EXPECTED = [
    ({"source": ["aws.ec2"]}, True),
    ({"source": ["aws.s3"]}, False),
    ({"detail": {"state": ["stopped", "stopping"]}}, True),
    ({"detail": {"state": ["running"]}}, False),
    ({"detail": {"state": [{"anything-but": ["running"]}]}}, True),
    ({"detail": {"state": [{"anything-but": {"prefix": "stop"}}]}}, False),
    ({"detail": {"instance-id": [{"prefix": "i-0123"}]}}, True),
    ({"detail": {"instance-id": [{"suffix": "ef0"}]}}, True),
    ({"detail": {"nope": [{"exists": False}]}}, True),
    ({"detail": {"nope": [{"exists": True}]}}, False),
    ({"detail": {"state": [{"equals-ignore-case": "STOPPED"}]}}, True),
    ({"detail": {"state": [{"wildcard": "st*ed"}]}}, True),
    ({"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"]}, True),
    (
        {
            "source": ["aws.ec2"],
            "$or": [{"detail-type": ["x"]}, {"detail": {"state": ["stopped"]}}],
        },
        True,
    ),
    (
        {
            "source": ["aws.ec2"],
            "$or": [{"detail-type": ["x"]}, {"detail": {"state": ["running"]}}],
        },
        False,
    ),
    ({"detail": {"state": {"nested": ["x"]}}}, False),
    ({"missing": {"deeper": [{"exists": False}]}}, True),
]


@pytest.mark.parametrize(("pattern", "expected"), PATTERNS_AND_EXPECTED)
def test_event_patterns_match_as_eventbridge(pattern: dict[str, Any], expected: bool) -> None:
    assert event_matches(pattern, EVENT) is expected


@pytest.mark.parametrize(("pattern", "expected"), PATTERNS_AND_EXPECTED[:15])
def test_the_local_matcher_agrees_with_motos_bus_matcher(
    pattern: dict[str, Any], expected: bool
) -> None:
    # moto's own bus uses EventPattern for PutEvents delivery; both must agree where moto is right
    assert EventPattern.load(json.dumps(pattern)).matches_event(EVENT) is expected


def test_numeric_and_arrays() -> None:
    event = {"detail": {"size": 10, "tags": ["a", "b"]}}
    assert event_matches({"detail": {"size": [{"numeric": [">", 5, "<=", 10]}]}}, event)
    assert not event_matches({"detail": {"size": [{"numeric": ["<", 5]}]}}, event)
    assert event_matches({"detail": {"tags": ["b"]}}, event)
    assert not event_matches({"detail": {"size": ["10"]}}, event)  # types are not coerced


def test_unknown_filters_raise_rather_than_guess() -> None:
    with pytest.raises(UnsupportedPattern):
        event_matches({"source": [{"something-new": 1}]}, EVENT)


def test_input_transformer_fills_paths_inside_and_outside_strings() -> None:
    target = {
        "InputTransformer": {
            "InputPathsMap": {
                "id": "$.detail.instance-id",
                "state": "$.detail.state",
                "r": "$.resources",
            },
            "InputTemplate": '{"text": "<id> is <state>", "state": <state>, "r": <r>, '
            '"rule": "<aws.events.rule-name>", "event": <aws.events.event.json>}',
        }
    }
    payload = apply_target_input(target, EVENT, "arn:rule", "my-rule")
    assert payload == {
        "text": "i-0123456789abcdef0 is stopped",
        "state": "stopped",
        "r": EVENT["resources"],
        "rule": "my-rule",
        "event": EVENT,
    }


def test_input_and_input_path_and_default() -> None:
    assert apply_target_input({"Input": '{"a": 1}'}, EVENT, "", "") == {"a": 1}
    assert apply_target_input({"InputPath": "$.detail"}, EVENT, "", "") == EVENT["detail"]
    assert apply_target_input({}, EVENT, "", "") == EVENT
    assert json_path(EVENT, "$.resources[0]") == EVENT["resources"][0]
    assert json_path(EVENT, "$['detail']['state']") == "stopped"
    assert json_path(EVENT, "$.detail.nothing") is None


def test_a_rule_whose_pattern_does_not_match_gets_nothing(
    router: Router, fleet: Fleet, inbox: ReportInbox
) -> None:
    target = fleet.launch(STOP_TAGS)
    before = len(router.invocations)
    running = instance_state_change_event(
        target.instance_id, "running", account=ACCOUNT, region="us-east-1"
    )
    foreign = {**running, "source": "aws.s3", "detail-type": "Object Created"}

    assert router.matching_targets(running) == []
    assert router.route_event(running) == []
    assert router.route_event(foreign) == []
    assert len(router.invocations) == before
    assert inbox.drain() == []


def test_the_deployed_input_transformer_output_parses_as_an_instance_event(
    local_aws: LocalAws, router: Router, deployment: Deployment
) -> None:
    event = instance_state_change_event(
        "i-0123456789abcdef0", "stopped", account=ACCOUNT, region=local_aws.region
    )
    (rule_target,) = router.matching_targets(event)
    payload = apply_target_input(
        rule_target.target, event, rule_target.rule_arn, rule_target.rule_name
    )

    request = parse_request(payload)

    assert request.policy.name == "on-stop"
    assert request.trigger.type is TriggerType.INSTANCE_EVENT
    assert request.trigger.id == event["id"]
    assert request.event_instance_id == "i-0123456789abcdef0"
    assert rule_target.rule_name == deployment.physical_id(
        "SnapsetTriggersInstanceRule1onstop0859D0E5"
    )


def test_the_deployed_schedule_input_parses_with_scheduler_attributes(router: Router) -> None:
    schedule = router.schedule_for("nightly-app")
    when = unique_time()
    text = schedule["Target"]["Input"]
    assert "<aws.scheduler.scheduled-time>" in text
    filled = text.replace("<aws.scheduler.scheduled-time>", f"{when:%Y-%m-%dT%H:%M:%SZ}").replace(
        "<aws.scheduler.schedule-arn>", schedule["Arn"]
    )

    request = parse_request(json.loads(filled))

    assert request.trigger.type is TriggerType.SCHEDULE
    assert request.trigger.id == f"nightly-app@{when:%Y-%m-%dT%H:%M:%SZ}"
    assert request.policy.exclude_boot_volume is True
