"""The snapshot engine: resolve each target instance's exclusions, call CreateSnapshots.

The instances come from `targets` (DescribeInstances).

Every function takes its boto3 client as an argument. Failures are returned as values
(`InstanceOutcome`), never raised, so one instance never stops the others.

What a run must know besides its instances costs calls per page, not per instance
(`run_lookups`): one paginated DescribeVolumes for the volumes `exclude_data_volume_tags`
leaves out and, unless the run holds the trigger's first delivery (when no set of it can exist
yet, see `idempotency.claim_delivery`), one paginated DescribeSnapshots for the sets earlier
deliveries made. A run that lists also looks for each instance's set once more just before its
CreateSnapshots (`RunLookups.recheck`), and after a CreateSnapshots error that may have made
the set every retry looks first (`find_existing_set`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from snapset.consistency import (
    MAX_BRACKETED_CALLS,
    InstanceScripts,
    PingListingFailed,
    PingStatuses,
    ScriptRunner,
    list_ping_statuses,
)
from snapset.deadline import NEVER, Deadline
from snapset.errors import (
    CREATE_UNCONFIRMED,
    DRY_RUN_OPERATION,
    REFUSED_CODES,
    ROOT_VOLUME_EXCLUDED,
    SERVER_ERROR_CODES,
    TIMEOUT,
    TOO_MANY_EXCLUSIONS,
    UNEXPECTED_ERROR,
    error_code,
    error_message,
    http_status,
)
from snapset.outcomes import Consistency, ErrorInfo, InstanceOutcome, InstanceStatus, SnapshotInfo
from snapset.pacing import Pacer
from snapset.policy import (
    COPIES_PENDING,
    MAX_EXCLUDED_DATA_VOLUMES,
    TAG_CONSISTENCY,
    TAG_COPIES,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    SnapshotPolicy,
    SnapshotRequest,
    expand_template,
)
from snapset.targets import (
    FILTER_VALUES_PER_CALL,
    UNSNAPSHOTTABLE_STATES,
    Instance,
    tag_filters,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        CreateSnapshotsRequestTypeDef,
        CreateSnapshotsResultTypeDef,
        FilterTypeDef,
        TagTypeDef,
    )
    from mypy_boto3_ssm import SSMClient

logger = logging.getLogger(__name__)

# The largest pages the listings allow: calls grow with pages, not instances.
_SNAPSHOTS_PER_PAGE = 1000
_VOLUMES_PER_PAGE = 500


@dataclass(frozen=True)
class RetryBudget:
    """Retries with exponential backoff and full jitter until the run's `deadline`.

    What cannot start before the deadline is reported as `Timeout` and retried on the trigger's
    next delivery.
    """

    deadline: Deadline = NEVER
    max_retries: int = 50
    base_delay: float = 1.0
    max_delay: float = 20.0
    # After an error that leaves it unknown whether the set was created, wait at least this
    # long before looking for it (DescribeSnapshots is eventually consistent).
    settle_delay: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    # The run's share of EC2's CreateSnapshots bucket, asked before every call (None: unpaced).
    pacer: Pacer | None = None

    def pace(self) -> bool:
        """Wait for the pacer's next CreateSnapshots token; False if none comes in time."""
        return self.pacer is None or self.pacer.acquire(self.deadline)

    def expired(self) -> bool:
        return self.deadline.expired()

    def wait(self, attempt: int, minimum: float = 0.0) -> bool:
        """Sleep before retry `attempt` (0-based); False when that would pass the deadline."""
        if attempt >= self.max_retries:
            return False
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))  # noqa: S311
        delay = max(minimum, backoff)
        if delay >= self.deadline.remaining():
            return False
        self.sleep(delay)
        return True


NO_RETRY = RetryBudget(max_retries=0)


