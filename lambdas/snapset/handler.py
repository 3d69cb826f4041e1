"""The Lambda handler: it only wires. Parse the trigger, build clients, run, publish the report."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from snapset.clients import make_clients
from snapset.policy import Trigger
from snapset.report import RunReport, invalid_input_report, publish_report
from snapset.run import Ignored, run_request
from snapset.settings import Settings
from snapset.triggers import InvalidTrigger, parse_request

logger = Logger()
metrics = Metrics()
tracer = Tracer(patch_modules=("botocore",))


@functools.cache
def settings() -> Settings:
    """Read once per execution environment; a bad variable fails every invocation loudly."""
    return Settings.from_env()


def record_metrics(report: RunReport) -> None:
    """EMF metrics per policy: sets started, instances failed, volumes snapshotted."""
    metrics.add_dimension(name="policy", value=report.policy)
    metrics.add_metric(name="SetsStarted", unit=MetricUnit.Count, value=report.summary.started)
    metrics.add_metric(name="InstancesFailed", unit=MetricUnit.Count, value=report.summary.failed)
    metrics.add_metric(
        name="VolumesSnapshotted", unit=MetricUnit.Count, value=report.summary.snapshots
    )
    if report.error is not None:
        metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)


def _reject(exc: InvalidTrigger) -> dict[str, Any]:
    logger.error("invalid input", extra={"error": exc.message, "policy": exc.policy})
    if exc.policy is None or exc.trigger_type is None:
        # Nothing names a policy to report to: fail, so the async retry and the DLQ keep it.
        raise exc
    trigger = exc.trigger or Trigger(
        type=exc.trigger_type, id="unidentified", time=datetime.now(UTC)
    )
    report = invalid_input_report(exc.policy, trigger, exc.message)
    publish_report(make_clients().sns, settings().topic_arn, report)
    record_metrics(report)
    return report.model_dump(mode="json")


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:  # noqa: ARG001
    """Entry point for schedules, instance events and manual invokes; returns the report."""
    config = settings()
    try:
        request = parse_request(event)
    except InvalidTrigger as exc:
        return _reject(exc)
    logger.set_correlation_id(request.trigger.id)
    logger.append_keys(policy=request.policy.policy, trigger_type=request.trigger.type.value)
    clients = make_clients()
    result = run_request(clients.ec2, request, max_workers=config.max_workers)
    if isinstance(result, Ignored):
        logger.info(
            "instance event ignored",
            extra={"instance_id": result.instance_id, "reason": result.reason},
        )
        return {"status": "ignored", "instance_id": result.instance_id, "reason": result.reason}
    message_id = publish_report(clients.sns, config.topic_arn, result)
    record_metrics(result)
    logger.info(
        "run finished",
        extra={
            "status": result.status.value,
            "summary": result.summary.model_dump(),
            "message_id": message_id,
        },
    )
    return result.model_dump(mode="json")
