"""Disaster-recovery copies: every completed set of a policy with `copies`, copied whole to
other regions, and reported once per set when every copy has completed or failed there.

The home region drives everything; nothing is deployed in a destination. A set of a copying
policy is created tagged `snapset:copies=pending`. Its completion event starts its copies
(`advance_copies` for that set), and the copy sweep (a schedule, every 5 minutes) advances
every pending set: it looks at each destination for the copies already made, starts the
queued ones as EBS's concurrent-copy quota frees slots, runs the destination's retention once
a set's copies there completed, and hands back one `CopyReport` per set whose copies all
completed or failed. The caller publishes it, then `mark_reported` re-tags the set `done`.

State lives on the snapshots themselves, so a lost event, a dead invocation or a redelivery
only delays a copy: the next sweep finds what exists. CopySnapshot has no client token, so
each copy is also claimed in DynamoDB before it is started (`CopyClaims`): a claim holds
longer than an invocation lives, and by the time it lapses the copy, tagged with its source at
creation, is visible to the look-up.

AWS calls: DescribeSnapshots and CreateTags at home; DescribeSnapshots, CopySnapshot and the
retention calls (see `retention`) in each destination; PutItem on the idempotency table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from snapset.deadline import NEVER, Deadline
from snapset.errors import (
    REFUSED_CODES,
    SERVER_ERROR_CODES,
    error_code,
    error_message,
    http_status,
)
from snapset.notify import publish
from snapset.outcomes import ErrorInfo, RetentionResult
from snapset.pacing import BucketLimit, Pacer
from snapset.policy import (
    COPIES_COPYING,
    COPIES_DONE,
    COPIES_IN_FLIGHT,
    COPIES_NONE,
    COPIES_PENDING,
    MANAGED_TAG_PREFIX,
    MAX_DESCRIPTION_LEN,
    MAX_TAG_VALUE_LEN,
    MAX_TAGS_PER_RESOURCE,
    TAG_CONSISTENCY,
    TAG_COPIES,
    TAG_COPY_ERRORS,
    TAG_COPY_INSTANCE_ID,
    TAG_COPY_OF,
    TAG_COPY_POLICY,
    TAG_COPY_SOURCE_REGION,
    TAG_COPY_TRIGGER_ID,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    CopyRule,
    Distribution,
    Retention,
    SnapshotPolicy,
)
from snapset.protections import chunks
from snapset.retention import copy_set_tags, retain_sets

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_sns import SNSClient

logger = logging.getLogger(__name__)

# The copy sweep's event (`{"copy_sweep": {}}`), sent by the stack's schedule.
COPY_SWEEP_KEY = "copy_sweep"
COPY_SWEEP_SCHEDULE = "rate(5 minutes)"
# EBS's default quota of concurrent snapshot copies per destination region.
MAX_CONCURRENT_COPIES = 20
# Claims on a copy in the idempotency table, so that two invocations never copy one snapshot
# into one region twice (CopySnapshot has no client token).
COPY_CLAIM_PREFIX = "snapset-copy"
# Longer than Lambda's longest invocation: a claim outlives whoever made it, and once it
# lapses the copy it guarded is visible in the destination's DescribeSnapshots.
CLAIM_HOLD_SECONDS = 20 * 60
CLAIM_TTL_SECONDS = 48 * 3600
# CopySnapshot is a mutating call EC2's "Request throttling" does not list on its own.
COPY_SNAPSHOT_BUCKET = BucketLimit(burst=50, refill_per_second=5.0)
# EBS refuses a copy beyond its concurrent-copy quota with this code: queued, not failed.
COPY_LIMIT_CODE = "ResourceLimitExceeded"
_SNAPSHOTS_PER_PAGE = 1000

CopyState = Literal["pending", "completed", "error", "queued", "refused"]


# --- what the sets and their copies are ------------------------------------------------------


@dataclass(frozen=True)
class SourceSnapshot:
    """One snapshot of a set at home, as DescribeSnapshots gives it."""

    snapshot_id: str
    volume_id: str
    state: str
    start_time: datetime
    encrypted: bool = False
    kms_key_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_api(cls, raw: Any) -> SourceSnapshot:
        return cls(
            snapshot_id=raw["SnapshotId"],
            volume_id=raw.get("VolumeId", ""),
            state=raw.get("State", "unknown"),
            start_time=raw["StartTime"],
            encrypted=bool(raw.get("Encrypted")),
            kms_key_id=raw.get("KmsKeyId"),
            tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
        )


@dataclass(frozen=True)
class SourceSet:
    """The snapshots of one instance made by one trigger of one policy (one CreateSnapshots)."""

    policy: str
    trigger_id: str
    instance_id: str
    snapshots: tuple[SourceSnapshot, ...]

    @property
    def start_time(self) -> datetime:
        return max(s.start_time for s in self.snapshots)

    @property
    def state(self) -> str:
        """The set's `snapset:copies` (its snapshots are tagged together; any pending wins)."""
        states = {s.tags.get(TAG_COPIES, "") for s in self.snapshots}
        return COPIES_PENDING if COPIES_PENDING in states else min(states, default="")

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.policy, self.trigger_id, self.instance_id)

    @property
    def snapshot_ids(self) -> list[str]:
        return [s.snapshot_id for s in self.snapshots]

    @property
    def completed(self) -> bool:
        return all(s.state == "completed" for s in self.snapshots)

    @property
    def failed(self) -> bool:
        return any(s.state == "error" for s in self.snapshots)

    def refused(self) -> dict[str, str]:
        """The regions where CopySnapshot refused this set for good, with the error."""
        refused: dict[str, str] = {}
        for snap in self.snapshots:
            refused |= parse_copy_errors(snap.tags.get(TAG_COPY_ERRORS, ""))
        return refused


