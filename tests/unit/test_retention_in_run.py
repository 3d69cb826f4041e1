"""Retention wired into a run: after an instance's new set starts, its old sets beyond the
policy's retention are deleted and the report lists them."""

from __future__ import annotations

from datetime import timedelta

from moto.ec2.models import ec2_backends

from localaws.fleet import MOTO_ACCOUNT, launch_instance, snapshots_by_volume
from snapset.handler import handler
from tests.unit.conftest import COMPLETER, Aws, LambdaContext


def age_all_snapshots(days: int) -> None:
    """Runs a day apart: move every existing snapshot's StartTime back."""
    for snap in ec2_backends[MOTO_ACCOUNT]["us-east-1"].snapshots.values():
        snap.start_time -= timedelta(days=days)


def test_each_run_keeps_the_newest_completed_sets_and_reports_deletions(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "x"})
    payload = {"policy": "p", "instance_ids": [inst.instance_id], "retention": {"count": 1}}
    reports = []
    for n in range(4):
        reports.append(handler({**payload, "request_id": f"run-{n}"}, context))
        COMPLETER.complete_all()  # sets complete between runs
        age_all_snapshots(1)
    ids = [r["instances"][0]["snapshots"][0]["snapshot_id"] for r in reports]
    remaining = {s["SnapshotId"] for s in snapshots_by_volume(aws.ec2)[inst.root_volume_id]}
    # run-3's set (this run's) and run-2's (the newest completed before it) remain
    assert remaining == {ids[2], ids[3]}
    assert reports[0]["instances"][0]["retention"]["deleted"] == []
    assert reports[2]["instances"][0]["retention"]["deleted"] == [ids[0]]
    assert reports[3]["instances"][0]["retention"]["deleted"] == [ids[1]]
    assert reports[3]["instances"][0]["retention"]["errors"] == []


def test_policy_without_retention_reports_null(aws: Aws, context: LambdaContext) -> None:
    inst = launch_instance(aws.ec2)
    report = handler({"policy": "p", "instance_ids": [inst.instance_id]}, context)
    assert report["instances"][0]["retention"] is None
