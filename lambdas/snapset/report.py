"""The run report: a public contract that subscribers parse, and its SNS publication."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from snapset.errors import INVALID_INPUT
from snapset.notify import MAX_SUBJECT_LEN, publish
from snapset.outcomes import Consistency, ErrorInfo, InstanceOutcome, InstanceStatus
from snapset.policy import Trigger, TriggerType

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

SCHEMA_VERSION = 1
# SNS accepts 256 KiB for the message and its attributes together; keep room for the attributes.
MAX_MESSAGE_BYTES = 256 * 1024 - 6 * 1024
MAX_ERROR_MESSAGE_LEN = 1000
# Lambda's limit on a synchronous invocation's response, less room for the JSON's own growth.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 - 64 * 1024


class ReportStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    DRY_RUN = "dry_run"


class TriggerInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: TriggerType
    id: str
    time: datetime

    @classmethod
    def of(cls, trigger: Trigger) -> TriggerInfo:
        return cls(type=trigger.type, id=trigger.id, time=trigger.time)


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)

    instances: int
    started: int
    dry_run_ok: int
    skipped: int
    failed: int
    snapshots: int
    # Retention's phase: snapshots deleted (or that a dry run would delete), and the sets it
    # had no time or share of the DeleteSnapshot rate left for (the next run deletes them).
    retention_deleted: int = 0
    retention_remaining: int = 0
    # The consistency of the sets started (or, in a dry run, that would be), and the
    # instances where a pre or post script did not succeed.
    application_consistent: int = 0
    crash_consistent: int = 0
    script_failures: int = 0
    post_script_failures: int = 0


class S3Location(BaseModel):
    """Where the run's full report is kept (every instance, never trimmed)."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str