def create_error_kind(exc: Exception) -> Literal["refused", "unconfirmed", "permanent"]:
    """How a CreateSnapshots error bears on a retry.

    `refused`: nothing was created, call again later. `unconfirmed`: a server error or a lost
    connection; the set may exist, so look for it before calling again. `permanent`: do not retry
    (validation, permissions, a malformed request, missing credentials).
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in REFUSED_CODES:
            return "refused"
        if code in SERVER_ERROR_CODES or http_status(exc) >= 500:
            return "unconfirmed"
        return "permanent"
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return "unconfirmed"
    return "permanent"


@dataclass(frozen=True)
class SnapshotPlan:
    """The volumes of one instance to snapshot and the data volumes to exclude."""

    snapshot_volume_ids: tuple[str, ...]
    excluded_volume_ids: tuple[str, ...]


@dataclass(frozen=True)
class ListingFailed:
    """A run's listing that failed: every instance that needed it fails with its error."""

    code: str
    message: str

    @classmethod
    def of(cls, call: str, purpose: str, exc: Exception) -> ListingFailed:
        return cls(error_code(exc), f"{call} ({purpose}) failed: {error_message(exc)}")

    def outcome(self, instance_id: str) -> InstanceOutcome:
        return InstanceOutcome.failed(
            instance_id, self.code, f"{instance_id}: not snapshotted, {self.message}"
        )


# A set per instance id, and the volumes to leave out per attached instance id.
ExistingSets = Mapping[str, tuple[SnapshotInfo, ...]]
TagExcluded = Mapping[str, frozenset[str]]


def list_tag_excluded_volumes(
    ec2: EC2Client, policy: SnapshotPolicy, instance_ids: Sequence[str]
) -> dict[str, frozenset[str]]:
    """The volumes matching `exclude_data_volume_tags`, by the instance each is attached to.

    Up to 200 instances (EC2's limit on a filter's values): one DescribeVolumes filtered on
    their attachments as well as the tags. More: one paginated DescribeVolumes for the run,
    filtered on the tags only and grouped by attachment, keeping these instances' volumes, so
    a fleet's exclusions cost pages of tagged volumes, not calls per instance. Errors are
    raised.
    """
    if not policy.exclude_data_volume_tags:
        return {}
    filters = tag_filters(policy.exclude_data_volume_tags)
    if len(instance_ids) <= FILTER_VALUES_PER_CALL:
        filters = [{"Name": "attachment.instance-id", "Values": list(instance_ids)}, *filters]
    wanted = set(instance_ids)
    found: dict[str, set[str]] = {}
    pages = ec2.get_paginator("describe_volumes").paginate(
        Filters=filters, PaginationConfig={"PageSize": _VOLUMES_PER_PAGE}
    )
    for page in pages:
        for volume in page.get("Volumes", []):
            # A volume attached to several instances (Multi-Attach) is left out of each.
            for attachment in volume.get("Attachments", []):
                if attachment["InstanceId"] in wanted:
                    found.setdefault(attachment["InstanceId"], set()).add(volume["VolumeId"])
    return {iid: frozenset(volumes) for iid, volumes in found.items()}


