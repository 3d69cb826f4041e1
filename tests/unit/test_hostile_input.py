"""A corpus of malformed and hostile inputs: each is rejected naming the problem, a failure
report goes out when the input names its policy, and no EC2 call is ever made."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localaws.fleet import launch_instance
from snapset import handler as handler_module
from snapset.clients import Clients
from snapset.errors import InvalidInput
from tests.conftest import FIXTURES
from tests.unit.conftest import Aws, LambdaContext

CORPUS = json.loads((FIXTURES.parent / "corpus" / "hostile_inputs.json").read_text())
VALID = {"policy": "nightly", "instance_ids": ["i-0123456789abcdef0"]}


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"a": node}
    return node


GENERATED = [
    {
        "name": "deeply nested unknown field",
        "input": {**VALID, "extra": _nested(5000)},
        "error_contains": "extra",
        "reports": True,
    },
    {
        "name": "deeply nested tag filter",
        "input": {**VALID, "target_tags": _nested(5000)},
        "error_contains": "target_tags",
        "reports": True,
    },
    {
        "name": "5 MB of instance ids",
        "input": {"policy": "nightly", "instance_ids": [f"i-{n:017x}" for n in range(250_000)]},
        "error_contains": "instance_ids",
        "reports": True,
    },
    {
        "name": "100k tags",
        "input": {**VALID, "tags": {f"k{n}": "v" for n in range(100_000)}},
        "error_contains": "tags",
        "reports": True,
    },
]


@pytest.fixture
def ec2_calls(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = handler_module.make_clients

    def spying_clients(*args: Any, **kwargs: Any) -> Clients:
        clients = real(*args, **kwargs)
        # both EC2 clients: the retrying one and the one CreateSnapshots goes through
        for client in (clients.ec2, clients.ec2_create):
            client.meta.events.register(
                "before-call.ec2.*", lambda model, **_: calls.append(model.name)
            )
        return clients

    monkeypatch.setattr(handler_module, "make_clients", spying_clients)
    return calls


@pytest.mark.parametrize("case", CORPUS + GENERATED, ids=lambda c: c["name"])
def test_hostile_input_is_rejected_with_a_named_problem(
    case: dict[str, Any], aws: Aws, context: LambdaContext, ec2_calls: list[str]
) -> None:
    if case["reports"]:
        result = handler_module.handler(case["input"], context)
        assert result["status"] == "failed"
        assert result["error"]["code"] == "InvalidInput"
        assert case["error_contains"] in result["error"]["message"]
        assert len(result["error"]["message"]) <= 1000
        (note,) = aws.messages()
        assert json.loads(note["Message"])["error"]["code"] == "InvalidInput"
        assert note["MessageAttributes"]["status"]["Value"] == "failed"
    else:
        with pytest.raises(InvalidInput) as raised:
            handler_module.handler(case["input"], context)
        assert case["error_contains"] in raised.value.message
        assert aws.messages() == []
    assert ec2_calls == []


def test_the_spy_sees_both_clients(aws: Aws, context: LambdaContext, ec2_calls: list[str]) -> None:
    """Negative control: a valid run is seen reading and creating, so an empty list above means
    that no call was made, not that the spy missed it."""
    inst = launch_instance(aws.ec2)
    handler_module.handler({"policy": "p", "instance_ids": [inst.instance_id]}, context)
    assert "DescribeInstances" in ec2_calls  # the retrying client
    assert "CreateSnapshots" in ec2_calls  # the CreateSnapshots client
