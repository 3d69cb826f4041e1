"""The snapshot engine: find target instances, resolve exclusions, call CreateSnapshots.

Every function takes its boto3 client as an argument. Failures are returned as values
(`InstanceOutcome`), never raised, so one instance never stops the others.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from snapset.deadline import NEVER, Deadline
from snapset.errors import (
    CREATE_UNCONFIRMED,
    DRY_RUN_OPERATION,
    INSTANCE_NOT_FOUND,
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
from snapset.outcomes import InstanceOutcome, InstanceStatus, SnapshotInfo
from snapset.policy import (
    MAX_EXCLUDED_DATA_VOLUMES,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    SnapshotPolicy,
    SnapshotRequest,
    expand_template,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        CreateSnapshotsRequestTypeDef,
        FilterTypeDef,
        TagTypeDef,
    )

logger = logging.getLogger(__name__)

# EC2 accepts at most 200 values in one filter.
_FILTER_VALUES_PER_CALL = 200
UNSNAPSHOTTABLE_STATES = {"terminated", "shutting-down"}


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
class AttachedVolume:
    volume_id: str
    device_name: str
    is_root: bool


@dataclass(frozen=True)
class Instance:
    """What the engine needs to know of an instance, from DescribeInstances."""

    instance_id: str
    state: str
    tags: dict[str, str]
    volumes: tuple[AttachedVolume, ...]
    outpost_arn: str | None = None

    @classmethod
    def from_api(cls, raw: Any) -> Instance:
        root_device = raw.get("RootDeviceName")
        volumes = tuple(
            AttachedVolume(
                volume_id=m["Ebs"]["VolumeId"],
                device_name=m["DeviceName"],
                is_root=m["DeviceName"] == root_device,
            )
            for m in raw.get("BlockDeviceMappings", [])
            if "Ebs" in m and "VolumeId" in m["Ebs"]
        )
        return cls(
            instance_id=raw["InstanceId"],
            state=raw.get("State", {}).get("Name", "unknown"),
            tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
            volumes=volumes,
            outpost_arn=raw.get("OutpostArn"),
        )


@dataclass(frozen=True)
class Targets:
    """Instances found for a policy, and failures for requested IDs that do not exist."""

    instances: list[Instance]
    missing: list[InstanceOutcome] = field(default_factory=list)


def _describe(ec2: EC2Client, filters: Sequence[FilterTypeDef]) -> Iterable[Instance]:
    paginator = ec2.get_paginator("describe_instances")
    for page in paginator.paginate(Filters=list(filters), PaginationConfig={"PageSize": 1000}):
        for reservation in page.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                yield Instance.from_api(raw)


def _tag_filters(tags: dict[str, list[str]]) -> list[FilterTypeDef]:
    return [{"Name": f"tag:{key}", "Values": list(values)} for key, values in tags.items()]


def find_targets(ec2: EC2Client, policy: SnapshotPolicy) -> Targets:
    """Resolve a policy's targets with DescribeInstances, one call per page.

    Targets are the union of `instance_ids` and instances matching every `target_tags` key. An ID
    that does not exist becomes a failed outcome (InvalidInstanceID.NotFound); filtering by
    `instance-id` instead of passing InstanceIds keeps one unknown ID from failing the whole call.
    """
    found: dict[str, Instance] = {}
    ids = list(policy.instance_ids)
    for start in range(0, len(ids), _FILTER_VALUES_PER_CALL):
        chunk = ids[start : start + _FILTER_VALUES_PER_CALL]
        for inst in _describe(ec2, [{"Name": "instance-id", "Values": chunk}]):
            found[inst.instance_id] = inst
    if policy.target_tags:
        for inst in _describe(ec2, _tag_filters(policy.target_tags)):
            found[inst.instance_id] = inst
    missing = [
        InstanceOutcome.failed(
            i, INSTANCE_NOT_FOUND, f"{i}: no such instance in this account and region"
        )
        for i in ids
        if i not in found
    ]
    return Targets(instances=sorted(found.values(), key=lambda i: i.instance_id), missing=missing)


def describe_instance(ec2: EC2Client, instance_id: str) -> Instance | None:
    """Describe one instance (for an instance event); None when it does not exist."""
    for inst in _describe(ec2, [{"Name": "instance-id", "Values": [instance_id]}]):
        return inst
    return None


def ec2_filter_match(value: str, pattern: str) -> bool:
    """Match a value as an EC2 filter would: `*` any run, `?` one character, `\\` escapes."""
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.fullmatch("".join(parts), value, re.DOTALL) is not None


def _tags_match(tags: dict[str, str], wanted: dict[str, list[str]]) -> bool:
    # An instance event is checked locally; it must agree with the schedule's EC2 tag filters.
    return all(
        key in tags and any(ec2_filter_match(tags[key], pattern) for pattern in patterns)
        for key, patterns in wanted.items()
    )


def matches_policy(instance: Instance, policy: SnapshotPolicy) -> bool:
    """Whether a policy targets this instance (by ID, or by carrying all its target tags)."""
    if instance.instance_id in policy.instance_ids:
        return True
    return bool(policy.target_tags) and _tags_match(instance.tags, policy.target_tags)


@dataclass(frozen=True)
class SnapshotPlan:
    """The volumes of one instance to snapshot and the data volumes to exclude."""

    snapshot_volume_ids: tuple[str, ...]
    excluded_volume_ids: tuple[str, ...]


def _tag_excluded_volumes(ec2: EC2Client, policy: SnapshotPolicy, instance_id: str) -> set[str]:
    if not policy.exclude_data_volume_tags:
        return set()
    paginator = ec2.get_paginator("describe_volumes")
    filters: list[FilterTypeDef] = [
        {"Name": "attachment.instance-id", "Values": [instance_id]},
        *_tag_filters(policy.exclude_data_volume_tags),
    ]
    return {
        volume["VolumeId"]
        for page in paginator.paginate(Filters=filters)
        for volume in page.get("Volumes", [])
    }


def plan_instance(
    ec2: EC2Client, policy: SnapshotPolicy, instance: Instance
) -> SnapshotPlan | InstanceOutcome:
    """Decide which volumes of an instance to snapshot, or why it is skipped or failed.

    Volume-tag exclusions are resolved with one DescribeVolumes call filtered by attachment and
    merged with `exclude_data_volume_ids`, keeping only volumes attached to this instance.
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
    by_tag = _tag_excluded_volumes(ec2, policy, iid) & attached.keys()
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