def plan_instance(
    policy: SnapshotPolicy, instance: Instance, tag_excluded: TagExcluded | ListingFailed
) -> SnapshotPlan | InstanceOutcome:
    """Decide which volumes of an instance to snapshot, or why it is skipped or failed.

    Volume-tag exclusions come from the run's listing (`list_tag_excluded_volumes`), merged with
    `exclude_data_volume_ids`, keeping only volumes attached to this instance. When that listing
    failed, an instance that needed it fails with its error.
    """
    iid = instance.instance_id
    if instance.state in UNSNAPSHOTTABLE_STATES:
        return InstanceOutcome.skipped(iid, f"instance is {instance.state}")
    if not instance.volumes:
        return InstanceOutcome.skipped(iid, "nothing to snapshot: no EBS volumes attached")
    attached = {v.volume_id: v for v in instance.volumes}
    by_id = {v for v in policy.exclude_data_volume_ids if v in attached}
    root_by_id = sorted(v for v in by_id if attached[v].is_root)
    if root_by_id:
        return InstanceOutcome.failed(
            iid,
            ROOT_VOLUME_EXCLUDED,
            f"{iid}: {root_by_id[0]} is the root volume ({attached[root_by_id[0]].device_name}); "
            "exclude_data_volume_ids may only name data volumes, set exclude_boot_volume to "
            "leave the root volume out",
        )
    by_tag: set[str] = set()
    if policy.exclude_data_volume_tags:
        if isinstance(tag_excluded, ListingFailed):
            return tag_excluded.outcome(iid)
        by_tag = set(tag_excluded.get(iid, frozenset())) & attached.keys()
    root_by_tag = sorted(v for v in by_tag if attached[v].is_root)
    if root_by_tag and not policy.exclude_boot_volume:
        return InstanceOutcome.failed(
            iid,
            ROOT_VOLUME_EXCLUDED,
            f"{iid}: root volume {root_by_tag[0]} matches exclude_data_volume_tags; only data "
            "volumes can be excluded that way, set exclude_boot_volume to leave it out",
        )
    excluded = tuple(sorted((by_id | by_tag) - set(root_by_tag)))
    if len(excluded) > MAX_EXCLUDED_DATA_VOLUMES:
        return InstanceOutcome.failed(
            iid,
            TOO_MANY_EXCLUSIONS,
            f"{iid}: {len(excluded)} data volumes to exclude after merging IDs and tags; "
            f"CreateSnapshots accepts at most {MAX_EXCLUDED_DATA_VOLUMES}",
            excluded,
        )
    to_snapshot = tuple(
        v.volume_id
        for v in instance.volumes
        if v.volume_id not in excluded and not (v.is_root and policy.exclude_boot_volume)
    )
    if not to_snapshot:
        return InstanceOutcome.skipped(
            iid,
            f"nothing to snapshot: all {len(instance.volumes)} attached volumes are excluded",
            excluded,
        )
    return SnapshotPlan(snapshot_volume_ids=to_snapshot, excluded_volume_ids=excluded)


def snapshot_tags(
    request: SnapshotRequest, instance_id: str, consistency: Consistency = Consistency.CRASH
) -> list[TagTypeDef]:
    """User tags with placeholders filled, then Snapset's managed tags (which win)."""
    values = _placeholder_values(request, instance_id)
    tags = {k: expand_template(v, values) for k, v in request.policy.tags.items()}
    tags[TAG_POLICY] = request.policy.name
    tags[TAG_TRIGGER_ID] = request.trigger.id
    tags[TAG_INSTANCE_ID] = instance_id
    tags[TAG_CONSISTENCY] = consistency.value
    if request.policy.copies:
        # The copy sweep finds the sets to copy by this tag; it says `done` once reported.
        tags[TAG_COPIES] = COPIES_PENDING
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _placeholder_values(request: SnapshotRequest, instance_id: str) -> dict[str, str]:
    return {
        "instance_id": instance_id,
        "policy": request.policy.name,
        "trigger": request.trigger.type.value,
        "timestamp": request.trigger.timestamp,
    }


def build_create_snapshots_request(
    request: SnapshotRequest,
    instance_id: str,
    plan: SnapshotPlan,
    consistency: Consistency = Consistency.CRASH,
) -> CreateSnapshotsRequestTypeDef:
    """The exact CreateSnapshots parameters for one instance (`consistency`: what its pre
    script achieved, recorded on every snapshot)."""
    policy = request.policy
    params: CreateSnapshotsRequestTypeDef = {
        "InstanceSpecification": {
            "InstanceId": instance_id,
            "ExcludeBootVolume": policy.exclude_boot_volume,
        },
        "TagSpecifications": [
            {
                "ResourceType": "snapshot",
                "Tags": snapshot_tags(request, instance_id, consistency),
            }
        ],
        "DryRun": policy.dry_run,
    }
    if plan.excluded_volume_ids:
        params["InstanceSpecification"]["ExcludeDataVolumeIds"] = list(plan.excluded_volume_ids)
    if policy.description is not None:
        params["Description"] = expand_template(
            policy.description, _placeholder_values(request, instance_id)
        )
    if policy.outpost_arn is not None:
        params["OutpostArn"] = policy.outpost_arn
    if policy.copy_tags_from_source is not None:
        params["CopyTagsFromSource"] = policy.copy_tags_from_source
    return params


