"""Retention as the run's own phase: one listing per 200 instances, protection checks batched
across the run and attributed to the instance they concern, paced deletions with what is left
for the next run counted, and creation never waiting on deletion."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from localaws.fleet import FleetInstance
from snapset import retention
from snapset.deadline import Deadline
from snapset.outcomes import InstanceOutcome, InstanceStatus
from snapset.pacing import Pacer
from snapset.policy import SnapshotPolicy
from snapset.retention import retain_sets, with_retention_all
from tests.retention.conftest import NOW, REGION, Aws, logged

CURRENT = "run-now"


def policy(**retention: int) -> SnapshotPolicy:
    return SnapshotPolicy.model_validate(
        {"policy": "nightly", "target_tags": {"Backup": ["x"]}, "retention": retention}
    )


def history(aws: Aws, inst: FleetInstance, days: range) -> dict[int, list[str]]:
    sets = {d: aws.snapshot_set(inst, "nightly", f"nightly-d{d}", days_ago=d) for d in days}
    sets[0] = aws.snapshot_set(inst, "nightly", CURRENT, days_ago=0, states=["pending"] * 2)
    return sets


@contextlib.contextmanager
def counting(ec2: Any) -> Iterator[Counter[str]]:
    """Operation names of every call `ec2` makes meanwhile (paginator pages included)."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    ec2.meta.events.register("before-call.ec2", count)
    try:
        yield calls
    finally:
        ec2.meta.events.unregister("before-call.ec2", count)


