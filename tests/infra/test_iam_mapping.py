"""Every AWS API call in lambdas/snapset is granted to the function's role, and nothing else is.

The scan reads `lambdas/snapset/**/*.py` with `ast`: calls made on a boto3 client variable
(`ec2.create_snapshots(...)`, `ec2.get_paginator("describe_instances")`, `sns.publish(...)`) map to
IAM actions through botocore's own operation names (`create_snapshots` -> `ec2:CreateSnapshots`).
Permissions no line of our code calls directly are listed by hand below, each with its reason.
Adding `ec2.delete_volume(...)` anywhere in lambdas/ fails `test_code_calls_are_all_granted`.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.waiter import WaiterModel
from infra_support import ROOT, Synth, synth

LAMBDA_SRC = ROOT / "lambdas" / "snapset"

# Names the code gives its boto3 clients (variables, parameters, attributes such as clients.ec2).
CLIENT_NAMES = {
    "ec2": "ec2",
    "ec2_client": "ec2",
    "ec2_create": "ec2",
    "sns": "sns",
    "sns_client": "sns",
    "dynamodb": "dynamodb",
    "dynamodb_client": "dynamodb",
    "ddb": "dynamodb",
}
# Client methods that are not API operations.
NOT_OPERATIONS = {"can_paginate", "close", "generate_presigned_url", "get_waiter", "get_paginator"}

# Granted because an action our code calls needs them too.
IMPLIED = {
    # TagSpecifications on CreateSnapshots tag the new snapshots: ec2:CreateTags is authorized
    # with ec2:CreateAction=CreateSnapshots.
    "ec2:CreateSnapshots": {"ec2:CreateTags"},
    # Publishing to an SSE-KMS topic uses the topic's key on the publisher's behalf.
    "sns:Publish": {"kms:Decrypt", "kms:GenerateDataKey*"},
}
# Powertools idempotency (DynamoDBPersistenceLayer) makes these DynamoDB calls inside the library:
# get_item (read a record), put_item (conditional save in progress), update_item (save the
# result), delete_item (drop the record on failure).
IDEMPOTENCY_MODULE = "aws_lambda_powertools.utilities.idempotency"
IDEMPOTENCY_ACTIONS = {
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
}
# Used by the Lambda service and runtime with the function's role, not by our code.
PLATFORM = {
    "logs:CreateLogStream": "Lambda writes the function's logs to its log group",
    "logs:PutLogEvents": "Lambda writes the function's logs to its log group",
    "xray:PutTraceSegments": "active tracing",
    "xray:PutTelemetryRecords": "active tracing",
    "sqs:SendMessage": "Lambda sends failed async invocations to the on-failure destination",
}
# Granted before the code that calls them lands (retention, issue 6, is built in parallel). Once
# the calls exist they are covered like any other; until then they are reported as a warning.
GRANTED_AHEAD_OF_CODE = {
    "ec2:DeleteSnapshot": "retention deletes expired sets",
    "ec2:DescribeImages": "retention keeps snapshots that back an AMI",
    "ec2:DescribeSnapshotAttribute": "retention checks snapshot attributes before deleting",
    "ec2:DescribeLockedSnapshots": "retention keeps locked snapshots",
    "ec2:DescribeSnapshots": "completion reports and retention find sets by their tags",
}


@dataclass(frozen=True)
class Call:
    path: Path
    line: int
    service: str
    method: str

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line} {self.service}.{self.method}"


def _receiver_name(node: ast.expr) -> str | None:
    """`ec2` for `ec2.x(...)`, `clients.ec2.x(...)`, `self.ec2.x(...)`, `make_clients().ec2.x()`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _string_arg(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def source_files() -> list[Path]:
    return sorted(p for p in LAMBDA_SRC.rglob("*.py") if "__pycache__" not in p.parts)


def scan(paths: list[Path]) -> tuple[list[Call], set[str], bool]:
    """Client calls, services clients are created for, and whether idempotency is used."""
    calls: list[Call] = []
    created: set[str] = set()
    idempotency = False
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                IDEMPOTENCY_MODULE
            ):
                idempotency = True
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method == "client" and (service := _string_arg(node)):
                created.add(service)
                continue
            receiver = _receiver_name(node.func.value)
            if receiver not in CLIENT_NAMES:
                continue
            service = CLIENT_NAMES[receiver]
            if method in ("get_paginator", "get_waiter"):
                name = _string_arg(node)
                assert name, f"{path}:{node.lineno}: {method} needs a literal name to be checked"
                calls.append(Call(path, node.lineno, service, f"{method}:{name}"))
            elif method not in NOT_OPERATIONS and not method.startswith("_"):
                calls.append(Call(path, node.lineno, service, method))
    return calls, created, idempotency


