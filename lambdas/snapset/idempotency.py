"""At most one snapshot set per (trigger id, instance id), across redeliveries and retries.

EventBridge, Scheduler and Lambda's async retries all deliver at least once, and CreateSnapshots
has no client token. Powertools idempotency on DynamoDB records each instance's *started*
outcome under its trigger id; a redelivery gets the original outcome (same snapshot IDs) back,
and a concurrent duplicate finds the in-progress record and stands down.
Outcomes other than `started` are not recorded, so a retry redoes exactly those instances.

A record alone cannot cover a crash between CreateSnapshots and saving it, or a record that
could not be saved: the set's tags can, so a redelivery lists the trigger's sets once
(`snapshots.list_existing_sets`) and looks for each missing one again just before its
CreateSnapshots. The first delivery skips both: it claims the trigger with a run marker in the
same table (`claim_delivery`). The delivery that wrote the marker holds the trigger until it
releases the marker at its end (`release_delivery`) or its invocation's deadline passes; a
duplicate arriving meanwhile stands down without a call to EC2 (its instances fail as
`InProgress`, so Lambda redelivers it), so no other delivery makes a set while the first runs
without looking.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    BaseError,
    IdempotencyAlreadyInProgressError,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from snapset.errors import IDEMPOTENCY_STORE_ERROR, IN_PROGRESS, error_code
from snapset.outcomes import InstanceOutcome, InstanceStatus
from snapset.snapshots import SnapshotFn
from snapset.targets import Instance

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = logging.getLogger(__name__)

# Longer than Lambda's longest async retry window (6 h) and any Scheduler retry.
RECORD_TTL_SECONDS = 48 * 3600
# A trigger id can come back long after the records expire (a manual run re-invoked with its
# request_id); while the marker lives, that delivery still lists instead of trusting it is the
# first. One small item per run, so it may live long.
MARKER_TTL_SECONDS = 400 * 24 * 3600
# A fixed prefix keeps record ids stable across function renames and refactors.
KEY_PREFIX = "snapset-snapshot-set"
DDB_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5)
# The run marker's id: its own prefix, so it never meets a record's (`KEY_PREFIX#<hash>`).
RUN_KEY_PREFIX = "snapset-run"
# Powertools' DynamoDBPersistenceLayer defaults, which the table (infra/function.py) uses.
KEY_ATTRIBUTE = "id"
EXPIRY_ATTRIBUTE = "expiration"


def run_marker_id(policy: str, trigger_id: str) -> str:
    """The id of a trigger's run marker (policy and trigger as in the sets' managed tags)."""
    return f"{RUN_KEY_PREFIX}#{policy}#{trigger_id}"


HOLDS_UNTIL_ATTRIBUTE = "holds_until"
# Lambda's longest invocation: a claim made without a context holds this long at most.
MAX_INVOCATION_SECONDS = 900


class Delivery(StrEnum):
    """What the run marker says of this delivery of a trigger (`claim_delivery`)."""

    FIRST = "first"  # it wrote the marker: no set of the trigger exists yet, none is made beside it
    RUNNING = "running"  # another delivery holds the marker: stand down, be redelivered
    LATER = "later"  # the marker is released or its holder's deadline passed, or unknown


def claim_delivery(
    dynamodb: Any,
    table_name: str,
    policy: str,
    trigger_id: str,
    *,
    holds_for_seconds: float = MAX_INVOCATION_SECONDS,
    now: Callable[[], float] = time.time,
) -> Delivery:
    """Claim the trigger's run marker for this delivery, held `holds_for_seconds` (the
    invocation's remaining time) unless released first.

    A conditional PutItem writes the marker (kept `MARKER_TTL_SECONDS`, far longer than the
    records): `FIRST`. A marker already there is read back (consistent read): still held by a
    live delivery, `RUNNING`; released or past its holder's deadline, `LATER`. A marker that
    cannot be written gives `LATER` (the listing and the look-ups then cover it), one that
    cannot be read back `RUNNING` (a live holder would not look before its calls).
    """
    key = {KEY_ATTRIBUTE: {"S": run_marker_id(policy, trigger_id)}}
    started = now()
    item = {
        **key,
        EXPIRY_ATTRIBUTE: {"N": str(int(started) + MARKER_TTL_SECONDS)},
        HOLDS_UNTIL_ATTRIBUTE: {"N": str(int(started + holds_for_seconds) + 1)},
    }
    try:
        dynamodb.put_item(
            TableName=table_name,
            Item=item,
            ConditionExpression="attribute_not_exists(#id)",
            ExpressionAttributeNames={"#id": KEY_ATTRIBUTE},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            logger.exception("writing the run marker of %s failed; listing its sets", trigger_id)
            return Delivery.LATER
    except Exception:
        logger.exception("writing the run marker of %s failed; listing its sets", trigger_id)
        return Delivery.LATER
    else:
        return Delivery.FIRST
    try:
        found = dynamodb.get_item(TableName=table_name, Key=key, ConsistentRead=True).get("Item")
    except Exception:
        logger.exception("reading the run marker of %s failed; standing down", trigger_id)
        return Delivery.RUNNING
    holds_until = float((found or {}).get(HOLDS_UNTIL_ATTRIBUTE, {}).get("N", "0"))
    return Delivery.RUNNING if holds_until > now() else Delivery.LATER


def release_delivery(dynamodb: Any, table_name: str, policy: str, trigger_id: str) -> None:
    """Release the trigger's run marker at the end of the delivery that holds it, so that a
    later delivery runs (listing and looking) instead of standing down. A release that fails
    only makes later deliveries stand down until the holder's deadline."""
    try:
        dynamodb.update_item(
            TableName=table_name,
            Key={KEY_ATTRIBUTE: {"S": run_marker_id(policy, trigger_id)}},
            UpdateExpression="SET #holds = :zero",
            ExpressionAttributeNames={"#holds": HOLDS_UNTIL_ATTRIBUTE},
            ExpressionAttributeValues={":zero": {"N": "0"}},
        )
    except Exception:
        logger.exception("releasing the run marker of %s failed", trigger_id)


