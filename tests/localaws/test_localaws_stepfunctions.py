"""Step Functions on the local AWS: moto's ASL interpreter, Lambda tasks run by the Router.

A tiny function (its zip in S3, created outside any template) plans, processes the items of a
Distributed Map read from S3, and aggregates; the state machine has its own role, and IAM is
enforced, as in the e2e tests.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from localaws import LocalAws
from localaws.cfn_resolver import Resolver
from localaws.deploy import Deployment
from localaws.router import Router
from localaws.stepfunctions_map import batches, exceeds_tolerance, rewrite_definition

BUCKET = "sfn-test-items"
FUNCTION = "sfn-test-function"
ACCOUNT = "123456789012"

HANDLER = """
import os
import time


def handler(event, context):
    action = event.get("action")
    if action == "plan":
        return {"bucket": event["bucket"], "key": event["key"]}
    if action == "aggregate":
        ok = [r for r in event["results"] if r and "Error" not in r and "error" not in r]
        ids = sorted(n for r in ok for n in r.get("ids", [r.get("id")]))
        return {"processed": ids, "failed": len(event["results"]) - len(ok)}
    if "Items" in event:
        failed = [i["item"]["id"] for i in event["Items"] if i["item"].get("fail")]
        if failed:
            raise ValueError(f"items {failed} failed")
        return {"ids": [i["item"]["id"] for i in event["Items"]], "batch": event.get("BatchInput")}
    item = event["item"]
    if item.get("fail"):
        raise ValueError(f"item {item['id']} failed")
    start = time.time()
    time.sleep(item.get("sleep", 0))
    return {"id": item["id"], "index": event["index"], "pid": os.getpid(), "start": start,
            "end": time.time()}
