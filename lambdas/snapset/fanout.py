"""Fan-out on Step Functions: a run whose plan does not fit one invocation is handed to the
state machine the stack deploys, and done batch by batch by this same function.

The trigger's invocation plans: once its targets are known, `estimate` prices the work with
EC2's token buckets at Snapset's share (CreateSnapshots for every instance, and for a policy
with retention one expired set's DeleteSnapshot calls per instance, a nightly steady state). A
plan that fits `INLINE_FRACTION` of the invocation's remaining time runs inline as before; one
that does not is handed off (`hand_off`): its instance ids are written to S3 in batches
(`fan_out_shape` sizes them and the Map's concurrency from the same buckets), and one execution
is started, named from the trigger, so that a duplicate delivery of the trigger starts none.

The state machine (infra/fan_out.py) maps the batches onto the function: `run_batch` snapshots
one batch with the inline run's engine (idempotency records, pacing at its part of the share;
only a retried batch looks for the sets its earlier attempts made),
`retain_batch` runs retention for one batch once that batch's creation has settled (beside the
creation of the later batches: deletion spends another bucket), and `aggregate`
merges what the batches wrote to S3 into one run report. A batch the Map gave up on (after its
retries) is reported instance by instance with the error that stopped it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from snapset.clients import Clients
from snapset.consistency import seconds_needed, workers_for
from snapset.deadline import Deadline
from snapset.errors import error_code
from snapset.idempotency import Delivery
from snapset.outcomes import InstanceOutcome, InstanceStatus, RetentionError, RetentionResult
from snapset.pacing import (
    CREATE_SNAPSHOTS_BUCKET,
    DELETE_SNAPSHOT_BUCKET,
    DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET,
    Pacer,
)
from snapset.policy import SnapshotPolicy, SnapshotRequest
from snapset.report import RunReport, build_report, summarize
from snapset.retention import with_retention_all
from snapset.run import HandedOff, IdempotencyStore, build_engine
from snapset.snapshots import (
    TagExcluded,
    list_tag_excluded_volumes,
    needing_volume_tags,
    snapshot_all,
)
from snapset.targets import (
    FILTER_VALUES_PER_CALL,
    UNSNAPSHOTTABLE_STATES,
    Instance,
    describe_instances,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_stepfunctions import SFNClient

logger = logging.getLogger(__name__)

# The function's role reads and writes under this prefix only (infra/reports.py scopes it).
RUN_PREFIX = "runs/"
# An inline run may plan to use this much of the invocation's time: the estimate leaves out
# EC2's latency and AWS's own refusals.
INLINE_FRACTION = 0.5
# A batch is sized to fill this much of a worker invocation at its part of the share.
BATCH_FILL = 0.6
# Seconds one CreateSnapshots (or DeleteSnapshot) call takes, for a worker's thread pool. A
# local time scale (`rate_scale`) divides it like every other duration the plan prices, so
# the local plan is the one a real night makes (same concurrency, same batches).
CALL_SECONDS = 0.5
# Distributed Map's children run at most this many at once here: each gets share / concurrency.
MAX_CONCURRENCY = 40
MAX_BATCH_SIZE = 1000
MAX_BATCHES = 1000
# A batch carries at most this many volume ids of the plan's exclusions (about 24 bytes each),
# so that its Map item stays far inside Step Functions' 256 KB; a batch with more lists its
# own.
MAX_PLANNED_EXCLUSIONS = 2000
# Step Functions' execution names: 1-80 characters of letters, digits, '-' and '_'.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class Estimate(BaseModel):
    """How long EC2's buckets make a run at Snapset's share: the lower bound of its duration."""

    model_config = ConfigDict(frozen=True)

    creates: int
    deletes: int
    create_seconds: float
    delete_seconds: float

    @property
    def seconds(self) -> float:
        # Inline, retention is its own phase after every set has started: the phases add up
        # (a fan-out overlaps them, so for it this is an upper bound).
        return self.create_seconds + self.delete_seconds


def _bucket_seconds(calls: int, rate: float, burst: float) -> float:
    return max(0.0, calls - burst) / rate


def estimate(
    policy: SnapshotPolicy,
    instances: Sequence[Instance],
    *,
    share: float,
    rate_scale: float = 1.0,
    max_workers: int = 8,
) -> Estimate:
    """Price a run with EC2's buckets at `share` (refill times `rate_scale`): one
    CreateSnapshots per instance that can be snapshotted, and with retention one expired set
    per instance (DeleteSnapshot per volume), plus the calls' own latency and the scripts'
    time (each stage taking its whole timeout) over the run's threads (`workers_for`)."""
    live = [i for i in instances if i.state not in UNSNAPSHOTTABLE_STATES and i.volumes]
    creates = len(live)
    deletes = sum(len(i.volumes) for i in live) if policy.retention is not None else 0
    create_rate = CREATE_SNAPSHOTS_BUCKET.refill_per_second * share * rate_scale
    delete_rate = DELETE_SNAPSHOT_BUCKET.refill_per_second * share * rate_scale
    threads = workers_for(policy, max_workers)
    latency = CALL_SECONDS / rate_scale / threads
    return Estimate(
        creates=creates,
        deletes=deletes,
        create_seconds=_bucket_seconds(creates, create_rate, CREATE_SNAPSHOTS_BUCKET.burst * share)
        + creates * (latency + script_seconds(policy) / threads),
        delete_seconds=_bucket_seconds(deletes, delete_rate, DELETE_SNAPSHOT_BUCKET.burst * share)
        + deletes * latency,
    )


