"""One run of a policy: build its engine, choose the instances for the trigger, snapshot them,
build the report.

Once its instances are known, a run makes its lookups once, not per instance
(`Engine.for_targets`): with an idempotency store it first claims the trigger's first delivery
(`idempotency.claim_first_delivery`); unless it did, it lists the sets earlier deliveries made
with one paginated DescribeSnapshots; and it lists the volumes to exclude by tag with one
paginated DescribeVolumes (`snapshots.run_lookups`). Without a store (the CLI) it always lists.
A delivery that lists also looks once more for the set of each instance the listing missed,
just before its CreateSnapshots (`RunLookups.recheck`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from snapset.clients import Clients
from snapset.deadline import Deadline
from snapset.errors import INSTANCE_NOT_FOUND, error_code
from snapset.idempotency import claim_first_delivery, idempotent_snapshots
from snapset.outcomes import ErrorInfo, InstanceOutcome
from snapset.policy import SnapshotRequest
from snapset.report import ReportStatus, RunReport, build_report
from snapset.retention import with_retention
from snapset.snapshots import RetryBudget, SnapshotFn, run_lookups, snapshot_all, snapshot_instance
from snapset.targets import Instance, describe_instance, find_targets, matches_policy

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_ec2 import EC2Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ignored:
    """An instance event for an instance the policy does not target: no snapshot, no report."""

    instance_id: str
    reason: str


def _event_targets(
    ec2: EC2Client, request: SnapshotRequest, instance_id: str
) -> tuple[list[Instance], list[InstanceOutcome]] | Ignored:
    policy = request.policy
    instance = describe_instance(ec2, instance_id)
    if instance is None:
        if instance_id in policy.instance_ids:
            return [], [
                InstanceOutcome.failed(
                    instance_id, INSTANCE_NOT_FOUND, f"{instance_id}: no such instance"
                )
            ]
        return Ignored(instance_id, "instance not found, so its tags cannot match the policy")
    if not matches_policy(instance, policy):
        return Ignored(instance_id, f"instance is not a target of policy {policy.name!r}")
    return [instance], []


@dataclass(frozen=True)
class IdempotencyStore:
    """Where the engine records each instance's started set: the table and its client.

    `context` is the Lambda context, so in-progress records expire with the invocation.
    """

    table_name: str
    dynamodb: Any
    context: LambdaContext | None = None


def _as_is(fn: SnapshotFn) -> SnapshotFn:
    return fn


@dataclass(frozen=True)
class Engine:
    """How a run snapshots its instances (see `build_engine`)."""

    clients: Clients
    request: SnapshotRequest
    budget: RetryBudget
    idempotency: IdempotencyStore | None
    wrap: Callable[[SnapshotFn], SnapshotFn] = _as_is

    def _first_delivery(self, instances: Sequence[Instance]) -> bool:
        store = self.idempotency
        if store is None or not instances or self.request.policy.dry_run:
            # Without a store nothing can tell a first delivery; a dry run makes no set.
            return False
        return claim_first_delivery(
            store.dynamodb, store.table_name, self.request.policy.name, self.request.trigger.id
        )

    def for_targets(self, instances: Sequence[Instance]) -> SnapshotFn:
        """The per-instance snapshot function for these instances, after the run's lookups."""
        request = self.request
        lookups = run_lookups(
            self.clients.ec2, request, instances, first_delivery=self._first_delivery(instances)
        )
        engine: SnapshotFn = partial(
            snapshot_instance,
            self.clients.ec2,
            request,
            budget=self.budget,
            ec2_create=self.clients.ec2_create,
            lookups=lookups,
        )
        store = self.idempotency
        if store is not None:
            engine = idempotent_snapshots(
                engine,
                table_name=store.table_name,
                policy=request.policy.name,
                trigger_id=request.trigger.id,
                context=store.context,
                dynamodb_client=store.dynamodb,
            )
        return self.wrap(engine)


def build_engine(
    clients: Clients,
    request: SnapshotRequest,
    deadline: Deadline,
    *,
    idempotency: IdempotencyStore | None,
    wrap: Callable[[SnapshotFn], SnapshotFn] = _as_is,
) -> Engine:
    """The engine for a request: per run, its lookups (see the module docstring); per instance,
    plan, CreateSnapshots through the client without botocore retries, retries within
    `deadline`, and with `idempotency` at most one set per (policy, trigger, instance) across
    deliveries. `wrap` wraps the per-instance function (the CLI's progress bar). The handler and
    the CLI both build their engine here."""
    return Engine(
        clients=clients,
        request=request,
        budget=RetryBudget(deadline=deadline),
        idempotency=idempotency,
        wrap=wrap,
    )


def run_request(
    ec2: EC2Client,
    request: SnapshotRequest,
    *,
    engine: Engine,
    deadline: Deadline,
    max_workers: int,
) -> RunReport | Ignored:
    """Run a request end to end and return its report (or `Ignored` for a non-target event).

    `engine` makes the run's lookups for the instances found, then snapshots each (see
    `build_engine`). After an instance's set has started,
    the policy's retention deletes its older sets (see `retention.with_retention`), and stops
    between sets once `deadline` has passed. Discovery errors (DescribeInstances denied or
    throttled past botocore's retries) give a failed report naming the error.
    """
    policy = request.policy
    try:
        if request.event_instance_id is not None:
            targets = _event_targets(ec2, request, request.event_instance_id)
            if isinstance(targets, Ignored):
                return targets
            instances, missing = targets
        else:
            found = find_targets(ec2, policy)
            instances, missing = found.instances, found.missing
    except (ClientError, BotoCoreError) as exc:
        logger.exception("target discovery failed for policy %s", policy.name)
        report = build_report(policy.name, request.trigger, policy.dry_run, [])
        return report.model_copy(
            update={
                "status": ReportStatus.FAILED,
                "error": ErrorInfo(
                    code=error_code(exc), message=f"finding target instances: {exc}"
                ),
            }
        )
    retention = policy.retention
    snapshot = engine.for_targets(instances)

    def snapshot_then_retain(instance: Instance) -> InstanceOutcome:
        # Retention runs outside the idempotent snapshot step, so a redelivery retries it too.
        outcome = snapshot(instance)
        if retention is None:
            return outcome
        return with_retention(
            ec2, policy, outcome, request.trigger.id, datetime.now(UTC), deadline=deadline
        )

    outcomes = missing + snapshot_all(instances, snapshot_then_retain, max_workers)
    return build_report(policy.name, request.trigger, policy.dry_run, outcomes)