def test_calls_grow_with_candidates_not_with_instances(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    sets = {i.instance_id: history(aws, i, range(1, 4)) for i in instances}  # keep 1: d2, d3 go
    ids = [i.instance_id for i in instances]
    with counting(aws.ec2) as calls:
        results = retain_sets(aws.ec2, policy(count=1), ids, CURRENT, NOW)
    for iid, history_ in sets.items():
        assert set(results[iid].deleted) == set(history_[2] + history_[3])
        assert (results[iid].kept, results[iid].remaining, results[iid].errors) == (1, 0, ())
    doomed = 3 * 2 * 2  # instances x sets x volumes
    assert calls == {
        "DescribeSnapshots": 1,  # one listing for the three instances
        "DescribeLockedSnapshots": 1,  # one batch for every candidate of the run
        "DescribeImages": 1,
        "DescribeSnapshotAttribute": doomed,  # EC2 answers sharing per snapshot only
        "DeleteSnapshot": doomed,
    }


def test_one_listing_per_200_instances() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    ids = [f"i-{n:017x}" for n in range(201)]
    with Stubber(ec2) as stub:
        for chunk in (ids[:200], ids[200:]):
            stub.add_response(
                "describe_snapshots",
                {"Snapshots": []},
                {
                    "OwnerIds": ["self"],
                    "Filters": [
                        {"Name": "tag:snapset:policy", "Values": ["nightly"]},
                        {"Name": "tag:snapset:instance-id", "Values": chunk},
                    ],
                    "MaxResults": 1000,
                },
            )
        results = retain_sets(ec2, policy(count=1), ids, CURRENT, NOW)
        stub.assert_no_pending_responses()
    assert set(results) == set(ids)
    assert all(r.deleted == () and r.errors == () for r in results.values())


def test_a_failed_sharing_check_keeps_only_its_own_set_of_its_own_instance(
    aws: Aws, instances: list[FleetInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = instances[:2]
    sets_a, sets_b = history(aws, a, range(1, 3)), history(aws, b, range(1, 3))
    refused = sets_a[2][0]
    real = aws.ec2.describe_snapshot_attribute

    def attribute(**kwargs: Any) -> Any:
        if kwargs["SnapshotId"] == refused:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "Describe")
        return real(**kwargs)

    monkeypatch.setattr(aws.ec2, "describe_snapshot_attribute", attribute)
    results = retain_sets(aws.ec2, policy(count=1), [a.instance_id, b.instance_id], CURRENT, NOW)
    assert results[a.instance_id].deleted == ()
    [error] = results[a.instance_id].errors
    assert (error.snapshot_id, error.code) == (refused, "InternalError")
    assert set(results[b.instance_id].deleted) == set(sets_b[2])
    assert results[b.instance_id].errors == ()
    assert set(sets_a[2]) <= aws.existing()


def test_a_failed_batch_check_keeps_every_instances_sets_and_each_says_why(
    aws: Aws, instances: list[FleetInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    for inst in instances:
        history(aws, inst, range(1, 3))
    before = aws.existing()

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "D")

    monkeypatch.setattr(aws.ec2, "describe_locked_snapshots", refuse)
    ids = [i.instance_id for i in instances]
    results = retain_sets(aws.ec2, policy(count=1), ids, CURRENT, NOW)
    for iid in ids:
        assert results[iid].deleted == ()
        [error] = results[iid].errors
        assert error.code == "UnauthorizedOperation"
        assert error.message.startswith("DescribeLockedSnapshots failed, kept 3 set(s)")
    assert aws.existing() == before


def test_what_the_pace_leaves_is_counted_and_the_next_run_deletes_it(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    sets = {i.instance_id: history(aws, i, range(1, 4)) for i in instances}  # 2 sets each go
    ids = [i.instance_id for i in instances]
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    # 4 tokens, then one a second; 3.5 s left: the first instance's two sets (4 snapshots) at
    # once, the second's first set after 2 s, then the rest would end past the deadline
    pacer = Pacer(1.0, 4, clock=lambda: now[0], sleep=sleep)
    deadline = Deadline(at=3.5, clock=lambda: now[0])
    first = retain_sets(aws.ec2, policy(count=1), ids, CURRENT, NOW, deadline=deadline, pacer=pacer)
    assert [len(first[iid].deleted) for iid in ids] == [4, 2, 0]
    assert [first[iid].remaining for iid in ids] == [0, 1, 2]
    assert [[e.code for e in first[iid].errors] for iid in ids] == [[], ["Timeout"], ["Timeout"]]
    second = retain_sets(aws.ec2, policy(count=1), ids, CURRENT, NOW)
    assert [second[iid].remaining for iid in ids] == [0, 0, 0]
    gone = set(first[ids[0]].deleted + first[ids[1]].deleted)
    gone |= {sid for iid in ids for sid in second[iid].deleted}
    assert gone == {sid for h in sets.values() for d in (2, 3) for sid in h[d]}


def test_the_phase_paces_its_deletions_and_stops_at_its_deadline(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    """The run's phase hands its pacer and deadline to `retain_sets`: with the pace of the
    test above, the same sets go and the same are left."""
    for inst in instances:
        history(aws, inst, range(1, 4))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    pacer = Pacer(1.0, 4, clock=lambda: now[0], sleep=sleep)
    deadline = Deadline(at=3.5, clock=lambda: now[0])
    outcomes = [
        InstanceOutcome(instance_id=i.instance_id, status=InstanceStatus.STARTED) for i in instances
    ]
    after = with_retention_all(
        aws.ec2, policy(count=1), outcomes, CURRENT, NOW, deadline=deadline, pacer=pacer
    )
    results = [o.retention for o in after]
    assert [len(r.deleted) for r in results if r] == [4, 2, 0]
    assert [r.remaining for r in results if r] == [0, 1, 2]


def test_the_phase_fills_in_only_the_outcomes_retention_applies_to(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a, b = instances[:2]
    history(aws, a, range(1, 3))
    history(aws, b, range(1, 3))
    outcomes = [
        InstanceOutcome(instance_id=a.instance_id, status=InstanceStatus.STARTED),
        InstanceOutcome.failed(b.instance_id, "IncorrectState", "stopping"),
    ]
    after = with_retention_all(aws.ec2, policy(count=1), outcomes, CURRENT, NOW)
    assert after[0].retention is not None
    assert len(after[0].retention.deleted) == 2
    assert after[1] is outcomes[1]  # a failed instance's old sets are not touched


def test_nothing_to_retain_makes_no_call(aws: Aws) -> None:
    outcome = InstanceOutcome.skipped("i-0123456789abcdef0", "all excluded")
    with counting(aws.ec2) as calls:
        assert with_retention_all(aws.ec2, policy(count=1), [outcome], CURRENT, NOW) == [outcome]
        assert retain_sets(aws.ec2, policy(count=1), [], CURRENT, NOW) == {}
    assert calls == {}


@pytest.mark.parametrize(
    ("count", "named"),
    [
        (1, "i-00000000000000000"),
        (3, "i-00000000000000000, i-00000000000000001, i-00000000000000002"),
        (4, "i-00000000000000000, i-00000000000000001, i-00000000000000002 and 1 more"),
        (5, "i-00000000000000000, i-00000000000000001, i-00000000000000002 and 2 more"),
    ],
)
def test_a_failed_listing_keeps_everything_and_the_log_names_the_instances(
    count: int, named: str, retention_log: list[logging.LogRecord]
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    ids = [f"i-{n:017x}" for n in range(count)]
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_snapshots", "UnauthorizedOperation", "no listing")
        results = retain_sets(ec2, policy(count=1), ids, CURRENT, NOW)
    for iid in ids:
        [error] = results[iid].errors
        assert (error.code, error.snapshot_id) == ("UnauthorizedOperation", None)
        assert error.message == f"{iid}: listing snapshots: no listing"
        assert results[iid].deleted == ()
    [(level, message)] = logged(retention_log)
    assert level == "WARNING"
    assert message.startswith(f"retention for {named} failed: ClientError(")


def test_a_dry_run_with_nothing_to_delete_says_it_was_a_dry_run(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    history(aws, a, range(1, 2))  # one older set: nothing to delete with count 1
    dry = SnapshotPolicy.model_validate(
        {
            "policy": "nightly",
            "target_tags": {"Backup": ["x"]},
            "retention": {"count": 1},
            "dry_run": True,
        }
    )
    [result] = retain_sets(aws.ec2, dry, [a.instance_id], CURRENT, NOW).values()
    assert (result.deleted, result.kept, result.dry_run) == ((), 1, True)


def test_a_bug_while_deleting_one_instances_sets_spares_the_others(
    aws: Aws,
    instances: list[FleetInstance],
    monkeypatch: pytest.MonkeyPatch,
    retention_log: list[logging.LogRecord],
) -> None:
    a, b = instances[:2]
    sets_a = history(aws, a, range(1, 3))
    sets_b = history(aws, b, range(1, 3))
    real = retention._delete

    def buggy(ec2: Any, doomed: Any, *args: Any) -> Any:
        if doomed and set(doomed[0].snapshot_ids) == set(sets_a[2]):
            raise KeyError("a bug")
        return real(ec2, doomed, *args)

    monkeypatch.setattr(retention, "_delete", buggy)
    results = retain_sets(aws.ec2, policy(count=1), [a.instance_id, b.instance_id], CURRENT, NOW)
    [error] = results[a.instance_id].errors
    assert (error.code, error.message) == ("UnexpectedError", f"{a.instance_id}: KeyError('a bug')")
    assert (results[a.instance_id].deleted, results[a.instance_id].dry_run) == ((), False)
    assert set(results[b.instance_id].deleted) == set(sets_b[2])
    bugs = [(level, text) for level, text in logged(retention_log) if level == "ERROR"]
    assert bugs == [("ERROR", f"unexpected error in retention for {a.instance_id}")]


def test_a_bug_in_a_dry_runs_final_selection_is_reported_as_a_dry_run(
    aws: Aws, instances: list[FleetInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = instances[0]
    history(aws, a, range(1, 3))
    before = aws.existing()
    real = retention.select_sets_to_delete

    def buggy(*args: Any) -> Any:
        if len(args) == 5:  # the selection that weighs the protections
            raise KeyError("a bug")
        return real(*args)

    monkeypatch.setattr(retention, "select_sets_to_delete", buggy)
    dry = SnapshotPolicy.model_validate(
        {
            "policy": "nightly",
            "target_tags": {"Backup": ["x"]},
            "retention": {"count": 1},
            "dry_run": True,
        }
    )
    [result] = retain_sets(aws.ec2, dry, [a.instance_id], CURRENT, NOW).values()
    assert [e.code for e in result.errors] == ["UnexpectedError"]
    assert (result.deleted, result.dry_run) == ((), True)
    assert aws.existing() == before


def test_a_listed_snapshot_of_another_instance_is_ignored() -> None:
    """EC2's filter returns only the listed instances' snapshots; should it return another
    (or one without the tag), it is left out, and the run's retention goes on."""
    ec2 = boto3.client("ec2", region_name=REGION)
    mine = "i-0123456789abcdef0"
    foreign = {
        "SnapshotId": "snap-0000000000000000f",
        "State": "completed",
        "StartTime": NOW,
        "OwnerId": "123456789012",
        "Tags": [
            {"Key": "snapset:policy", "Value": "nightly"},
            {"Key": "snapset:instance-id", "Value": "i-0fedcba9876543210"},
            {"Key": "snapset:trigger-id", "Value": "old"},
        ],
    }
    untagged = {**foreign, "SnapshotId": "snap-0000000000000000e", "Tags": foreign["Tags"][:1]}
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", {"Snapshots": [foreign, untagged]})
        results = retain_sets(ec2, policy(count=1), [mine], CURRENT, NOW)
        stub.assert_no_pending_responses()
    assert results[mine].errors == ()
    assert (results[mine].deleted, results[mine].kept) == ((), 0)


def test_a_failed_listing_in_a_dry_run_is_reported_as_a_dry_run() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    dry = SnapshotPolicy.model_validate(
        {
            "policy": "nightly",
            "target_tags": {"Backup": ["x"]},
            "retention": {"count": 1},
            "dry_run": True,
        }
    )
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_snapshots", "UnauthorizedOperation", "no listing")
        [result] = retain_sets(ec2, dry, ["i-0123456789abcdef0"], CURRENT, NOW).values()
    assert [e.code for e in result.errors] == ["UnauthorizedOperation"]
    assert result.dry_run is True


def test_a_bug_while_planning_a_dry_run_is_reported_as_a_dry_run(
    aws: Aws, instances: list[FleetInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = instances[0]
    history(aws, a, range(1, 3))

    def buggy(*_: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(retention, "managed_sets", buggy)
    dry = SnapshotPolicy.model_validate(
        {
            "policy": "nightly",
            "target_tags": {"Backup": ["x"]},
            "retention": {"count": 1},
            "dry_run": True,
        }
    )
    [result] = retain_sets(aws.ec2, dry, [a.instance_id], CURRENT, NOW).values()
    assert [e.code for e in result.errors] == ["UnexpectedError"]
    assert result.dry_run is True