def parse_copy_errors(value: str) -> dict[str, str]:
    """`<region>=<error>` entries joined by `;` (the `snapset:copy-errors` tag)."""
    entries = (part.split("=", 1) for part in value.split(";") if "=" in part)
    return {region.strip(): text.strip() for region, text in entries if region.strip()}


def format_copy_errors(errors: Mapping[str, str]) -> str:
    """The `snapset:copy-errors` value: each error cut to an equal part of EC2's 256."""
    if not errors:
        return ""
    overhead = sum(len(region) + 1 for region in errors) + len(errors) - 1
    room = max(0, (MAX_TAG_VALUE_LEN - overhead) // len(errors))
    return ";".join(
        f"{region}={text.replace(';', ',')[:room]}" for region, text in sorted(errors.items())
    )


def sets_of(raw_snapshots: Iterable[Any]) -> list[SourceSet]:
    """Group snapshots into sets by their managed tags; untagged ones are dropped."""
    groups: dict[tuple[str, str, str], list[SourceSnapshot]] = {}
    for raw in raw_snapshots:
        snap = SourceSnapshot.from_api(raw)
        key = (
            snap.tags.get(TAG_POLICY, ""),
            snap.tags.get(TAG_TRIGGER_ID, ""),
            snap.tags.get(TAG_INSTANCE_ID, ""),
        )
        if all(key):
            groups.setdefault(key, []).append(snap)
    return [
        SourceSet(policy, trigger, instance, tuple(sorted(snaps, key=lambda s: s.snapshot_id)))
        for (policy, trigger, instance), snaps in sorted(groups.items())
    ]


def list_pending_sets(ec2: EC2Client) -> list[SourceSet]:
    """Every set at home whose copies are not all made and reported (`snapset:copies` pending
    or copying): one paginated DescribeSnapshots,
    1,000 a page, whatever the fleet (calls grow with the sets in flight, not the instances)."""
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"],
        Filters=[{"Name": f"tag:{TAG_COPIES}", "Values": sorted(COPIES_IN_FLIGHT)}],
        PaginationConfig={"PageSize": _SNAPSHOTS_PER_PAGE},
    )
    return sets_of(raw for page in pages for raw in page.get("Snapshots", []))


def describe_sets(ec2: EC2Client, snapshot_ids: Sequence[str]) -> list[SourceSet]:
    """The sets these snapshots belong to (a completion event's), by ID; a filter, so a
    snapshot deleted meanwhile is simply absent."""
    paginator = ec2.get_paginator("describe_snapshots")
    raw: list[Any] = []
    for chunk in chunks(snapshot_ids):
        for page in paginator.paginate(
            OwnerIds=["self"], Filters=[{"Name": "snapshot-id", "Values": chunk}]
        ):
            raw += page.get("Snapshots", [])
    return sets_of(raw)


@dataclass(frozen=True)
class CopyRecord:
    """A copy found in a destination region."""

    snapshot_id: str
    source_snapshot_id: str
    state: str
    state_message: str = ""


_STATE_RANK = {"completed": 0, "pending": 1, "error": 2}


