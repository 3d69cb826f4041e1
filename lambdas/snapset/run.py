"""One run of a policy: build its engine, choose the instances for the trigger, snapshot them,
build the report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from snapset.clients import Clients
from snapset.deadline import Deadline
from snapset.errors import INSTANCE_NOT_FOUND, error_code
from snapset.idempotency import idempotent_snapshots
from snapset.outcomes import ErrorInfo, InstanceOutcome
from snapset.policy import SnapshotRequest
from snapset.report import ReportStatus, RunReport, build_report
from snapset.retention import with_retention
from snapset.snapshots import (
    Instance,
    RetryBudget,
    SnapshotFn,
    describe_instance,
    find_targets,
    matches_policy,
    snapshot_all,
    snapshot_instance,
)

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


def build_engine(
    clients: Clients,
    request: SnapshotRequest,
    deadline: Deadline,
    *,
    idempotency: IdempotencyStore | None,
) -> SnapshotFn:
    """The per-instance snapshot function for a request: plan, CreateSnapshots through the
    client without botocore retries, retries within `deadline`, and with `idempotency` at most
    one set per (policy, trigger, instance) across deliveries. The handler and the CLI both
    build their engine here."""
    engine: SnapshotFn = partial(
        snapshot_instance,
        clients.ec2,
        request,
        budget=RetryBudget(deadline=deadline),
        ec2_create=clients.ec2_create,
    )
    if idempotency is None:
        return engine
    return idempotent_snapshots(
        engine,
        table_name=idempotency.table_name,
        policy=request.policy.name,
        trigger_id=request.trigger.id,
        context=idempotency.context,
        dynamodb_client=idempotency.dynamodb,
    )


def run_request(
    ec2: EC2Client,
    request: SnapshotRequest,
    *,
    engine: SnapshotFn,
    deadline: Deadline,
    max_workers: int,
) -> RunReport | Ignored:
    """Run a request end to end and return its report (or `Ignored` for a non-target event).

    `engine` snapshots one instance (see `build_engine`). After an instance's set has started,
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

    def snapshot_then_retain(instance: Instance) -> InstanceOutcome:
        # Retention runs outside the idempotent snapshot step, so a redelivery retries it too.
        outcome = engine(instance)
        if retention is None:
            return outcome
        return with_retention(
            ec2, policy, outcome, request.trigger.id, datetime.now(UTC), deadline=deadline
        )

    outcomes = missing + snapshot_all(instances, snapshot_then_retain, max_workers)
    return build_report(policy.name, request.trigger, policy.dry_run, outcomes)
