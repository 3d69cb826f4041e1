"""The Lambda handler: it only wires. Parse the trigger, build clients, run, publish the report."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from snapset.clients import EC2_CONFIG, S3_CONFIG, SFN_CONFIG, SNS_CONFIG, Clients, make_clients
from snapset.completion import (
    COMPLETION_DETAIL_TYPES,
    CompletionReport,
    completion_reports,
    parse_completion_event,
    publish_completion,
)
from snapset.copies import (
    COPY_SNAPSHOT_BUCKET,
    COPY_SWEEP_KEY,
    Copier,
    CopyClaims,
    CopyingPolicy,
    CopyProgress,
    ShareResult,
    SourceSet,
    advance_copies,
    describe_sets,
    mark_reported,
    publish_copy_report,
    share_set,
    sweep_copies,
)
from snapset.deadline import Deadline
from snapset.errors import InvalidInput
from snapset.fanout import (
    RUN_PREFIX,
    FanOutTask,
    aggregate,
    hand_off,
    published_answer,
    record_published,
    retain_batch,
    retry_ids,
    run_batch,
)
from snapset.idempotency import DDB_CONFIG, Delivery, claim_delivery, release_delivery
from snapset.outcomes import InstanceOutcome
from snapset.pacing import DELETE_SNAPSHOT_BUCKET, DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET, Pacer
from snapset.policy import Distribution, SnapshotRequest, Trigger, describe_validation_error
from snapset.report import (
    MAX_RESPONSE_BYTES,
    RunReport,
    fit_message,
    invalid_input_report,
    publish_report,
)
from snapset.report_archive import archive_report
from snapset.run import HandedOff, HandOff, IdempotencyStore, Ignored, build_engine, run_request
from snapset.settings import SERVICE_NAME, Settings
from snapset.targets import Instance
from snapset.triggers import parse_request, with_deployed_copies, with_deployed_retention

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_sns import SNSClient

logger = Logger()
metrics = Metrics()
# No Powertools Tracer: importing aws-xray-sdk costs ~0.4 s of cold start, and its context is
# per thread, so the worker threads' EC2 calls would not join the trace anyway. The function's
# active tracing still records each invocation.


class IncompleteRun(RuntimeError):
    """Raised after the report is published when instances must be retried on redelivery."""


@functools.cache
def settings() -> Settings:
    """Read once per execution environment; a bad variable fails every invocation loudly."""
    return Settings.from_env()


@functools.cache
def session() -> boto3.Session:
    """One session per execution environment: its loader caches the parsed service models,
    which otherwise cost a few hundred milliseconds per invocation for EC2 alone."""
    return boto3.Session()


def record_metrics(report: RunReport) -> None:
    """EMF metrics per policy: sets started, instances failed, volumes snapshotted and, for a
    policy with scripts, application-consistent sets and script failures."""
    metrics.add_dimension(name="policy", value=report.policy)
    metrics.add_metric(name="SetsStarted", unit=MetricUnit.Count, value=report.summary.started)
    metrics.add_metric(name="InstancesFailed", unit=MetricUnit.Count, value=report.summary.failed)
    metrics.add_metric(
        name="VolumesSnapshotted", unit=MetricUnit.Count, value=report.summary.snapshots
    )
    if report.summary.application_consistent or report.summary.script_failures:
        metrics.add_metric(
            name="ApplicationConsistentSets",
            unit=MetricUnit.Count,
            value=report.summary.application_consistent,
        )
        metrics.add_metric(
            name="ScriptFailures", unit=MetricUnit.Count, value=report.summary.script_failures
        )
        # A post script that failed may have left an instance frozen: alarmed per policy.
        metrics.add_metric(
            name="PostScriptFailures",
            unit=MetricUnit.Count,
            value=report.summary.post_script_failures,
        )
    if report.error is not None:
        metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)


def _reject(exc: InvalidInput, config: Settings) -> dict[str, Any]:
    logger.error("invalid input", extra={"error": exc.message, "policy": exc.policy})
    metrics.add_metric(name="InvalidInputs", unit=MetricUnit.Count, value=1)
    if exc.policy is None or exc.trigger_type is None:
        # Nothing names a policy to report to: fail, so the async retry and the DLQ keep it.
        raise exc
    trigger = exc.trigger or Trigger(
        type=exc.trigger_type, id="unidentified", time=datetime.now(UTC)
    )
    report = invalid_input_report(exc.policy, trigger, exc.message)
    publish_report(make_clients(session=session()).sns, config.topic_arn, report)
    record_metrics(report)
    return report.model_dump(mode="json")


def _copier(config: Settings, clients: Clients, context: LambdaContext) -> Copier:
    """The copy engine's clients and limits for this invocation: a client, a CopySnapshot
    pacer and a DeleteSnapshot pacer per destination region (EC2's buckets are regional)."""
    ec2_clients: dict[str, Any] = {}

    def ec2_in(region: str) -> Any:
        if region not in ec2_clients:
            ec2_clients[region] = session().client("ec2", region_name=region, config=EC2_CONFIG)
        return ec2_clients[region]

    def pacers(bucket: Any) -> Any:
        made: dict[str, Pacer] = {}

        def pacer_for(region: str) -> Pacer:
            if region not in made:
                made[region] = Pacer.share_of(
                    bucket, config.ec2_api_share, time_scale=config.ec2_rate_scale
                )
            return made[region]

        return pacer_for

    return Copier(
        home_ec2=clients.ec2,
        ec2_in=ec2_in,
        claims=CopyClaims(
            session().client("dynamodb", config=DDB_CONFIG), config.idempotency_table
        ),
        policies={
            name: CopyingPolicy(name, distribution, config.deployed_policies.get(name))
            for name, distribution in config.deployed_copies.items()
        },
        home_region=config.region,
        now=datetime.now(UTC),
        deadline=Deadline.for_invocation(
            context.get_remaining_time_in_millis(), config.safety_margin_ms
        ),
        pacer_for=pacers(COPY_SNAPSHOT_BUCKET),
        delete_pacer_for=pacers(DELETE_SNAPSHOT_BUCKET),
        check_pacer_for=pacers(DESCRIBE_SNAPSHOT_ATTRIBUTE_BUCKET),
    )


def _publish_copies(progress: CopyProgress, clients: Clients, config: Settings) -> None:
    """Publish each finished set's copy report, then mark the sets reported (those published,
    even when a later publish fails); metrics."""
    published = []
    try:
        for source, report in progress.finished:
            publish_copy_report(clients.sns, config.topic_arn, report)
            published.append(source)
    finally:
        if published:
            mark_reported(clients.ec2, published)
    for _, report in progress.finished:
        if report.status != "succeeded":
            with single_metric(
                name="CopyFailures",
                unit=MetricUnit.Count,
                value=1,
                default_dimensions={"service": SERVICE_NAME},
            ) as metric:
                metric.add_dimension(name="policy", value=report.policy)
    metrics.add_metric(
        name="CopiesStarted", unit=MetricUnit.Count, value=sum(progress.started.values())
    )
    metrics.add_metric(name="CopyBacklog", unit=MetricUnit.Count, value=progress.backlog)
    if progress.errors:
        logger.warning("copy errors", extra={"errors": progress.errors[:50]})


def _share_and_copy(
    reports: list[CompletionReport],
    described: Sequence[SourceSet],
    clients: Clients,
    config: Settings,
    context: LambdaContext,
) -> list[CompletionReport]:
    """A completed set of a policy with shares or copies: shared (the result goes into its
    completion report) and its copies started."""
    wanted = {
        (r.policy, r.trigger["id"], r.instance_id)
        for r in reports
        if r.result == "succeeded" and config.deployed_copies.get(r.policy)
    }
    if not wanted:
        return reports
    sets = {s.key: s for s in described if s.key in wanted}
    shared: dict[tuple[str, str, str], ShareResult] = {}
    for key, source in sets.items():
        accounts = config.deployed_copies[source.policy].share_with_accounts
        if accounts:
            shared[key] = share_set(clients.ec2, source, accounts)
    if any(config.deployed_copies[s.policy].copies for s in sets.values()):
        try:
            progress = advance_copies(_copier(config, clients, context), list(sets.values()))
            _publish_copies(progress, clients, config)
        except Exception:
            # The sets stay pending, so the copy sweep starts and reports their copies; a
            # failure here must not cost the completion reports.
            logger.exception("starting the copies of a completed set failed")
            metrics.add_metric(name="CopyStartsFailed", unit=MetricUnit.Count, value=1)
    return [
        r.model_copy(update={"shares": shared[key]})
        if (key := (r.policy, r.trigger["id"], r.instance_id)) in shared
        else r
        for r in reports
    ]


def _copy_sweep(config: Settings, context: LambdaContext) -> dict[str, Any]:
    """The copy sweep: every pending set's copies advanced and the finished ones reported."""
    clients = make_clients(session=session())
    progress = sweep_copies(_copier(config, clients, context))
    _publish_copies(progress, clients, config)
    summary = {
        "kind": "copy_sweep",
        "started": progress.started,
        "queued": progress.queued,
        "refused": progress.refused,
        "reported": len(progress.finished),
        "waiting_sets": progress.waiting_sets,
        "failed_sets": len(progress.failed_sets),
        "unconfigured_sets": len(progress.unconfigured_sets),
        "errors": progress.errors[:50],
    }
    logger.info("copy sweep finished", extra=summary)
    return summary


def _completion(event: dict[str, Any], config: Settings, context: LambdaContext) -> dict[str, Any]:
    try:
        parsed = parse_completion_event(event)
    except InvalidInput as exc:
        logger.error("invalid completion event", extra={"error": exc.message})
        metrics.add_metric(name="InvalidInputs", unit=MetricUnit.Count, value=1)
        raise
    logger.set_correlation_id(parsed.event_id)
    clients = make_clients(session=session())
    # One DescribeSnapshots by ID (per 200) serves the reports, the shares and the copies.
    sets = describe_sets(clients.ec2, [s.snapshot_id for s in parsed.snapshots])
    reports = completion_reports(parsed, sets)
    metrics.add_metric(name="CompletionEvents", unit=MetricUnit.Count, value=1)
    reports = _share_and_copy(reports, sets, clients, config, context)
    for report in reports:
        publish_completion(clients.sns, config.topic_arn, report)
        name = "SetsCompleted" if report.result == "succeeded" else "SetsFailed"
        # One event can hold sets of several policies: one metric each, with its own dimension.
        with single_metric(
            name=name,
            unit=MetricUnit.Count,
            value=1,
            default_dimensions={"service": SERVICE_NAME},
        ) as metric:
            metric.add_dimension(name="policy", value=report.policy)
    return {"kind": "completion", "reports": [r.model_dump(mode="json") for r in reports]}


def _store(config: Settings, context: LambdaContext) -> IdempotencyStore:
    return IdempotencyStore(
        table_name=config.idempotency_table,
        dynamodb=session().client("dynamodb", config=DDB_CONFIG),
        context=context,
    )


def _publish_run(
    report: RunReport, sns: SNSClient, config: Settings, context: LambdaContext
) -> RunReport:
    """Store the full report in S3, publish the (fitted) SNS message, record the metrics."""
    report = archive_report(
        session().client("s3", config=S3_CONFIG),
        config.report_bucket,
        report,
        context.aws_request_id,
    )
    if report.full_report_error is not None:
        logger.error("full report not stored", extra={"error": report.full_report_error})
        metrics.add_metric(name="ReportsNotStored", unit=MetricUnit.Count, value=1)
    message_id = publish_report(sns, config.topic_arn, report)
    record_metrics(report)
    logger.info(
        "run finished",
        extra={
            "status": report.status.value,
            "summary": report.summary.model_dump(),
            "message_id": message_id,
            "full_report": report.full_report.model_dump() if report.full_report else None,
            "execution_arn": report.execution_arn,
        },
    )
    return report


def _check_task(task: FanOutTask, config: Settings) -> None:
    """A task is trusted no more than a manual invoke: it must name this stack's bucket and
    run prefix, and carry its policy's deployed retention unchanged (retention comes from the
    stack only, so `lambda:InvokeFunction` never decides what is deleted)."""
    run = task.run
    if run.bucket != config.report_bucket:
        raise InvalidInput(f"fan-out task: run.bucket must be {config.report_bucket!r}")
    if not (run.prefix.startswith(RUN_PREFIX) and run.items_key.startswith(run.prefix)):
        raise InvalidInput(f"fan-out task: run.prefix and run.items_key must be under {RUN_PREFIX}")
    if run.missing_key is not None and not run.missing_key.startswith(run.prefix):
        raise InvalidInput("fan-out task: run.missing_key must be under run.prefix")
    policy = run.request.policy
    if policy.retention != config.deployed_policies.get(policy.name):
        raise InvalidInput(
            f"fan-out task: run.request.policy.retention of {policy.name!r} is not its "
            "deployed retention",
            policy=policy.name,
        )
    if Distribution.of(policy) != config.deployed_copies.get(policy.name, Distribution()):
        raise InvalidInput(
            f"fan-out task: run.request.policy's copies and shares of {policy.name!r} are not "
            "its deployed ones",
            policy=policy.name,
        )


def _fan_out_task(event: dict[str, Any], config: Settings, context: LambdaContext) -> Any:
    """A step of the fan-out state machine: a batch, its retention, or the aggregation."""
    try:
        task = FanOutTask.model_validate(event)
    except ValidationError as exc:
        # The state machine sent it: a mismatch is a bug between the two, fail the task loudly.
        raise InvalidInput(describe_validation_error(exc, "fan-out task: ")) from None
    _check_task(task, config)
    request = task.run.request
    logger.set_correlation_id(request.trigger.id)
    logger.append_keys(policy=request.policy.name, fan_out_task=task.snapset_task)
    if task.batch is not None:
        logger.append_keys(batch=task.batch.index)
    s3 = session().client("s3", config=S3_CONFIG)
    deadline = Deadline.for_invocation(
        context.get_remaining_time_in_millis(), config.safety_margin_ms
    )
    if task.snapset_task == "aggregate":
        published = published_answer(s3, task.run)
        if published is not None:
            # A retry of an aggregator that had published (and then failed to answer): the
            # report went out once, it is not sent again.
            logger.info("run report already published", extra={"answer": published})
            return published
        sns = session().client("sns", config=SNS_CONFIG)
        report = _publish_run(aggregate(s3, task), sns, config, context)
        answer = {
            "status": report.status.value,
            "summary": report.summary.model_dump(mode="json"),
            "full_report": report.full_report.model_dump() if report.full_report else None,
        }
        record_published(s3, task.run, answer)
        return answer
    clients = make_clients(session=session())
    if task.snapset_task == "retain":
        kept = retain_batch(
            clients.ec2,
            s3,
            task,
            deadline=deadline,
            rate_scale=config.ec2_rate_scale,
            max_workers=config.max_workers,
        )
        return kept.model_dump(mode="json")
    result, outcomes = run_batch(
        clients,
        s3,
        task,
        deadline=deadline,
        store=_store(config, context),
        max_workers=config.max_workers,
        rate_scale=config.ec2_rate_scale,
    )
    retry = retry_ids(outcomes)
    if retry:
        # The Map's Retry redoes the batch: its idempotency records make that redo only these.
        raise IncompleteRun(
            f"batch {result.batch}: {len(retry)} instance(s) to retry: {', '.join(retry[:20])}"
        )
    return result.model_dump(mode="json")


def _hand_off(
    ec2: EC2Client,
    request: SnapshotRequest,
    config: Settings,
    deadline: Deadline,
    store: IdempotencyStore,
) -> HandOff:
    def claim() -> Delivery:
        policy, trigger = request.policy.name, request.trigger.id
        delivery = claim_delivery(
            store.dynamodb,
            store.table_name,
            policy,
            trigger,
            holds_for_seconds=max(deadline.remaining(), 0),
        )
        if delivery is Delivery.FIRST:
            # The execution does the run, and a later delivery finds it by its name: release
            # the marker at once, so a delivery that runs inline after all lists its sets.
            release_delivery(store.dynamodb, store.table_name, policy, trigger)
        return delivery

    worker_seconds = deadline.remaining()

    def decide(
        instances: Sequence[Instance], missing: Sequence[InstanceOutcome]
    ) -> HandedOff | None:
        remaining = deadline.remaining()
        return hand_off(
            session().client("s3", config=S3_CONFIG),
            session().client("stepfunctions", config=SFN_CONFIG),
            ec2,
            state_machine_arn=config.state_machine_arn,
            bucket=config.report_bucket,
            request=request,
            instances=instances,
            missing=missing,
            remaining_seconds=remaining,
            # Workers run on the same function, so each has what this invocation had when it
            # started, not what its planning left.
            worker_seconds=worker_seconds,
            share=config.ec2_api_share,
            rate_scale=config.ec2_rate_scale,
            max_workers=config.max_workers,
            concurrency_limit=config.fan_out_concurrency,
            claim=None if request.policy.dry_run else claim,
        )

    return decide


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> Any:
    """Entry point for schedules, instance events, completion events, manual invokes and the
    fan-out state machine's tasks."""
    config = settings()
    if isinstance(event, dict) and event.get("detail-type") in COMPLETION_DETAIL_TYPES:
        return _completion(event, config, context)
    if isinstance(event, dict) and COPY_SWEEP_KEY in event:
        return _copy_sweep(config, context)
    if isinstance(event, dict) and "snapset_task" in event:
        return _fan_out_task(event, config, context)
    try:
        request = with_deployed_copies(
            with_deployed_retention(
                parse_request(event, default_request_id=context.aws_request_id),
                config.deployed_policies,
            ),
            config.deployed_copies,
        )
    except InvalidInput as exc:
        return _reject(exc, config)
    logger.set_correlation_id(request.trigger.id)
    logger.append_keys(policy=request.policy.name, trigger_type=request.trigger.type.value)
    clients = make_clients(session=session())
    deadline = Deadline.for_invocation(
        context.get_remaining_time_in_millis(), config.safety_margin_ms
    )
    store = _store(config, context)
    engine = build_engine(
        clients,
        request,
        deadline,
        idempotency=store,
        ec2_api_share=config.ec2_api_share,
        ec2_rate_scale=config.ec2_rate_scale,
    )
    result = run_request(
        clients.ec2,
        request,
        engine=engine,
        deadline=deadline,
        max_workers=config.max_workers,
        hand_off=_hand_off(clients.ec2, request, config, deadline, store),
    )
    if isinstance(result, Ignored):
        metrics.add_dimension(name="policy", value=request.policy.name)
        metrics.add_metric(name="InstanceEventsIgnored", unit=MetricUnit.Count, value=1)
        logger.info(
            "instance event ignored",
            extra={"instance_id": result.instance_id, "reason": result.reason},
        )
        return {"status": "ignored", "instance_id": result.instance_id, "reason": result.reason}
    if isinstance(result, HandedOff):
        metrics.add_dimension(name="policy", value=request.policy.name)
        metrics.add_metric(name="RunsHandedOff", unit=MetricUnit.Count, value=1)
        logger.info("run handed off to the fan-out state machine", extra=result.__dict__)
        return {"status": "handed_off", **dataclasses.asdict(result)}
    result = _publish_run(result, clients.sns, config, context)
    if result.error is not None and result.error.retry_on_redelivery:
        raise IncompleteRun(f"finding the targets failed ({result.error.code}); retry the trigger")
    retry = retry_ids(result.instances)
    if retry:
        raise IncompleteRun(
            f"{len(retry)} instance(s) to retry on the next delivery: {', '.join(retry[:20])}"
        )
    # Lambda refuses a response over 6 MB (the invocation would fail after its work is done):
    # a large fleet's synchronous answer is trimmed as the SNS message is, the full one is in S3.
    fitted, _ = fit_message(result, MAX_RESPONSE_BYTES)
    return fitted.model_dump(mode="json")