def find_copies(
    ec2: EC2Client, source_region: str, source_ids: Sequence[str]
) -> dict[str, CopyRecord]:
    """The copies of these source snapshots in `ec2`'s region, by source: one paginated
    DescribeSnapshots per 200 sources. Should a source have two copies, the best one counts
    (completed, then pending, then failed)."""
    found: dict[str, CopyRecord] = {}
    paginator = ec2.get_paginator("describe_snapshots")
    for chunk in chunks(source_ids):
        pages = paginator.paginate(
            OwnerIds=["self"],
            Filters=[
                {"Name": f"tag:{TAG_COPY_OF}", "Values": chunk},
                {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [source_region]},
            ],
            PaginationConfig={"PageSize": _SNAPSHOTS_PER_PAGE},
        )
        for page in pages:
            for raw in page.get("Snapshots", []):
                tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                record = CopyRecord(
                    snapshot_id=raw["SnapshotId"],
                    source_snapshot_id=tags.get(TAG_COPY_OF, ""),
                    state=raw.get("State", "unknown"),
                    state_message=raw.get("StateMessage", ""),
                )
                best = found.get(record.source_snapshot_id)
                if best is None or _STATE_RANK.get(record.state, 3) < _STATE_RANK.get(
                    best.state, 3
                ):
                    found[record.source_snapshot_id] = record
    return found


def count_copies_in_flight(ec2: EC2Client, source_region: str) -> int:
    """Snapset's copies from `source_region` still pending in `ec2`'s region (one paginated
    call): what Snapset holds of the destination's concurrent-copy quota."""
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"],
        Filters=[
            {"Name": "status", "Values": ["pending"]},
            {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [source_region]},
        ],
        PaginationConfig={"PageSize": _SNAPSHOTS_PER_PAGE},
    )
    return sum(len(page.get("Snapshots", [])) for page in pages)


# --- claims ----------------------------------------------------------------------------------


