"""Copies to other regions and shares through the deployed stack: a completed set is shared and
copied to the policy's regions by its completion event, the deployed copy sweep reports the set
once every copy completed, EBS's concurrent-copy quota makes copies wait instead of fail, a
redelivered event copies nothing twice, and each destination's retention deletes only the
copies it should. The function runs with its deployed role under the local AWS's IAM."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from e2e_support import ACCOUNT, Fleet, snapshots_of, tags_of, unique_time

from localaws import LocalAws
from localaws.report_inbox import Report, ReportInbox
from localaws.router import Router

pytestmark = pytest.mark.e2e

POLICY = "dr-nightly"  # cdk.json: copies to us-west-2 (count 3) and eu-west-1, one share
DR_TAGS = {"Backup": "dr"}
SHARED_WITH = "111122223333"
WEST, IRELAND = "us-west-2", "eu-west-1"
HOME = "us-east-1"


@pytest.fixture
def copies(local_aws: LocalAws, router: Router, inbox: ReportInbox) -> Iterator[LocalAws]:
    """Copies complete only when a test says so; nothing is left pending for the next test."""
    local_aws.set_copies(delay_seconds=None, concurrent_limit=20)
    local_aws.complete_copies()
    yield local_aws
    local_aws.complete_copies()
    sweep(router)
    local_aws.set_copies(concurrent_limit=20)
    inbox.drain()


def sweep(router: Router) -> dict[str, Any]:
    """Fire the deployed copy sweep schedule."""
    [schedule] = [s for s in router.schedules() if '"copy_sweep"' in s["Target"].get("Input", "")]
    assert schedule["ScheduleExpression"] == "rate(5 minutes)"
    result: dict[str, Any] = router.fire_schedule(name=schedule["Name"]).unwrap()
    return result


def in_region(local_aws: LocalAws, region: str) -> Any:
    return local_aws.client("ec2", region_name=region)


def copies_of(ec2: Any, source_ids: set[str]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"],
        Filters=[{"Name": "tag:snapset:copy-of", "Values": sorted(source_ids)}],
    )
    return [s for page in pages for s in page["Snapshots"]]


def night(local_aws: LocalAws, router: Router, fleet_ids: list[str]) -> tuple[str, set[str], Any]:
    """Fire the policy's schedule and complete its sets: the trigger, the snapshots, and the
    completion event's invocation."""
    when = unique_time()
    report = router.fire_schedule(policy=POLICY, scheduled_time=when).unwrap()
    assert report["summary"]["started"] == len(fleet_ids)
    trigger_id = report["trigger"]["id"]
    ec2 = in_region(local_aws, HOME)
    ids = {s["SnapshotId"] for s in snapshots_of(ec2, trigger_id)}
    assert {tags_of(s)["snapset:copies"] for s in snapshots_of(ec2, trigger_id)} == {"pending"}
    local_aws.complete_snapshots()
    invocations = [i for i in router.route_emitted_events() if "CompletionRule" in i.source]
    return trigger_id, ids, invocations


def copy_reports(inbox: ReportInbox) -> list[Report]:
    return [r for r in inbox.drain() if r.kind == "copy"]


