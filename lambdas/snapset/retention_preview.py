"""The retention preview (`snapset plan`): what a run would delete and keep of an instance's
sets, and why, with retention's own read-only listing and checks; nothing is deleted.

`explain_retention` is pure (the sets, the rules, the protections found); `preview_retention`
makes the calls: DescribeSnapshots, DescribeLockedSnapshots, DescribeImages,
DescribeSnapshotAttribute. A check that fails keeps what it was about, as retention does.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from snapset.outcomes import RetentionError
from snapset.policy import COPIES_IN_FLIGHT, TAG_COPIES, Retention, SnapshotPolicy
from snapset.protections import ami_backed_ids, is_shared, locked_ids, retention_error
from snapset.retention import (
    DELETABLE_STATES,
    SnapshotSet,
    list_snapshots,
    managed_sets,
    select_sets_to_delete,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


KEEP = "keep"
DELETE = "delete"
# Why a set is kept or deleted, as `SetDecision.reason`.
REASON_CURRENT = "current"
REASON_PENDING = "pending"
REASON_NEWEST = "newest"
REASON_NEWER_UNSETTLED = "newer-set-unsettled"
REASON_WITHIN_COUNT = "within-count"
REASON_WITHIN_AGE = "within-age"
REASON_LOCKED = "locked"
REASON_AMI = "ami-backed"
REASON_SHARED = "shared"
REASON_UNCHECKED = "unchecked"
REASON_COPIES_PENDING = "copies-pending"
REASON_BEYOND_COUNT = "beyond-count"
REASON_TOO_OLD = "older-than-max-age"
REASON_BEYOND_COUNT_AND_AGE = "beyond-count-and-max-age"
# The first protection found on a set's snapshots names it.
_PROTECTION_ORDER = (
    REASON_LOCKED,
    REASON_AMI,
    REASON_SHARED,
    REASON_COPIES_PENDING,
    REASON_UNCHECKED,
)


class SetDecision(BaseModel):
    """What retention does with one set, and why (`reason` is one of the REASON_* values)."""

    model_config = ConfigDict(frozen=True)

    trigger_id: str
    start_time: datetime
    age_days: int
    snapshot_ids: tuple[str, ...]
    action: Literal["keep", "delete"]
    reason: str
    detail: str


class RetentionPreview(BaseModel):
    """What the policy's retention would do for one instance's sets, newest first; a failed
    lookup is in `errors` (and keeps what it was about, as retention does)."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    sets: tuple[SetDecision, ...] = ()
    errors: tuple[RetentionError, ...] = ()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _why_deleted(newer_completed: int, age: timedelta, retention: Retention) -> tuple[str, str]:
    beyond = f"{_plural(newer_completed, 'newer completed set')}, count is {retention.count}"
    old = f"{age.days} days old, max_age_days is {retention.max_age_days}"
    if retention.count is not None and retention.max_age_days is not None:
        return REASON_BEYOND_COUNT_AND_AGE, f"{beyond}, and {old}"
    if retention.count is not None:
        return REASON_BEYOND_COUNT, beyond
    return REASON_TOO_OLD, old


def _why_kept(
    s: SnapshotSet,
    *,
    newer_completed: int,
    age: timedelta,
    blocked: bool,
    newest_completed: datetime | None,
    retention: Retention,
) -> tuple[str, str]:
    if not s.deletable_state:
        states = sorted({r.state for r in s.snapshots if r.state not in DELETABLE_STATES})
        return REASON_PENDING, f"snapshots still {', '.join(states)}"
    if s.completed and s.start_time == newest_completed:
        return REASON_NEWEST, "the newest completed set is always kept"
    if blocked:
        return REASON_NEWER_UNSETTLED, "a newer set is pending or failed"
    if retention.count is not None and newer_completed < retention.count:
        newer = _plural(newer_completed, "newer completed set")
        return REASON_WITHIN_COUNT, f"{newer}, count is {retention.count}"
    return REASON_WITHIN_AGE, f"{age.days} days old, max_age_days is {retention.max_age_days}"


