"""What a policy would snapshot: targets and exclusions as the engine resolves them, DryRun only.

`make_plan` creates nothing: it resolves targets with `find_targets`, lists the volumes to
exclude by tag once for all of them (`run_lookups`), plans each instance with `plan_instance`,
and asks CreateSnapshots with `DryRun=True` whether the call would be
authorized. For a policy with scripts it says which instances SSM can reach (one
DescribeInstanceInformation per 50 instances); it sends no command. It returns a `Plan` value; a
failed target discovery is the plan's `error`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from snapset.consistency import ONLINE, PingListingFailed
from snapset.errors import UNEXPECTED_ERROR, error_code, error_message
from snapset.outcomes import ErrorInfo, InstanceOutcome, InstanceStatus
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.retention_preview import RetentionPreview, preview_retention
from snapset.snapshots import RunLookups, create_snapshot_set, plan_instance, run_lookups
from snapset.targets import UNSNAPSHOTTABLE_STATES, Instance, find_targets

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient

logger = logging.getLogger(__name__)


class PlanEntry(BaseModel):
    """What `plan` found for one instance.

    `excluded_volume_ids` are the data volumes CreateSnapshots would be told to exclude (as in
    the run report); `excluded_boot_volume_id` is the root volume left out by exclude_boot_volume.
    """

    model_config = ConfigDict(frozen=True)

    instance_id: str
    state: str
    status: InstanceStatus
    volume_ids: tuple[str, ...] = ()
    snapshot_volume_ids: tuple[str, ...] = ()
    excluded_volume_ids: tuple[str, ...] = ()
    excluded_boot_volume_id: str | None = None
    reason: str | None = None
    error: ErrorInfo | None = None
    # With scripts: the instance's SSM ping status (`Online`: its scripts can run), `not
    # managed`, or why it is unknown; None for a policy without scripts.
    ssm: str | None = None

    @property
    def scripts_reachable(self) -> bool:
        return self.ssm == ONLINE


class PlanSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    instances: int
    dry_run_ok: int
    skipped: int
    failed: int
    volumes: int


class Plan(BaseModel):
    """The plan of one policy; `error` is set (and `instances` empty) when discovery failed."""

    model_config = ConfigDict(frozen=True)

    kind: str = "plan"
    policy: str
    region: str
    summary: PlanSummary
    instances: tuple[PlanEntry, ...]
    error: ErrorInfo | None = None
    # Set by `with_retention_preview` for a policy with retention: what a run at
    # `retention_as_of` would delete and keep of each instance it would snapshot.
    retention_as_of: datetime | None = None
    retention: tuple[RetentionPreview, ...] | None = None


# Called once per planned instance, from worker threads.
PlanProgress = Callable[[PlanEntry], None]


def dry_run_request(policy: SnapshotPolicy, now: datetime) -> SnapshotRequest:
    """The policy as a manual request with DryRun on, under a fresh trigger id."""
    dry = SnapshotPolicy.model_validate({**policy.model_dump(), "dry_run": True})
    return SnapshotRequest(
        policy=dry,
        trigger=Trigger(type=TriggerType.MANUAL, id=f"plan-{uuid.uuid4()}", time=now),
    )


def _with_outcome(entry: PlanEntry, outcome: InstanceOutcome) -> PlanEntry:
    return entry.model_copy(
        update={
            "status": outcome.status,
            "excluded_volume_ids": outcome.excluded_volume_ids,
            "reason": outcome.reason,
            "error": outcome.error,
        }
    )


def plan_one(
    ec2: EC2Client, request: SnapshotRequest, instance: Instance, lookups: RunLookups
) -> PlanEntry:
    """Plan one instance as the engine does, then ask CreateSnapshots with DryRun=True."""
    iid = instance.instance_id
    boot = None
    if request.policy.exclude_boot_volume and instance.state not in UNSNAPSHOTTABLE_STATES:
        boot = next((v.volume_id for v in instance.volumes if v.is_root), None)
    base = PlanEntry(
        instance_id=iid,
        state=instance.state,
        status=InstanceStatus.FAILED,
        volume_ids=tuple(v.volume_id for v in instance.volumes),
        excluded_boot_volume_id=boot,
        ssm=None
        if instance.state in UNSNAPSHOTTABLE_STATES
        else _ssm_status(request, lookups, iid),
    )
    try:
        planned = plan_instance(request.policy, instance, lookups.tag_excluded)
        if isinstance(planned, InstanceOutcome):
            return _with_outcome(base, planned)
        # A DryRun call creates nothing, so botocore's retrying client may send it.
        outcome = create_snapshot_set(ec2, request, iid, planned, existing=(), ec2_create=ec2)
    except (ClientError, BotoCoreError) as exc:
        return base.model_copy(
            update={
                "error": ErrorInfo(code=error_code(exc), message=f"{iid}: {error_message(exc)}")
            }
        )
    except Exception as exc:
        logger.exception("unexpected error planning %s", iid)
        return base.model_copy(
            update={"error": ErrorInfo(code=UNEXPECTED_ERROR, message=f"{exc!r}")}
        )
    if outcome.status is InstanceStatus.STARTED:
        # Only an endpoint that ignores DryRun gets here; say so loudly rather than hide it.
        made = ", ".join(s.snapshot_id for s in outcome.snapshots)
        logger.warning("%s: the endpoint ignored DryRun=True and created snapshots: %s", iid, made)
    return _with_outcome(base, outcome).model_copy(
        update={"snapshot_volume_ids": planned.snapshot_volume_ids}
    )


def _ssm_status(request: SnapshotRequest, lookups: RunLookups, instance_id: str) -> str | None:
    if request.policy.scripts is None:
        return None
    pings = lookups.ping_statuses
    if isinstance(pings, PingListingFailed):
        return f"unknown ({pings.code})"
    if pings is None:
        return "unknown (not listed)"
    return pings.get(instance_id, "not managed")


def _summary(entries: tuple[PlanEntry, ...]) -> PlanSummary:
    return PlanSummary(
        instances=len(entries),
        dry_run_ok=sum(e.status is InstanceStatus.DRY_RUN_OK for e in entries),
        skipped=sum(e.status is InstanceStatus.SKIPPED for e in entries),
        failed=sum(e.status is InstanceStatus.FAILED for e in entries),
        volumes=sum(
            len(e.snapshot_volume_ids) for e in entries if e.status is InstanceStatus.DRY_RUN_OK
        ),
    )


def make_plan(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    *,
    workers: int,
    on_planned: PlanProgress | None = None,
    on_targets: Callable[[int], None] | None = None,
    now: datetime | None = None,
    ssm: SSMClient | None = None,
) -> Plan:
    """Plan every target of `policy`, `workers` instances at a time (with `ssm`, a policy's
    scripts' reach: `PlanEntry.ssm`).

    `on_targets` gets the number of instances found before planning starts, `on_planned` each
    entry as it is done (from worker threads). A failed DescribeInstances gives a plan with
    `error` set and no instances.
    """
    request = dry_run_request(policy, now or datetime.now(UTC))
    region = ec2.meta.region_name
    try:
        targets = find_targets(ec2, policy)
    except (ClientError, BotoCoreError) as exc:
        return Plan(
            policy=policy.name,
            region=region,
            summary=_summary(()),
            instances=(),
            error=ErrorInfo(code=error_code(exc), message=f"finding target instances: {exc}"),
        )
    missing = [
        PlanEntry(instance_id=o.instance_id, state="not-found", status=o.status, error=o.error)
        for o in targets.missing
    ]
    if on_targets is not None:
        on_targets(len(targets.instances))
    # A dry run makes no set, so there is none to look for: only the volume listing is made.
    lookups = run_lookups(ec2, request, targets.instances, first_delivery=True, ssm=ssm)

    def plan(instance: Instance) -> PlanEntry:
        entry = plan_one(ec2, request, instance, lookups)
        if on_planned is not None:
            on_planned(entry)
        return entry

    entries: list[PlanEntry] = []
    if targets.instances:
        with ThreadPoolExecutor(max_workers=min(workers, len(targets.instances))) as pool:
            entries = list(pool.map(plan, targets.instances))
    ordered = tuple(sorted(missing + entries, key=lambda e: e.instance_id))
    return Plan(policy=policy.name, region=region, summary=_summary(ordered), instances=ordered)


def with_retention_preview(
    ec2: EC2Client, policy: SnapshotPolicy, plan: Plan, now: datetime, *, workers: int
) -> Plan:
    """The plan with its retention preview: for each instance whose set would start, what
    retention would delete and keep at `now` (read-only calls only). Unchanged without
    retention."""
    if policy.retention is None:
        return plan
    ids = [e.instance_id for e in plan.instances if e.status is InstanceStatus.DRY_RUN_OK]
    previews: list[RetentionPreview] = []
    if ids:
        with ThreadPoolExecutor(max_workers=min(workers, len(ids))) as pool:
            previews = list(pool.map(lambda i: preview_retention(ec2, policy, i, now), ids))
    return plan.model_copy(update={"retention_as_of": now, "retention": tuple(previews)})