def _error_outcome(instance_id: str, exc: Exception, excluded: tuple[str, ...]) -> InstanceOutcome:
    return InstanceOutcome.failed(
        instance_id, error_code(exc), f"{instance_id}: {error_message(exc)}", excluded
    )


def _snapshot_info(raw: Any) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=raw["SnapshotId"],
        volume_id=raw.get("VolumeId", ""),
        state=raw.get("State"),
        volume_size=raw.get("VolumeSize"),
        encrypted=raw.get("Encrypted"),
    )


def list_existing_sets(
    ec2: EC2Client, policy: str, trigger_id: str
) -> dict[str, tuple[SnapshotInfo, ...]]:
    """The sets earlier deliveries of this trigger made, by instance id: one paginated
    DescribeSnapshots for the whole run, filtered by the policy and trigger tags.

    The managed tags are applied atomically by CreateSnapshots, so a set that exists carries
    them; this covers a crash between CreateSnapshots and recording its outcome, and a record
    that could not be saved. Errors are raised.
    """
    paginator = ec2.get_paginator("describe_snapshots")
    filters: list[FilterTypeDef] = [
        {"Name": f"tag:{TAG_TRIGGER_ID}", "Values": [trigger_id]},
        {"Name": f"tag:{TAG_POLICY}", "Values": [policy]},
    ]
    found: dict[str, list[SnapshotInfo]] = {}
    pages = paginator.paginate(
        OwnerIds=["self"], Filters=filters, PaginationConfig={"PageSize": _SNAPSHOTS_PER_PAGE}
    )
    for page in pages:
        for snap in page.get("Snapshots", []):
            tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
            if TAG_INSTANCE_ID in tags:
                found.setdefault(tags[TAG_INSTANCE_ID], []).append(_snapshot_info(snap))
    return {iid: tuple(snaps) for iid, snaps in found.items()}


def find_existing_set(
    ec2: EC2Client, policy: str, trigger_id: str, instance_id: str
) -> tuple[SnapshotInfo, ...]:
    """Snapshots this trigger already made for one instance: the look-up just before a
    CreateSnapshots that a set may precede (`RunLookups.recheck`, or after an error that may
    have made it); `list_existing_sets` looks for every instance's set at once."""
    paginator = ec2.get_paginator("describe_snapshots")
    filters: list[FilterTypeDef] = [
        {"Name": f"tag:{TAG_TRIGGER_ID}", "Values": [trigger_id]},
        {"Name": f"tag:{TAG_INSTANCE_ID}", "Values": [instance_id]},
        {"Name": f"tag:{TAG_POLICY}", "Values": [policy]},
    ]
    return tuple(
        _snapshot_info(snap)
        for page in paginator.paginate(OwnerIds=["self"], Filters=filters)
        for snap in page.get("Snapshots", [])
    )


@dataclass(frozen=True)
class RunLookups:
    """What a run's listings found for its instances.

    `existing_sets`: the sets earlier deliveries of this trigger made, by instance id; empty
    when none can exist (the trigger's first delivery, a dry run) or when the listing failed.
    `tag_excluded`: the volumes `exclude_data_volume_tags` leaves out, by attached instance id,
    or a `ListingFailed` when its listing failed, and the instances that need it fail with it.

    `ping_statuses`: with a policy's scripts, each instance's SSM ping status (absent: not
    managed), or a `PingListingFailed`; None without scripts.

    `recheck`: an instance the listing did not find is looked for again just before its
    CreateSnapshots (a failed listing leaves every instance to that look-up). A delivery that is
    not the first may follow another whose set for an instance appears after the listing
    (made just before that delivery ended, its record unsaved), and only the tag look-up finds
    it. Redeliveries are rare, so they keep that look-up.
    """

    existing_sets: ExistingSets
    tag_excluded: TagExcluded | ListingFailed
    recheck: bool = False
    ping_statuses: PingStatuses | PingListingFailed | None = None


def needing_volume_tags(instances: Sequence[Instance]) -> list[str]:
    """The ids of the instances whose plan needs the volume-tag exclusions (those that can be
    snapshotted)."""
    return [i.instance_id for i in instances if i.state not in UNSNAPSHOTTABLE_STATES and i.volumes]


