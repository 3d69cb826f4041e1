"""A run's EC2 calls grow with pages, not instances: the first delivery of a trigger (it wrote the
trigger's run marker) looks for no earlier set, a duplicate arriving while it runs stands down,
any other delivery lists the trigger's sets once (and looks again for each one it misses), and
volume-tag exclusions are one listing. Every guarantee against a second set still holds
(in-process moto, through the handler)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from localaws.fleet import DataVolume, FleetInstance, launch_instance, snapshots_by_volume
from snapset import handler as handler_module
from snapset.clients import make_clients
from snapset.deadline import Deadline
from snapset.handler import IncompleteRun, handler
from snapset.idempotency import (
    KEY_PREFIX,
    MARKER_TTL_SECONDS,
    Delivery,
    claim_delivery,
    release_delivery,
    run_marker_id,
)
from snapset.run import build_engine, run_request
from snapset.triggers import parse_request
from tests.unit.conftest import IDEMPOTENCY_TABLE, Aws, LambdaContext


@pytest.fixture
def calls() -> Iterator[Counter[str]]:
    """`service.Operation` of every call the handler's clients make (one per page)."""
    counted: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        counted[event_name.removeprefix("before-call.")] += 1

    events = handler_module.session().events
    events.register("before-call", count)
    yield counted
    events.unregister("before-call", count)


def set_count(aws: Aws) -> int:
    return sum(len(v) for v in snapshots_by_volume(aws.ec2).values())


def fleet(aws: Aws, n: int, **volume_tags: str) -> list[FleetInstance]:
    return [
        launch_instance(aws.ec2, tags={"Backup": "x"}, data_volumes=[DataVolume(tags=volume_tags)])
        for _ in range(n)
    ]


# A schedule's delivery: its trigger id is the policy and the scheduled time.
PAYLOAD = {
    "policy": "p",
    "target_tags": {"Backup": ["x"]},
    "schedule": {"scheduled_time": "2026-11-27T03:00:00Z"},
}
MARKER_ID = run_marker_id("p", "p@2026-11-27T03:00:00Z")
MANUAL = {"policy": "p", "target_tags": {"Backup": ["x"]}, "request_id": "r-1"}


def ddb() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


def forget_records() -> None:
    """As if every delivery so far crashed between CreateSnapshots and saving its record: the
    run marker, written before anything is snapshotted, stays."""
    client = ddb()
    for item in client.scan(TableName=IDEMPOTENCY_TABLE)["Items"]:
        if item["id"]["S"].startswith(f"{KEY_PREFIX}#"):
            client.delete_item(TableName=IDEMPOTENCY_TABLE, Key={"id": item["id"]})


def ec2_calls(calls: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in calls.items() if k.startswith("ec2.")}


