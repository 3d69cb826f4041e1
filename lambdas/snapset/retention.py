"""Retention: delete a policy's older snapshot sets of an instance, and only Snapset's own.

A *set* is the snapshots of one instance sharing one `snapset:trigger-id` (one CreateSnapshots
call). Sets are kept or deleted whole, and counted and aged as sets.

The decision is pure (`managed_sets`, `select_sets_to_delete`) so it can be property-tested; the
I/O around it (`retain_sets`, a run's retention phase after all its sets started) lists the
instances' snapshots with one paginated DescribeSnapshots per 200 instances, checks only the
sets the rules would delete for protections (registered AMI and locked: batched across the run;
shared or public: per snapshot, on threads that run ahead of the deletions, so an instance's
sets go as soon as its own checks are answered), and deletes what is left, paced, whole sets at
a time, until the deadline: what is left is counted in `remaining` and deleted by the next run.
Any check that cannot be made keeps the snapshots it was about: retention errs on keeping, never
on deleting.

AWS calls used, all on the `ec2` client: DescribeSnapshots and DeleteSnapshot here, and the
protection checks of `protections` (DescribeLockedSnapshots, DescribeImages,
DescribeSnapshotAttribute).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from snapset.deadline import NEVER, Deadline
from snapset.errors import UNEXPECTED_ERROR
from snapset.outcomes import InstanceOutcome, InstanceStatus, RetentionError, RetentionResult
from snapset.pacing import Pacer
from snapset.policy import (
    COPIES_IN_FLIGHT,
    TAG_COPIES,
    TAG_COPY_INSTANCE_ID,
    TAG_COPY_POLICY,
    TAG_COPY_SOURCE_REGION,
    TAG_COPY_TRIGGER_ID,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    Retention,
    SnapshotPolicy,
)
from snapset.protections import (
    batch_protected,
    chunks,
    out_of_time_error,
    retention_error,
    shared_kept,
    sharing_answers,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

logger = logging.getLogger(__name__)

COMPLETED = "completed"
ERROR = "error"
# States a set may be deleted in; anything else (pending, recoverable, unknown) is kept.
DELETABLE_STATES = frozenset({COMPLETED, ERROR})
# The largest page DescribeSnapshots allows: calls grow with pages, not instances.
_SNAPSHOTS_PER_PAGE = 1000


@dataclass(frozen=True)
class SetTags:
    """The tag keys that name a set's policy, trigger and instance, and any other tag a
    snapshot must carry to be retention's: Snapset's sets at home, or their copies elsewhere."""

    policy: str
    trigger_id: str
    instance_id: str
    required: tuple[tuple[str, str], ...] = ()


HOME_SET_TAGS = SetTags(TAG_POLICY, TAG_TRIGGER_ID, TAG_INSTANCE_ID)


def copy_set_tags(source_region: str) -> SetTags:
    """The keys of the copies Snapset made from `source_region`'s sets: a Snapset deployed in
    the destination never counts them as its own sets, nor these its."""
    return SetTags(
        TAG_COPY_POLICY,
        TAG_COPY_TRIGGER_ID,
        TAG_COPY_INSTANCE_ID,
        required=((TAG_COPY_SOURCE_REGION, source_region),),
    )


# --- the pure part ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRecord:
    """What retention needs of one snapshot, from DescribeSnapshots."""

    snapshot_id: str
    state: str
    start_time: datetime
    tags: Mapping[str, str] = field(hash=False)
    owner_id: str | None = None

    @classmethod
    def from_api(cls, raw: Any) -> SnapshotRecord:
        return cls(
            snapshot_id=raw["SnapshotId"],
            state=raw.get("State", "unknown"),
            start_time=raw["StartTime"],
            tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
            owner_id=raw.get("OwnerId"),
        )


@dataclass(frozen=True)
class SnapshotSet:
    """The snapshots of one instance made by one trigger of one policy."""

    trigger_id: str
    snapshots: tuple[SnapshotRecord, ...]

    @property
    def start_time(self) -> datetime:
        # CreateSnapshots gives every snapshot of a set the same StartTime; should they ever
        # differ, the newest makes the set look younger, which only keeps it longer.
        return max(s.start_time for s in self.snapshots)

    @property
    def snapshot_ids(self) -> tuple[str, ...]:
        return tuple(s.snapshot_id for s in self.snapshots)

    @property
    def completed(self) -> bool:
        """Every snapshot completed: a usable backup."""
        return all(s.state == COMPLETED for s in self.snapshots)

    @property
    def unsettled(self) -> bool:
        """Some snapshot pending, failed or in any state but completed."""
        return not self.completed

    @property
    def deletable_state(self) -> bool:
        """Nothing in flight: every snapshot completed or failed."""
        return all(s.state in DELETABLE_STATES for s in self.snapshots)


def is_managed(
    record: SnapshotRecord,
    policy: str,
    instance_id: str,
    account_id: str | None = None,
    keys: SetTags = HOME_SET_TAGS,
) -> bool:
    """Whether a snapshot is Snapset's own, of this policy and instance.

    The three identity tags (policy, trigger, instance, under `keys`) must be present and
    non-empty, with the policy and instance equal to these, and `keys.required` tags present
    with their values; with `account_id`, the snapshot must also be owned by that account.
    """
    tags = record.tags
    return (
        tags.get(keys.policy) == policy
        and tags.get(keys.instance_id) == instance_id
        and bool(tags.get(keys.trigger_id))
        and all(tags.get(k) == v for k, v in keys.required)
        and (account_id is None or record.owner_id == account_id)
    )


def managed_sets(
    records: Iterable[SnapshotRecord],
    policy: str,
    instance_id: str,
    account_id: str | None = None,
    keys: SetTags = HOME_SET_TAGS,
) -> list[SnapshotSet]:
    """Group this policy's and instance's snapshots into sets; every other snapshot is dropped."""
    groups: dict[str, dict[str, SnapshotRecord]] = {}
    for record in records:
        if is_managed(record, policy, instance_id, account_id, keys):
            groups.setdefault(record.tags[keys.trigger_id], {})[record.snapshot_id] = record
    return [
        SnapshotSet(trigger_id, tuple(members.values())) for trigger_id, members in groups.items()
    ]


def _outside_retention(newer_completed: int, age: timedelta, retention: Retention) -> bool:
    """Whether the rules let a set go: beyond `count` and/or older than `max_age_days`.

    With both rules a set is kept while either keeps it ("the last N sets or D days").
    """
    beyond_count = retention.count is None or newer_completed >= retention.count
    too_old = retention.max_age_days is None or age > timedelta(days=retention.max_age_days)
    return beyond_count and too_old


def select_sets_to_delete(
    sets: Sequence[SnapshotSet],
    retention: Retention,
    now: datetime,
    current_trigger_id: str,
    protected_ids: Collection[str] = frozenset(),
) -> tuple[SnapshotSet, ...]:
    """The sets retention deletes, oldest first. Every other set is kept.

    The set of `current_trigger_id` (started by this run) is never deleted and is otherwise
    ignored: it counts toward neither `count` nor "newer pending". A set is kept when any of
    these holds:

    - it is the newest completed set (ties: all of them);
    - a newer (or equally new) other set is pending or failed, so a failed run never shrinks the
      last good backups;
    - one of its snapshots is not completed or failed (still in flight, or an unknown state);
    - one of its snapshots is in `protected_ids` (AMI, shared, locked, or not checkable);
    - the rules keep it: fewer than `count` completed sets are strictly newer, or it is at most
      `max_age_days` old. With both rules it is kept when either keeps it.
    """
    others = [s for s in sets if s.trigger_id != current_trigger_id]
    completed_times = sorted(s.start_time for s in others if s.completed)
    unsettled_times = sorted(s.start_time for s in others if s.unsettled)
    newest_completed = completed_times[-1] if completed_times else None
    protected = set(protected_ids)
    doomed: list[SnapshotSet] = []
    for s in others:
        t = s.start_time
        newer_completed = len(completed_times) - bisect.bisect_right(completed_times, t)
        unsettled_at_or_after = len(unsettled_times) - bisect.bisect_left(unsettled_times, t)
        blocked = unsettled_at_or_after - (1 if s.unsettled else 0) > 0
        if (
            blocked
            or (s.completed and t == newest_completed)
            or not s.deletable_state
            or protected.intersection(s.snapshot_ids)
            or not _outside_retention(newer_completed, now - t, retention)
        ):
            continue
        doomed.append(s)
    return tuple(sorted(doomed, key=lambda s: (s.start_time, s.trigger_id)))


# --- the I/O part ----------------------------------------------------------------------------


def list_snapshots(
    ec2: EC2Client, policy: str, instance_id: str, account_id: str | None = None
) -> list[SnapshotRecord]:
    """Our snapshots tagged with this policy and instance (see `list_instances_snapshots`)."""
    return list_instances_snapshots(ec2, policy, [instance_id], account_id)


def list_instances_snapshots(
    ec2: EC2Client,
    policy: str,
    instance_ids: Sequence[str],
    account_id: str | None = None,
    keys: SetTags = HOME_SET_TAGS,
) -> list[SnapshotRecord]:
    """Our snapshots tagged with this policy and one of these instances: one paginated
    DescribeSnapshots per 200 instances (EC2's limit of values in a filter), 1,000 a page."""
    paginator = ec2.get_paginator("describe_snapshots")
    records: list[SnapshotRecord] = []
    for chunk in chunks(instance_ids):
        filters: list[Any] = [
            {"Name": f"tag:{keys.policy}", "Values": [policy]},
            {"Name": f"tag:{keys.instance_id}", "Values": chunk},
            *({"Name": f"tag:{k}", "Values": [v]} for k, v in keys.required),
        ]
        if account_id is not None:
            filters.append({"Name": "owner-id", "Values": [account_id]})
        pages = paginator.paginate(
            OwnerIds=["self"], Filters=filters, PaginationConfig={"PageSize": _SNAPSHOTS_PER_PAGE}
        )
        records += [
            SnapshotRecord.from_api(raw) for page in pages for raw in page.get("Snapshots", [])
        ]
    return records


def _delete(
    ec2: EC2Client,
    doomed: Sequence[SnapshotSet],
    deadline: Deadline = NEVER,
    pacer: Pacer | None = None,
) -> tuple[list[str], list[RetentionError], int]:
    """Delete the sets in order: the snapshots deleted, the errors, and how many sets were left
    for the next run for lack of time."""
    deleted: list[str] = []
    errors: list[RetentionError] = []
    for n, s in enumerate(doomed):
        # Checked per set, and the whole set's DeleteSnapshot calls are paced at once, so a set
        # is never left half deleted for lack of time.
        ids = s.snapshot_ids
        if deadline.expired() or (
            pacer is not None and not pacer.acquire(deadline, min(len(ids), pacer.burst))
        ):
            errors.append(out_of_time_error(f"{len(doomed) - n} set(s) not deleted yet"))
            return deleted, errors, len(doomed) - n
        for sid in ids:
            try:
                ec2.delete_snapshot(SnapshotId=sid)
            except (ClientError, BotoCoreError) as exc:
                errors.append(
                    retention_error(exc, sid, f"DeleteSnapshot {sid} (set {s.trigger_id})")
                )
            else:
                deleted.append(sid)
    return deleted, errors, 0


def apply_retention(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    instance_id: str,
    current_trigger_id: str,
    now: datetime,
    *,
    account_id: str | None = None,
    deadline: Deadline = NEVER,
    pacer: Pacer | None = None,
    keys: SetTags = HOME_SET_TAGS,
) -> RetentionResult:
    """Delete the policy's older snapshot sets of one instance that its retention lets go
    (`retain_sets` for one instance)."""
    return retain_sets(
        ec2,
        policy,
        [instance_id],
        current_trigger_id,
        now,
        account_id=account_id,
        deadline=deadline,
        pacer=pacer,
        keys=keys,
    )[instance_id]


@dataclass(frozen=True)
class _InstancePlan:
    sets: tuple[SnapshotSet, ...]
    older: int
    candidates: tuple[SnapshotSet, ...]


def _named(instance_ids: Sequence[str]) -> str:
    """The instances for a log line: up to three, then how many more."""
    more = len(instance_ids) - 3
    return ", ".join(instance_ids[:3]) + (f" and {more} more" if more > 0 else "")


def retain_sets(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    instance_ids: Sequence[str],
    current_trigger_id: str,
    now: datetime,
    *,
    account_id: str | None = None,
    deadline: Deadline = NEVER,
    pacer: Pacer | None = None,
    keys: SetTags = HOME_SET_TAGS,
    retention: Retention | None = None,
    check_workers: int = 1,
    check_pacer: Pacer | None = None,
) -> dict[str, RetentionResult]:
    """Delete the policy's older snapshot sets of these instances that its retention lets go.

    Call it after this run's sets of the instances were started (`current_trigger_id`), with an
    aware `now`. With `policy.dry_run` nothing is deleted and `deleted` lists what would be.
    `account_id`, when known, restricts candidates to snapshots owned by that account (AWS
    already does with `OwnerIds=['self']`; a local AWS may not). Calls grow with pages: one
    listing per 200 instances, lock and AMI checks batched across all their candidates, then
    instance by instance, as soon as its sets' sharing is answered, its deletions, whole sets
    at a time, each set's calls asked of `pacer` (the run's share of EC2's DeleteSnapshot
    bucket). Never raises: lookup and deletion failures are
    returned in each result's `errors`, and a failed lookup deletes nothing. Once `deadline`
    has passed, the sets left are kept, counted in `remaining` and reported (code `Timeout`)
    for the next run, so the report still gets out.

    `keys` names the sets' tags (a region's copies: `copy_set_tags`) and `retention` overrides
    the policy's (a copy rule's own). `check_workers` threads ask EC2 about sharing, each call
    asked of `check_pacer` (the run's share of the DescribeSnapshotAttribute bucket). A set
    still tagged `snapset:copies=pending` is kept, and a share with one of
    `policy.share_with_accounts` (Snapset's own) protects nothing.
    """
    retention = retention if retention is not None else policy.retention
    if retention is None:
        raise ValueError(f"policy {policy.name!r} has no retention")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    dry_run = policy.dry_run
    if not instance_ids:
        return {}
    try:
        records = list_instances_snapshots(ec2, policy.name, instance_ids, account_id, keys)
        by_instance: dict[str, list[SnapshotRecord]] = {iid: [] for iid in instance_ids}
        for record in records:
            by_instance.get(record.tags.get(keys.instance_id, ""), []).append(record)
        plans: dict[str, _InstancePlan] = {}
        for iid in instance_ids:
            sets = managed_sets(by_instance[iid], policy.name, iid, account_id, keys)
            # The rules alone first: protections are checked only for sets they would delete.
            plans[iid] = _InstancePlan(
                sets=tuple(sets),
                older=sum(1 for s in sets if s.trigger_id != current_trigger_id),
                candidates=select_sets_to_delete(sets, retention, now, current_trigger_id),
            )
        candidates = [c for plan in plans.values() for c in plan.candidates]
        protected, failed = (
            batch_protected(ec2, [c.snapshot_ids for c in candidates])
            if candidates
            else (set(), None)
        )
        # A set whose copies are still being made: CopySnapshot reads its source.
        protected |= {
            r.snapshot_id
            for c in candidates
            for r in c.snapshots
            if r.tags.get(TAG_COPIES) in COPIES_IN_FLIGHT
        }
    except (ClientError, BotoCoreError) as exc:
        logger.warning("retention for %s failed: %r", _named(instance_ids), exc)
        return {
            iid: RetentionResult(
                errors=(retention_error(exc, None, f"{iid}: listing snapshots"),), dry_run=dry_run
            )
            for iid in instance_ids
        }
    except Exception as exc:
        # A bug must not cost the report of the snapshots just started; nothing is deleted.
        logger.exception("unexpected error in retention for %s", _named(instance_ids))
        return _unexpected(instance_ids, exc, dry_run)
    # Sharing is asked per snapshot, of the sets nothing protects yet, on threads that run
    # ahead of the deletions: an instance's sets are deleted as soon as its own are answered,
    # so the DeleteSnapshot share is spent while later instances are still being checked.
    # (A failed lock or AMI check protected every candidate, so none is asked about.)
    to_check = {
        iid: [c for c in plan.candidates if not protected.intersection(c.snapshot_ids)]
        for iid, plan in plans.items()
    }
    answers = sharing_answers(
        ec2,
        [c.snapshot_ids for sets in to_check.values() for c in sets],
        deadline,
        own_shares=frozenset(policy.share_with_accounts),
        workers=check_workers,
        pacer=check_pacer,
    )
    results: dict[str, RetentionResult] = {}
    with closing(answers):
        for iid, plan in plans.items():
            try:
                errors = [failed] if failed is not None and plan.candidates else []
                unchecked = 0
                for c, set_answers in zip(
                    to_check[iid], islice(answers, len(to_check[iid])), strict=True
                ):
                    unchecked += set_answers is None
                    kept, set_errors = shared_kept(c.snapshot_ids, set_answers)
                    protected |= kept
                    errors += set_errors
                if unchecked:
                    errors.append(out_of_time_error(f"kept {unchecked} set(s) unchecked"))
            except Exception as exc:
                logger.exception("unexpected error in retention's checks of %s", iid)
                results[iid] = _unexpected([iid], exc, dry_run)[iid]
                continue
            results[iid] = _retain_instance(
                ec2,
                policy,
                iid,
                plan,
                errors=errors,
                protected=protected,
                unchecked=unchecked,
                now=now,
                current_trigger_id=current_trigger_id,
                deadline=deadline,
                pacer=pacer,
                retention=retention,
            )
    return results


def _unexpected(
    instance_ids: Sequence[str], exc: Exception, dry_run: bool
) -> dict[str, RetentionResult]:
    return {
        iid: RetentionResult(
            errors=(RetentionError(code=UNEXPECTED_ERROR, message=f"{iid}: {exc!r}"),),
            dry_run=dry_run,
        )
        for iid in instance_ids
    }


def _retain_instance(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    instance_id: str,
    plan: _InstancePlan,
    *,
    errors: list[RetentionError],
    protected: set[str],
    unchecked: int,
    now: datetime,
    current_trigger_id: str,
    deadline: Deadline,
    pacer: Pacer | None,
    retention: Retention,
) -> RetentionResult:
    dry_run = policy.dry_run
    if not plan.candidates:
        return RetentionResult(kept=plan.older, dry_run=dry_run)
    try:
        doomed = select_sets_to_delete(plan.sets, retention, now, current_trigger_id, protected)
        remaining = 0
        if dry_run:
            deleted = [sid for s in doomed for sid in s.snapshot_ids]
        else:
            deleted, delete_errors, remaining = _delete(ec2, doomed, deadline, pacer)
            errors += delete_errors
        # Sets left unchecked for lack of time are the backlog too: the next run checks them.
        remaining += unchecked
    except Exception as exc:
        # A bug must not cost the report of the snapshots just started; nothing more is deleted.
        logger.exception("unexpected error in retention for %s", instance_id)
        return _unexpected([instance_id], exc, dry_run)[instance_id]
    logger.info(
        "retention %s %s: %s %d snapshot(s) of %d set(s), kept %d set(s), %d left, %d error(s)",
        policy.name,
        instance_id,
        "would delete" if dry_run else "deleted",
        len(deleted),
        len(doomed),
        plan.older - len(doomed) - unchecked,
        remaining,
        len(errors),
    )
    return RetentionResult(
        deleted=tuple(deleted),
        kept=plan.older - len(doomed) - unchecked,
        remaining=remaining,
        errors=tuple(errors),
        dry_run=dry_run,
    )


def wants_retention(policy: SnapshotPolicy, outcome: InstanceOutcome) -> bool:
    """Retention runs for an instance whose set this run started, or in a dry run that would."""
    if policy.retention is None:
        return False
    if policy.dry_run:
        return outcome.status is InstanceStatus.DRY_RUN_OK
    return outcome.status is InstanceStatus.STARTED


def with_retention_all(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    outcomes: Sequence[InstanceOutcome],
    current_trigger_id: str,
    now: datetime,
    *,
    deadline: Deadline = NEVER,
    pacer: Pacer | None = None,
    check_workers: int = 1,
    check_pacer: Pacer | None = None,
) -> list[InstanceOutcome]:
    """The run's retention phase: every outcome retention applies to gets its `retention`
    result (`retain_sets` over all of them at once, sharing asked about on `check_workers`
    threads paced by `check_pacer`), the others are returned as they are."""
    wanted = [o.instance_id for o in outcomes if wants_retention(policy, o)]
    if not wanted:
        return list(outcomes)
    results = retain_sets(
        ec2,
        policy,
        wanted,
        current_trigger_id,
        now,
        deadline=deadline,
        pacer=pacer,
        check_workers=check_workers,
        check_pacer=check_pacer,
    )
    return [
        o.model_copy(update={"retention": results[o.instance_id]})
        if o.instance_id in results
        else o
        for o in outcomes
    ]