def test_a_completed_set_is_shared_copied_to_each_region_and_reported_once(
    copies: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    app = fleet.launch(DR_TAGS, data=[{"Disk": "a"}])
    trigger_id, sources, [event] = night(copies, router, [app.instance_id])

    result = event.unwrap()
    [completion] = result["reports"]
    assert completion["shares"]["accounts"] == [SHARED_WITH]
    assert sorted(completion["shares"]["shared"]) == sorted(sources)
    for sid in sources:
        permissions = ec2.describe_snapshot_attribute(
            SnapshotId=sid, Attribute="createVolumePermission"
        )["CreateVolumePermissions"]
        assert permissions == [{"UserId": SHARED_WITH}]
    west, ireland = in_region(copies, WEST), in_region(copies, IRELAND)
    for region in (west, ireland):
        made = copies_of(region, sources)
        assert {s["State"] for s in made} == {"pending"}
        assert {tags_of(s)["snapset:copy-of"] for s in made} == sources
        assert {tags_of(s)["snapset:copy-trigger-id"] for s in made} == {trigger_id}
        assert {tags_of(s)["snapset:copy-source-region"] for s in made} == {HOME}
        assert all(HOME in s["Description"] for s in made)

    # a redelivered completion event shares again (harmless) and copies nothing twice
    [again] = router.route_event(event.payload)
    again.unwrap()
    assert len(copies_of(west, sources)) == len(copies_of(ireland, sources)) == len(sources)

    # copies in flight: the sweep reports nothing yet
    assert sweep(router)["reported"] == 0
    assert copy_reports(inbox) == []

    copies.complete_copies()
    summary = sweep(router)
    assert summary["reported"] == 1
    [report] = copy_reports(inbox)
    assert (report.status, report.attributes["policy"]) == ("succeeded", POLICY)
    message = report.message
    assert (message["kind"], message["instance_id"]) == ("copy", app.instance_id)
    assert message["trigger"] == {"id": trigger_id}
    assert sorted(r["region"] for r in message["regions"]) == sorted([WEST, IRELAND])
    for region in message["regions"]:
        assert region["status"] == "completed"
        assert {c["source_snapshot_id"] for c in region["copies"]} == sources
        assert {c["state"] for c in region["copies"]} == {"completed"}
    assert {tags_of(s)["snapset:copies"] for s in snapshots_of(ec2, trigger_id)} == {"done"}

    # reported once: the next sweep has nothing left of this set
    assert sweep(router)["reported"] == 0
    assert copy_reports(inbox) == []


def test_the_21st_concurrent_copy_waits_instead_of_failing(
    copies: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    sets = 20  # EBS's quota: 20 copies in flight per destination region
    apps = [fleet.launch(DR_TAGS, data=[]) for _ in range(sets)]  # one root volume each
    # someone else's copy holds one of us-west-2's slots
    foreign = ec2.create_snapshot(VolumeId=apps[0].root_volume_id)["SnapshotId"]
    copies.complete_snapshots()
    west = in_region(copies, WEST)
    west.copy_snapshot(SourceRegion=HOME, SourceSnapshotId=foreign)

    _, sources, events = night(copies, router, [a.instance_id for a in apps])
    assert len(events) == sets  # one completion event per set
    for event in events:
        event.unwrap()

    # us-west-2 took 19 of Snapset's copies beside the foreign one: EBS refused the 21st
    # (ResourceLimitExceeded), and it waits; eu-west-1 took all 20
    assert len(copies_of(west, sources)) == sets - 1
    assert len(copies_of(in_region(copies, IRELAND), sources)) == sets
    summary = sweep(router)
    assert summary["queued"] == {WEST: 1}
    assert summary["started"] == {}
    assert copy_reports(inbox) == []

    copies.complete_copies()  # the slots free; the waiting copy starts
    summary = sweep(router)
    assert summary["started"] == {WEST: 1}
    assert summary["reported"] == sets - 1
    assert len(copies_of(west, sources)) == sets
    copies.complete_copies()
    assert sweep(router)["reported"] == 1
    reports = copy_reports(inbox)
    assert len(reports) == sets
    assert {r.status for r in reports} == {"succeeded"}
    assert sorted(r.message["instance_id"] for r in reports) == sorted(a.instance_id for a in apps)


def test_destination_retention_deletes_an_expired_copy_set_and_nothing_else(
    copies: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    app = fleet.launch(DR_TAGS, data=[])
    west = in_region(copies, WEST)
    volume = west.create_volume(AvailabilityZone=f"{WEST}a", Size=8)["VolumeId"]

    def snapshot(tags: dict[str, str], days_ago: int) -> str:
        sid: str = west.create_snapshot(
            VolumeId=volume,
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )["SnapshotId"]
        copies.set_snapshot_start_times([sid], datetime.now(UTC) - timedelta(days=days_ago))
        return sid

    def copy_tags(trigger: str, source_region: str = HOME) -> dict[str, str]:
        return {
            "snapset:copy-policy": POLICY,
            "snapset:copy-trigger-id": trigger,
            "snapset:copy-instance-id": app.instance_id,
            "snapset:copy-of": f"snap-{abs(hash(trigger)) % 16**17:017x}",
            "snapset:copy-source-region": source_region,
        }

    older = {days: snapshot(copy_tags(f"old-{days}"), days) for days in (5, 4, 3, 2)}
    elsewhere = snapshot(copy_tags("other-home", source_region="ap-south-1"), 9)
    native = snapshot(
        {
            "snapset:policy": POLICY,
            "snapset:trigger-id": "made-in-us-west-2",
            "snapset:instance-id": app.instance_id,
        },
        9,
    )
    foreign = snapshot({"Name": "not ours"}, 9)
    copies.complete_snapshots()

    _, sources, [event] = night(copies, router, [app.instance_id])
    event.unwrap()
    copies.complete_copies()
    sweep(router)

    [report] = copy_reports(inbox)
    [west_copies] = [r for r in report.message["regions"] if r["region"] == WEST]
    # count 3: the three newest older copy sets stay beside the new one, the oldest goes
    assert west_copies["retention"]["deleted"] == [older[5]]
    assert west_copies["retention"]["kept"] == 3
    left = {s["SnapshotId"] for s in west.describe_snapshots(OwnerIds=[ACCOUNT])["Snapshots"]}
    assert older[5] not in left
    assert {older[4], older[3], older[2], elsewhere, native, foreign} <= left
    assert len(copies_of(west, sources)) == len(sources)
