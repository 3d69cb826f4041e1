"""One run of a policy: choose the instances for the trigger, snapshot them, build the report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from snapset.outcomes import ErrorInfo, InstanceOutcome
from snapset.policy import SnapshotRequest
from snapset.report import ReportStatus, RunReport, build_report
from snapset.retention import with_retention
from snapset.snapshots import (
    INSTANCE_NOT_FOUND,
    Instance,
    SnapshotFn,
    describe_instance,
    find_targets,
    matches_policy,
    snapshot_all,
    snapshot_instance,
)

if TYPE_CHECKING:
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


def run_request(
    ec2: EC2Client,
    request: SnapshotRequest,
    *,
    max_workers: int,
    snapshot_fn: SnapshotFn | None = None,
    out_of_time: Callable[[], bool] | None = None,
) -> RunReport | Ignored:
    """Run a request end to end and return its report (or `Ignored` for a non-target event).

    `snapshot_fn` snapshots one instance; it defaults to `snapshot_instance` and is where the
    handler adds idempotency. After an instance's set has started, the policy's retention
    deletes its older sets (see `retention.with_retention`). Discovery errors (DescribeInstances
    denied or throttled past botocore's retries) give a failed report naming the error.
    `out_of_time` (the invocation's deadline) stops retention's work between sets.
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
        code = (
            exc.response.get("Error", {}).get("Code", "Unknown")
            if isinstance(exc, ClientError)
            else type(exc).__name__
        )
        report = build_report(policy.name, request.trigger, policy.dry_run, [])
        return report.model_copy(
            update={
                "status": ReportStatus.FAILED,
                "error": ErrorInfo(code=code, message=f"finding target instances: {exc}"),
            }
        )
    snapshot = snapshot_fn or partial(snapshot_instance, ec2, request)
    retention = policy.retention

    def snapshot_then_retain(instance: Instance) -> InstanceOutcome:
        # Retention runs outside the idempotent snapshot step, so a redelivery retries it too.
        outcome = snapshot(instance)
        if retention is None:
            return outcome
        return with_retention(
            ec2,
            policy,
            outcome,
            request.trigger.id,
            datetime.now(UTC),
            out_of_time=out_of_time or (lambda: False),
        )

    outcomes = missing + snapshot_all(instances, snapshot_then_retain, max_workers)
    return build_report(policy.name, request.trigger, policy.dry_run, outcomes)