class SnapshotKey(BaseModel):
    """What makes a snapshot set unique: the policy, the trigger and the instance."""

    model_config = ConfigDict(frozen=True)

    policy: str
    trigger_id: str
    instance_id: str


class _NotRecorded(Exception):
    """Carries an outcome that must not be recorded (so the next delivery redoes it)."""

    def __init__(self, outcome: InstanceOutcome) -> None:
        super().__init__(outcome.instance_id)
        self.outcome = outcome


def idempotent_snapshots(
    snapshot_fn: SnapshotFn,
    *,
    table_name: str,
    policy: str,
    trigger_id: str,
    context: LambdaContext | None = None,
    dynamodb_client: Any = None,
) -> SnapshotFn:
    """Wrap a per-instance snapshot function so each instance is snapshotted once per trigger."""
    config = IdempotencyConfig(expires_after_seconds=RECORD_TTL_SECONDS)
    if context is not None:
        # In-progress records then expire with this invocation, so a crash frees them for a retry.
        config.register_lambda_context(context)
    store = DynamoDBPersistenceLayer(
        table_name=table_name, boto_config=DDB_CONFIG, boto3_client=dynamodb_client
    )
    # Powertools configures its store lazily and sets `configured` before the TTL; done here,
    # in one thread, before the worker threads share the store.
    store.configure(config, key_prefix=KEY_PREFIX)
    started: dict[str, InstanceOutcome] = {}

    # `key` is what Powertools hashes into the record's id; the body does not need it.
    def snapshot(instance: Instance, *, key: SnapshotKey) -> InstanceOutcome:  # noqa: ARG001
        outcome = snapshot_fn(instance)
        if outcome.status is not InstanceStatus.STARTED:
            raise _NotRecorded(outcome)
        # Kept in case saving the record fails: the set exists and must be reported.
        started[instance.instance_id] = outcome
        return outcome

    snapshot_once = cast(
        "Callable[..., InstanceOutcome]",
        idempotent_function(
            snapshot,
            data_keyword_argument="key",
            persistence_store=store,
            config=config,
            output_serializer=PydanticSerializer(InstanceOutcome),
            key_prefix=KEY_PREFIX,
        ),
    )

    def run(instance: Instance) -> InstanceOutcome:
        key = SnapshotKey(policy=policy, trigger_id=trigger_id, instance_id=instance.instance_id)
        try:
            return snapshot_once(instance, key=key)
        except _NotRecorded as not_recorded:
            return not_recorded.outcome
        except IdempotencyAlreadyInProgressError:
            # Another delivery holds the record. If it crashed, the record outlives it until its
            # in-progress expiry; failing here makes Lambda redeliver, so the trigger is not lost.
            return InstanceOutcome.failed(
                instance.instance_id,
                IN_PROGRESS,
                f"{instance.instance_id}: another delivery of this trigger is snapshotting it; "
                "a redelivery reports its result",
            )
        except BaseError as exc:
            logger.exception("idempotency store failed for %s", instance.instance_id)
            if instance.instance_id in started:
                # The set was made; only its record could not be saved. The tag look-up before
                # CreateSnapshots still finds it on a redelivery.
                return started[instance.instance_id]
            return InstanceOutcome.failed(
                instance.instance_id,
                IDEMPOTENCY_STORE_ERROR,
                f"{instance.instance_id}: idempotency table {table_name} unavailable, not "
                f"snapshotted ({exc})",
            )

    return run