class FanOutShape(BaseModel):
    """How a handed-off run is cut: `batch_size` instances per Map item, `max_concurrency`
    items at once, each worker paced at `worker_share` of EC2's buckets (the run's share split
    between the concurrent workers, so together they never exceed it)."""

    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    max_concurrency: int = Field(ge=1, le=MAX_CONCURRENCY)
    worker_share: float = Field(gt=0, le=1)


def script_seconds(policy: SnapshotPolicy) -> float:
    """What one instance's scripts are priced at: each stage taking its whole timeout."""
    scripts = policy.scripts
    if scripts is None:
        return 0.0
    return float((1 if policy.dry_run else len(scripts.stages)) * scripts.timeout_seconds)


def fan_out_shape(
    *,
    share: float,
    worker_seconds: float,
    volumes_per_instance: float,
    retention: bool,
    rate_scale: float = 1.0,
    max_workers: int = 8,
    seconds_per_instance: float = 0.0,
    concurrency_limit: int | None = None,
) -> FanOutShape:
    """Concurrency: enough workers that their threads can keep up with the share's refill
    (`max_workers` calls every `CALL_SECONDS` each), at least 2 so one worker's start-up or
    end overlaps another's work. Batch size: what one worker paced at its part of the share
    creates (and, with retention, deletes: one expired set per instance) in `BATCH_FILL` of
    `worker_seconds`, the time a worker invocation has, and no more than its `max_workers`
    threads get through when each instance takes `seconds_per_instance` (its scripts).

    `concurrency_limit` caps the invocations the Maps run at once, together (with retention
    two Maps run side by side, each gets half), so the fan-out never takes the function's
    reserved concurrency from itself: a retain worker refused by Lambda would delay
    creation."""
    create_rate = CREATE_SNAPSHOTS_BUCKET.refill_per_second * share * rate_scale
    per_worker = max_workers * rate_scale / CALL_SECONDS
    concurrency = min(MAX_CONCURRENCY, max(2, math.ceil(create_rate / per_worker)))
    if concurrency_limit is not None:
        concurrency = min(concurrency, max(1, concurrency_limit // (2 if retention else 1)))
    worker_rate = create_rate / concurrency
    size = BATCH_FILL * worker_seconds * worker_rate
    if retention:
        delete_rate = DELETE_SNAPSHOT_BUCKET.refill_per_second * share * rate_scale
        worker_deletes = delete_rate / concurrency
        size = min(
            size, BATCH_FILL * worker_seconds * worker_deletes / max(volumes_per_instance, 1)
        )
    if seconds_per_instance > 0:
        size = min(size, BATCH_FILL * worker_seconds * max_workers / seconds_per_instance)
    return FanOutShape(
        batch_size=max(1, min(MAX_BATCH_SIZE, math.floor(size))),
        max_concurrency=concurrency,
        worker_share=share / concurrency,
    )


class Batch(BaseModel):
    """One Map item: the batch's position in the plan and its instance ids, and, when the plan
    listed them, the volumes `exclude_data_volume_tags` leaves out of each (None: the batch
    lists them itself)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    instance_ids: tuple[str, ...] = Field(min_length=1)
    tag_excluded: dict[str, tuple[str, ...]] | None = None

    def exclusions(self) -> TagExcluded | None:
        """The plan's volume-tag exclusions as the engine takes them."""
        if self.tag_excluded is None:
            return None
        return {iid: frozenset(volumes) for iid, volumes in self.tag_excluded.items()}


class FanOutRun(BaseModel):
    """A handed-off run, as the execution's input: the request, where its plan and results
    are, how it is cut. Every task of the execution gets it (`$$.Execution.Input`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: SnapshotRequest
    bucket: str
    prefix: str
    items_key: str
    batches: int = Field(ge=1)
    instances: int = Field(ge=1)
    max_concurrency: int = Field(ge=1, le=MAX_CONCURRENCY)
    worker_share: float = Field(gt=0, le=1)
    retention: bool
    # Whether the trigger's run marker said no set of it can exist yet (then a batch's first
    # attempt looks for none); False for a manual trigger or a later delivery.
    first_delivery: bool = False
    # Requested instance ids that do not exist, as failed outcomes, kept beside the batches
    # (not in the input, which every Map item copies and Step Functions caps at 256 KB).
    missing_key: str | None = None

    def result_key(self, phase: Literal["create", "retain"], index: int) -> str:
        return f"{self.prefix}{phase}/batch-{index:05d}.json"


class BatchResult(BaseModel):
    """What a Map item returned: a worker's counts, or (from the item's Catch) the error that
    stopped the batch after its retries."""

    model_config = ConfigDict(frozen=True)

    batch: int
    instances: int = 0
    started: int = 0
    failed: int = 0
    error: str | None = None
    cause: str | None = None


class FanOutTask(BaseModel):
    """What the state machine sends the function: `task` names the step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    snapset_task: Literal["batch", "retain", "aggregate"]
    run: FanOutRun
    batch: Batch | None = None
    # Step Functions' `$$.State.RetryCount` and `$$.Execution.RedriveCount`: a batch's first
    # attempt of a first delivery's execution looks for no set; a retry or a redriven
    # execution lists the sets its earlier attempts made.
    attempt: int = Field(default=0, ge=0)
    redrive: int = Field(default=0, ge=0)
    execution_arn: str | None = None
    created: tuple[BatchResult, ...] = ()
    retained: tuple[BatchResult, ...] = ()


def execution_name(policy: str, trigger_id: str) -> str:
    """The execution's name, the same for every delivery of a trigger (so a duplicate starts
    none): the policy, then a digest of policy and trigger (trigger ids may be 256 characters
    of anything)."""
    digest = hashlib.sha256(f"{policy}\0{trigger_id}".encode()).hexdigest()[:32]
    return f"{_NAME_UNSAFE.sub('_', policy)[:47]}-{digest}"


def _put_json(s3: S3Client, bucket: str, key: str, body: Any) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(body, separators=(",", ":")).encode(),
        ContentType="application/json",
    )