class RunReport(BaseModel):
    """What one run did, instance by instance. Field names are the published contract."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["run"] = "run"
    policy: str
    trigger: TriggerInfo
    dry_run: bool
    status: ReportStatus
    summary: Summary
    instances: tuple[InstanceOutcome, ...]
    error: ErrorInfo | None = None
    trimmed: int = 0
    # Set on the published message: where the full report is (None when it could not be
    # stored, and then `full_report_error` says why).
    full_report: S3Location | None = None
    full_report_error: str | None = None
    # A run handed off to the fan-out state machine: its execution (None for an inline run).
    execution_arn: str | None = None

    @property
    def failures(self) -> tuple[InstanceOutcome, ...]:
        return tuple(i for i in self.instances if i.status is InstanceStatus.FAILED)

    @property
    def script_failures(self) -> tuple[InstanceOutcome, ...]:
        """Instances whose pre or post script did not succeed, failed or not (a post script
        that failed may have left the instance frozen: it is never trimmed from a message)."""
        return tuple(i for i in self.instances if i.script_failed)


def summarize(outcomes: tuple[InstanceOutcome, ...]) -> Summary:
    counts = Counter(o.status for o in outcomes)
    consistency = Counter(o.consistency for o in outcomes)
    return Summary(
        instances=len(outcomes),
        started=counts[InstanceStatus.STARTED],
        dry_run_ok=counts[InstanceStatus.DRY_RUN_OK],
        skipped=counts[InstanceStatus.SKIPPED],
        failed=counts[InstanceStatus.FAILED],
        snapshots=sum(len(o.snapshots) for o in outcomes),
        retention_deleted=sum(len(o.retention.deleted) for o in outcomes if o.retention),
        retention_remaining=sum(o.retention.remaining for o in outcomes if o.retention),
        application_consistent=consistency[Consistency.APPLICATION],
        crash_consistent=consistency[Consistency.CRASH],
        script_failures=sum(1 for o in outcomes if o.script_failed),
        post_script_failures=sum(1 for o in outcomes if o.post_script_failed),
    )


def overall_status(summary: Summary, dry_run: bool) -> ReportStatus:
    """No failure: succeeded (or dry_run); some, or a script that did not succeed on an
    instance that has its set: partial; nothing but failures: failed."""
    if summary.failed == 0 and summary.script_failures == 0:
        return ReportStatus.DRY_RUN if dry_run else ReportStatus.SUCCEEDED
    if summary.started + summary.dry_run_ok > 0:
        return ReportStatus.PARTIAL
    return ReportStatus.FAILED


def build_report(
    policy: str, trigger: Trigger, dry_run: bool, outcomes: list[InstanceOutcome]
) -> RunReport:
    """Assemble the report of a run from its per-instance outcomes, in instance order."""
    ordered = tuple(sorted(outcomes, key=lambda o: o.instance_id))
    summary = summarize(ordered)
    return RunReport(
        policy=policy,
        trigger=TriggerInfo.of(trigger),
        dry_run=dry_run,
        status=overall_status(summary, dry_run),
        summary=summary,
        instances=ordered,
    )


def invalid_input_report(policy: str, trigger: Trigger, message: str) -> RunReport:
    """A failure report for input that names its policy but cannot run."""
    summary = summarize(())
    return RunReport(
        policy=policy,
        trigger=TriggerInfo.of(trigger),
        dry_run=False,
        status=ReportStatus.FAILED,
        summary=summary,
        instances=(),
        error=ErrorInfo(code=INVALID_INPUT, message=message[:MAX_ERROR_MESSAGE_LEN]),
    )


def subject(report: RunReport) -> str:
    """A readable SNS subject of at most 100 characters: policy, status and counts."""
    s = report.summary
    if report.error is not None and report.error.code == INVALID_INPUT:
        text = f"Snapset {report.policy}: failed, invalid input"
    elif report.error is not None:
        text = f"Snapset {report.policy}: failed - {report.error.code}"
    elif report.dry_run:
        text = (
            f"Snapset {report.policy}: {report.status} - {s.dry_run_ok} would snapshot, "
            f"{s.skipped} skipped, {s.failed} failed of {s.instances}"
        )
    else:
        text = (
            f"Snapset {report.policy}: {report.status} - {s.started} started, "
            f"{s.skipped} skipped, {s.failed} failed of {s.instances}"
        )
    if s.script_failures:
        text += f", {s.script_failures} script failures"
    return text[:MAX_SUBJECT_LEN]


def _clip(outcome: InstanceOutcome) -> InstanceOutcome:
    if outcome.error is None or len(outcome.error.message) <= MAX_ERROR_MESSAGE_LEN:
        return outcome
    clipped = outcome.error.model_copy(
        update={"message": outcome.error.message[: MAX_ERROR_MESSAGE_LEN - 3] + "..."}
    )
    return outcome.model_copy(update={"error": clipped})


def _dump(report: RunReport) -> str:
    return json.dumps(report.model_dump(mode="json"), separators=(",", ":"))


def fit_message(report: RunReport, limit: int = MAX_MESSAGE_BYTES) -> tuple[RunReport, str]:
    """Serialize the report within SNS's size limit.

    Over the limit, successes are trimmed (started last) while the summary and every failure
    stay; `trimmed` says how many entries were left out.
    """
    report = report.model_copy(update={"instances": tuple(_clip(o) for o in report.instances)})
    message = _dump(report)
    if len(message.encode()) <= limit:
        return report, message
    drop_order = {
        InstanceStatus.SKIPPED: 0,
        InstanceStatus.DRY_RUN_OK: 1,
        InstanceStatus.STARTED: 2,
    }
    candidates = sorted(
        (o for o in report.instances if o.status in drop_order and not o.script_failed),
        key=lambda o: drop_order[o.status],
    )
    sizes = {id(o): len(_dump_outcome(o)) + 1 for o in report.instances}
    excess = len(message.encode()) - limit + 64  # room for the "trimmed" count to grow
    dropped: set[int] = set()
    for outcome in candidates:
        if excess <= 0:
            break
        dropped.add(id(outcome))
        excess -= sizes[id(outcome)]
    kept = tuple(o for o in report.instances if id(o) not in dropped)
    if excess > 0:
        # Failures alone exceed the limit: keep as many as fit rather than publish nothing.
        failures = [o for o in kept if o.status is InstanceStatus.FAILED or o.script_failed]
        while failures and excess > 0:
            last = failures.pop()
            dropped.add(id(last))
            excess -= sizes[id(last)]
        kept = tuple(o for o in report.instances if id(o) not in dropped)
    trimmed = report.model_copy(update={"instances": kept, "trimmed": len(dropped)})
    return trimmed, _dump(trimmed)


def _dump_outcome(outcome: InstanceOutcome) -> bytes:
    return json.dumps(outcome.model_dump(mode="json"), separators=(",", ":")).encode()


def message_attributes(report: RunReport) -> dict[str, str]:
    """Attributes for subscription filter policies."""
    return {
        "status": report.status.value,
        "policy": report.policy,
        "trigger": report.trigger.type.value,
        "kind": report.kind,
    }


def publish_report(sns: SNSClient, topic_arn: str, report: RunReport) -> str:
    """Publish the report, fitted to SNS's size limit, and return the message id (see
    `notify.publish`: a failed publish raises)."""
    fitted, message = fit_message(report)
    return publish(
        sns,
        topic_arn,
        subject=subject(fitted),
        message=message,
        attributes=message_attributes(fitted),
    )
