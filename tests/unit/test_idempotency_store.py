"""The idempotency record of a started set, and what the engine does when its store fails: a set
is never made without a record to stop the next delivery, and a set that was made is always
reported, even when its record could not be saved."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import ClientError

from snapset.errors import IDEMPOTENCY_STORE_ERROR, IN_PROGRESS
from snapset.idempotency import KEY_PREFIX, idempotent_snapshots
from snapset.outcomes import InstanceOutcome
from snapset.snapshots import SnapshotFn
from snapset.targets import Instance
from tests.unit.conftest import IDEMPOTENCY_TABLE, Aws
from tests.unit.test_safety_properties import INSTANCE, STARTED

# Lambda keeps retrying an asynchronous event for up to 6 hours (its maximum event age), and a
# record must outlive every redelivery (Lambda Developer Guide, "Asynchronous invocation").
LAMBDA_MAX_EVENT_AGE_SECONDS = 6 * 3600


def engine(
    snapshot_fn: Callable[[Instance], InstanceOutcome],
    dynamodb: Any,
    table: str = IDEMPOTENCY_TABLE,
    policy: str = "p",
) -> SnapshotFn:
    return idempotent_snapshots(
        snapshot_fn,
        table_name=table,
        policy=policy,
        trigger_id="trigger-1",
        dynamodb_client=dynamodb,
    )


def counting(calls: list[str], outcome: InstanceOutcome = STARTED) -> SnapshotFn:
    def snapshot(instance: Instance) -> InstanceOutcome:
        calls.append(instance.instance_id)
        return outcome

    return snapshot


def ddb() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


def test_the_record_has_a_stable_id_and_outlives_lambdas_retries(aws: Aws) -> None:
    client = ddb()
    before = time.time()
    assert engine(counting([]), client)(INSTANCE) == STARTED
    [item] = client.scan(TableName=IDEMPOTENCY_TABLE)["Items"]
    # the fixed prefix, not the function's name: a rename must not forget the records
    assert item["id"]["S"].startswith(f"{KEY_PREFIX}#")
    assert item["status"]["S"] == "COMPLETED"
    assert int(item["expiration"]["N"]) - before > LAMBDA_MAX_EVENT_AGE_SECONDS


def test_the_record_is_per_policy_trigger_and_instance(aws: Aws) -> None:
    calls: list[str] = []
    client = ddb()
    engine(counting(calls), client, policy="p")(INSTANCE)
    engine(counting(calls), client, policy="p")(INSTANCE)
    engine(counting(calls), client, policy="q")(INSTANCE)  # another policy: its own set
    assert calls == [INSTANCE.instance_id] * 2


def test_without_its_store_nothing_is_snapshotted_and_the_next_delivery_retries(
    aws: Aws,
) -> None:
    calls: list[str] = []
    outcome = engine(counting(calls), ddb(), table="no-such-table")(INSTANCE)
    assert calls == []  # no record could be written, so no set is made
    assert outcome.error is not None
    assert outcome.error.code == IDEMPOTENCY_STORE_ERROR
    assert outcome.error.retry_on_redelivery
    assert INSTANCE.instance_id in outcome.error.message
    assert "no-such-table" in outcome.error.message


def test_a_set_whose_record_cannot_be_saved_is_still_reported(aws: Aws) -> None:
    client = ddb()

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "no"}}, "UpdateItem")

    client.update_item = refuse  # the in-progress record is written, the result is not
    calls: list[str] = []
    assert engine(counting(calls), client)(INSTANCE) == STARTED
    assert calls == [INSTANCE.instance_id]


def test_a_delivery_finding_another_in_progress_stands_down_for_a_redelivery(aws: Aws) -> None:
    client = ddb()
    inner: list[InstanceOutcome] = []

    def snapshot(instance: Instance) -> InstanceOutcome:
        # a concurrent delivery of the same trigger, while this one holds the record
        inner.append(engine(counting([]), client)(instance))
        return STARTED

    assert engine(snapshot, client)(INSTANCE) == STARTED
    [duplicate] = inner
    assert duplicate.error is not None
    assert duplicate.error.code == IN_PROGRESS
    assert duplicate.error.retry_on_redelivery
    assert duplicate.snapshots == ()
    assert INSTANCE.instance_id in duplicate.error.message