def run_lookups(
    ec2: EC2Client,
    request: SnapshotRequest,
    instances: Sequence[Instance],
    *,
    first_delivery: bool,
    ssm: SSMClient | None = None,
    tag_excluded: TagExcluded | None = None,
) -> RunLookups:
    """List once for the whole run what its instances need: the volumes to exclude by tag (when
    the policy has `exclude_data_volume_tags`, unless `tag_excluded` brings them from the run's
    plan), with `scripts` which instances SSM manages (through `ssm`), and, unless
    `first_delivery` says no set of this trigger can exist yet or this is a dry run, the sets
    earlier deliveries made.

    A failed volume listing is a `ListingFailed` value naming the call, not an exception; a
    failed sets listing leaves each instance to its own look-up (`recheck`).
    """
    policy = request.policy
    existing: ExistingSets = {}
    # Only the first delivery (and a dry run, which makes no set) need not look.
    looks = bool(instances) and not first_delivery and not policy.dry_run
    if looks:
        try:
            existing = list_existing_sets(ec2, policy.name, request.trigger.id)
        except (ClientError, BotoCoreError):
            # One failed listing must not cost every instance its set: each looks for its own.
            logger.exception(
                "listing the sets of trigger %s failed; each instance looks for its own",
                request.trigger.id,
            )
    excluded: TagExcluded | ListingFailed = tag_excluded or {}
    ids = needing_volume_tags(instances)
    if ids and policy.exclude_data_volume_tags and tag_excluded is None:
        try:
            excluded = list_tag_excluded_volumes(ec2, policy, ids)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("listing the volumes to exclude by tag failed")
            excluded = ListingFailed.of(
                "DescribeVolumes", "finding the volumes exclude_data_volume_tags leaves out", exc
            )
    pings: PingStatuses | PingListingFailed | None = None
    if ids and policy.scripts is not None and ssm is not None:
        try:
            pings = list_ping_statuses(ssm, ids)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("listing the instances SSM manages failed")
            pings = PingListingFailed(
                error_code(exc),
                f"DescribeInstanceInformation (finding the instances SSM manages) failed: "
                f"{error_message(exc)}",
            )
    return RunLookups(
        existing_sets=existing, tag_excluded=excluded, recheck=looks, ping_statuses=pings
    )


def _already_created(
    instance_id: str, snapshots: tuple[SnapshotInfo, ...], excluded: tuple[str, ...]
) -> InstanceOutcome:
    return InstanceOutcome(
        instance_id=instance_id,
        status=InstanceStatus.STARTED,
        snapshots=snapshots,
        excluded_volume_ids=excluded,
        reason="set already created by an earlier delivery of this trigger",
    )


