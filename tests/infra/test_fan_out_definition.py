"""The fan-out state machine's definition: retention maps the batches beside their creation,
each retain task waiting for its own batch, and the aggregator gets both phases' results."""

from __future__ import annotations

import json
from typing import Any

import pytest
from infra_support import Synth, example_config, synth

from infra.fan_out import CREATION_PENDING, INCOMPLETE_RUN, INVALID_INPUT


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    s: Synth = synth(example_config(), nag=False)
    raw = s.only("AWS::StepFunctions::StateMachine")["Properties"]["DefinitionString"]
    parts = raw["Fn::Join"][1] if isinstance(raw, dict) else [raw]
    # The tokens (the function's ARN, the bucket's name) stand in as one string.
    rendered: dict[str, Any] = json.loads(
        "".join(p if isinstance(p, str) else "TOKEN" for p in parts)
    )
    return rendered


def _only_state(states: dict[str, Any], type_: str) -> dict[str, Any]:
    [state] = [v for v in states.values() if v["Type"] == type_]
    return state


def _task(map_state: dict[str, Any]) -> dict[str, Any]:
    return _only_state(map_state["ItemProcessor"]["States"], "Task")


def test_creation_and_retention_run_side_by_side_then_one_aggregation(
    definition: dict[str, Any],
) -> None:
    states = definition["States"]
    phases = states[definition["StartAt"]]
    assert phases["Type"] == "Parallel"
    assert phases["ResultSelector"] == {"created.$": "$[0]", "retained.$": "$[1]"}
    assert phases["ResultPath"] == "$.phases"
    create, retention = phases["Branches"]
    create_map = create["States"][create["StartAt"]]
    assert create_map["Type"] == "Map"
    assert _task(create_map)["Parameters"]["snapset_task"] == "batch"
    choice = retention["States"][retention["StartAt"]]
    assert choice["Type"] == "Choice"
    [when] = choice["Choices"]
    assert when == {"Variable": "$.run.retention", "BooleanEquals": True, "Next": when["Next"]}
    retain_map = retention["States"][when["Next"]]
    assert _task(retain_map)["Parameters"]["snapset_task"] == "retain"
    assert retention["States"][choice["Default"]] == {"Type": "Pass", "Result": [], "End": True}
    aggregate = states[phases["Next"]]
    payload = aggregate["Parameters"]
    assert payload["snapset_task"] == "aggregate"
    assert (payload["created.$"], payload["retained.$"]) == (
        "$.phases.created",
        "$.phases.retained",
    )


def test_a_retain_task_waits_for_its_batch_and_a_create_task_redoes_the_rest(
    definition: dict[str, Any],
) -> None:
    create, retention = definition["States"][definition["StartAt"]]["Branches"]
    choice = retention["States"][retention["StartAt"]]
    retain_task = _task(retention["States"][choice["Choices"][0]["Next"]])
    create_task = _task(create["States"][create["StartAt"]])
    retain_errors = [r["ErrorEquals"] for r in retain_task["Retry"]]
    create_errors = [r["ErrorEquals"] for r in create_task["Retry"]]
    # the first matching retrier is the one used: the catch-all comes last
    assert retain_errors[-1] == create_errors[-1] == ["States.ALL"]
    assert [CREATION_PENDING] in retain_errors
    assert [CREATION_PENDING] not in create_errors
    assert [INCOMPLETE_RUN] in create_errors
    assert [INCOMPLETE_RUN] not in retain_errors
    [waiting] = [r for r in retain_task["Retry"] if r["ErrorEquals"] == [CREATION_PENDING]]
    # long enough for the batch's own retries (30 s, 60 s, 120 s, each with its batch)
    waited, interval = 0.0, float(waiting["IntervalSeconds"])
    for _ in range(waiting["MaxAttempts"]):
        waited += min(interval, waiting["MaxDelaySeconds"])
        interval *= waiting["BackoffRate"]
    assert 10 * 60 < waited < 30 * 60
    for task in (retain_task, create_task):
        assert {"ErrorEquals": [INVALID_INPUT], "MaxAttempts": 0} in task["Retry"]