def _get_json(s3: S3Client, bucket: str, key: str) -> Any | None:
    """The object's JSON, or None when there is none (NoSuchKey)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) == "NoSuchKey":
            return None
        raise
    return json.loads(body)


def plan_exclusions(
    ec2: EC2Client, policy: SnapshotPolicy, instances: Sequence[Instance]
) -> TagExcluded | None:
    """The volume-tag exclusions of a handed-off run, listed once for every batch (one
    paginated DescribeVolumes, `list_tag_excluded_volumes`); None when the policy has none to
    list, or when the listing failed (then each batch lists its own, and fails its instances
    with the error if it fails again)."""
    ids = needing_volume_tags(instances)
    if not ids or not policy.exclude_data_volume_tags:
        return None
    try:
        return list_tag_excluded_volumes(ec2, policy, ids)
    except (ClientError, BotoCoreError):
        logger.exception("listing the volumes to exclude by tag failed; each batch lists its own")
        return None


def _batch_exclusions(
    excluded: TagExcluded | None, instance_ids: Sequence[str]
) -> dict[str, tuple[str, ...]] | None:
    if excluded is None:
        return None
    mine = {iid: tuple(sorted(excluded[iid])) for iid in instance_ids if iid in excluded}
    if sum(len(volumes) for volumes in mine.values()) > MAX_PLANNED_EXCLUSIONS:
        return None
    return mine


def hand_off(
    s3: S3Client,
    sfn: SFNClient,
    ec2: EC2Client,
    *,
    state_machine_arn: str,
    bucket: str,
    request: SnapshotRequest,
    instances: Sequence[Instance],
    missing: Sequence[InstanceOutcome],
    remaining_seconds: float,
    worker_seconds: float,
    share: float,
    rate_scale: float = 1.0,
    max_workers: int = 8,
    concurrency_limit: int | None = None,
    claim: Callable[[], Delivery] | None = None,
) -> HandedOff | None:
    """Hand the run to the state machine when its estimate does not fit `INLINE_FRACTION` of
    `remaining_seconds`; None (run inline) when it does.

    The batches go to `runs/<policy>/<execution name>/<plan digest>/items.json`: the digest
    of the plan keeps two deliveries that found different targets from overwriting each other's
    plan, and puts it in the execution's input, so the second gets ExecutionAlreadyExists
    and stands down; a duplicate with the same plan gets the running execution back from
    StartExecution (Standard executions are idempotent on name and input). A closed
    execution of that name is reported as it is (its status), and nothing is started.

    `claim` claims the trigger's run marker once the run is handed off: FIRST (and not a
    manual trigger) lets the batches' first attempts skip looking for sets.

    The plan lists the volume-tag exclusions once (`plan_exclusions`, through `ec2`) and gives
    each batch its instances' share, so a batch makes no DescribeVolumes of its own: a volume
    tagged or untagged after the plan is treated as the plan found it, and a volume detached
    since is left out of nothing (each batch describes its instances afresh)."""
    policy = request.policy
    price = estimate(policy, instances, share=share, rate_scale=rate_scale, max_workers=max_workers)
    if policy.scripts is not None:
        # No instance starts its scripts in an invocation's last `seconds_needed` seconds.
        last = seconds_needed(policy.scripts, policy.dry_run)
        remaining_seconds, worker_seconds = remaining_seconds - last, worker_seconds - last
    if not instances or price.seconds <= INLINE_FRACTION * remaining_seconds:
        return None
    if remaining_seconds <= 0:
        # No time left even to size batches: inline reports each instance out of time, and
        # the trigger's redelivery retries them.
        return None
    live = [i for i in instances if i.state not in UNSNAPSHOTTABLE_STATES and i.volumes]
    volumes = sum(len(i.volumes) for i in live) / max(len(live), 1)
    shape = fan_out_shape(
        share=share,
        worker_seconds=worker_seconds,
        volumes_per_instance=volumes,
        retention=policy.retention is not None,
        rate_scale=rate_scale,
        max_workers=workers_for(policy, max_workers),
        seconds_per_instance=script_seconds(policy),
        concurrency_limit=concurrency_limit,
    )
    ids = [i.instance_id for i in instances]
    excluded = plan_exclusions(ec2, policy, instances)
    # The Map's results (about 100 bytes a batch) must fit Step Functions' 256 KB state; a
    # batch describes its instances 200 ids a call, so a whole number of calls' worth.
    size = max(shape.batch_size, math.ceil(len(ids) / MAX_BATCHES))
    if size > FILTER_VALUES_PER_CALL:
        size -= size % FILTER_VALUES_PER_CALL
    batches = [
        Batch(
            index=n,
            instance_ids=tuple(ids[start : start + size]),
            tag_excluded=_batch_exclusions(excluded, ids[start : start + size]),
        )
        for n, start in enumerate(range(0, len(ids), size))
    ]
    items = [b.model_dump(mode="json") for b in batches]
    plan_digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    name = execution_name(policy.name, request.trigger.id)
    prefix = f"{RUN_PREFIX}{_NAME_UNSAFE.sub('_', policy.name)}/{name}/{plan_digest}/"
    delivery = claim() if claim is not None else Delivery.LATER
    missing_key = f"{prefix}missing.json" if missing else None
    run = FanOutRun(
        request=request,
        bucket=bucket,
        prefix=prefix,
        items_key=f"{prefix}items.json",
        batches=len(batches),
        instances=len(ids) + len(missing),
        max_concurrency=shape.max_concurrency,
        worker_share=shape.worker_share,
        retention=policy.retention is not None,
        first_delivery=delivery is Delivery.FIRST and not request.caller_request_id,
        missing_key=missing_key,
    )
    _put_json(s3, bucket, run.items_key, items)
    if missing_key is not None:
        _put_json(s3, bucket, missing_key, [o.model_dump(mode="json") for o in missing])
    handed = HandedOff(
        execution_arn=_execution_arn(state_machine_arn, name),
        instances=run.instances,
        batches=run.batches,
        estimated_seconds=round(price.seconds, 1),
    )
    try:
        started = sfn.start_execution(
            stateMachineArn=state_machine_arn,
            name=name,
            # Under "run": the definition's tasks pass `$.run` on beside their own results.
            input=json.dumps({"run": run.model_dump(mode="json")}, separators=(",", ":")),
        )
    except ClientError as exc:
        if error_code(exc) != "ExecutionAlreadyExists":
            raise
        status = sfn.describe_execution(executionArn=handed.execution_arn)["status"]
        logger.info("execution %s exists (%s): this delivery starts nothing", name, status)
        return dataclasses.replace(handed, duplicate=True, execution_status=status)
    logger.info(
        "run handed off",
        extra={
            "execution_arn": started["executionArn"],
            "batches": run.batches,
            "batch_size": shape.batch_size,
            "max_concurrency": shape.max_concurrency,
            "estimated_seconds": price.seconds,
        },
    )
    return dataclasses.replace(
        handed, execution_arn=started["executionArn"], execution_status="RUNNING"
    )


def _execution_arn(state_machine_arn: str, name: str) -> str:
    # arn:aws:states:<region>:<account>:stateMachine:<sm> -> ...:execution:<sm>:<name>
    head, _, machine = state_machine_arn.rpartition(":stateMachine:")
    return f"{head}:execution:{machine}:{name}"


def run_batch(
    clients: Clients,
    s3: S3Client,
    task: FanOutTask,
    *,
    deadline: Deadline,
    store: IdempotencyStore,
    max_workers: int,
    rate_scale: float = 1.0,
) -> tuple[BatchResult, list[InstanceOutcome]]:
    """Snapshot one batch as an inline run snapshots its instances, and write its outcomes to
    S3 (before the caller raises for the instances to retry, so the last attempt's outcomes
    are what the report shows even when the Map gives up on the batch)."""
    run, batch = task.run, _batch(task)
    request = run.request
    found = describe_instances(clients.ec2, batch.instance_ids)
    engine = build_engine(
        clients,
        request,
        deadline,
        idempotency=store,
        ec2_api_share=run.worker_share,
        ec2_rate_scale=rate_scale,
        # The first wave of workers takes the share's burst; later ones, and retries, follow
        # on its refill.
        pacers_start_full=batch.index < run.max_concurrency and task.attempt == 0,
        known_delivery=Delivery.FIRST
        if run.first_delivery and task.attempt == 0 and task.redrive == 0
        else Delivery.LATER,
    )
    snapshot = engine.for_targets(found.instances, tag_excluded=batch.exclusions())
    try:
        outcomes = found.missing + snapshot_all(
            found.instances, snapshot, workers_for(request.policy, max_workers)
        )
    finally:
        engine.release()
    _put_json(
        s3,
        run.bucket,
        run.result_key("create", batch.index),
        [o.model_dump(mode="json") for o in outcomes],
    )
    return _counts(batch.index, outcomes), outcomes


class CreationPending(RuntimeError):
    """Raised by a retain task whose batch's creation has not settled yet (no results, or
    instances its Map item will still retry): the retain Map runs beside the create Map, and
    its Retry on this error waits for the batch."""


def retry_ids(outcomes: Sequence[InstanceOutcome]) -> list[str]:
    """The instances of a batch its Map item retries (throttled, out of time)."""
    return [o.instance_id for o in outcomes if o.error and o.error.retry_on_redelivery]


def retain_batch(
    ec2: Any,
    s3: S3Client,
    task: FanOutTask,
    *,
    deadline: Deadline,
    rate_scale: float = 1.0,
    now: datetime | None = None,
    max_workers: int = 1,
) -> BatchResult:
    """Retention for one batch once its creation has settled: the instances whose set started
    (read back from the batch's results) get their older sets deleted, paced at the worker's
    part of the DeleteSnapshot share; the outcomes with retention go to the batch's retain
    results. Retention runs beside the creation of later batches (deletion spends another
    bucket, so it never delays creation), and raises `CreationPending` while this batch has no
    results or has instances still to retry, before any EC2 call. Its sharing checks are paced
    at the worker's part of the DescribeSnapshotAttribute share too."""
    run, batch = task.run, _batch(task)
    raw = _get_json(s3, run.bucket, run.result_key("create", batch.index))
    if raw is None:
        raise CreationPending(f"batch {batch.index}: no results of its creation yet")
    outcomes = [InstanceOutcome.model_validate(o) for o in raw]
    pending = retry_ids(outcomes)
    if pending:
        raise CreationPending(
            f"batch {batch.index}: {len(pending)} instance(s) still to retry: "
            + ", ".join(pending[:20])
        )
    start_full = batch.index < run.max_concurrency and task.attempt == 0
    pacer, check_pacer = (
        Pacer.share_of(bucket, run.worker_share, time_scale=rate_scale, start_full=start_full)
        for bucket in (DELETE_SNAPSHOT_BUCKET, DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET)
    )
    retained = with_retention_all(
        ec2,
        run.request.policy,
        outcomes,
        run.request.trigger.id,
        now or datetime.now(UTC),
        deadline=deadline,
        pacer=pacer,
        check_workers=max_workers,
        check_pacer=check_pacer,
    )
    _put_json(
        s3,
        run.bucket,
        run.result_key("retain", batch.index),
        [o.model_dump(mode="json") for o in retained],
    )
    return _counts(batch.index, retained)


BATCH_FAILED = "BatchFailed"


def aggregate(s3: S3Client, task: FanOutTask) -> RunReport:
    """The run report of a handed-off run: each batch's outcomes with retention where its
    retain step wrote them, else as created; a batch without results is reported instance by
    instance as failed with the error that stopped it (`BatchFailed`, retried on the next
    delivery of the trigger). Instances the plan could not find come from the plan."""
    run = task.run
    items = _get_json(s3, run.bucket, run.items_key)
    if items is None:
        raise LookupError(f"s3://{run.bucket}/{run.items_key}: the run's plan is gone")
    errors = {r.batch: r for r in task.created if r.error is not None}
    retain_errors = {r.batch: r for r in task.retained if r.error is not None}
    outcomes: list[InstanceOutcome] = []
    if run.missing_key is not None:
        missing = _get_json(s3, run.bucket, run.missing_key) or []
        outcomes.extend(InstanceOutcome.model_validate(o) for o in missing)
    for item in items:
        batch = Batch.model_validate(item)
        raw = None
        if run.retention and batch.index not in retain_errors:
            raw = _get_json(s3, run.bucket, run.result_key("retain", batch.index))
        if raw is None:
            raw = _get_json(s3, run.bucket, run.result_key("create", batch.index))
            if raw is not None and batch.index in retain_errors:
                lost = retain_errors[batch.index]
                raw = [_retention_failed(o, batch.index, lost) for o in raw]
        if raw is not None:
            outcomes.extend(InstanceOutcome.model_validate(o) for o in raw)
            continue
        why = _why(errors.get(batch.index))
        outcomes.extend(
            InstanceOutcome.failed(
                iid,
                BATCH_FAILED,
                f"{iid}: batch {batch.index} of the fan-out failed after its retries "
                f"({why}); its set may have started (then its tags name this trigger), "
                "and the policy's next run snapshots it otherwise",
            )
            for iid in batch.instance_ids
        )
    policy = run.request.policy
    report = build_report(policy.name, run.request.trigger, policy.dry_run, outcomes)
    return report.model_copy(update={"execution_arn": task.execution_arn})


def _published_key(run: FanOutRun) -> str:
    return f"{run.prefix}published.json"


def published_answer(s3: S3Client, run: FanOutRun) -> dict[str, Any] | None:
    """What the aggregator answered once it had published the run's report, or None when it
    has not (so a retried aggregator publishes nothing twice)."""
    answer = _get_json(s3, run.bucket, _published_key(run))
    return answer if isinstance(answer, dict) else None


def record_published(s3: S3Client, run: FanOutRun, answer: dict[str, Any]) -> None:
    """Note beside the run's files that its report went out, with the aggregator's answer."""
    _put_json(s3, run.bucket, _published_key(run), answer)


def _why(failure: BatchResult | None) -> str:
    if failure is None:
        return "no result"
    return (f"{failure.error}: {failure.cause}" if failure.cause else str(failure.error))[:300]


def _retention_failed(raw: Any, index: int, failure: BatchResult) -> Any:
    """A created outcome whose batch's retention step failed: its set stays reported, with a
    retention error saying so (wanted sets are kept whole: the next run retries them)."""
    outcome = InstanceOutcome.model_validate(raw)
    if outcome.status is not InstanceStatus.STARTED:
        return raw
    error = RetentionError(
        code=BATCH_FAILED,
        message=f"retention of batch {index} failed after its retries ({_why(failure)}); "
        "nothing of it was deleted that the report does not list, the next run retries it",
    )
    return outcome.model_copy(update={"retention": RetentionResult(errors=(error,))}).model_dump(
        mode="json"
    )


def _batch(task: FanOutTask) -> Batch:
    if task.batch is None:
        raise ValueError(f"a {task.snapset_task!r} task needs its batch")
    return task.batch


def _counts(index: int, outcomes: Sequence[InstanceOutcome]) -> BatchResult:
    summary = summarize(tuple(outcomes))
    return BatchResult(
        batch=index,
        instances=summary.instances,
        started=summary.started,
        failed=summary.failed,
    )
