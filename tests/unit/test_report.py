"""The run report: status, subject, SNS size limit and attributes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from snapset.outcomes import InstanceOutcome, InstanceStatus, SnapshotInfo
from snapset.policy import Trigger, TriggerType
from snapset.report import (
    MAX_MESSAGE_BYTES,
    ReportStatus,
    build_report,
    fit_message,
    message_attributes,
    subject,
)

TRIGGER = Trigger(
    type=TriggerType.SCHEDULE,
    id="nightly@2026-11-27T03:00:00Z",
    time=datetime(2026, 11, 27, 3, tzinfo=UTC),
)


def started(n: int, volumes: int = 1) -> InstanceOutcome:
    return InstanceOutcome(
        instance_id=f"i-{n:017x}",
        status=InstanceStatus.STARTED,
        snapshots=tuple(
            SnapshotInfo(
                snapshot_id=f"snap-{n:09x}{v:08x}",
                volume_id=f"vol-{n:09x}{v:08x}",
                state="pending",
                volume_size=8,
                encrypted=True,
            )
            for v in range(volumes)
        ),
    )


def failed(n: int, message_len: int = 50) -> InstanceOutcome:
    return InstanceOutcome.failed(f"i-{n:017x}", "IncorrectState", "x" * message_len)


@pytest.mark.parametrize(
    ("outcomes", "dry_run", "status"),
    [
        ([started(1)], False, ReportStatus.SUCCEEDED),
        ([], False, ReportStatus.SUCCEEDED),
        ([started(1), failed(2)], False, ReportStatus.PARTIAL),
        ([failed(2)], False, ReportStatus.FAILED),
        ([InstanceOutcome.skipped("i-00000001", "x"), failed(2)], False, ReportStatus.FAILED),
        (
            [InstanceOutcome(instance_id="i-00000001", status=InstanceStatus.DRY_RUN_OK)],
            True,
            ReportStatus.DRY_RUN,
        ),
        (
            [
                InstanceOutcome(instance_id="i-00000001", status=InstanceStatus.DRY_RUN_OK),
                failed(2),
            ],
            True,
            ReportStatus.PARTIAL,
        ),
    ],
)
def test_status(outcomes: list[InstanceOutcome], dry_run: bool, status: ReportStatus) -> None:
    assert build_report("nightly", TRIGGER, dry_run, outcomes).status is status


def test_summary_counts_and_instance_order() -> None:
    report = build_report("nightly", TRIGGER, False, [started(3, 2), failed(1), started(2)])
    assert [i.instance_id for i in report.instances] == sorted(
        i.instance_id for i in report.instances
    )
    assert report.summary.model_dump() == {
        "instances": 3,
        "started": 2,
        "dry_run_ok": 0,
        "skipped": 0,
        "failed": 1,
        "snapshots": 3,
        "retention_deleted": 0,
        "retention_remaining": 0,
        "application_consistent": 0,
        "crash_consistent": 0,
        "script_failures": 0,
        "post_script_failures": 0,
    }


def test_subject_is_readable_and_at_most_100_characters() -> None:
    report = build_report("a" * 40, TRIGGER, False, [started(n) for n in range(12345)])
    text = subject(report)
    assert len(text) <= 100
    assert text.startswith("Snapset " + "a" * 40 + ": succeeded")
    small = subject(build_report("nightly", TRIGGER, False, [started(1), failed(2)]))
    assert small == "Snapset nightly: partial - 1 started, 0 skipped, 1 failed of 2"


def test_small_report_is_untouched() -> None:
    report = build_report("nightly", TRIGGER, False, [started(1), failed(2)])
    fitted, message = fit_message(report)
    assert fitted.trimmed == 0
    assert json.loads(message) == report.model_dump(mode="json")


def test_oversize_report_keeps_summary_and_every_failure_and_counts_what_it_trimmed() -> None:
    outcomes = [started(n, volumes=4) for n in range(3000)] + [failed(n) for n in range(3000, 3400)]
    report = build_report("nightly", TRIGGER, False, outcomes)
    _, message = fit_message(report)
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    body = json.loads(message)
    assert body["summary"] == report.summary.model_dump()
    kept_failures = [i for i in body["instances"] if i["status"] == "failed"]
    assert len(kept_failures) == 400
    assert body["trimmed"] == 3400 - len(body["instances"])
    assert body["trimmed"] > 0


def test_long_error_messages_are_clipped_and_failures_alone_too_big_still_fit() -> None:
    report = build_report("nightly", TRIGGER, False, [failed(n, 5000) for n in range(600)])
    fitted, message = fit_message(report)
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert all(len(i.error.message) <= 1000 for i in fitted.instances if i.error)
    assert fitted.trimmed == 600 - len(fitted.instances)


def test_message_attributes_for_filter_policies() -> None:
    report = build_report("nightly", TRIGGER, False, [failed(1)])
    attrs = message_attributes(report)
    assert attrs == {"status": "failed", "policy": "nightly", "trigger": "schedule", "kind": "run"}