def explain_retention(
    sets: Sequence[SnapshotSet],
    retention: Retention,
    now: datetime,
    current_trigger_id: str = "",
    protections: Mapping[str, str] | None = None,
) -> tuple[SetDecision, ...]:
    """Each set with what retention does with it and why, newest first.

    What is deleted is exactly what `select_sets_to_delete` deletes with `protections`' ids
    protected; `protections` maps snapshot ids to why they are protected (REASON_LOCKED,
    REASON_AMI, REASON_SHARED, REASON_UNCHECKED). A set the rules alone would delete but a
    protection keeps is kept for that protection.
    """
    protections = protections or {}
    candidates = {
        s.trigger_id for s in select_sets_to_delete(sets, retention, now, current_trigger_id)
    }
    doomed = {
        s.trigger_id
        for s in select_sets_to_delete(sets, retention, now, current_trigger_id, protections.keys())
    }
    others = [s for s in sets if s.trigger_id != current_trigger_id]
    completed_times = sorted(s.start_time for s in others if s.completed)
    unsettled_times = sorted(s.start_time for s in others if s.unsettled)
    newest_completed = completed_times[-1] if completed_times else None
    decisions: list[SetDecision] = []
    for s in sets:
        t, age = s.start_time, now - s.start_time
        newer_completed = len(completed_times) - bisect.bisect_right(completed_times, t)
        unsettled_at_or_after = len(unsettled_times) - bisect.bisect_left(unsettled_times, t)
        blocked = unsettled_at_or_after - (1 if s.unsettled else 0) > 0
        action = KEEP
        if s.trigger_id == current_trigger_id:
            reason, detail = REASON_CURRENT, "the set this run started"
        elif s.trigger_id in doomed:
            action = DELETE
            reason, detail = _why_deleted(newer_completed, age, retention)
        elif s.trigger_id in candidates:
            found = {protections[sid] for sid in s.snapshot_ids if sid in protections}
            reason = next(r for r in (*_PROTECTION_ORDER, *sorted(found)) if r in found)
            protected = sorted(sid for sid in s.snapshot_ids if sid in protections)
            detail = f"{reason}: {', '.join(protected)}"
        else:
            reason, detail = _why_kept(
                s,
                newer_completed=newer_completed,
                age=age,
                blocked=blocked,
                newest_completed=newest_completed,
                retention=retention,
            )
        decisions.append(
            SetDecision(
                trigger_id=s.trigger_id,
                start_time=t,
                age_days=age.days,
                snapshot_ids=s.snapshot_ids,
                action=action,
                reason=reason,
                detail=detail,
            )
        )
    return tuple(sorted(decisions, key=lambda d: (d.start_time, d.trigger_id), reverse=True))


def _protections(
    ec2: EC2Client, candidates: Sequence[SnapshotSet], own_shares: Collection[str]
) -> tuple[dict[str, str], list[RetentionError]]:
    """Why each protected snapshot of the candidate sets is kept, and the checks that failed.

    The same read-only checks as retention's: a lookup that fails leaves every snapshot it was
    about `unchecked` (kept), as a run would.
    """
    ids = [sid for s in candidates for sid in s.snapshot_ids]
    reasons: dict[str, str] = {}
    for reason, what, check in (
        (REASON_LOCKED, "DescribeLockedSnapshots", locked_ids),
        (REASON_AMI, "DescribeImages", ami_backed_ids),
    ):
        try:
            found = check(ec2, ids)
        except Exception as exc:  # as in a run: any failure keeps what it was about
            unchecked = {sid: REASON_UNCHECKED for sid in ids if sid not in reasons}
            failed = retention_error(
                exc, None, f"{what} failed, {len(candidates)} set(s) kept unchecked"
            )
            return reasons | unchecked, [failed]
        reasons.update({sid: reason for sid in ids if sid in found and sid not in reasons})
    errors: list[RetentionError] = []
    for s in candidates:
        if any(sid in reasons for sid in s.snapshot_ids):
            continue
        for sid in s.snapshot_ids:
            try:
                if is_shared(ec2, sid, own_shares):
                    reasons[sid] = REASON_SHARED
            except Exception as exc:
                errors.append(
                    retention_error(exc, sid, "DescribeSnapshotAttribute failed, kept its set")
                )
                reasons[sid] = REASON_UNCHECKED
    return reasons, errors


def preview_retention(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    instance_id: str,
    now: datetime,
    *,
    account_id: str | None = None,
) -> RetentionPreview:
    """What a run at `now` would delete and keep of one instance's sets, and why; read-only.

    The listing and protection checks are retention's own (DescribeSnapshots,
    DescribeLockedSnapshots, DescribeImages, DescribeSnapshotAttribute); nothing is deleted.
    The set that run would start is not there yet, and it counts toward nothing anyway.
    Never raises for AWS errors: they are in `errors`, and what they were about is kept.
    """
    retention = policy.retention
    if retention is None:
        raise ValueError(f"policy {policy.name!r} has no retention")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        records = list_snapshots(ec2, policy.name, instance_id, account_id)
        sets = managed_sets(records, policy.name, instance_id, account_id)
        candidates = select_sets_to_delete(sets, retention, now, "")
        protections, errors = (
            _protections(ec2, candidates, policy.share_with_accounts) if candidates else ({}, [])
        )
        # As a run does: a set whose copies to other regions are still being made is kept.
        protections |= {
            r.snapshot_id: REASON_COPIES_PENDING
            for c in candidates
            for r in c.snapshots
            if r.tags.get(TAG_COPIES) in COPIES_IN_FLIGHT and r.snapshot_id not in protections
        }
    except (ClientError, BotoCoreError) as exc:
        error = retention_error(exc, None, f"{instance_id}: listing snapshots")
        return RetentionPreview(instance_id=instance_id, errors=(error,))
    decisions = explain_retention(sets, retention, now, "", protections)
    return RetentionPreview(instance_id=instance_id, sets=decisions, errors=tuple(errors))
