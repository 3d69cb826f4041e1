"""Retention's protection checks: the snapshots that must be kept whatever the rules say.

A snapshot that backs a registered AMI, is shared or public, or is locked is never deleted; a
check that cannot be made keeps every snapshot it was about. AWS calls, all on the `ec2`
client: DescribeLockedSnapshots, DescribeImages, DescribeSnapshotAttribute.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from snapset.deadline import NEVER, Deadline
from snapset.errors import TIMEOUT, error_code, error_message
from snapset.outcomes import RetentionError
from snapset.pacing import Pacer

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

logger = logging.getLogger(__name__)

# EC2 accepts at most 200 values in one filter; used for every batched id list.
IDS_PER_CALL = 200


def retention_error(exc: Exception, snapshot_id: str | None, what: str) -> RetentionError:
    """A retention step's error: the snapshot it was about (None: a lookup) and what failed."""
    return RetentionError(
        snapshot_id=snapshot_id, code=error_code(exc), message=f"{what}: {error_message(exc)}"
    )


def chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), IDS_PER_CALL):
        yield list(ids[start : start + IDS_PER_CALL])


def locked_ids(ec2: EC2Client, ids: Sequence[str]) -> set[str]:
    """Snapshots with an EBS snapshot lock in any state but `expired`."""
    locked: set[str] = set()
    for chunk in chunks(ids):
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
    for chunk in chunks(ids):
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


def is_shared(ec2: EC2Client, snapshot_id: str, own_shares: Collection[str] = frozenset()) -> bool:
    """Shared with another account or public (any createVolumePermission but a share with one
    of `own_shares`, the accounts the policy itself shares its sets with)."""
    attr = ec2.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="createVolumePermission"
    )
    return any(
        "UserId" not in p or p["UserId"] not in own_shares
        for p in attr.get("CreateVolumePermissions", [])
    )


def out_of_time_error(what: str) -> RetentionError:
    return RetentionError(
        code=TIMEOUT, message=f"out of invocation time: {what}; the next run continues"
    )


def batch_protected(
    ec2: EC2Client, candidates: Sequence[Sequence[str]]
) -> tuple[set[str], RetentionError | None]:
    """The candidate sets' snapshots a lock or a registered AMI protects, asked in batches of
    200 ids across all of them; if a check fails (denied, throttled past retries, or not
    supported, as by a local AWS without snapshot locks), every snapshot, and the error."""
    ids = [sid for s in candidates for sid in s]
    protected: set[str] = set()
    for what, check in (
        ("DescribeLockedSnapshots", locked_ids),
        ("DescribeImages", ami_backed_ids),
    ):
        try:
            protected |= check(ec2, ids)
        except Exception as exc:  # any failure, even a local AWS's NotImplementedError, keeps
            logger.warning("retention check %s failed: %r", what, exc)
            return set(ids), retention_error(
                exc, None, f"{what} failed, kept {len(candidates)} set(s) unchecked"
            )
    return protected, None


# One set's sharing answers, a snapshot each: shared or not, or the error asking; None: the set
# was not asked about, the deadline had passed.
SharingAnswers = list[bool | Exception] | None


def sharing_answers(
    ec2: EC2Client,
    sets: Sequence[Sequence[str]],
    deadline: Deadline = NEVER,
    *,
    own_shares: Collection[str] = frozenset(),
    workers: int = 1,
    pacer: Pacer | None = None,
) -> Generator[SharingAnswers, None, None]:
    """Each set's sharing answers (EC2 answers per snapshot only), in order, as soon as that
    set's are known: on `workers` threads the checks run ahead of the caller, so it can delete
    the first sets while later ones are still being asked about (a call's latency, not EC2's
    bucket, is what bounds them), each call asked of `pacer` (the run's share of EC2's
    DescribeSnapshotAttribute bucket). A set not started when `deadline` passed, or whose calls
    the pacer could grant only after it, gets None. Close the iterator (or exhaust it) to stop
    the threads."""

    def check_set(snapshot_ids: Sequence[str]) -> SharingAnswers:
        if deadline.expired():
            return None
        answers: list[bool | Exception] = []
        for sid in snapshot_ids:
            if pacer is not None and not pacer.acquire(deadline):
                return None
            try:
                answers.append(is_shared(ec2, sid, own_shares))
            except Exception as exc:
                logger.warning("retention check of %s failed: %r", sid, exc)
                answers.append(exc)
        return answers

    if workers <= 1 or len(sets) <= 1:
        for n, snapshot_ids in enumerate(sets):
            answers = check_set(snapshot_ids)
            yield answers
            if answers is None:
                yield from [None] * (len(sets) - n - 1)  # out of time: the rest stay unchecked
                return
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(check_set, sets)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def shared_kept(
    snapshot_ids: Sequence[str], answers: SharingAnswers
) -> tuple[set[str], list[RetentionError]]:
    """The snapshots of one set its sharing answers keep (shared, or not known: the whole set
    when it was not asked about), and the errors asking."""
    if answers is None:
        return set(snapshot_ids), []
    kept: set[str] = set()
    errors: list[RetentionError] = []
    for sid, answer in zip(snapshot_ids, answers, strict=True):
        if isinstance(answer, Exception):
            errors.append(
                retention_error(answer, sid, "DescribeSnapshotAttribute failed, kept its set")
            )
            kept.add(sid)
        elif answer:
            kept.add(sid)
    return kept, errors