"""

# what the state machine's role needs here: its Lambda tasks, the ItemReader's GetObject, the
# Distributed Map's child executions
GRANTS = ("lambda:InvokeFunction", "s3:GetObject", "states:StartExecution")


def _trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
            ],
        }
    )


def _code() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HANDLER)
    return buffer.getvalue()


@dataclass
class Stack:
    aws: LocalAws
    function_arn: str
    role_name: str
    role_arn: str
    sfn: Any

    def put_items(self, items: list[dict[str, Any]], key: str = "items.json") -> str:
        self.aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=json.dumps(items))
        return key

    def state_machine(self, definition: dict[str, Any], name: str = "fan-out") -> str:
        arn: str = self.sfn.create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=self.role_arn
        )["stateMachineArn"]
        return arn

    def run(
        self, state_machine_arn: str, payload: Any, name: str = "run-1", timeout: float = 60.0
    ) -> dict[str, Any]:
        arn = self.sfn.start_execution(
            stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload)
        )["executionArn"]
        return self.aws.wait_for_execution(arn, timeout)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalAws]:
    aws = LocalAws(snapshot_delay=None, enforce_iam=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        aws.start()
    try:
        yield aws
    finally:
        aws.stop()


def _stack(aws: LocalAws, grants: tuple[str, ...] = GRANTS, timeout: int = 10) -> Stack:
    iam, s3, lam = aws.client("iam"), aws.client("s3"), aws.client("lambda")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="code.zip", Body=_code())
    function_role = iam.create_role(
        RoleName="sfn-test-function", AssumeRolePolicyDocument=_trust("lambda.amazonaws.com")
    )["Role"]["Arn"]
    role = iam.create_role(
        RoleName="sfn-test-states", AssumeRolePolicyDocument=_trust("states.amazonaws.com")
    )["Role"]
    if grants:
        iam.put_role_policy(
            RoleName=role["RoleName"],
            PolicyName="grants",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": list(grants), "Resource": "*"}],
                }
            ),
        )
    function = lam.create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=function_role,
        Handler="app.handler",
        Code={"S3Bucket": BUCKET, "S3Key": "code.zip"},
        Timeout=timeout,
    )
    return Stack(
        aws, function["FunctionArn"], role["RoleName"], role["Arn"], aws.client("stepfunctions")
    )


def _deployment(aws: LocalAws, function: str = FUNCTION) -> Deployment:
    """A minimal deployment naming the function and its code: what a Router reads."""
    template = {
        "Resources": {
            "Function": {
                "Type": "AWS::Lambda::Function",
                "Properties": {"Code": {"S3Bucket": BUCKET, "S3Key": "code.zip"}},
            }
        }
    }
    physical_ids = {"Function": function}
    resolver = Resolver(
        aws, template, physical_ids, stack_name="sfn-test", stack_id="sfn-test", account=ACCOUNT
    )
    return Deployment(
        aws,
        "sfn-test",
        "sfn-test",
        template,
        physical_ids,
        {"FunctionName": function},
        [],
        resolver,
    )


@pytest.fixture
def aws(server: LocalAws) -> LocalAws:
    server.reset()
    return server


@pytest.fixture
def stack(aws: LocalAws) -> Stack:
    return _stack(aws)


@pytest.fixture
def router(aws: LocalAws, stack: Stack) -> Iterator[Router]:
    routed = Router(aws, _deployment(aws))
    yield routed
    routed.close()


def _item_task(function_arn: str, **extra: Any) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": function_arn, "Payload.$": "$"},
        "OutputPath": "$.Payload",
        "End": True,
        **extra,
    }


def _fan_out(
    function_arn: str, item_task: dict[str, Any], *, max_concurrency: int = 3, **map_fields: Any
) -> dict[str, Any]:
    """Plan (a plain function ARN as Resource), a Distributed Map over S3, aggregate."""
    return {
        "StartAt": "Plan",
        "States": {
            "Plan": {
                "Type": "Task",
                "Resource": function_arn,
                "Parameters": {"action": "plan", "bucket": BUCKET, "key.$": "$.key"},
                "Next": "Items",
            },
            "Items": {
                "Type": "Map",
                "MaxConcurrency": max_concurrency,
                "ItemReader": {
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"},
                },
                "ItemSelector": {"item.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index"},
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                    "StartAt": "Work",
                    "States": {"Work": item_task, "Caught": {"Type": "Pass", "End": True}},
                },
                "ResultPath": "$.results",
                "Next": "Aggregate",
                **map_fields,
            },
            "Aggregate": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": function_arn,
                    "Payload": {"action": "aggregate", "results.$": "$.results"},
                },
                "OutputPath": "$.Payload",
                "End": True,
            },
        },
    }


def _item_invocations(router: Router) -> list[Any]:
    return [i for i in router.invocations if "item" in (i.payload or {})]


def _max_overlap(results: list[dict[str, Any]]) -> int:
    edges = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_every_item_runs_through_the_function_concurrently(stack: Stack, router: Router) -> None:
    key = stack.put_items([{"id": i, "sleep": 0.5} for i in range(6)])
    machine = stack.state_machine(_fan_out(stack.function_arn, _item_task(stack.function_arn)))

    described = stack.run(machine, {"key": key})

    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == {"processed": [0, 1, 2, 3, 4, 5], "failed": 0}
    assert {i.source for i in router.invocations} == {"states"}
    assert [i.payload["action"] for i in router.invocations if "action" in i.payload] == [
        "plan",
        "aggregate",
    ]
    items = _item_invocations(router)
    assert sorted(json.dumps(i.payload, sort_keys=True) for i in items) == sorted(
        json.dumps({"item": {"id": n, "sleep": 0.5}, "index": n}, sort_keys=True) for n in range(6)
    )
    # MaxConcurrency 3: items really overlapped, never more than three at once
    assert 2 <= _max_overlap([i.result for i in items]) <= 3


def test_a_failing_item_is_retried_as_configured_then_caught(
    aws: LocalAws, stack: Stack, router: Router
) -> None:
    aws.set_states_wait_scale(0)
    key = stack.put_items([{"id": 0}, {"id": 1, "fail": True}, {"id": 2}])
    task = _item_task(
        stack.function_arn,
        Retry=[
            {
                "ErrorEquals": ["ValueError"],
                "IntervalSeconds": 30,
                "MaxAttempts": 2,
                "BackoffRate": 2.0,
            }
        ],
        Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
    )
    machine = stack.state_machine(_fan_out(stack.function_arn, task))

    started = time.monotonic()
    described = stack.run(machine, {"key": key})

    assert time.monotonic() - started < 10  # 30 s + 60 s of backoff, not slept
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == {"processed": [0, 2], "failed": 1}
    failed = [i for i in _item_invocations(router) if i.payload["item"].get("fail")]
    assert len(failed) == 3  # the attempt and MaxAttempts retries
    assert all(i.error is not None and i.error.error_type == "ValueError" for i in failed)
    assert aws.states_waits() == [
        {"kind": "retry", "seconds": 30.0},
        {"kind": "retry", "seconds": 60.0},
    ]


def test_the_catch_gets_the_function_error_as_lambda_reports_it(
    aws: LocalAws, stack: Stack, router: Router
) -> None:
    key = stack.put_items([{"id": 7, "fail": True}])
    task = _item_task(
        stack.function_arn,
        Catch=[{"ErrorEquals": ["ValueError"], "ResultPath": "$.error", "Next": "Caught"}],
    )
    machine = stack.state_machine(_fan_out(stack.function_arn, task))

    described = stack.run(machine, {"key": key})

    assert described["status"] == "SUCCEEDED", described
    [aggregate] = [i for i in router.invocations if i.payload.get("action") == "aggregate"]
    [caught] = aggregate.payload["results"]
    assert caught["error"]["Error"] == "ValueError"
    cause = json.loads(caught["error"]["Cause"])
    assert cause["errorType"] == "ValueError"
    assert cause["errorMessage"] == "item 7 failed"
    assert any("raise ValueError" in line for line in cause["stackTrace"])


def test_a_function_timeout_is_sandbox_timedout_to_the_state_machine(aws: LocalAws) -> None:
    stack = _stack(aws, timeout=1)
    router = Router(aws, _deployment(aws))
    try:
        key = stack.put_items([{"id": 0, "sleep": 3}])
        task = _item_task(
            stack.function_arn,
            Catch=[
                {"ErrorEquals": ["Sandbox.Timedout"], "ResultPath": "$.error", "Next": "Caught"}
            ],
        )
        described = stack.run(stack.state_machine(_fan_out(stack.function_arn, task)), {"key": key})
    finally:
        router.close()
    assert described["status"] == "SUCCEEDED", described
    [aggregate] = [i for i in router.invocations if i.payload.get("action") == "aggregate"]
    [caught] = aggregate.payload["results"]
    assert caught["error"]["Error"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in caught["error"]["Cause"]


def test_full_jitter_and_max_delay_bound_the_backoff(
    aws: LocalAws, stack: Stack, router: Router
) -> None:
    aws.set_states_wait_scale(0)
    key = stack.put_items([{"id": 1, "fail": True}])
    task = _item_task(
        stack.function_arn,
        Retry=[
            {
                "ErrorEquals": ["States.ALL"],
                "IntervalSeconds": 30,
                "MaxAttempts": 3,
                "BackoffRate": 2.0,
                "MaxDelaySeconds": 40,
                "JitterStrategy": "FULL",
            }
        ],
        Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
    )
    machine = stack.state_machine(_fan_out(stack.function_arn, task))

    described = stack.run(machine, {"key": key})

    assert described["status"] == "SUCCEEDED", described
    assert len(_item_invocations(router)) == 4
    waits = aws.states_waits()
    assert [w["kind"] for w in waits] == ["retry"] * 3
    assert all(0 <= w["seconds"] <= 40 for w in waits)  # 30, 60, 120 capped at 40, jittered


def test_waits_sleep_scaled_and_are_recorded_unscaled(aws: LocalAws, stack: Stack) -> None:
    machine = stack.state_machine(
        {"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 1, "End": True}}}
    )
    started = time.monotonic()
    assert stack.run(machine, {}, name="real-time")["status"] == "SUCCEEDED"
    assert time.monotonic() - started >= 1.0  # the default scale is real time

    aws.set_states_wait_scale(0.001)
    long_wait = stack.state_machine(
        {"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 600, "End": True}}},
        name="long-wait",
    )
    assert stack.run(long_wait, {}, name="scaled", timeout=10)["status"] == "SUCCEEDED"
    assert aws.states_waits(drain=True) == [
        {"kind": "wait", "seconds": 1.0},
        {"kind": "wait", "seconds": 600.0},
    ]
    assert aws.states_waits() == []


def _invoke_once(function_arn: str) -> dict[str, Any]:
    task = _item_task(function_arn)
    task["Parameters"] = {"FunctionName": function_arn, "Payload": {"item": {"id": 0}, "index": 0}}
    return {"StartAt": "Invoke", "States": {"Invoke": task}}


def test_a_missing_invoke_grant_fails_the_task_as_lambda_refuses_it(aws: LocalAws) -> None:
    stack = _stack(aws, ("s3:GetObject", "states:StartExecution"))
    router = Router(aws, _deployment(aws))
    try:
        described = stack.run(stack.state_machine(_invoke_once(stack.function_arn)), {})
        key = stack.put_items([{"id": 0}])
        in_map = stack.run(
            stack.state_machine(
                _fan_out(stack.function_arn, _item_task(stack.function_arn)), name="map"
            ),
            {"key": key},
        )
    finally:
        router.close()

    assert described["status"] == "FAILED", described
    assert described["error"] == "Lambda.AccessDeniedException"
    assert described["cause"].startswith(
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{stack.role_name}/localaws-states is "
        f"not authorized to perform: lambda:InvokeFunction (Service: AWSLambda; "
        f"Status Code: 403; Error Code: AccessDeniedException;"
    )
    # the plan task (a plain function ARN) is refused too: nothing ever ran
    assert in_map["status"] == "FAILED", in_map
    assert "not authorized to perform: lambda:InvokeFunction" in in_map["cause"]
    assert router.invocations == []


def test_a_missing_get_object_grant_fails_the_item_reader(aws: LocalAws) -> None:
    stack = _stack(aws, ("lambda:InvokeFunction", "states:StartExecution"))
    router = Router(aws, _deployment(aws))
    try:
        key = stack.put_items([{"id": 0}])
        definition = _fan_out(stack.function_arn, _item_task(stack.function_arn))
        definition["StartAt"] = "Items"  # straight to the Map: its reader first
        described = stack.run(stack.state_machine(definition), {"bucket": BUCKET, "key": key})
    finally:
        router.close()

    assert described["status"] == "FAILED", described
    assert described["error"] == "States.Runtime"  # moto's name (AWS: States.ItemReaderFailed)
    assert "(AccessDenied) when calling the GetObject operation" in described["cause"]
    assert router.invocations == []


def test_a_missing_start_execution_grant_fails_the_distributed_map(aws: LocalAws) -> None:
    stack = _stack(aws, ("lambda:InvokeFunction", "s3:GetObject"))
    router = Router(aws, _deployment(aws))
    try:
        key = stack.put_items([{"id": 0}])
        definition = _fan_out(stack.function_arn, _item_task(stack.function_arn))
        definition["StartAt"] = "Items"
        described = stack.run(stack.state_machine(definition), {"bucket": BUCKET, "key": key})
    finally:
        router.close()

    assert described["status"] == "FAILED", described
    assert described["error"] == "States.Runtime"
    assert described["cause"].endswith(
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{stack.role_name}/localaws-states is not "
        f"authorized to perform: states:StartExecution on resource: "
        f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:fan-out"
    )
    assert router.invocations == []


def test_the_role_is_granted_the_task_runs(aws: LocalAws) -> None:
    """The control for the three tests above: the same definitions with every grant succeed."""
    stack = _stack(aws)
    router = Router(aws, _deployment(aws))
    try:
        described = stack.run(stack.state_machine(_invoke_once(stack.function_arn)), {})
        key = stack.put_items([{"id": 0}])
        definition = _fan_out(stack.function_arn, _item_task(stack.function_arn))
        definition["StartAt"] = "Items"
        in_map = stack.run(
            stack.state_machine(definition, name="map"), {"bucket": BUCKET, "key": key}
        )
    finally:
        router.close()
    assert described["status"] == "SUCCEEDED", described
    assert in_map["status"] == "SUCCEEDED", in_map
    assert len(router.invocations) == 3


def test_without_a_router_a_task_fails_with_a_clear_error(aws: LocalAws, stack: Stack) -> None:
    aws.set_states_no_runtime_timeout(0.5)
    unrelated = Router(aws, _deployment(aws, "another-function"))  # polls, not for this one
    machine = stack.state_machine(
        {
            "StartAt": "Plan",
            "States": {
                "Plan": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": {"FunctionName": stack.function_arn, "Payload": {}},
                    "End": True,
                }
            },
        }
    )
    started = time.monotonic()
    try:
        described = stack.run(machine, {}, timeout=15)
    finally:
        unrelated.close()
    assert time.monotonic() - started < 4  # the 0.5 s set above, not the default 5 s
    assert unrelated.invocations == []
    assert described["status"] == "FAILED"
    assert described["error"] == "Lambda.ServiceException"  # Lambda's own failure, HTTP 500
    assert "no Lambda runtime took the Step Functions task" in described["cause"]


def test_the_newest_router_of_a_function_takes_its_tasks_until_it_closes(
    aws: LocalAws, stack: Stack, router: Router
) -> None:
    machine = stack.state_machine(_invoke_once(stack.function_arn))
    newer = Router(aws, _deployment(aws))
    try:
        assert stack.run(machine, {}, name="while-newer")["status"] == "SUCCEEDED"
    finally:
        newer.close()
    started = time.monotonic()
    assert stack.run(machine, {}, name="after-newer")["status"] == "SUCCEEDED"
    assert time.monotonic() - started < 2.5  # handed back at close, not after LIVE_SECONDS
    assert len(newer.invocations) == 1
    assert len(router.invocations) == 1


def _pause_machine(stack: Stack) -> str:
    return stack.state_machine(
        {"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 600, "End": True}}},
        name="pause",
    )


def test_a_duplicate_name_with_the_same_input_is_the_running_execution(stack: Stack) -> None:
    machine = _pause_machine(stack)
    first = stack.sfn.start_execution(stateMachineArn=machine, name="trigger-1", input='{"a":1}')
    again = stack.sfn.start_execution(stateMachineArn=machine, name="trigger-1", input='{"a":1}')
    assert again["executionArn"] == first["executionArn"]
    assert first["executionArn"].endswith(":pause:trigger-1")
    with pytest.raises(ClientError) as refused:
        stack.sfn.start_execution(stateMachineArn=machine, name="trigger-1", input='{"a":2}')
    assert refused.value.response["Error"]["Code"] == "ExecutionAlreadyExists"
    assert len(stack.sfn.list_executions(stateMachineArn=machine)["executions"]) == 1

    stack.sfn.stop_execution(executionArn=first["executionArn"])
    stopped = stack.aws.wait_for_execution(first["executionArn"], 10)
    assert stopped["status"] == "ABORTED"
    with pytest.raises(ClientError) as closed:  # a closed execution's name is not reusable
        stack.sfn.start_execution(stateMachineArn=machine, name="trigger-1", input='{"a":1}')
    assert closed.value.response["Error"]["Code"] == "ExecutionAlreadyExists"


def test_unnamed_executions_get_their_own_uuid_names(stack: Stack) -> None:
    machine = _pause_machine(stack)
    arns = [stack.sfn.start_execution(stateMachineArn=machine)["executionArn"] for _ in range(2)]
    names = [arn.rsplit(":", 1)[1] for arn in arns]
    assert len(set(names)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", n) for n in names)
    for arn in arns:
        stack.sfn.stop_execution(executionArn=arn)


@pytest.mark.parametrize("name", ["a" * 81, "has space", "colon:name", "slash/name", "brace{"])
def test_a_name_aws_refuses_is_invalid(stack: Stack, name: str) -> None:
    machine = _pause_machine(stack)
    with pytest.raises(ClientError) as refused:
        stack.sfn.start_execution(stateMachineArn=machine, name=name)
    assert refused.value.response["Error"]["Code"] == "InvalidName"


@pytest.mark.parametrize(
    ("tolerance", "status"),
    [
        ({}, "FAILED"),  # AWS's default: no failure tolerated
        ({"ToleratedFailureCount": 1}, "SUCCEEDED"),
        ({"ToleratedFailureCount": 0}, "FAILED"),
        ({"ToleratedFailurePercentage": 25}, "SUCCEEDED"),  # an integer: moto's parser refused it
        ({"ToleratedFailurePercentage": 20}, "FAILED"),
        ({"ToleratedFailureCount": 5, "ToleratedFailurePercentage": 10.0}, "FAILED"),  # either
    ],
)
def test_failed_items_past_the_tolerated_threshold_fail_the_map(
    stack: Stack, router: Router, tolerance: dict[str, Any], status: str
) -> None:
    key = stack.put_items([{"id": 0}, {"id": 1, "fail": True}, {"id": 2}, {"id": 3}])
    machine = stack.state_machine(
        _fan_out(stack.function_arn, _item_task(stack.function_arn), **tolerance)
    )

    described = stack.run(machine, {"key": key})

    assert described["status"] == status, described
    assert len(_item_invocations(router)) == 4  # every item ran (AWS may stop sooner)
    if status == "FAILED":
        assert described["error"] == "States.ExceedToleratedFailureThreshold"
        assert "(1 of 4)" in described["cause"]
    else:
        assert json.loads(described["output"]) == {"processed": [0, 2, 3], "failed": 1}


def test_a_caught_threshold_failure_is_the_map_s_error(stack: Stack, router: Router) -> None:
    key = stack.put_items([{"id": 0, "fail": True}])
    definition = _fan_out(
        stack.function_arn,
        _item_task(stack.function_arn),
        Catch=[{"ErrorEquals": ["States.ExceedToleratedFailureThreshold"], "Next": "Failed"}],
    )
    definition["States"]["Failed"] = {"Type": "Pass", "End": True}
    described = stack.run(stack.state_machine(definition), {"key": key})
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["Error"] == "States.ExceedToleratedFailureThreshold"
    assert "(1 of 1)" in output["Cause"]


def test_item_batcher_gives_each_child_its_selected_items_and_the_batch_input(
    stack: Stack, router: Router
) -> None:
    key = stack.put_items([{"id": n} for n in range(5)])
    batcher = {"MaxItemsPerBatch": 2, "BatchInput": {"run": "nightly"}}
    machine = stack.state_machine(
        _fan_out(
            stack.function_arn,
            _item_task(stack.function_arn),
            ItemBatcher=batcher,
        )
    )

    described = stack.run(machine, {"key": key})

    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == {"processed": [0, 1, 2, 3, 4], "failed": 0}
    children = sorted(
        (i.payload for i in router.invocations if "Items" in i.payload),
        key=lambda p: p["Items"][0]["index"],
    )
    assert children == [
        {
            "Items": [{"item": {"id": n}, "index": n} for n in chunk],
            "BatchInput": {"run": "nightly"},
        }
        for chunk in ([0, 1], [2, 3], [4])
    ]
    definition = json.loads(stack.sfn.describe_state_machine(stateMachineArn=machine)["definition"])
    assert definition["States"]["Items"]["ItemBatcher"] == batcher  # stored as given


def test_a_failed_batch_counts_all_of_its_items(stack: Stack, router: Router) -> None:
    key = stack.put_items([{"id": 0}, {"id": 1, "fail": True}, {"id": 2}, {"id": 3}])
    machine = stack.state_machine(
        _fan_out(
            stack.function_arn,
            _item_task(stack.function_arn),
            ItemBatcher={"MaxItemsPerBatch": 2},
            ToleratedFailureCount=1,
        )
    )
    described = stack.run(machine, {"key": key})
    assert described["status"] == "FAILED", described
    assert described["error"] == "States.ExceedToleratedFailureThreshold"
    assert "(2 of 4)" in described["cause"]


def test_an_item_batcher_localaws_cannot_honour_is_refused_at_creation(stack: Stack) -> None:
    definition = _fan_out(
        stack.function_arn,
        _item_task(stack.function_arn),
        ItemBatcher={"MaxItemsPerBatchPath": "$.size"},
    )
    with pytest.raises(ClientError) as refused:
        stack.state_machine(definition)
    assert refused.value.response["Error"]["Code"] == "InvalidDefinition"
    assert "MaxItemsPerBatchPath" in refused.value.response["Error"]["Message"]


def test_batches_split_by_count_and_by_bytes() -> None:
    items = [{"n": n} for n in range(5)]
    assert [len(b["Items"]) for b in batches(items, {"MaxItemsPerBatch": 2})] == [2, 2, 1]
    # {"Items":[{"n":0},{"n":1}]} is 27 bytes, three items 35
    assert [len(b["Items"]) for b in batches(items, {"MaxInputBytesPerBatch": 30})] == [2, 2, 1]
    assert [len(b["Items"]) for b in batches(items, {"MaxInputBytesPerBatch": 5})] == [1] * 5
    assert batches([], {"MaxItemsPerBatch": 2}) == []
    assert all("BatchInput" not in b for b in batches(items, {"MaxItemsPerBatch": 2}))


def test_tolerance_rule() -> None:
    count = {"ToleratedFailureCount"}
    share = {"ToleratedFailurePercentage"}
    assert not exceeds_tolerance(0, 4, set(), 0, 0.0)
    assert exceeds_tolerance(1, 4, set(), 0, 0.0)
    assert not exceeds_tolerance(2, 4, count, 2, 0.0)  # percentage not given: not applied
    assert exceeds_tolerance(3, 4, count, 2, 0.0)
    assert not exceeds_tolerance(1, 4, share, 0, 25.0)
    assert exceeds_tolerance(2, 4, share, 0, 25.0)
    assert exceeds_tolerance(2, 4, count | share, 5, 25.0)


def test_the_rewrite_keeps_everything_else() -> None:
    definition = {
        "StartAt": "Outer",
        "States": {
            "Outer": {
                "Type": "Map",
                "ToleratedFailurePercentage": 10,
                "ItemBatcher": {"MaxItemsPerBatch": 3},
                "ItemProcessor": {
                    "StartAt": "Inner",
                    "States": {"Inner": {"Type": "Map", "ToleratedFailureCount": 2, "End": True}},
                },
                "End": True,
            }
        },
    }
    text, extras = rewrite_definition(json.dumps(definition))
    rewritten = json.loads(text)
    outer = rewritten["States"]["Outer"]
    assert "ItemBatcher" not in outer
    assert isinstance(outer["ToleratedFailurePercentage"], float)
    assert outer["ItemProcessor"] == definition["States"]["Outer"]["ItemProcessor"]
    assert extras == {
        "Outer": {"batcher": {"MaxItemsPerBatch": 3}, "tolerance": {"ToleratedFailurePercentage"}},
        "Inner": {"batcher": None, "tolerance": {"ToleratedFailureCount"}},
    }