def snapshot_tags(request: SnapshotRequest, instance_id: str) -> list[TagTypeDef]:
    """User tags with placeholders filled, then Snapset's managed tags (which win)."""
    values = _placeholder_values(request, instance_id)
    tags = {k: expand_template(v, values) for k, v in request.policy.tags.items()}
    tags[TAG_POLICY] = request.policy.name
    tags[TAG_TRIGGER_ID] = request.trigger.id
    tags[TAG_INSTANCE_ID] = instance_id
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _placeholder_values(request: SnapshotRequest, instance_id: str) -> dict[str, str]:
    return {
        "instance_id": instance_id,
        "policy": request.policy.name,
        "trigger": request.trigger.type.value,
        "timestamp": request.trigger.timestamp,
    }


def build_create_snapshots_request(
    request: SnapshotRequest, instance_id: str, plan: SnapshotPlan
) -> CreateSnapshotsRequestTypeDef:
    """The exact CreateSnapshots parameters for one instance."""
    policy = request.policy
    params: CreateSnapshotsRequestTypeDef = {
        "InstanceSpecification": {
            "InstanceId": instance_id,
            "ExcludeBootVolume": policy.exclude_boot_volume,
        },
        "TagSpecifications": [
            {"ResourceType": "snapshot", "Tags": snapshot_tags(request, instance_id)}
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


def find_existing_set(
    ec2: EC2Client, policy: str, trigger_id: str, instance_id: str
) -> tuple[SnapshotInfo, ...]:
    """Snapshots an earlier delivery of this trigger already made for this instance.

    The managed tags are applied atomically by CreateSnapshots, so a set that exists carries
    them; this covers a crash between CreateSnapshots and recording its outcome.
    """
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


def create_snapshot_set(
    ec2: EC2Client,
    request: SnapshotRequest,
    instance_id: str,
    plan: SnapshotPlan,
    *,
    budget: RetryBudget = NO_RETRY,
    ec2_create: EC2Client,
) -> InstanceOutcome:
    """Call CreateSnapshots for one planned instance and return its outcome.

    With DryRun, AWS answers DryRunOperation when the call would succeed (`dry_run_ok`) and
    UnauthorizedOperation when it would not (`failed`). Before each real call, a set this
    trigger already made is looked up and reported instead. Refusals (throttling, EBS rate
    limits) are retried within `budget`; after a server error or a lost connection the set may
    exist, so the retry waits `budget.settle_delay` and looks again first, and without time for
    that the instance fails as `CreateSnapshotsUnconfirmed`, for the next delivery to settle.
    `ec2_create` makes the CreateSnapshots call: a client without botocore retries, which would
    resend the call blind (`clients.Clients.ec2_create`).
    """
    params = build_create_snapshots_request(request, instance_id, plan)
    excluded = plan.excluded_volume_ids
    attempt = 0
    while True:
        try:
            if not request.policy.dry_run:
                existing = find_existing_set(
                    ec2, request.policy.name, request.trigger.id, instance_id
                )
                if existing:
                    return InstanceOutcome(
                        instance_id=instance_id,
                        status=InstanceStatus.STARTED,
                        snapshots=existing,
                        excluded_volume_ids=excluded,
                        reason="set already created by an earlier delivery of this trigger",
                    )
            response = ec2_create.create_snapshots(**params)
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == DRY_RUN_OPERATION:
                return InstanceOutcome(
                    instance_id=instance_id,
                    status=InstanceStatus.DRY_RUN_OK,
                    excluded_volume_ids=excluded,
                    reason=f"would snapshot {', '.join(plan.snapshot_volume_ids)}",
                )
            kind = create_error_kind(exc)
            if kind == "permanent":
                return _error_outcome(instance_id, exc, excluded)
            unconfirmed = kind == "unconfirmed"
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
        )


def snapshot_instance(
    ec2: EC2Client,
    request: SnapshotRequest,
    instance: Instance,
    budget: RetryBudget = NO_RETRY,
    *,
    ec2_create: EC2Client,
) -> InstanceOutcome:
    """Plan and snapshot one instance; every error becomes a failed outcome for it."""
    if budget.expired():
        return InstanceOutcome.failed(
            instance.instance_id,
            TIMEOUT,
            f"{instance.instance_id}: not started, the invocation ran out of time; "
            "the next delivery retries it",
        )
    try:
        plan = plan_instance(ec2, request.policy, instance)
        if isinstance(plan, InstanceOutcome):
            return plan
        return create_snapshot_set(
            ec2, request, instance.instance_id, plan, budget=budget, ec2_create=ec2_create
        )
    except (ClientError, BotoCoreError) as exc:
        return _error_outcome(instance.instance_id, exc, ())
    except Exception as exc:
        # A bug must not cost the other instances their backups; it is logged with its traceback.
        logger.exception("unexpected error snapshotting %s", instance.instance_id)
        return InstanceOutcome.failed(
            instance.instance_id, UNEXPECTED_ERROR, f"{instance.instance_id}: {exc!r}"
        )


SnapshotFn = Callable[[Instance], InstanceOutcome]


def snapshot_all(
    instances: Sequence[Instance], snapshot_fn: SnapshotFn, max_workers: int
) -> list[InstanceOutcome]:
    """Run `snapshot_fn` over instances with bounded concurrency, keeping their order."""
    if not instances:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(instances))) as pool:
        return list(pool.map(snapshot_fn, instances))
