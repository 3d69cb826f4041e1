"""Retention through the deployed stack: a schedule's run deletes exactly the sets its deployed
policy lets go, reports them, and deletes nothing when a protection check cannot be made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from e2e_support import (
    ACCOUNT,
    SCHEDULED_TAGS,
    STOP_TAGS,
    Fleet,
    ids_of,
    nightly_history,
    snapshots_of,
    unique_time,
)

from localaws import ErrorFault, FaultRule, LocalAws
from localaws.report_inbox import ReportInbox
from localaws.router import Router, instance_state_change_event

pytestmark = pytest.mark.e2e


def only_instance(report: dict[str, Any]) -> dict[str, Any]:
    [outcome] = report["instances"]
    return outcome


def test_a_schedule_deletes_exactly_the_sets_beyond_count_and_reports_them(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    app = fleet.launch(SCHEDULED_TAGS, data=[{"Disk": "data"}, {"Disk": "logs"}])
    # nightly-app keeps 7 sets: eight older ones (each run's retention finds at most 7 before
    # it), so this run finds the oldest beyond the count
    history = nightly_history(local_aws, router, ec2, days=[8, 7, 6, 5, 4, 3, 2, 1])
    assert all(ids_of(ec2, trigger_id) == ids for trigger_id, ids in history)
    inbox.drain()

    report = router.fire_schedule(policy="nightly-app", scheduled_time=unique_time()).unwrap()

    outcome = only_instance(report)
    assert outcome["instance_id"] == app.instance_id
    assert outcome["status"] == "started"
    oldest_trigger, doomed = history[0]
    retention = outcome["retention"]
    assert set(retention["deleted"]) == doomed
    assert len(retention["deleted"]) == 2  # one set of two data volumes (boot excluded)
    assert (retention["kept"], retention["errors"], retention["dry_run"]) == (7, [], False)
    assert ids_of(ec2, oldest_trigger) == set()
    for trigger_id, snapshot_ids in history[1:]:
        assert ids_of(ec2, trigger_id) == snapshot_ids, trigger_id
    (published,) = inbox.drain()
    assert only_instance(published.message)["retention"] == outcome["retention"]


def test_with_describe_images_failing_nothing_is_deleted_and_the_report_says_why(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    fleet.launch(SCHEDULED_TAGS, data=[{"Disk": "data"}])
    history = nightly_history(local_aws, router, ec2, days=[8, 7, 6, 5, 4, 3, 2, 1])
    before = set().union(*(ids for _, ids in history))
    denied = ErrorFault(probability=1.0, code="UnauthorizedOperation", status=403)
    local_aws.set_faults(FaultRule("ec2:DescribeImages", error=denied))
    try:
        report = router.fire_schedule(policy="nightly-app", scheduled_time=unique_time()).unwrap()
    finally:
        local_aws.clear_faults()

    retention = only_instance(report)["retention"]
    assert retention["deleted"] == []
    [error] = retention["errors"]
    assert error["code"] == "UnauthorizedOperation"
    assert error["message"].startswith("DescribeImages failed, kept 1 set(s) unchecked")
    assert all(ids_of(ec2, trigger_id) == ids for trigger_id, ids in history)
    assert before <= {s["SnapshotId"] for s in snapshots_of(ec2)}


def test_an_instance_event_deletes_the_sets_older_than_max_age_days(
    local_aws: LocalAws, router: Router, fleet: Fleet, ec2: Any
) -> None:
    inst = fleet.launch(STOP_TAGS)
    ec2.stop_instances(InstanceIds=[inst.instance_id])
    trigger_ids = []
    for age in (45, 40, 10):  # on-stop keeps 30 days
        event = instance_state_change_event(
            inst.instance_id, "stopped", account=ACCOUNT, region=local_aws.region
        )
        [invocation] = router.route_event(event)
        invocation.unwrap()
        local_aws.complete_snapshots()
        local_aws.set_snapshot_start_times(
            sorted(ids_of(ec2, event["id"])), datetime.now(UTC) - timedelta(days=age)
        )
        trigger_ids.append(event["id"])
    event = instance_state_change_event(
        inst.instance_id, "stopped", account=ACCOUNT, region=local_aws.region
    )
    [invocation] = router.route_event(event)

    retention = only_instance(invocation.unwrap())["retention"]

    assert (retention["kept"], retention["errors"]) == (1, [])
    gone = set(retention["deleted"])
    assert gone
    assert gone.isdisjoint(ids_of(ec2, trigger_ids[2]))
    assert ids_of(ec2, trigger_ids[0]) == ids_of(ec2, trigger_ids[1]) == set()
    assert ids_of(ec2, trigger_ids[2])  # 10 days old: kept