def create_snapshot_set(
    ec2: EC2Client,
    request: SnapshotRequest,
    instance_id: str,
    plan: SnapshotPlan,
    *,
    existing: tuple[SnapshotInfo, ...],
    recheck: bool = False,
    budget: RetryBudget = NO_RETRY,
    ec2_create: EC2Client,
    scripts: InstanceScripts | None = None,
) -> InstanceOutcome:
    """Call CreateSnapshots for one planned instance and return its outcome.

    With `scripts` (a policy's pre and post scripts) every call is bracketed by its stages
    (`consistency.InstanceScripts`), and starts only when the stages can end before the deadline.

    With DryRun, AWS answers DryRunOperation when the call would succeed (`dry_run_ok`) and
    UnauthorizedOperation when it would not (`failed`). `existing` is the set the run's listing
    found for this instance (see `run_lookups`): it is reported instead of making another; with
    `recheck` (a redelivery, `RunLookups.recheck`) the instance's set is looked for once more
    just before the call.
    Refusals (throttling, EBS rate limits) made no set and are retried within `budget`; after a
    server error or a lost connection the set may exist, so the retry waits
    `budget.settle_delay` and looks for it first, and without time for that the instance fails
    as `CreateSnapshotsUnconfirmed`, for the next delivery to settle. `ec2_create` makes the
    CreateSnapshots call: a client without botocore retries, which would resend the call blind
    (`clients.Clients.ec2_create`).
    """
    excluded = plan.excluded_volume_ids
    if existing and not request.policy.dry_run:
        if scripts is not None:
            scripts.thaw_for_redelivery()
        return _already_created(instance_id, existing, excluded)
    attempt = 0
    # Once a call may have made the set, every later call of this delivery looks first.
    look_first = recheck and not request.policy.dry_run
    while True:
        try:
            if look_first:
                found = find_existing_set(ec2, request.policy.name, request.trigger.id, instance_id)
                if found and attempt == 0:
                    if scripts is not None:
                        # made by an earlier delivery, which may have ended between its scripts
                        scripts.thaw_for_redelivery()
                    return _already_created(instance_id, found, excluded)
                if found:
                    # this delivery's own call made it after all, between its own scripts
                    return InstanceOutcome(
                        instance_id=instance_id,
                        status=InstanceStatus.STARTED,
                        snapshots=found,
                        excluded_volume_ids=excluded,
                        consistency=_achieved(scripts),
                        reason="CreateSnapshots failed but had made the set",
                    )
            if not budget.pace():
                return InstanceOutcome.failed(
                    instance_id,
                    TIMEOUT,
                    f"{instance_id}: not started, Snapset's share of the CreateSnapshots rate "
                    "has no call left before the invocation's deadline; the next delivery "
                    "retries it",
                    excluded,
                )
            if scripts is not None and not scripts.fits(budget.deadline):
                return _no_time_for_scripts(instance_id, scripts, budget.deadline, excluded)
            response = _create_call(ec2_create, request, instance_id, plan, scripts)
            if isinstance(response, ErrorInfo):
                return InstanceOutcome.failed(
                    instance_id, response.code, response.message, excluded
                )
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == DRY_RUN_OPERATION:
                return InstanceOutcome(
                    instance_id=instance_id,
                    status=InstanceStatus.DRY_RUN_OK,
                    excluded_volume_ids=excluded,
                    reason=f"would snapshot {', '.join(plan.snapshot_volume_ids)}",
                    consistency=_achieved(scripts),
                )
            kind = create_error_kind(exc)
            if kind == "permanent":
                return _error_outcome(instance_id, exc, excluded)
            unconfirmed = kind == "unconfirmed"
            look_first = look_first or (unconfirmed and not request.policy.dry_run)
            if scripts is not None and attempt + 1 >= MAX_BRACKETED_CALLS:
                return InstanceOutcome.failed(
                    instance_id,
                    CREATE_UNCONFIRMED if unconfirmed else TIMEOUT,
                    f"{instance_id}: CreateSnapshots failed {attempt + 1} times between its "
                    f"scripts (last: {error_code(exc)}); each try freezes the instance again, "
                    "so the next delivery retries it",
                    excluded,
                )
            if budget.wait(attempt, minimum=budget.settle_delay if unconfirmed else 0.0):
                attempt += 1
                continue
            last_code = error_code(exc)
            if unconfirmed:
                return InstanceOutcome.failed(
                    instance_id,
                    CREATE_UNCONFIRMED,
                    f"{instance_id}: CreateSnapshots failed with {last_code}, so the set may "
                    "exist; the next delivery looks for it before trying again",
                    excluded,
                )
            if budget is NO_RETRY:
                return _error_outcome(instance_id, exc, excluded)
            return InstanceOutcome.failed(
                instance_id,
                TIMEOUT,
                f"{instance_id}: no time left to retry after {attempt + 1} attempts "
                f"(last: {last_code}); the next delivery retries it",
                excluded,
            )
        return InstanceOutcome(
            instance_id=instance_id,
            status=InstanceStatus.STARTED,
            snapshots=tuple(_snapshot_info(s) for s in response.get("Snapshots", [])),
            excluded_volume_ids=excluded,
            consistency=_achieved(scripts),
        )


def _achieved(scripts: InstanceScripts | None) -> Consistency:
    """What the instance's last call captured: its pre script's result, else a crash set."""
    return scripts.consistency if scripts is not None else Consistency.CRASH


