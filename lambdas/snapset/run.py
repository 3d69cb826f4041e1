"""One run of a policy: build its engine, choose the instances for the trigger, snapshot them,
build the report.

Once its instances are known, a run makes its lookups once, not per instance
(`Engine.for_targets`): with an idempotency store it first claims the trigger's run marker
(`idempotency.claim_delivery`). The first delivery makes no look-up (a manual run's excepted:
the CLI may have used its request id, and keeps no marker) and releases the marker when done;
a duplicate arriving while it runs stands down without calling EC2; any other delivery lists
the sets earlier deliveries made with one paginated DescribeSnapshots and looks again for each
missing one just before its CreateSnapshots. The volumes to exclude by tag come from one
paginated DescribeVolumes (`snapshots.run_lookups`). Without a store (the CLI) it always lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from snapset.clients import Clients
from snapset.consistency import ScriptRunner, workers_for
from snapset.deadline import Deadline
from snapset.errors import IN_PROGRESS, INSTANCE_NOT_FOUND, error_code
from snapset.idempotency import (
    MAX_INVOCATION_SECONDS,
    Delivery,
    claim_delivery,
    idempotent_snapshots,
    release_delivery,
)
from snapset.outcomes import ErrorInfo, InstanceOutcome
from snapset.pacing import (
    CREATE_SNAPSHOTS_BUCKET,
    DEFAULT_EC2_API_SHARE,
    DELETE_SNAPSHOT_BUCKET,
    DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET,
    Pacer,
)
from snapset.policy import SnapshotRequest, TriggerType
from snapset.report import ReportStatus, RunReport, build_report
from snapset.retention import with_retention_all
from snapset.snapshots import (
    RetryBudget,
    SnapshotFn,
    TagExcluded,
    out_of_time,
    run_lookups,
    snapshot_all,
    snapshot_instance,
)
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
class HandedOff:
    """A run too big for one invocation, handed to the fan-out state machine (`fanout`): its
    execution publishes the run report. `duplicate`: an earlier delivery of the trigger had
    already started that execution, so this one started nothing."""

    execution_arn: str
    instances: int
    batches: int
    estimated_seconds: float
    duplicate: bool = False
    # The execution's status as this delivery found it (RUNNING when it started it).
    execution_status: str | None = None


# Decides, once the targets are known, whether the run is handed off (see `fanout.hand_off`).
HandOff = Callable[[Sequence[Instance], Sequence[InstanceOutcome]], HandedOff | None]


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
    # The run's share of EC2's DeleteSnapshot bucket, for retention (None: unpaced).
    delete_pacer: Pacer | None = None
    # Its share of the DescribeSnapshotAttribute bucket, for retention's sharing checks.
    check_pacer: Pacer | None = None
    # What the caller already knows of this delivery, instead of claiming the run marker: a
    # fan-out batch's first attempt is FIRST, its retries LATER (Step Functions never runs
    # one Map item twice at once, so no marker is needed to stand a duplicate down).
    known_delivery: Delivery | None = None

    # Whether this run holds the trigger's run marker (released by `release`).
    _held: list[bool] = field(default_factory=list)

    def _claim(self, instances: Sequence[Instance]) -> Delivery | None:
        store = self.idempotency
        if not instances or self.request.policy.dry_run:
            return None  # a dry run makes no set
        if self.known_delivery is not None:
            return self.known_delivery
        if store is None:
            # Without a store nothing can tell a first delivery, but a manual run under an id
            # made for it (the CLI's fresh one) is the first.
            request = self.request
            fresh = request.trigger.type is TriggerType.MANUAL and not request.caller_request_id
            return Delivery.FIRST if fresh else None
        context = store.context
        holds = (
            context.get_remaining_time_in_millis() / 1000
            if context is not None
            else MAX_INVOCATION_SECONDS
        )
        delivery = claim_delivery(
            store.dynamodb,
            store.table_name,
            self.request.policy.name,
            self.request.trigger.id,
            holds_for_seconds=holds,
        )
        if delivery is Delivery.FIRST:
            self._held.append(True)
        return delivery

    def _stand_down(self, instance: Instance) -> InstanceOutcome:
        iid = instance.instance_id
        return InstanceOutcome.failed(
            iid,
            IN_PROGRESS,
            f"{iid}: another delivery of this trigger is running; a redelivery reports its result",
        )

    def for_targets(
        self, instances: Sequence[Instance], *, tag_excluded: TagExcluded | None = None
    ) -> SnapshotFn:
        """The per-instance snapshot function for these instances, after the run's lookups
        (`tag_excluded`: the volume-tag exclusions the run's plan already listed)."""
        request = self.request
        delivery = self._claim(instances)
        if delivery is Delivery.RUNNING:
            return self.wrap(self._stand_down)
        # A caller's request id may be one the CLI (which keeps no marker) used: look anyway.
        first = delivery is Delivery.FIRST and not request.caller_request_id
        scripts = request.policy.scripts
        runner = (
            ScriptRunner(self.clients.ssm, scripts, request.policy.name)
            if scripts is not None
            else None
        )
        lookups = run_lookups(
            self.clients.ec2,
            request,
            instances,
            first_delivery=first,
            ssm=runner.ssm if runner is not None else None,
            tag_excluded=tag_excluded,
        )
        engine: SnapshotFn = partial(
            snapshot_instance,
            self.clients.ec2,
            request,
            budget=self.budget,
            ec2_create=self.clients.ec2_create,
            lookups=lookups,
            scripts=runner,
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
        return self.wrap(partial(_unless_out_of_time, engine, self.budget))

    def release(self) -> None:
        """Release the trigger's run marker if this run holds it (at the run's end)."""
        store = self.idempotency
        if store is not None and self._held:
            self._held.clear()
            release_delivery(
                store.dynamodb, store.table_name, self.request.policy.name, self.request.trigger.id
            )


def _unless_out_of_time(
    engine: SnapshotFn, budget: RetryBudget, instance: Instance
) -> InstanceOutcome:
    """Past the deadline an instance is reported without its idempotency record: writing and
    deleting one per unstarted instance costs two DynamoDB calls each, which at fleet scale
    would run the invocation past its timeout after the deadline meant to keep it inside."""
    if budget.expired():
        return out_of_time(instance.instance_id)
    return engine(instance)


def build_engine(
    clients: Clients,
    request: SnapshotRequest,
    deadline: Deadline,
    *,
    idempotency: IdempotencyStore | None,
    wrap: Callable[[SnapshotFn], SnapshotFn] = _as_is,
    ec2_api_share: float | None = DEFAULT_EC2_API_SHARE,
    ec2_rate_scale: float = 1.0,
    pacers_start_full: bool = True,
    known_delivery: Delivery | None = None,
) -> Engine:
    """The engine for a request: per run, its lookups (see the module docstring); per instance,
    plan, CreateSnapshots through the client without botocore retries, retries within
    `deadline`, and with `idempotency` at most one set per (policy, trigger, instance) across
    deliveries. `wrap` wraps the per-instance function (the CLI's progress bar). CreateSnapshots
    and retention's DeleteSnapshot and DescribeSnapshotAttribute calls are paced to
    `ec2_api_share` of EC2's buckets (None:
    unpaced; `ec2_rate_scale` multiplies their refill, for the local AWS's time-scaled profile;
    `pacers_start_full` False for a fan-out worker that follows another on the same share).
    `known_delivery` replaces the run marker's claim when the caller knows (a fan-out batch).
    The handler, the fan-out workers and the CLI all build their engine here."""
    create_pacer: Pacer | None = None
    delete_pacer: Pacer | None = None
    check_pacer: Pacer | None = None
    if ec2_api_share is not None:
        create_pacer, delete_pacer, check_pacer = (
            Pacer.share_of(
                bucket, ec2_api_share, time_scale=ec2_rate_scale, start_full=pacers_start_full
            )
            for bucket in (
                CREATE_SNAPSHOTS_BUCKET,
                DELETE_SNAPSHOT_BUCKET,
                DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET,
            )
        )
    return Engine(
        clients=clients,
        request=request,
        budget=RetryBudget(deadline=deadline, pacer=create_pacer),
        idempotency=idempotency,
        wrap=wrap,
        delete_pacer=delete_pacer,
        check_pacer=check_pacer,
        known_delivery=known_delivery,
    )


def run_request(
    ec2: EC2Client,
    request: SnapshotRequest,
    *,
    engine: Engine,
    deadline: Deadline,
    max_workers: int,
    hand_off: HandOff | None = None,
) -> RunReport | Ignored | HandedOff:
    """Run a request end to end and return its report (or `Ignored` for a non-target event).

    Once the targets are known, `hand_off` (when given) may take a run that does not fit the
    invocation to the fan-out state machine: `HandedOff`, and nothing else is done here. An
    instance event (one instance) always runs inline.

    `engine` makes the run's lookups for the instances found, then snapshots each (see
    `build_engine`). Once every set has started, the policy's retention deletes the instances'
    older sets (see `retention.retain_sets`: calls per page, paced), and stops between sets
    once `deadline` has passed, leaving the rest for the next run. Discovery errors
    (DescribeInstances denied or throttled past botocore's retries) give a failed report
    naming the error.
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
    if hand_off is not None and request.event_instance_id is None:
        handed = hand_off(instances, missing)
        if handed is not None:
            return handed
    snapshot = engine.for_targets(instances)
    try:
        outcomes = missing + snapshot_all(instances, snapshot, workers_for(policy, max_workers))
    finally:
        engine.release()
    # Retention is the run's own phase, after every set has started: deletion never delays
    # creation, and it runs outside the idempotent snapshot step, so a redelivery retries it.
    outcomes = with_retention_all(
        ec2,
        policy,
        outcomes,
        request.trigger.id,
        datetime.now(UTC),
        deadline=deadline,
        pacer=engine.delete_pacer,
        check_workers=max_workers,
        check_pacer=engine.check_pacer,
    )
    return build_report(policy.name, request.trigger, policy.dry_run, outcomes)
