"""Retention wired into a run: after an instance's new set starts, its old sets beyond the
policy's retention are deleted and the report lists them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from botocore.client import BaseClient
from moto.ec2.models import ec2_backends

from localaws.fleet import MOTO_ACCOUNT, launch_instance, snapshots_by_volume
from snapset.handler import handler
from tests.unit.conftest import COMPLETER, Aws, LambdaContext, deploy_policies


def age_all_snapshots(days: int) -> None:
    """Runs a day apart: move every existing snapshot's StartTime back."""
    for snap in ec2_backends[MOTO_ACCOUNT]["us-east-1"].snapshots.values():
        snap.start_time -= timedelta(days=days)


def test_each_run_keeps_the_newest_completed_sets_and_reports_deletions(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"p": {"count": 1}})
    inst = launch_instance(aws.ec2, tags={"Backup": "x"})
    # A deployed policy's manual run takes the deployed retention; the payload names none.
    payload = {"policy": "p", "instance_ids": [inst.instance_id]}
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


# --- retention comes from the deployed configuration only -----------------------------------


def _history(aws: Aws, context: LambdaContext, policy: str, runs: int) -> tuple[str, list[str]]:
    """`runs` completed sets of `policy` for one instance, a day apart, without retention."""
    inst = launch_instance(aws.ec2)
    ids = []
    for n in range(runs):
        report = handler(
            {"policy": policy, "instance_ids": [inst.instance_id], "request_id": f"h-{n}"}, context
        )
        ids.append(report["instances"][0]["snapshots"][0]["snapshot_id"])
        COMPLETER.complete_all()
        age_all_snapshots(1)
    return inst.instance_id, ids


def _existing(aws: Aws) -> set[str]:
    return {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def test_a_payload_may_not_set_retention_for_a_deployed_policy(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"nightly": {"count": 7}})
    instance_id, ids = _history(aws, context, "nightly", 3)
    aws.messages()
    payload = {"policy": "nightly", "instance_ids": [instance_id], "retention": {"count": 1}}

    report = handler({**payload, "request_id": "sneaky"}, context)

    assert report["status"] == "failed"
    assert report["error"]["code"] == "InvalidInput"
    assert report["error"]["message"].startswith("retention: policy 'nightly' is deployed")
    assert '{"count": 7}' in report["error"]["message"]
    assert set(ids) <= _existing(aws)  # nothing deleted, nothing snapshotted
    assert len(_existing(aws)) == len(ids)
    [published] = aws.messages()
    assert published["MessageAttributes"]["status"]["Value"] == "failed"
    # even the deployed value itself: the field is not the payload's to set
    same = handler({**payload, "retention": {"count": 7}, "request_id": "same"}, context)
    assert same["error"]["code"] == "InvalidInput"


def test_a_new_policy_name_cannot_delete_anything(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"nightly": {"count": 7}})
    instance_id, ids = _history(aws, context, "adhoc", 3)
    payload = {"policy": "adhoc", "instance_ids": [instance_id], "retention": {"count": 1}}

    report = handler({**payload, "request_id": "sneaky"}, context)

    assert report["error"]["code"] == "InvalidInput"
    assert "'adhoc' is not one (deployed: nightly)" in report["error"]["message"]
    assert _existing(aws) == set(ids)


def test_a_deployed_policy_runs_with_its_deployed_retention(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance_id, ids = _history(aws, context, "nightly", 3)
    deploy_policies(monkeypatch, {"nightly": {"count": 1}})

    report = handler({"policy": "nightly", "instance_ids": [instance_id]}, context)

    outcome = report["instances"][0]
    assert outcome["status"] == "started"
    # this run's set and the newest completed one stay; the two older sets go
    assert sorted(outcome["retention"]["deleted"]) == sorted(ids[:2])
    assert _existing(aws) == {ids[2], outcome["snapshots"][0]["snapshot_id"]}


def test_a_schedule_input_must_carry_the_deployed_retention_unchanged(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"nightly": {"count": 7}})
    instance_id, ids = _history(aws, context, "nightly", 2)
    schedule = {"scheduled_time": "2026-11-27T03:30:00Z", "schedule_arn": "arn:aws:scheduler:x"}
    forged = {
        "policy": "nightly",
        "instance_ids": [instance_id],
        "retention": {"count": 1},
        "schedule": schedule,
    }

    report = handler(forged, context)

    assert report["error"]["code"] == "InvalidInput"
    assert report["trigger"]["type"] == "schedule"
    assert _existing(aws) == set(ids)
    genuine = {**forged, "retention": {"count": 7}}
    assert handler(genuine, context)["instances"][0]["status"] == "started"


def test_retention_starts_once_every_set_of_the_run_has_started(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"p": {"count": 1}})
    fleet = [launch_instance(aws.ec2, tags={"Backup": "x"}) for _ in range(4)]
    payload = {"policy": "p", "target_tags": {"Backup": ["x"]}}
    for n in range(2):  # two completed sets per instance, a day apart
        handler({**payload, "request_id": f"old-{n}"}, context)
        COMPLETER.complete_all()
        age_all_snapshots(1)
    calls: list[str] = []
    real = BaseClient._make_api_call

    def record(self: BaseClient, operation: str, params: Any) -> Any:
        calls.append(operation)
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", record)
    report = handler({**payload, "request_id": "now"}, context)
    creates = [n for n, op in enumerate(calls) if op == "CreateSnapshots"]
    deletes = [n for n, op in enumerate(calls) if op == "DeleteSnapshot"]
    assert len(creates) == len(deletes) == len(fleet)  # one set each made, the oldest deleted
    assert max(creates) < min(deletes)  # deletion never delays creation
    # the retention phase lists the fleet's snapshots once, after the last CreateSnapshots
    assert calls[max(creates) :].count("DescribeSnapshots") == 1
    assert report["summary"]["retention_deleted"] == len(fleet)
    assert report["summary"]["retention_remaining"] == 0
