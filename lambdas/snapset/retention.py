"""Retention: delete a policy's older snapshot sets of an instance, and only Snapset's own.

A *set* is the snapshots of one instance sharing one `snapset:trigger-id` (one CreateSnapshots
call). Sets are kept or deleted whole, and counted and aged as sets.

The decision is pure (`managed_sets`, `select_sets_to_delete`) so it can be property-tested; the
I/O around it (`apply_retention`) lists the instance's snapshots with one paginated
DescribeSnapshots, checks only the sets the rules would delete for protections (registered AMI,
shared or public, locked), and deletes what is left. Any check that cannot be made keeps the
snapshots it was about: retention errs on keeping, never on deleting.

AWS calls used, all on the `ec2` client: DescribeSnapshots, DescribeLockedSnapshots,
DescribeImages, DescribeSnapshotAttribute, DeleteSnapshot.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from snapset.deadline import NEVER, Deadline
from snapset.errors import TIMEOUT, UNEXPECTED_ERROR, error_code, error_message
from snapset.outcomes import InstanceOutcome, InstanceStatus, RetentionError, RetentionResult
from snapset.pacing import Pacer
from snapset.policy import (
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    Retention,
    SnapshotPolicy,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

logger = logging.getLogger(__name__)

COMPLETED = "completed"
ERROR = "error"
# States a set may be deleted in; anything else (pending, recoverable, unknown) is kept.
DELETABLE_STATES = frozenset({COMPLETED, ERROR})
# EC2 accepts at most 200 values in one filter; used for every batched id list.
_IDS_PER_CALL = 200


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
    record: SnapshotRecord, policy: str, instance_id: str, account_id: str | None = None
) -> bool:
    """Whether a snapshot is Snapset's own, of this policy and instance.

    All three managed tags must be present and non-empty, with the policy and instance equal to
    these; with `account_id`, the snapshot must also be owned by that account.
    """
    tags = record.tags
    return (
        tags.get(TAG_POLICY) == policy
        and tags.get(TAG_INSTANCE_ID) == instance_id
        and bool(tags.get(TAG_TRIGGER_ID))
        and (account_id is None or record.owner_id == account_id)
    )


def managed_sets(
    records: Iterable[SnapshotRecord],
    policy: str,
    instance_id: str,
    account_id: str | None = None,
) -> list[SnapshotSet]:
    """Group this policy's and instance's snapshots into sets; every other snapshot is dropped."""
    groups: dict[str, dict[str, SnapshotRecord]] = {}
    for record in records:
        if is_managed(record, policy, instance_id, account_id):
            groups.setdefault(record.tags[TAG_TRIGGER_ID], {})[record.snapshot_id] = record
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


def retention_error(exc: Exception, snapshot_id: str | None, what: str) -> RetentionError:
    return RetentionError(
        snapshot_id=snapshot_id, code=error_code(exc), message=f"{what}: {error_message(exc)}"
    )


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _IDS_PER_CALL):
        yield list(ids[start : start + _IDS_PER_CALL])


def list_snapshots(
    ec2: EC2Client, policy: str, instance_id: str, account_id: str | None = None
) -> list[SnapshotRecord]:
    """One paginated DescribeSnapshots: our snapshots tagged with this policy and instance."""
    filters: list[Any] = [
        {"Name": f"tag:{TAG_POLICY}", "Values": [policy]},
        {"Name": f"tag:{TAG_INSTANCE_ID}", "Values": [instance_id]},
    ]
    if account_id is not None:
        filters.append({"Name": "owner-id", "Values": [account_id]})
    paginator = ec2.get_paginator("describe_snapshots")
    return [
        SnapshotRecord.from_api(raw)
        for page in paginator.paginate(OwnerIds=["self"], Filters=filters)
        for raw in page.get("Snapshots", [])
    ]


def locked_ids(ec2: EC2Client, ids: Sequence[str]) -> set[str]:
    """Snapshots with an EBS snapshot lock in any state but `expired`."""
    locked: set[str] = set()
    for chunk in _chunks(ids):
        token: str | None = None
        while True:
            page = (
                ec2.describe_locked_snapshots(SnapshotIds=chunk, NextToken=token)
                if token
                else ec2.describe_locked_snapshots(SnapshotIds=chunk)
            )
            locked.update(
                s["SnapshotId"]
                for s in page.get("Snapshots", [])
                if "SnapshotId" in s and s.get("LockState") != "expired"
            )
            token = page.get("NextToken")
            if not token:
                break
    return locked


def ami_backed_ids(ec2: EC2Client, ids: Sequence[str]) -> set[str]:
    """Snapshots that back one of our registered AMIs (disabled and deprecated ones too)."""
    wanted = set(ids)
    backing: set[str] = set()
    paginator = ec2.get_paginator("describe_images")
    for chunk in _chunks(ids):
        pages = paginator.paginate(
            Owners=["self"],
            IncludeDisabled=True,
            IncludeDeprecated=True,
            Filters=[{"Name": "block-device-mapping.snapshot-id", "Values": chunk}],
        )
        for page in pages:
            for image in page.get("Images", []):
                for mapping in image.get("BlockDeviceMappings", []):
                    sid = mapping.get("Ebs", {}).get("SnapshotId")
                    if sid in wanted:
                        backing.add(sid)
    return backing


def is_shared(ec2: EC2Client, snapshot_id: str) -> bool:
    """Shared with another account or public (any createVolumePermission)."""
    attr = ec2.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="createVolumePermission"
    )
    return bool(attr.get("CreateVolumePermissions"))


def _out_of_time_error(what: str) -> RetentionError:
    return RetentionError(
        code=TIMEOUT, message=f"out of invocation time: {what}; the next run continues"
    )


def _protected(
    ec2: EC2Client, candidates: Sequence[SnapshotSet], deadline: Deadline = NEVER
) -> tuple[set[str], list[RetentionError]]:
    """Snapshot ids of the candidate sets that must be kept, and the checks that failed.

    A check that fails (denied, throttled past retries, or not supported, as by a local AWS
    without snapshot locks) protects every snapshot it was about.
    """
    ids = [sid for s in candidates for sid in s.snapshot_ids]
    errors: list[RetentionError] = []
    protected: set[str] = set()
    for what, check in (
        ("DescribeLockedSnapshots", locked_ids),
        ("DescribeImages", ami_backed_ids),
    ):
        try:
            protected |= check(ec2, ids)
        except Exception as exc:  # any failure, even a local AWS's NotImplementedError, keeps
            logger.warning("retention check %s failed: %r", what, exc)
            errors.append(
                retention_error(
                    exc, None, f"{what} failed, kept {len(candidates)} set(s) unchecked"
                )
            )
            return set(ids), errors
    for n, s in enumerate(candidates):
        if protected.intersection(s.snapshot_ids):
            continue  # kept anyway: no need to ask about its other snapshots
        if deadline.expired():
            unchecked = [sid for later in candidates[n:] for sid in later.snapshot_ids]
            protected.update(unchecked)
            errors.append(_out_of_time_error(f"kept {len(candidates) - n} set(s) unchecked"))
            break
        for sid in s.snapshot_ids:
            try:
                if is_shared(ec2, sid):
                    protected.add(sid)
            except Exception as exc:
                logger.warning("retention check of %s failed: %r", sid, exc)
                errors.append(
                    retention_error(exc, sid, "DescribeSnapshotAttribute failed, kept its set")
                )
                protected.add(sid)
    return protected, errors


def _delete(
    ec2: EC2Client,
    doomed: Sequence[SnapshotSet],
    deadline: Deadline = NEVER,
    pacer: Pacer | None = None,
) -> tuple[list[str], list[RetentionError]]:
    deleted: list[str] = []
    errors: list[RetentionError] = []
    for n, s in enumerate(doomed):
        # Checked per set, and the whole set's DeleteSnapshot calls are paced at once, so a set
        # is never left half deleted for lack of time.
        ids = s.snapshot_ids
        if deadline.expired() or (
            pacer is not None and not pacer.acquire(deadline, min(len(ids), pacer.burst))
        ):
            errors.append(_out_of_time_error(f"{len(doomed) - n} set(s) not deleted yet"))
            break
        for sid in ids:
            try:
                ec2.delete_snapshot(SnapshotId=sid)
            except (ClientError, BotoCoreError) as exc:
                errors.append(
                    retention_error(exc, sid, f"DeleteSnapshot {sid} (set {s.trigger_id})")
                )
            else:
                deleted.append(sid)
    return deleted, errors


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
) -> RetentionResult:
    """Delete the policy's older snapshot sets of one instance that its retention lets go.

    Call it after this run's set of the instance was started (`current_trigger_id`), with an
    aware `now`. With `policy.dry_run` nothing is deleted and `deleted` lists what would be.
    `account_id`, when known, restricts candidates to snapshots owned by that account (AWS
    already does with `OwnerIds=['self']`; a local AWS may not). Never raises: lookup and
    deletion failures are returned in `errors`, and a failed lookup deletes nothing.
    `deadline` is asked before each set's checks and deletion: once it has passed, the rest is
    kept and reported (code `Timeout`) for the next run, so the report still gets out.
    `pacer`, the run's share of EC2's DeleteSnapshot bucket, is asked for each set's calls at
    once; a set it has no time for is kept and reported the same way.
    """
    retention = policy.retention
    if retention is None:
        raise ValueError(f"policy {policy.name!r} has no retention")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    dry_run = policy.dry_run
    try:
        records = list_snapshots(ec2, policy.name, instance_id, account_id)
        sets = managed_sets(records, policy.name, instance_id, account_id)
        older = sum(1 for s in sets if s.trigger_id != current_trigger_id)
        # The rules alone first: protections are checked only for sets they would delete.
        candidates = select_sets_to_delete(sets, retention, now, current_trigger_id)
        if not candidates:
            return RetentionResult(kept=older, dry_run=dry_run)
        protected, errors = _protected(ec2, candidates, deadline)
        doomed = select_sets_to_delete(sets, retention, now, current_trigger_id, protected)
        if dry_run:
            deleted = [sid for s in doomed for sid in s.snapshot_ids]
        else:
            deleted, delete_errors = _delete(ec2, doomed, deadline, pacer)
            errors += delete_errors
    except (ClientError, BotoCoreError) as exc:
        logger.warning("retention for %s failed: %r", instance_id, exc)
        return RetentionResult(
            errors=(retention_error(exc, None, f"{instance_id}: listing snapshots"),),
            dry_run=dry_run,
        )
    except Exception as exc:
        # A bug must not cost the report of the snapshots just started; nothing more is deleted.
        logger.exception("unexpected error in retention for %s", instance_id)
        return RetentionResult(
            errors=(RetentionError(code=UNEXPECTED_ERROR, message=f"{instance_id}: {exc!r}"),),
            dry_run=dry_run,
        )
    logger.info(
        "retention %s %s: %s %d snapshot(s) of %d set(s), kept %d set(s), %d error(s)",
        policy.name,
        instance_id,
        "would delete" if dry_run else "deleted",
        len(deleted),
        len(doomed),
        older - len(doomed),
        len(errors),
    )
    return RetentionResult(
        deleted=tuple(deleted), kept=older - len(doomed), errors=tuple(errors), dry_run=dry_run
    )


def wants_retention(policy: SnapshotPolicy, outcome: InstanceOutcome) -> bool:
    """Retention runs for an instance whose set this run started, or in a dry run that would."""
    if policy.retention is None:
        return False
    if policy.dry_run:
        return outcome.status is InstanceStatus.DRY_RUN_OK
    return outcome.status is InstanceStatus.STARTED


def with_retention(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    outcome: InstanceOutcome,
    current_trigger_id: str,
    now: datetime,
    *,
    account_id: str | None = None,
    deadline: Deadline = NEVER,
    pacer: Pacer | None = None,
) -> InstanceOutcome:
    """The outcome with its `retention` result filled in when retention applies to it."""
    if not wants_retention(policy, outcome):
        return outcome
    result = apply_retention(
        ec2,
        policy,
        outcome.instance_id,
        current_trigger_id,
        now,
        account_id=account_id,
        deadline=deadline,
        pacer=pacer,
    )
    return outcome.model_copy(update={"retention": result})