@cache
def _client(service: str) -> BaseClient:
    return boto3.client(service, region_name="us-east-1")  # type: ignore[call-overload,no-any-return]


def iam_action(call: Call) -> str:
    """botocore's operation name for the call, with the IAM service prefix."""
    client = _client(call.service)
    kind, _, name = call.method.partition(":")
    if kind == "get_waiter":
        model = WaiterModel(client._get_waiter_config())
        waiter = "".join(part.capitalize() for part in name.split("_"))
        operation = model.get_waiter(waiter).operation
    else:
        method = name if kind == "get_paginator" else call.method
        mapping: dict[str, str] = client.meta.method_to_api_mapping
        assert method in mapping, f"{call.where()}: not an API operation of {call.service}"
        operation = mapping[method]
    return f"{call.service}:{operation}"


def code_actions(paths: list[Path]) -> tuple[dict[str, list[str]], set[str]]:
    calls, created, idempotency = scan(paths)
    unknown = created - set(CLIENT_NAMES.values())
    assert not unknown, (
        f"lambdas/ creates clients for {sorted(unknown)}: teach CLIENT_NAMES their variable names"
    )
    found: dict[str, list[str]] = {}
    for call in calls:
        found.setdefault(iam_action(call), []).append(call.where())
    required = set(found)
    for action in list(required):
        required |= IMPLIED.get(action, set())
    if idempotency:
        required |= IDEMPOTENCY_ACTIONS
    return found, required


def granted_actions(s: Synth) -> dict[str, Any]:
    """Action -> statement, for every policy attached to the function's role."""
    role_id = next(k for k in s.resources("AWS::IAM::Role") if "FunctionRole" in k)
    out: dict[str, Any] = {}
    for policy in s.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert st["Effect"] == "Allow"
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            for action in actions:
                out[action] = st
    return out


@pytest.fixture(scope="module")
def s() -> Synth:
    return synth(nag=False)


@pytest.fixture(scope="module")
def code() -> tuple[dict[str, list[str]], set[str]]:
    return code_actions(source_files())


def test_scan_finds_the_engine_calls(code: tuple[dict[str, list[str]], set[str]]) -> None:
    found, _ = code
    assert {"ec2:CreateSnapshots", "ec2:DescribeInstances", "sns:Publish"} <= set(found)


def test_code_calls_are_all_granted(s: Synth, code: tuple[dict[str, list[str]], set[str]]) -> None:
    found, required = code
    granted = granted_actions(s)
    missing = {a: found.get(a, ["(implied)"]) for a in sorted(required - set(granted))}
    assert not missing, f"the role lacks actions the code needs: {missing}"


def test_role_grants_nothing_the_code_does_not_need(
    s: Synth, code: tuple[dict[str, list[str]], set[str]]
) -> None:
    _, required = code
    granted = set(granted_actions(s))
    extra = granted - required - set(PLATFORM) - set(GRANTED_AHEAD_OF_CODE)
    assert not extra, f"the role grants actions no code calls: {sorted(extra)}"
    ahead = sorted(set(GRANTED_AHEAD_OF_CODE) - required)
    if ahead:
        warnings.warn(
            f"granted ahead of the code that calls them: {ahead}", UserWarning, stacklevel=1
        )


def test_platform_and_ahead_grants_are_really_granted(s: Synth) -> None:
    granted = set(granted_actions(s))
    assert set(PLATFORM) <= granted
    assert set(GRANTED_AHEAD_OF_CODE) <= granted


def _scan_snippet(tmp_path: Path, code: str) -> set[str]:
    extra = tmp_path / "extra.py"
    extra.write_text(code)
    _, required = code_actions([*source_files(), extra])
    return required


def test_an_ungranted_call_is_caught(s: Synth, tmp_path: Path) -> None:
    required = _scan_snippet(
        tmp_path, "def wipe(ec2):\n    ec2.delete_volume(VolumeId='vol-12345678')\n"
    )
    assert "ec2:DeleteVolume" in required
    assert "ec2:DeleteVolume" not in granted_actions(s)


def test_paginators_waiters_and_attribute_clients_are_mapped(tmp_path: Path) -> None:
    required = _scan_snippet(
        tmp_path,
        "def f(clients, sns):\n"
        "    clients.ec2.get_paginator('describe_snapshots')\n"
        "    clients.ec2.get_waiter('snapshot_completed')\n"
        "    sns.publish_batch(TopicArn='x', PublishBatchRequestEntries=[])\n",
    )
    assert {"ec2:DescribeSnapshots", "sns:PublishBatch"} <= required


def test_a_client_for_an_unknown_service_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="teach CLIENT_NAMES"):
        _scan_snippet(tmp_path, "import boto3\ns3 = boto3.client('s3')\n")