def _create_call(
    ec2_create: EC2Client,
    request: SnapshotRequest,
    instance_id: str,
    plan: SnapshotPlan,
    scripts: InstanceScripts | None,
) -> CreateSnapshotsResultTypeDef | ErrorInfo:
    """One CreateSnapshots call, between the instance's script stages when it has them; the
    instance's error when its pre script failed and the policy skips it (no call made)."""
    if scripts is None:
        return ec2_create.create_snapshots(
            **build_create_snapshots_request(request, instance_id, plan)
        )
    try:
        stop = scripts.before_create()
        if stop is not None:
            return stop
        return ec2_create.create_snapshots(
            **build_create_snapshots_request(request, instance_id, plan, scripts.consistency)
        )
    finally:
        # Whatever happened since the pre stage was sent (a refused call, an exception), the
        # instance must not stay frozen.
        scripts.after_create()


def _no_time_for_scripts(
    instance_id: str, scripts: InstanceScripts, deadline: Deadline, excluded: tuple[str, ...]
) -> InstanceOutcome:
    return InstanceOutcome.failed(
        instance_id,
        TIMEOUT,
        f"{instance_id}: not started, its scripts and CreateSnapshots can take up to "
        f"{scripts.seconds_needed()} s and the invocation has {max(deadline.remaining(), 0):.0f} "
        "s left; the next delivery retries it",
        excluded,
    )


def out_of_time(instance_id: str) -> InstanceOutcome:
    """An instance not started because the invocation ran out of time (retried on redelivery)."""
    return InstanceOutcome.failed(
        instance_id,
        TIMEOUT,
        f"{instance_id}: not started, the invocation ran out of time; the next delivery retries it",
    )


def snapshot_instance(
    ec2: EC2Client,
    request: SnapshotRequest,
    instance: Instance,
    budget: RetryBudget = NO_RETRY,
    *,
    ec2_create: EC2Client,
    lookups: RunLookups,
    scripts: ScriptRunner | None = None,
) -> InstanceOutcome:
    """Plan and snapshot one instance with what the run's listings found (`run_lookups`),
    between its policy's script stages when `scripts` runs them; every error becomes a failed
    outcome for it, which also lists each stage's result."""
    if budget.expired():
        return out_of_time(instance.instance_id)
    session: InstanceScripts | None = None
    try:
        plan = plan_instance(request.policy, instance, lookups.tag_excluded)
        if isinstance(plan, InstanceOutcome):
            return plan
        if scripts is not None:
            pings = lookups.ping_statuses
            session = InstanceScripts(
                runner=scripts,
                instance_id=instance.instance_id,
                dry_run=request.policy.dry_run,
                ping=pings
                if isinstance(pings, PingListingFailed)
                else (pings or {}).get(instance.instance_id),
            )
        outcome = create_snapshot_set(
            ec2,
            request,
            instance.instance_id,
            plan,
            existing=lookups.existing_sets.get(instance.instance_id, ()),
            recheck=lookups.recheck,
            budget=budget,
            ec2_create=ec2_create,
            scripts=session,
        )
        return _with_stages(outcome, session)
    except (ClientError, BotoCoreError) as exc:
        return _error_outcome(instance.instance_id, exc, ())
    except Exception as exc:
        # A bug must not cost the other instances their backups; it is logged with its traceback.
        logger.exception("unexpected error snapshotting %s", instance.instance_id)
        return _with_stages(
            InstanceOutcome.failed(
                instance.instance_id, UNEXPECTED_ERROR, f"{instance.instance_id}: {exc!r}"
            ),
            session,
        )


def _with_stages(outcome: InstanceOutcome, session: InstanceScripts | None) -> InstanceOutcome:
    if session is None or not session.results:
        return outcome
    return outcome.model_copy(update={"scripts": tuple(session.results)})


SnapshotFn = Callable[[Instance], InstanceOutcome]


def snapshot_all(
    instances: Sequence[Instance], snapshot_fn: SnapshotFn, max_workers: int
) -> list[InstanceOutcome]:
    """Run `snapshot_fn` over instances with bounded concurrency, keeping their order."""
    if not instances:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(instances))) as pool:
        return list(pool.map(snapshot_fn, instances))
