"""Copies and shares through the handler (in-process moto, whose CopySnapshot completes at once):
a completed set's completion event shares it and starts its copies, the copy sweep reports
the set once and tags it done, and a failure while starting copies never costs the completion
report (the sweep picks the set up)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from localaws.fleet import DataVolume, launch_instance
from snapset import handler as handler_module
from snapset.copies import COPY_SWEEP_KEY
from snapset.handler import handler
from snapset.settings import ENV_DEPLOYED_COPIES
from tests.conftest import load_event
from tests.unit.conftest import COMPLETER, Aws, deploy_policies

DEST = "us-west-2"
ACCOUNT = "111122223333"


@pytest.fixture
def dr(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """The stack's `dr` policy: copies to us-west-2, shared with one account."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(
        ENV_DEPLOYED_COPIES,
        json.dumps({"dr": {"copies": [{"region": DEST}], "share_with_accounts": [ACCOUNT]}}),
    )
    deploy_policies(monkeypatch, {"dr": {"count": 7}})
    return aws


def _completed_set(aws: Aws, context: LambdaContext) -> tuple[str, list[str], dict[str, Any]]:
    inst = launch_instance(aws.ec2, tags={"Backup": "dr"}, data_volumes=[DataVolume()])
    run = handler({"policy": "dr", "instance_ids": [inst.instance_id]}, context)
    ids = [s["snapshot_id"] for s in run["instances"][0]["snapshots"]]
    COMPLETER.complete_all()
    aws.messages()
    event = load_event("ebs-multi-volume-completion-succeeded")
    event["detail"]["snapshots"] = [
        {
            "snapshot_id": f"arn:aws:ec2::us-east-1:snapshot/{sid}",
            "source": "arn:aws:ec2::us-east-1:volume/vol-0123456789abcdef0",
            "status": "completed",
        }
        for sid in ids
    ]
    return inst.instance_id, ids, event


def _copies_state(aws: Aws, ids: list[str]) -> set[str]:
    return {
        t["Value"]
        for s in aws.ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]
        for t in s["Tags"]
        if t["Key"] == "snapset:copies"
    }


def test_the_completion_event_shares_and_copies_and_the_sweep_reports_once(
    dr: Aws, context: LambdaContext
) -> None:
    instance_id, ids, event = _completed_set(dr, context)

    result = handler(event, context)

    [completion] = result["reports"]
    assert set(completion["shares"]["shared"]) == set(ids)
    assert completion["shares"]["errors"] == []
    west = boto3.client("ec2", region_name=DEST)
    copies = west.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:snapset:copy-of", "Values": ids}]
    )["Snapshots"]
    assert len(copies) == len(ids)
    # moto's copies complete at once, but the advance that started them saw them start
    kinds = [json.loads(n["Message"])["kind"] for n in dr.messages()]
    assert kinds == ["completion"]
    assert _copies_state(dr, ids) == {"copying"}

    swept = handler({COPY_SWEEP_KEY: {}}, context)
    assert swept["reported"] == 1
    [note] = dr.messages()
    body = json.loads(note["Message"])
    assert (body["kind"], body["status"], body["instance_id"]) == ("copy", "succeeded", instance_id)
    assert note["MessageAttributes"]["kind"]["Value"] == "copy"
    assert _copies_state(dr, ids) == {"done"}
    assert handler({COPY_SWEEP_KEY: {}}, context)["reported"] == 0
    assert dr.messages() == []


def test_a_failure_starting_copies_still_publishes_the_completion_report(
    dr: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ids, event = _completed_set(dr, context)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler_module, "advance_copies", broken)
    result = handler(event, context)

    [completion] = result["reports"]
    assert completion["result"] == "succeeded"
    assert [json.loads(n["Message"])["kind"] for n in dr.messages()] == ["completion"]
    assert _copies_state(dr, ids) == {"pending"}  # the sweep starts them