def test_the_first_delivery_looks_for_no_earlier_set(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    fleet(aws, 5)
    report = handler(PAYLOAD, context)
    assert [i["status"] for i in report["instances"]] == ["started"] * 5
    assert ec2_calls(calls) == {"ec2.DescribeInstances": 1, "ec2.CreateSnapshots": 5}
    # the marker that told it so: one conditional PutItem, kept long, released at the run's end
    marker = ddb().get_item(TableName=IDEMPOTENCY_TABLE, Key={"id": {"S": MARKER_ID}})
    assert int(marker["Item"]["expiration"]["N"]) - time.time() > MARKER_TTL_SECONDS - 60
    assert marker["Item"]["holds_until"] == {"N": "0"}


def test_a_redelivery_lists_the_sets_once_and_makes_none(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    fleet(aws, 5)
    first = handler(PAYLOAD, context)
    forget_records()
    calls.clear()
    again = handler(PAYLOAD, context)
    assert ec2_calls(calls) == {"ec2.DescribeInstances": 1, "ec2.DescribeSnapshots": 1}
    assert set_count(aws) == 2 * 5
    assert [i["snapshots"] for i in again["instances"]] == [
        i["snapshots"] for i in first["instances"]
    ]
    assert {i["reason"] for i in again["instances"]} == {
        "set already created by an earlier delivery of this trigger"
    }


def test_a_marker_that_cannot_be_written_falls_back_to_the_listing(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    fleet(aws, 2)
    handler(PAYLOAD, context)
    # the records and the marker gone, and the marker cannot be written again: nothing says
    # this delivery is the first, so it must look
    client = ddb()
    for item in client.scan(TableName=IDEMPOTENCY_TABLE)["Items"]:
        client.delete_item(TableName=IDEMPOTENCY_TABLE, Key={"id": item["id"]})

    def refuse_the_marker(params: dict[str, Any], **_: Any) -> None:
        if params["Item"]["id"]["S"].startswith("snapset-run#"):
            error = {"Code": "InternalServerError", "Message": "no"}
            raise ClientError({"Error": error}, "PutItem")

    events = handler_module.session().events
    events.register("provide-client-params.dynamodb.PutItem", refuse_the_marker)
    calls.clear()
    try:
        again = handler(PAYLOAD, context)
    finally:
        events.unregister("provide-client-params.dynamodb.PutItem", refuse_the_marker)
    assert calls["ec2.DescribeSnapshots"] == 1
    assert "ec2.CreateSnapshots" not in calls
    assert set_count(aws) == 2 * 2
    assert {i["status"] for i in again["instances"]} == {"started"}


def test_a_set_whose_record_could_not_be_saved_is_found_by_the_redelivery(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    [inst] = fleet(aws, 1)

    def refuse_the_record(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "no"}}, "UpdateItem")

    events = handler_module.session().events
    events.register("provide-client-params.dynamodb.UpdateItem", refuse_the_record)
    try:
        first = handler(PAYLOAD, context)  # the set is made, its record is not saved
    finally:
        events.unregister("provide-client-params.dynamodb.UpdateItem", refuse_the_record)
    assert first["instances"][0]["status"] == "started"
    # its in-progress record lasts as long as that invocation could; once it has expired, the
    # redelivery may take the instance, and must find the set
    client = ddb()
    for item in client.scan(TableName=IDEMPOTENCY_TABLE)["Items"]:
        if item["id"]["S"].startswith(f"{KEY_PREFIX}#"):
            assert item["status"]["S"] == "INPROGRESS"
            client.update_item(
                TableName=IDEMPOTENCY_TABLE,
                Key={"id": item["id"]},
                UpdateExpression="SET in_progress_expiration = :past",
                ExpressionAttributeValues={":past": {"N": "1"}},
            )
        elif item["id"]["S"] == MARKER_ID:  # its release failed too: held until its deadline
            assert item["holds_until"]["N"] != "0"
            client.update_item(
                TableName=IDEMPOTENCY_TABLE,
                Key={"id": item["id"]},
                UpdateExpression="SET holds_until = :past",
                ExpressionAttributeValues={":past": {"N": "1"}},
            )
    calls.clear()
    again = handler(PAYLOAD, context)
    assert "ec2.CreateSnapshots" not in calls
    assert calls["ec2.DescribeSnapshots"] == 1  # the listing found it: no look-up of its own
    assert set_count(aws) == 2
    [outcome] = again["instances"]
    assert outcome["instance_id"] == inst.instance_id
    assert outcome["snapshots"] == first["instances"][0]["snapshots"]


def test_volume_tag_exclusions_are_one_listing_for_the_run(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    skipped = fleet(aws, 3, NoBackup="true")
    kept = fleet(aws, 3)
    payload = {**PAYLOAD, "exclude_data_volume_tags": {"NoBackup": ["true"]}}
    report = handler(payload, context)
    assert ec2_calls(calls) == {
        "ec2.DescribeInstances": 1,
        "ec2.DescribeVolumes": 1,
        "ec2.CreateSnapshots": 6,
    }
    outcomes = {i["instance_id"]: i for i in report["instances"]}
    for inst in skipped:
        assert outcomes[inst.instance_id]["excluded_volume_ids"] == list(inst.data_volume_ids)
        assert [s["volume_id"] for s in outcomes[inst.instance_id]["snapshots"]] == [
            inst.root_volume_id
        ]
    for inst in kept:
        assert outcomes[inst.instance_id]["excluded_volume_ids"] == []
        assert len(outcomes[inst.instance_id]["snapshots"]) == 2


def test_a_scheduled_run_by_instance_id_writes_the_marker_and_lists_nothing(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    [inst] = fleet(aws, 1)
    handler({**PAYLOAD, "instance_ids": [inst.instance_id], "target_tags": {}}, context)
    assert "ec2.DescribeSnapshots" not in calls
    assert calls["dynamodb.PutItem"] >= 1


def test_a_manual_run_looks_even_as_the_first_delivery(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    """The CLI keeps no marker and no records, and may have used the same request id."""
    fleet(aws, 3)
    first = handler(MANUAL, context)
    client = ddb()  # as if `snapset run` had made those sets: nothing in the table
    for item in client.scan(TableName=IDEMPOTENCY_TABLE)["Items"]:
        client.delete_item(TableName=IDEMPOTENCY_TABLE, Key={"id": item["id"]})
    calls.clear()
    again = handler(MANUAL, context)
    assert "ec2.CreateSnapshots" not in calls
    assert calls["ec2.DescribeSnapshots"] == 1
    assert set_count(aws) == 2 * 3
    assert [i["snapshots"] for i in again["instances"]] == [
        i["snapshots"] for i in first["instances"]
    ]


def test_a_manual_run_under_an_id_made_for_it_looks_for_nothing(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    """Without a request_id the trigger id is the invocation's own (its retries share it):
    no other client can have made sets under it."""
    fleet(aws, 3)
    fresh = {k: v for k, v in MANUAL.items() if k != "request_id"}
    report = handler(fresh, context)
    assert ec2_calls(calls) == {"ec2.DescribeInstances": 1, "ec2.CreateSnapshots": 3}
    assert report["trigger"]["id"] == context.aws_request_id
    # its retry (the same Lambda request id) is a later delivery: it lists what the first made
    calls.clear()
    again = handler(fresh, context)
    assert calls["ec2.DescribeSnapshots"] == 1
    assert "ec2.CreateSnapshots" not in calls
    assert [i["status"] for i in again["instances"]] == ["started"] * 3
    assert set_count(aws) == 2 * 3


def test_the_cli_looks_only_under_a_request_id_it_was_given(aws: Aws, calls: Counter[str]) -> None:
    fleet(aws, 2)
    clients = make_clients(region="us-east-1", session=handler_module.session())
    # under a given id: one listing, then each instance's own look-up before its call
    for payload, listings in ((MANUAL, 1 + 2), ({**MANUAL, "request_id": None}, 0)):
        request = parse_request({k: v for k, v in payload.items() if v is not None})
        calls.clear()
        engine = build_engine(clients, request, Deadline.after(60), idempotency=None)
        run_request(clients.ec2, request, engine=engine, deadline=Deadline.after(60), max_workers=4)
        # a request id the CLI made (manual-<uuid>) cannot be one an earlier run used
        assert calls["ec2.DescribeSnapshots"] == listings, payload


def test_a_duplicate_arriving_while_the_first_delivery_runs_stands_down(
    aws: Aws, context: LambdaContext, calls: Counter[str]
) -> None:
    """The first delivery makes no look-up, so nothing else may make a set while it runs."""
    fleet(aws, 2)
    client = ddb()
    # the first delivery, still running (it holds the marker for its remaining time)
    running = claim_delivery(
        client, IDEMPOTENCY_TABLE, "p", "p@2026-11-27T03:00:00Z", holds_for_seconds=600
    )
    assert running is Delivery.FIRST
    with pytest.raises(IncompleteRun, match=r"2 instance\(s\) to retry on the next delivery"):
        handler(PAYLOAD, context)  # retryable: Lambda redelivers it
    assert ec2_calls(calls) == {"ec2.DescribeInstances": 1}  # no listing, no CreateSnapshots
    assert set_count(aws) == 0

    release_delivery(client, IDEMPOTENCY_TABLE, "p", "p@2026-11-27T03:00:00Z")
    report = handler(PAYLOAD, context)  # the redelivery, once the first has ended
    assert [i["status"] for i in report["instances"]] == ["started"] * 2
    assert set_count(aws) == 2 * 2


def test_the_marker_says_first_running_or_later(aws: Aws) -> None:
    client = ddb()
    clock = [1000.0]

    def claim(policy: str = "p", trigger: str = "t-1", table: str = IDEMPOTENCY_TABLE) -> Delivery:
        return claim_delivery(
            client, table, policy, trigger, holds_for_seconds=60, now=lambda: clock[0]
        )

    assert claim() is Delivery.FIRST
    clock[0] = 1030.0
    assert claim() is Delivery.RUNNING  # the first still holds it
    clock[0] = 1062.0
    assert claim() is Delivery.LATER  # past the first's deadline
    assert claim("q") is Delivery.FIRST  # another policy's
    assert claim("p", "t-2") is Delivery.FIRST  # another trigger's
    clock[0] = 1063.0
    assert claim("p", "t-2") is Delivery.RUNNING
    release_delivery(client, IDEMPOTENCY_TABLE, "p", "t-2")
    assert claim("p", "t-2") is Delivery.LATER  # released at its end
    item = client.get_item(
        TableName=IDEMPOTENCY_TABLE, Key={"id": {"S": run_marker_id("p", "t-1")}}
    )["Item"]
    assert item["expiration"] == {"N": str(1000 + MARKER_TTL_SECONDS)}
    assert item["holds_until"] == {"N": str(1000 + 60 + 1)}
    # no record of Powertools can be mistaken for a marker, nor a marker for a record
    assert not run_marker_id("p", "t-1").startswith(f"{KEY_PREFIX}#")
    assert claim("p", "t-3", "no-such-table") is Delivery.LATER  # cannot write: list and look