class CopyClaims:
    """Claims on (destination region, source snapshot) in the idempotency table: a conditional
    PutItem that only one invocation wins while the claim holds."""

    def __init__(
        self,
        dynamodb: Any,
        table_name: str,
        *,
        clock: Callable[[], float] = time.time,
        hold_seconds: int = CLAIM_HOLD_SECONDS,
    ) -> None:
        self.dynamodb = dynamodb
        self.table_name = table_name
        self._clock = clock
        self._hold = hold_seconds

    def claim(self, region: str, snapshot_id: str) -> bool:
        """True when this invocation may start the copy; False when another holds it. Any
        other failure raises (the copy then waits for the next sweep)."""
        now = int(self._clock())
        try:
            self.dynamodb.put_item(
                TableName=self.table_name,
                Item={
                    "id": {"S": f"{COPY_CLAIM_PREFIX}#{region}#{snapshot_id}"},
                    "holds_until": {"N": str(now + self._hold)},
                    "expiration": {"N": str(now + CLAIM_TTL_SECONDS)},
                },
                ConditionExpression="attribute_not_exists(#id) OR #holds < :now",
                ExpressionAttributeNames={"#id": "id", "#holds": "holds_until"},
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release(self, region: str, snapshot_id: str) -> None:
        """Drop a claim whose copy certainly was not made (CopySnapshot refused it), so the
        next sweep may start it at once. A failure only leaves the claim to lapse."""
        try:
            self.dynamodb.delete_item(
                TableName=self.table_name,
                Key={"id": {"S": f"{COPY_CLAIM_PREFIX}#{region}#{snapshot_id}"}},
            )
        except (ClientError, BotoCoreError) as exc:
            logger.warning("releasing the claim on %s in %s failed: %r", snapshot_id, region, exc)


# --- the report ------------------------------------------------------------------------------


class CopiedSnapshot(BaseModel):
    """One source snapshot's copy in one region."""

    model_config = ConfigDict(frozen=True)

    source_snapshot_id: str
    volume_id: str
    snapshot_id: str | None = None
    state: CopyState
    error: ErrorInfo | None = None


class RegionCopies(BaseModel):
    """A set's copies in one destination region, and that region's retention of them."""

    model_config = ConfigDict(frozen=True)

    region: str
    status: Literal["completed", "failed"]
    copies: tuple[CopiedSnapshot, ...]
    retention: RetentionResult | None = None


class CopyReport(BaseModel):
    """The SNS report of a set whose copies all completed or failed. Field names are the
    published contract (README, "Copy report")."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["copy"] = "copy"
    policy: str
    instance_id: str
    trigger: dict[str, str]
    source_region: str
    # `succeeded`: every copy completed; `partial`: some region completed; else `failed`.
    status: Literal["succeeded", "partial", "failed"]
    regions: tuple[RegionCopies, ...]


def _report(source: SourceSet, home_region: str, regions: Sequence[RegionCopies]) -> CopyReport:
    done = [r.status == "completed" for r in regions]
    status: Literal["succeeded", "partial", "failed"] = (
        "succeeded" if all(done) else "partial" if any(done) else "failed"
    )
    return CopyReport(
        policy=source.policy,
        instance_id=source.instance_id,
        trigger={"id": source.trigger_id},
        source_region=home_region,
        status=status,
        regions=tuple(regions),
    )


# --- starting copies -------------------------------------------------------------------------


def copy_tags(
    source: SourceSet, snap: SourceSnapshot, rule: CopyRule, home_region: str
) -> list[Any]:
    """The copy's tags: the source's own (with `copy_tags`, AWS's and Snapset's left out), then
    the copy's identity, which wins, within EC2's 50 per resource."""
    managed = {
        TAG_COPY_POLICY: source.policy,
        TAG_COPY_TRIGGER_ID: source.trigger_id,
        TAG_COPY_INSTANCE_ID: source.instance_id,
        TAG_COPY_OF: snap.snapshot_id,
        TAG_COPY_SOURCE_REGION: home_region,
    }
    if TAG_CONSISTENCY in snap.tags:
        managed[TAG_CONSISTENCY] = snap.tags[TAG_CONSISTENCY]
    user: dict[str, str] = {}
    if rule.copy_tags:
        room = MAX_TAGS_PER_RESOURCE - len(managed)
        user = dict(
            sorted(
                (k, v)
                for k, v in snap.tags.items()
                if not k.startswith(MANAGED_TAG_PREFIX) and not k.lower().startswith("aws:")
            )[:room]
        )
    return [{"Key": k, "Value": v} for k, v in (user | managed).items()]


def copy_description(source: SourceSet, snap: SourceSnapshot, home_region: str) -> str:
    text = (
        f"Snapset copy of {snap.snapshot_id} from {home_region} (policy {source.policy}, "
        f"{source.instance_id}, set {source.trigger_id})"
    )
    return text[:MAX_DESCRIPTION_LEN]


def copy_snapshot_request(
    source: SourceSet, snap: SourceSnapshot, rule: CopyRule, home_region: str
) -> dict[str, Any]:
    """The exact CopySnapshot parameters, made with the destination region's client."""
    params: dict[str, Any] = {
        "SourceRegion": home_region,
        "SourceSnapshotId": snap.snapshot_id,
        "Description": copy_description(source, snap, home_region),
        "TagSpecifications": [
            {"ResourceType": "snapshot", "Tags": copy_tags(source, snap, rule, home_region)}
        ],
    }
    if rule.kms_key_arn is not None:
        params["Encrypted"] = True
        params["KmsKeyId"] = rule.kms_key_arn
    elif snap.encrypted:
        params["Encrypted"] = True
    return params


@dataclass(frozen=True)
class CopyingPolicy:
    """A deployed policy's copies and shares, and its own retention (the copies' default)."""

    name: str
    distribution: Distribution
    retention: Retention | None = None

    def as_policy(self) -> SnapshotPolicy:
        """The policy as retention takes it (its targets do not matter there)."""
        return SnapshotPolicy.model_validate(
            {
                "policy": self.name,
                "instance_ids": ["i-00000000"],
                "retention": self.retention,
                "share_with_accounts": self.distribution.share_with_accounts,
            }
        )


@dataclass
class _Region:
    """One destination region's state during an advance."""

    name: str
    ec2: EC2Client
    in_flight: int
    pacer: Pacer | None
    found: dict[str, CopyRecord] = field(default_factory=dict)
    # Why no more copies start here in this advance (quota, throttling, time), if any.
    blocked: str | None = None


@dataclass
class CopyProgress:
    """What an advance did: copies started and queued per region, and the finished sets."""

    started: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    finished: list[tuple[SourceSet, CopyReport]] = field(default_factory=list)
    failed_sets: list[SourceSet] = field(default_factory=list)
    waiting_sets: int = 0
    unconfigured_sets: list[SourceSet] = field(default_factory=list)
    not_pending_sets: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def backlog(self) -> int:
        return sum(self.queued.values())


def _state_of(record: CopyRecord) -> CopyState:
    if record.state in ("pending", "completed", "error"):
        return record.state  # type: ignore[return-value]
    # `recoverable` and other states a copy can pass through: still in flight.
    return "pending"


def _no_pacer(region: str) -> Pacer | None:  # noqa: ARG001
    return None


@dataclass(frozen=True)
class Copier:
    """What an advance works with besides its sets: the home region's client, a client per
    destination, the claims, the deployed copying policies, and the run's limits (its share
    of CopySnapshot's, DeleteSnapshot's and DescribeSnapshotAttribute's buckets per region, and
    its deadline)."""

    home_ec2: EC2Client
    ec2_in: Callable[[str], EC2Client]
    claims: CopyClaims
    policies: Mapping[str, CopyingPolicy]
    home_region: str
    now: datetime
    deadline: Deadline = NEVER
    pacer_for: Callable[[str], Pacer | None] = _no_pacer
    delete_pacer_for: Callable[[str], Pacer | None] = _no_pacer
    check_pacer_for: Callable[[str], Pacer | None] = _no_pacer
    concurrent_limit: int = MAX_CONCURRENT_COPIES


def advance_copies(copier: Copier, sets: Sequence[SourceSet]) -> CopyProgress:
    """Move these sets' copies forward: look at what each destination has, start what is
    missing while the destination's concurrent-copy quota, the run's share of CopySnapshot's
    bucket and the deadline allow, and report every set whose copies all completed or failed
    (after its destination retention ran). Oldest sets first, so a backlog drains in order.

    Never raises for AWS errors: a destination that cannot be read leaves its copies queued
    (listed in `errors`), a refused CopySnapshot (a 4xx other than throttling or the quota) is
    recorded on the source snapshots (`snapset:copy-errors`) and reported as `refused`, and
    anything that may have started a copy leaves it to the claim and the next look-up.
    """
    progress = CopyProgress()
    wanted = _classify(copier, sets, progress)
    regions = _destinations(copier, wanted, progress)
    finished: list[tuple[SourceSet, CopyingPolicy, list[tuple[CopyRule, RegionCopies]]]] = []
    started: list[SourceSet] = []
    candidates = _candidates(wanted, regions, copier.concurrent_limit, progress)
    _look_up(copier, candidates, regions, progress)
    for source, copying in candidates:
        before = sum(progress.started.values())
        results = _advance_set(copier, source, copying, regions, progress)
        if any(c.state in ("pending", "queued") for _, r in results for c in r.copies):
            if sum(progress.started.values()) > before and source.state == COPIES_PENDING:
                started.append(source)
            continue
        finished.append((source, copying, results))
    if started:
        try:
            _tag_sets(copier.home_ec2, started, COPIES_COPYING)
        except (ClientError, BotoCoreError) as exc:
            # Only a hint lost: such a set is looked at again once the destinations have room.
            progress.errors.append(f"tagging sets whose copies started: {error_message(exc)}")
    retained = _retain_copies(copier, finished, regions)
    for source, _, results in finished:
        reported = [
            r.model_copy(update={"retention": retained.get((source.key, rule.region))})
            for rule, r in results
        ]
        progress.finished.append((source, _report(source, copier.home_region, reported)))
    return progress


def _classify(
    copier: Copier, sets: Sequence[SourceSet], progress: CopyProgress
) -> list[tuple[SourceSet, CopyingPolicy]]:
    """The completed sets still to copy, oldest first; the others counted in `progress`."""
    wanted: list[tuple[SourceSet, CopyingPolicy]] = []
    for source in sorted(sets, key=lambda s: (s.start_time, s.trigger_id, s.instance_id)):
        copying = copier.policies.get(source.policy)
        if any(s.tags.get(TAG_COPIES) not in COPIES_IN_FLIGHT for s in source.snapshots):
            # Reported already (a redelivered event), or made before the policy copied.
            progress.not_pending_sets += 1
        elif copying is None or not copying.distribution.copies:
            # Its payload asked for copies the stack does not deploy (the CLI runs payloads).
            progress.unconfigured_sets.append(source)
        elif source.failed:
            progress.failed_sets.append(source)
        elif not source.completed:
            progress.waiting_sets += 1
        else:
            wanted.append((source, copying))
    return wanted


def _destinations(
    copier: Copier, wanted: Sequence[tuple[SourceSet, CopyingPolicy]], progress: CopyProgress
) -> dict[str, _Region]:
    """Each destination of the wanted sets, with Snapset's copies in flight there (one
    paginated call each); a destination that cannot be read takes no copy this time."""
    regions: dict[str, _Region] = {}
    for name in sorted({r.region for _, c in wanted for r in c.distribution.copies}):
        region = _Region(name, copier.ec2_in(name), in_flight=0, pacer=copier.pacer_for(name))
        try:
            region.in_flight = count_copies_in_flight(region.ec2, copier.home_region)
        except (ClientError, BotoCoreError) as exc:
            region.blocked = f"DescribeSnapshots in {name} failed: {error_code(exc)}"
            progress.errors.append(f"{region.blocked}: {error_message(exc)}")
        regions[name] = region
    return regions


def _look_up(
    copier: Copier,
    candidates: Sequence[tuple[SourceSet, CopyingPolicy]],
    regions: Mapping[str, _Region],
    progress: CopyProgress,
) -> None:
    """The copies the candidates already have in each destination (per 200 sources)."""
    for name, region in regions.items():
        sources = [
            s.snapshot_id
            for source, c in candidates
            if any(r.region == name for r in c.distribution.copies)
            for s in source.snapshots
        ]
        if region.blocked is not None or not sources:
            continue
        try:
            region.found = find_copies(region.ec2, copier.home_region, sources)
        except (ClientError, BotoCoreError) as exc:
            region.blocked = f"DescribeSnapshots in {name} failed: {error_code(exc)}"
            progress.errors.append(f"{region.blocked}: {error_message(exc)}")


def _advance_set(
    copier: Copier,
    source: SourceSet,
    copying: CopyingPolicy,
    regions: Mapping[str, _Region],
    progress: CopyProgress,
) -> list[tuple[CopyRule, RegionCopies]]:
    """One set's copies in each of its destinations, a refusal recorded on the set."""
    refused = source.refused()
    newly_refused: dict[str, str] = {}
    results: list[tuple[CopyRule, RegionCopies]] = []
    for rule in copying.distribution.copies:
        region = regions[rule.region]
        copies = tuple(
            _advance_one(
                copier,
                _Attempt(source, snap, rule, region),
                refused=refused | newly_refused,
                newly_refused=newly_refused,
                progress=progress,
            )
            for snap in source.snapshots
        )
        done = all(c.state == "completed" for c in copies)
        status: Literal["completed", "failed"] = "completed" if done else "failed"
        results.append((rule, RegionCopies(region=rule.region, status=status, copies=copies)))
    if newly_refused:
        _record_refusals(copier.home_ec2, source, refused | newly_refused, progress)
    return results


def _candidates(
    wanted: Sequence[tuple[SourceSet, CopyingPolicy]],
    regions: Mapping[str, _Region],
    concurrent_limit: int,
    progress: CopyProgress,
) -> list[tuple[SourceSet, CopyingPolicy]]:
    """The sets worth a look in their destinations now: every set with copies started (or a
    refusal to report), and, oldest first, the sets none of whose copies started as long as
    some destination of theirs has a free slot for them. The others wait without a call, so a
    backlog of thousands of sets costs each sweep one listing at home, not a look-up per set.
    """
    free = {name: concurrent_limit - r.in_flight for name, r in regions.items()}
    chosen: list[tuple[SourceSet, CopyingPolicy]] = []
    for source, copying in wanted:
        rules = copying.distribution.copies
        if source.state != COPIES_PENDING or source.refused():
            chosen.append((source, copying))
            continue
        room = [r.region for r in rules if free[r.region] > 0]
        if room:
            for name in room:
                free[name] -= len(source.snapshots)
            chosen.append((source, copying))
        else:
            for rule in rules:
                progress.queued[rule.region] = progress.queued.get(rule.region, 0) + len(
                    source.snapshots
                )
    return chosen


@dataclass(frozen=True)
class _Attempt:
    source: SourceSet
    snap: SourceSnapshot
    rule: CopyRule
    region: _Region


def _advance_one(
    copier: Copier,
    attempt: _Attempt,
    *,
    refused: Mapping[str, str],
    newly_refused: dict[str, str],
    progress: CopyProgress,
) -> CopiedSnapshot:
    """One source snapshot's copy in one region: found, refused before, started or queued."""
    snap, region, claims, deadline = attempt.snap, attempt.region, copier.claims, copier.deadline
    concurrent_limit = copier.concurrent_limit
    base: dict[str, Any] = {"source_snapshot_id": snap.snapshot_id, "volume_id": snap.volume_id}
    found = region.found.get(snap.snapshot_id)
    if found is not None:
        state = _state_of(found)
        error = (
            ErrorInfo(
                code="CopyFailed",
                message=f"{found.snapshot_id}, the copy of {snap.snapshot_id} in {region.name}, "
                f"failed: {found.state_message or 'EC2 gave no reason'}",
            )
            if state == "error"
            else None
        )
        return CopiedSnapshot(**base, snapshot_id=found.snapshot_id, state=state, error=error)
    if why := refused.get(region.name):
        code, _, message = why.partition(":")
        return CopiedSnapshot(
            **base,
            state="refused",
            error=ErrorInfo(
                code=code.strip(),
                message=f"CopySnapshot of {snap.snapshot_id} to {region.name} was refused: "
                f"{message.strip() or code}",
            ),
        )

    def queued(reason: str) -> CopiedSnapshot:
        progress.queued[region.name] = progress.queued.get(region.name, 0) + 1
        return CopiedSnapshot(
            **base, state="queued", error=ErrorInfo(code="CopyQueued", message=reason)
        )

    if region.blocked is None:
        if region.in_flight >= concurrent_limit:
            region.blocked = (
                f"{region.in_flight} copies in flight to {region.name} "
                f"(EBS allows {concurrent_limit} at once)"
            )
        elif deadline.expired() or (
            region.pacer is not None and not region.pacer.acquire(deadline)
        ):
            region.blocked = "out of invocation time (or of this run's CopySnapshot share)"
    if region.blocked is not None:
        return queued(region.blocked)
    try:
        if not claims.claim(region.name, snap.snapshot_id):
            return queued("another invocation is starting this copy")
    except (ClientError, BotoCoreError) as exc:
        progress.errors.append(f"claiming the copy of {snap.snapshot_id}: {error_message(exc)}")
        return queued(f"the copy could not be claimed ({error_code(exc)})")
    request = copy_snapshot_request(attempt.source, snap, attempt.rule, copier.home_region)
    try:
        response = region.ec2.copy_snapshot(**request)
    except (ClientError, BotoCoreError) as exc:
        code = error_code(exc)
        if code == COPY_LIMIT_CODE or code in REFUSED_CODES:
            # Refused, so nothing was made: free the claim for the next sweep.
            claims.release(region.name, snap.snapshot_id)
            region.blocked = f"CopySnapshot to {region.name} refused for now: {code}"
            return queued(region.blocked)
        if isinstance(exc, BotoCoreError) or code in SERVER_ERROR_CODES or http_status(exc) >= 500:
            # The copy may have started: the claim holds until the look-up can see it.
            progress.errors.append(f"CopySnapshot of {snap.snapshot_id}: {error_message(exc)}")
            return queued(f"CopySnapshot's outcome is unknown ({code}); the next sweep looks")
        claims.release(region.name, snap.snapshot_id)
        newly_refused[region.name] = f"{code}: {error_message(exc)}"
        progress.refused += 1
        logger.warning("CopySnapshot of %s to %s refused: %r", snap.snapshot_id, region.name, exc)
        return CopiedSnapshot(
            **base,
            state="refused",
            error=ErrorInfo(
                code=code,
                message=f"CopySnapshot of {snap.snapshot_id} to {region.name} was refused: "
                f"{error_message(exc)}",
            ),
        )
    region.in_flight += 1
    progress.started[region.name] = progress.started.get(region.name, 0) + 1
    return CopiedSnapshot(**base, snapshot_id=response["SnapshotId"], state="pending")


def _record_refusals(
    home_ec2: EC2Client, source: SourceSet, refused: Mapping[str, str], progress: CopyProgress
) -> None:
    """Remember refusals on the set itself, so no later sweep asks again."""
    try:
        home_ec2.create_tags(
            Resources=source.snapshot_ids,
            Tags=[{"Key": TAG_COPY_ERRORS, "Value": format_copy_errors(refused)}],
        )
    except (ClientError, BotoCoreError) as exc:
        # Not fatal: the next sweep is refused again and tries to record it again.
        progress.errors.append(f"tagging {source.instance_id}'s set: {error_message(exc)}")


def _retain_copies(
    copier: Copier,
    finished: Sequence[tuple[SourceSet, CopyingPolicy, list[tuple[CopyRule, RegionCopies]]]],
    regions: Mapping[str, _Region],
) -> dict[tuple[tuple[str, str, str], str], RetentionResult]:
    """Each destination's retention for the instances whose new set's copies all completed
    there (as at home: it runs for the instances whose new set is in), keyed by set and region.
    One `retain_sets` per policy, region and trigger, so its listing is one call per 200
    instances, not one per set."""
    groups: dict[tuple[str, str, str], tuple[CopyingPolicy, Retention, list[SourceSet]]] = {}
    for source, copying, results in finished:
        for rule, copies in results:
            retention = rule.retention if rule.retention is not None else copying.retention
            if retention is None or copies.status != "completed":
                continue
            key = (copying.name, rule.region, source.trigger_id)
            _, _, members = groups.setdefault(key, (copying, retention, []))
            members.append(source)
    retained: dict[tuple[tuple[str, str, str], str], RetentionResult] = {}
    for (_, region, trigger_id), (copying, retention, sources) in sorted(groups.items()):
        by_instance = retain_sets(
            regions[region].ec2,
            copying.as_policy(),
            [s.instance_id for s in sources],
            trigger_id,
            copier.now,
            deadline=copier.deadline,
            pacer=copier.delete_pacer_for(region),
            check_pacer=copier.check_pacer_for(region),
            keys=copy_set_tags(copier.home_region),
            retention=retention,
        )
        for source in sources:
            retained[(source.key, region)] = by_instance[source.instance_id]
    return retained


def _tag_sets(home_ec2: EC2Client, sets: Sequence[SourceSet], value: str) -> None:
    ids = [sid for s in sets for sid in s.snapshot_ids]
    for chunk in chunks(ids):
        home_ec2.create_tags(Resources=chunk, Tags=[{"Key": TAG_COPIES, "Value": value}])


def mark_reported(home_ec2: EC2Client, sets: Sequence[SourceSet]) -> None:
    """Tag sets `snapset:copies=done` once their copy reports are out, one CreateTags per 200
    snapshots (raises on failure: the next sweep then reports them again, which is at least
    once, as SNS is)."""
    _tag_sets(home_ec2, sets, COPIES_DONE)


def mark_not_copied(home_ec2: EC2Client, sets: Sequence[SourceSet]) -> None:
    """Tag failed sets `snapset:copies=none`: a failed set is not copied (its completion report
    already said it failed), and the sweep stops listing it."""
    _tag_sets(home_ec2, sets, COPIES_NONE)


def sweep_copies(copier: Copier) -> CopyProgress:
    """The copy sweep: every set still pending at home advanced (`advance_copies`); failed
    sets, and sets of a policy the stack deploys without copies, tagged `none`, so they are
    listed no more and retention may delete them."""
    sets = list_pending_sets(copier.home_ec2)
    progress = advance_copies(copier, sets)
    if not_copied := progress.failed_sets + progress.unconfigured_sets:
        try:
            mark_not_copied(copier.home_ec2, not_copied)
        except (ClientError, BotoCoreError) as exc:
            progress.errors.append(f"tagging sets that are not copied: {error_message(exc)}")
    return progress


def publish_copy_report(sns: SNSClient, topic_arn: str, report: CopyReport) -> str:
    """Publish one copy report (see `notify.publish`: a failure raises, and the set stays
    pending, so the next sweep reports it)."""
    copies = sum(len(r.copies) for r in report.regions)
    regions = ", ".join(r.region for r in report.regions)
    return publish(
        sns,
        topic_arn,
        subject=f"Snapset {report.policy}: copies of {report.instance_id}'s set "
        f"{report.status} ({copies} copies in {regions})",
        message=json.dumps(report.model_dump(mode="json"), separators=(",", ":")),
        attributes={"status": report.status, "policy": report.policy, "kind": report.kind},
    )


# --- shares ----------------------------------------------------------------------------------


class ShareResult(BaseModel):
    """A set's shares with other accounts: the snapshots shared and each one's error."""

    model_config = ConfigDict(frozen=True)

    accounts: tuple[str, ...]
    shared: tuple[str, ...] = ()
    errors: tuple[ErrorInfo, ...] = ()


def share_set(ec2: EC2Client, source: SourceSet, accounts: Sequence[str]) -> ShareResult:
    """Give `accounts` createVolumePermission on every snapshot of the set (adding a permission
    that exists is a no-op, so a redelivery repeats it harmlessly). A snapshot encrypted with
    the AWS managed key cannot be shared (an AWS rule): its error names the key. Never raises."""
    shared: list[str] = []
    errors: list[ErrorInfo] = []
    for snap in source.snapshots:
        try:
            ec2.modify_snapshot_attribute(
                SnapshotId=snap.snapshot_id,
                Attribute="createVolumePermission",
                OperationType="add",
                UserIds=list(accounts),
            )
        except (ClientError, BotoCoreError) as exc:
            key = f" (encrypted with KMS key {snap.kms_key_id})" if snap.encrypted else ""
            errors.append(
                ErrorInfo(
                    code=error_code(exc),
                    message=f"sharing {snap.snapshot_id} of {source.instance_id}{key} with "
                    f"{', '.join(accounts)} failed: {error_message(exc)}",
                )
            )
        else:
            shared.append(snap.snapshot_id)
    return ShareResult(accounts=tuple(accounts), shared=tuple(shared), errors=tuple(errors))
