"""Safety properties, each pinned by a fast test that fails on its mutation: what is not started
is never recorded as done, a started set is never made twice, a dry run never writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from localaws.fleet import DataVolume, launch_instance
from snapset import handler as handler_module
from snapset.errors import TIMEOUT
from snapset.handler import handler
from snapset.idempotency import idempotent_snapshots
from snapset.outcomes import InstanceOutcome, InstanceStatus, SnapshotInfo
from snapset.targets import AttachedVolume, Instance
from tests.unit.conftest import COMPLETER, IDEMPOTENCY_TABLE, Aws, LambdaContext, deploy_policies
from tests.unit.test_retention_in_run import age_all_snapshots

INSTANCE = Instance(
    instance_id="i-0123456789abcdef0",
    state="running",
    tags={},
    volumes=(AttachedVolume("vol-0123456789abcdef0", "/dev/xvda", is_root=True),),
)
STARTED = InstanceOutcome(
    instance_id=INSTANCE.instance_id,
    status=InstanceStatus.STARTED,
    snapshots=(
        SnapshotInfo(snapshot_id="snap-0123456789abcdef0", volume_id="vol-0123456789abcdef0"),
    ),
)


def once_per_trigger(outcomes: list[InstanceOutcome], calls: list[str]) -> Any:
    def snapshot(instance: Instance) -> InstanceOutcome:
        calls.append(instance.instance_id)
        return outcomes.pop(0)

    return idempotent_snapshots(
        snapshot,
        table_name=IDEMPOTENCY_TABLE,
        policy="p",
        trigger_id="trigger-1",
        dynamodb_client=boto3.client("dynamodb", region_name="us-east-1"),
    )


@pytest.mark.parametrize(
    "not_started",
    [
        InstanceOutcome.failed(INSTANCE.instance_id, TIMEOUT, "no time left"),
        InstanceOutcome.failed(INSTANCE.instance_id, "RequestLimitExceeded", "throttled"),
        InstanceOutcome.skipped(INSTANCE.instance_id, "nothing to snapshot"),
    ],
    ids=["timeout", "throttled", "skipped"],
)
def test_an_outcome_that_did_not_start_is_never_recorded_as_done(
    aws: Aws, not_started: InstanceOutcome
) -> None:
    calls: list[str] = []
    # each delivery builds its own wrapper over the same table, as each invocation does
    first = once_per_trigger([not_started], calls)(INSTANCE)
    second = once_per_trigger([STARTED], calls)(INSTANCE)
    third = once_per_trigger([], calls)(INSTANCE)
    assert first == not_started
    assert second == STARTED  # the redelivery really tried again...
    assert third == STARTED  # ...and once started, it is never done again
    assert calls == [INSTANCE.instance_id, INSTANCE.instance_id]


@pytest.fixture
def ec2_writes() -> Iterator[list[tuple[str, Any]]]:
    """Every EC2 write the handler's clients make during the test, with its DryRun flag: both
    the retrying client and the CreateSnapshots client come from the handler's one session."""
    writes: list[tuple[str, Any]] = []

    def record(event_name: str, params: dict[str, Any], **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if not operation.startswith(("Describe", "Get", "List")):
            writes.append((operation, params.get("DryRun")))

    events = handler_module.session().events
    events.register("provide-client-params.ec2.*", record)
    yield writes
    events.unregister("provide-client-params.ec2.*", record)


def test_a_dry_run_never_writes_not_even_retention(
    aws: Aws,
    context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    ec2_writes: list[tuple[str, Any]],
) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "x"}, data_volumes=[DataVolume()])
    payload = {"policy": "p", "instance_ids": [inst.instance_id]}
    for n in range(3):  # three completed sets, a day apart
        handler({**payload, "request_id": f"old-{n}"}, context)
        COMPLETER.complete_all()
        age_all_snapshots(1)
    before = {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    deploy_policies(monkeypatch, {"p": {"count": 1}})
    ec2_writes.clear()

    report = handler({**payload, "dry_run": True, "request_id": "dry"}, context)

    assert report["status"] == "dry_run"
    retention = report["instances"][0]["retention"]
    assert retention["dry_run"] is True
    assert len(retention["deleted"]) == 2 * 2  # two older sets of two volumes would go
    # the one write is CreateSnapshots with DryRun (AWS answers DryRunOperation): no real
    # CreateSnapshots, no DeleteSnapshot, no tagging
    assert ec2_writes == [("CreateSnapshots", True)]
    after = {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert after == before
