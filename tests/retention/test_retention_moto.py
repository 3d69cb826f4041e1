"""Retention against in-process moto: what is deleted, what survives, and what is reported."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from localaws.fleet import MOTO_ACCOUNT, FleetInstance
from snapset import protections
from snapset.deadline import Deadline
from snapset.outcomes import InstanceOutcome, InstanceStatus, RetentionResult
from snapset.pacing import Pacer
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.retention import apply_retention, retain_sets, with_retention_all
from snapset.snapshots import run_lookups, snapshot_instance
from snapset.targets import describe_instance
from tests.retention.conftest import NOW, REGION, Aws, logged, managed_tags

CURRENT = "run-now"


def policy(name: str = "nightly", dry_run: bool = False, **retention: int) -> SnapshotPolicy:
    return SnapshotPolicy.model_validate(
        {
            "policy": name,
            "instance_ids": ["i-0123456789abcdef0"],
            "retention": retention,
            "dry_run": dry_run,
        }
    )


def history(aws: Aws, inst: FleetInstance, name: str, days: Iterable[int]) -> dict[int, list[str]]:
    """Completed sets `d<n>` started n days ago, plus this run's pending set."""
    sets = {d: aws.snapshot_set(inst, name, f"{name}-d{d}", days_ago=d) for d in days}
    sets[0] = aws.snapshot_set(inst, name, CURRENT, days_ago=0, states=["pending", "pending"])
    return sets


def ids(sets: dict[int, list[str]], days: Iterable[int]) -> set[str]:
    return {sid for d in days for sid in sets[d]}


@pytest.mark.parametrize("aws", [True], indirect=True, ids=["with-public-amis"])
def test_history_across_policies_and_instances_deletes_exactly_the_expired_sets(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a, b, c = instances
    # moto ignores OwnerIds=['self']: other accounts' public AMI snapshots are listed too
    public = {
        s["SnapshotId"]
        for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        if s["OwnerId"] != MOTO_ACCOUNT
    }
    assert public
    nightly_a = history(aws, a, "nightly", range(1, 11))
    nightly_b = history(aws, b, "nightly", range(1, 6))
    weekly_a = {d: aws.snapshot_set(a, "weekly", f"weekly-d{d}", days_ago=d) for d in (7, 14, 21)}
    weekly_c = {d: aws.snapshot_set(c, "weekly", f"weekly-c{d}", days_ago=d) for d in (7, 14)}
    old = 30  # foreign look-alikes, all older than everything above
    vol = a.root_volume_id
    foreign = {
        # only the policy tag (and the instance), no trigger id
        aws.snapshot(
            vol, {"snapset:policy": "nightly", "snapset:instance-id": a.instance_id}, days_ago=old
        ),
        # only the policy tag
        aws.snapshot(vol, {"snapset:policy": "nightly"}, days_ago=old),
        # an empty trigger id
        aws.snapshot(vol, managed_tags("nightly", "", a.instance_id), days_ago=old),
        # another policy whose name starts alike
        aws.snapshot(vol, managed_tags("nightly-db", "x", a.instance_id), days_ago=old),
        # this policy, but tagged for another instance (its volume is a's)
        aws.snapshot(vol, managed_tags("nightly", "y", c.instance_id), days_ago=old),
        # no tags at all
        aws.snapshot(vol, {}, days_ago=old),
        # look-alike keys in another case
        aws.snapshot(
            vol,
            {
                "Snapset:Policy": "nightly",
                "snapset:trigger-id": "z",
                "snapset:instance-id": a.instance_id,
            },
            days_ago=old,
        ),
    }
    before = aws.existing()

    result = apply_retention(aws.ec2, policy(count=3), a.instance_id, CURRENT, NOW)

    expired = ids(nightly_a, range(4, 11))
    assert set(result.deleted) == expired
    assert result.kept == 3
    assert result.errors == ()
    assert not result.dry_run
    assert aws.existing() == before - expired
    # untouched: the current and 3 newest sets, the other instances, the other policy, foreigners
    assert ids(nightly_a, [0, 1, 2, 3]) <= aws.existing()
    assert ids(nightly_b, range(6)) | ids(weekly_a, [7, 14, 21]) | ids(weekly_c, [7, 14]) <= (
        aws.existing()
    )
    assert foreign | public <= aws.existing()

    # the same run again changes nothing
    again = apply_retention(aws.ec2, policy(count=3), a.instance_id, CURRENT, NOW)
    assert again == RetentionResult(kept=3)


def test_age_rule_keeps_sets_up_to_max_age_days(aws: Aws, instances: list[FleetInstance]) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 11))
    # exactly 5 days old is kept; 5 days and a minute is not
    sets[55] = aws.snapshot_set(a, "nightly", "edge", days_ago=5 + 1 / 1440)
    result = apply_retention(aws.ec2, policy(max_age_days=5), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [55, *range(6, 11)])
    assert result.kept == 5
    assert ids(sets, range(6)) <= aws.existing()


def test_age_rule_never_deletes_the_newest_completed_set(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(40, 43))
    result = apply_retention(aws.ec2, policy(max_age_days=1), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [41, 42])
    assert ids(sets, [0, 40]) <= aws.existing()


@pytest.mark.parametrize(
    ("count", "max_age_days", "kept_days"),
    [
        (3, 5, range(1, 6)),  # the age rule keeps more
        (7, 5, range(1, 8)),  # the count rule keeps more
    ],
)
def test_count_and_age_together_keep_what_either_keeps(
    aws: Aws, instances: list[FleetInstance], count: int, max_age_days: int, kept_days: range
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 11))
    result = apply_retention(
        aws.ec2, policy(count=count, max_age_days=max_age_days), a.instance_id, CURRENT, NOW
    )
    assert set(result.deleted) == ids(sets, set(range(1, 11)) - set(kept_days))
    assert result.kept == len(kept_days)


def test_ami_backed_shared_public_and_locked_sets_are_kept_whole(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 11))
    aws.register_ami(sets[9][0])  # root snapshot of d9 backs an AMI
    aws.ec2.modify_snapshot_attribute(
        SnapshotId=sets[8][1],
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=["210987654321"],
    )
    aws.ec2.modify_snapshot_attribute(
        SnapshotId=sets[7][1],
        Attribute="createVolumePermission",
        OperationType="add",
        GroupNames=["all"],
    )
    aws.locks[sets[6][0]] = "governance"
    aws.locks[sets[5][0]] = "compliance-cooloff"
    aws.locks[sets[4][0]] = "expired"  # an expired lock protects nothing

    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)

    assert set(result.deleted) == ids(sets, [2, 3, 4, 10])
    assert result.kept == 6  # d1 and the five protected sets
    assert result.errors == ()
    assert ids(sets, [0, 1, 5, 6, 7, 8, 9]) <= aws.existing()


def test_without_snapshot_locks_support_nothing_is_deleted_and_the_reason_reported(
    aws: Aws, instances: list[FleetInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(ElasticBlockStore, "describe_locked_snapshots")  # plain moto again
    a = instances[0]
    history(aws, a, "nightly", range(1, 6))
    before = aws.existing()
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert result.deleted == ()
    assert result.kept == 5
    [error] = result.errors
    assert error.snapshot_id is None
    assert error.code == "NotImplementedError"
    assert error.message.startswith("DescribeLockedSnapshots failed, kept 4 set(s) unchecked")
    assert aws.existing() == before


@pytest.mark.parametrize("code", ["InvalidAction", "UnsupportedOperation", "AccessDenied"])
def test_a_failed_lock_or_image_check_keeps_everything(
    aws: Aws, instances: list[FleetInstance], code: str
) -> None:
    a = instances[0]
    history(aws, a, "nightly", range(1, 6))
    before = aws.existing()

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": "no"}}, "DescribeLockedSnapshots")

    aws.ec2.describe_locked_snapshots = refuse
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert result.deleted == ()
    assert [e.code for e in result.errors] == [code]
    assert aws.existing() == before


@pytest.mark.parametrize(
    ("method", "api"),
    [
        ("describe_images", "DescribeImages"),
        ("describe_locked_snapshots", "DescribeLockedSnapshots"),
    ],
)
@pytest.mark.parametrize("code", ["UnauthorizedOperation", "RequestLimitExceeded", "InternalError"])
def test_any_failed_protection_lookup_keeps_every_set_and_says_why(
    aws: Aws,
    instances: list[FleetInstance],
    method: str,
    api: str,
    code: str,
    retention_log: list[logging.LogRecord],
) -> None:
    """Fail closed: an AMI or lock check that cannot be made could be hiding a protected
    snapshot, so nothing is deleted and the report names the check."""
    a = instances[0]
    history(aws, a, "nightly", range(1, 6))
    before = aws.existing()

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": "refused by the test"}}, api)

    # set before retention builds its paginator, which binds the client's method
    setattr(aws.ec2, method, refuse)
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert result.deleted == ()
    [error] = result.errors
    assert (error.snapshot_id, error.code) == (None, code)
    # the check, what it kept, and AWS's own message
    assert error.message == f"{api} failed, kept 4 set(s) unchecked: refused by the test"
    warning, summary = logged(retention_log)
    assert warning[0] == "WARNING"
    assert warning[1].startswith(f"retention check {api} failed: ClientError(")
    assert "refused by the test" in warning[1]
    assert summary == (
        "INFO",
        f"retention nightly {a.instance_id}: deleted 0 snapshot(s) of 0 set(s), kept 5 set(s), "
        "0 left, 1 error(s)",
    )
    assert aws.existing() == before


def test_a_failed_sharing_check_keeps_that_set(
    aws: Aws, instances: list[FleetInstance], retention_log: list[logging.LogRecord]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 5))
    real = aws.ec2.describe_snapshot_attribute

    def flaky(**kwargs: Any) -> Any:
        if kwargs["SnapshotId"] == sets[3][1]:
            raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "slow"}}, "x")
        return real(**kwargs)

    aws.ec2.describe_snapshot_attribute = flaky
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [2, 4])
    [error] = result.errors
    assert (error.snapshot_id, error.code) == (sets[3][1], "RequestLimitExceeded")
    assert error.message == "DescribeSnapshotAttribute failed, kept its set: slow"
    assert ids(sets, [0, 1, 3]) <= aws.existing()
    level, message = logged(retention_log)[0]
    assert level == "WARNING"
    assert message.startswith(f"retention check of {sets[3][1]} failed: ClientError(")


def test_a_newer_failed_run_keeps_every_older_set(aws: Aws, instances: list[FleetInstance]) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(2, 11))
    sets[1] = aws.snapshot_set(a, "nightly", "failed-d1", days_ago=1, states=["completed", "error"])
    before = aws.existing()
    result = apply_retention(aws.ec2, policy(count=2), a.instance_id, CURRENT, NOW)
    assert result.deleted == ()
    assert result.kept == 10
    assert aws.existing() == before


def test_an_older_failed_run_only_shields_what_is_older_than_it(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", [1, 2, 4, 5, 6])
    sets[3] = aws.snapshot_set(a, "nightly", "failed-d3", days_ago=3, states=["error", "error"])
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    # d2 and the failed d3 itself go; d4..d6 wait until the failed set is gone (next run)
    assert set(result.deleted) == ids(sets, [2, 3])
    assert ids(sets, [0, 1, 4, 5, 6]) <= aws.existing()
    nxt = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert set(nxt.deleted) == ids(sets, [4, 5, 6])


def test_a_newer_pending_set_of_another_run_keeps_older_sets(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(2, 8))
    sets[1] = aws.snapshot_set(a, "nightly", "other-run", days_ago=1, states=["pending"])
    before = aws.existing()
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert result.deleted == ()
    assert aws.existing() == before


def test_the_current_pending_set_neither_counts_nor_blocks(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 6))
    result = apply_retention(aws.ec2, policy(count=2), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [3, 4, 5])
    assert ids(sets, [0, 1, 2]) <= aws.existing()


def test_dry_run_lists_and_deletes_nothing(aws: Aws, instances: list[FleetInstance]) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 6))
    before = aws.existing()
    result = apply_retention(aws.ec2, policy(count=2, dry_run=True), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [3, 4, 5])
    assert result.dry_run
    assert result.kept == 2
    assert aws.existing() == before


def test_deletion_errors_are_reported_per_snapshot_and_retried_next_run(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 5))
    in_use, throttled = sets[3][0], sets[4][1]
    real = aws.ec2.delete_snapshot

    def failing(**kwargs: Any) -> Any:
        codes = {in_use: "InvalidSnapshot.InUse", throttled: "RequestLimitExceeded"}
        if (code := codes.get(kwargs["SnapshotId"])) is not None:
            raise ClientError({"Error": {"Code": code, "Message": "try later"}}, "DeleteSnapshot")
        return real(**kwargs)

    aws.ec2.delete_snapshot = failing
    result = apply_retention(aws.ec2, policy(count=2), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [3, 4]) - {in_use, throttled}
    assert {(e.snapshot_id, e.code) for e in result.errors} == {
        (in_use, "InvalidSnapshot.InUse"),
        (throttled, "RequestLimitExceeded"),
    }
    # each names the call, the snapshot, its set, and AWS's message
    by_id = {e.snapshot_id: e.message for e in result.errors}
    assert by_id[in_use] == f"DeleteSnapshot {in_use} (set nightly-d3): try later"
    assert by_id[throttled] == f"DeleteSnapshot {throttled} (set nightly-d4): try later"
    assert {in_use, throttled} <= aws.existing()

    aws.ec2.delete_snapshot = real
    retried = apply_retention(aws.ec2, policy(count=2), a.instance_id, CURRENT, NOW)
    assert set(retried.deleted) == {in_use, throttled}
    assert retried.errors == ()


def test_an_ami_registered_after_the_check_gives_moto_s_in_use_error(
    aws: Aws, instances: list[FleetInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A race: the AMI appears between the check and DeleteSnapshot; AWS refuses, we report."""
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 4))

    def check_then_register(ec2: Any, snapshot_ids: Any) -> set[str]:
        aws.register_ami(sets[3][0])
        return set()

    monkeypatch.setattr(protections, "ami_backed_ids", check_then_register)
    result = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert set(result.deleted) == ids(sets, [2, 3]) - {sets[3][0]}
    [error] = result.errors
    assert (error.snapshot_id, error.code) == (sets[3][0], "InvalidSnapshot.InUse")
    assert sets[3][0] in aws.existing()


def test_listing_errors_are_reported_and_delete_nothing(
    retention_log: list[logging.LogRecord],
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_snapshots", "UnauthorizedOperation", "not allowed")
        result = apply_retention(ec2, policy(count=1), "i-0123456789abcdef0", CURRENT, NOW)
        stub.assert_no_pending_responses()
    [error] = result.errors
    assert (error.snapshot_id, error.code) == (None, "UnauthorizedOperation")
    assert error.message == "i-0123456789abcdef0: listing snapshots: not allowed"
    assert result.deleted == ()
    assert result.dry_run is False
    [(level, message)] = logged(retention_log)
    assert level == "WARNING"
    assert message.startswith("retention for i-0123456789abcdef0 failed: ClientError(")


def test_deletes_issue_one_describe_snapshots_with_owner_self_and_tag_filters() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": []},
            {
                "OwnerIds": ["self"],
                "Filters": [
                    {"Name": "tag:snapset:policy", "Values": ["nightly"]},
                    {"Name": "tag:snapset:instance-id", "Values": ["i-0123456789abcdef0"]},
                ],
                "MaxResults": 1000,
            },
        )
        result = apply_retention(ec2, policy(count=1), "i-0123456789abcdef0", CURRENT, NOW)
        stub.assert_no_pending_responses()
    assert result == RetentionResult()


def test_account_id_excludes_look_alikes_owned_by_another_account(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    """moto ignores OwnerIds=['self']; AWS does not. With account_id, the owner is checked too."""
    a = instances[0]
    sets = history(aws, a, "nightly", range(2, 5))
    # another account's snapshot with our exact tags, newer than ours and completed
    [alien] = [
        aws.snapshot(a.root_volume_id, managed_tags("nightly", "alien", a.instance_id), days_ago=1)
    ]
    aws.backend.snapshots[alien].owner_id = "999999999999"
    result = apply_retention(
        aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW, account_id="123456789012"
    )
    # our newest completed set (d2) survives: the alien did not count as newer
    assert set(result.deleted) == ids(sets, [3, 4])
    assert ids(sets, [0, 2]) | {alien} <= aws.existing()


def test_naive_now_and_missing_retention_are_programming_errors(aws: Aws) -> None:
    with pytest.raises(ValueError, match=r"^now must be timezone-aware$"):
        apply_retention(
            aws.ec2, policy(count=1), "i-0123456789abcdef0", CURRENT, datetime(2026, 1, 1)
        )
    no_retention = SnapshotPolicy(policy="p", instance_ids=["i-0123456789abcdef0"])
    with pytest.raises(ValueError, match=r"^policy 'p' has no retention$"):
        apply_retention(aws.ec2, no_retention, "i-0123456789abcdef0", CURRENT, NOW)


# --- wiring: with_retention_all after the engine started a set ----------------------------------


def test_engine_then_retention_deletes_old_sets_and_keeps_the_new_one(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    old = {d: aws.snapshot_set(a, "nightly", f"nightly-d{d}", days_ago=d) for d in range(1, 6)}
    pol = SnapshotPolicy.model_validate(
        {"policy": "nightly", "instance_ids": [a.instance_id], "retention": {"count": 2}}
    )
    trigger = Trigger(type=TriggerType.MANUAL, id="run-7", time=datetime.now(UTC))
    request = SnapshotRequest(policy=pol, trigger=trigger)
    instance = describe_instance(aws.ec2, a.instance_id)
    assert instance is not None
    lookups = run_lookups(aws.ec2, request, [instance], first_delivery=False)
    outcome = snapshot_instance(aws.ec2, request, instance, ec2_create=aws.ec2, lookups=lookups)
    assert outcome.status is InstanceStatus.STARTED
    new_ids = {s.snapshot_id for s in outcome.snapshots}

    [outcome] = with_retention_all(aws.ec2, pol, [outcome], trigger.id, NOW)

    assert outcome.retention is not None
    assert set(outcome.retention.deleted) == ids(old, [3, 4, 5])
    assert new_ids | ids(old, [1, 2]) <= aws.existing()
    body = outcome.model_dump(mode="json")["retention"]
    assert body.keys() >= {"deleted", "kept", "errors"}
    assert body["kept"] == 2


@pytest.mark.parametrize(
    ("status", "dry_run", "applies"),
    [
        (InstanceStatus.STARTED, False, True),
        (InstanceStatus.FAILED, False, False),
        (InstanceStatus.SKIPPED, False, False),
        (InstanceStatus.DRY_RUN_OK, True, True),
        (InstanceStatus.FAILED, True, False),
    ],
)
def test_with_retention_only_for_started_or_dry_run_ok(
    aws: Aws,
    instances: list[FleetInstance],
    status: InstanceStatus,
    dry_run: bool,
    applies: bool,
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 4))
    pol = policy(count=1, dry_run=dry_run)
    before = aws.existing()
    outcome = InstanceOutcome(instance_id=a.instance_id, status=status)
    [after] = with_retention_all(aws.ec2, pol, [outcome], CURRENT, NOW)
    if applies:
        assert after.retention is not None
        assert set(after.retention.deleted) == ids(sets, [2, 3])
    else:
        assert after.retention is None
        assert aws.existing() == before


def test_no_retention_policy_leaves_the_outcome_alone(aws: Aws) -> None:
    pol = SnapshotPolicy(policy="p", instance_ids=["i-0123456789abcdef0"])
    outcome = InstanceOutcome(instance_id="i-0123456789abcdef0", status=InstanceStatus.STARTED)
    assert with_retention_all(aws.ec2, pol, [outcome], CURRENT, NOW) == [outcome]
    assert outcome.model_dump(mode="json")["retention"] is None


def test_out_of_time_stops_between_sets_and_reports_the_rest_for_the_next_run(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 6))  # keep 1: d2..d5 are to go
    calls = iter([False, False, False, False, False, True])  # time runs out mid-way
    result = apply_retention(
        aws.ec2,
        policy(count=1),
        a.instance_id,
        CURRENT,
        NOW,
        deadline=Deadline(at=1.0, clock=lambda: float(next(calls, True))),
    )
    assert result.errors
    assert result.errors[-1].code == "Timeout"
    deleted = set(result.deleted)
    # whole sets only, oldest first; what is left stays for the next run
    assert deleted
    assert deleted < ids(sets, [2, 3, 4, 5])
    assert all(set(sets[d]) <= deleted or not set(sets[d]) & deleted for d in (2, 3, 4, 5))
    assert ids(sets, [0, 1]) <= aws.existing()
    again = apply_retention(aws.ec2, policy(count=1), a.instance_id, CURRENT, NOW)
    assert set(again.deleted) == ids(sets, [2, 3, 4, 5]) - deleted


def test_deletions_are_paced_whole_sets_at_a_time_and_the_rest_waits_for_the_next_run(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 6))  # keep 1: d2..d5 (two snapshots each) go
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    # 3 tokens, 1 per second, 2.5 s left: d5 goes at once, d4 after waiting a second for its
    # second token, d3 would need two more seconds and is left whole for the next run
    pacer = Pacer(1.0, 3, clock=lambda: now[0], sleep=sleep)
    result = apply_retention(
        aws.ec2,
        policy(count=1),
        a.instance_id,
        CURRENT,
        NOW,
        deadline=Deadline(at=2.5, clock=lambda: now[0]),
        pacer=pacer,
    )
    assert set(result.deleted) == ids(sets, [4, 5])
    assert now[0] == 1.0
    [error] = result.errors
    assert (error.code, error.snapshot_id) == ("Timeout", None)
    assert "2 set(s) not deleted yet" in error.message
    assert ids(sets, [0, 1, 2, 3]) <= aws.existing()


def _record_checks_and_deletes(
    aws: Aws, owners: dict[str, str], calls: list[tuple[str, str]]
) -> None:
    """Log each sharing check and deletion as (call, instance of the snapshot), in order."""
    real_check, real_delete = aws.ec2.describe_snapshot_attribute, aws.ec2.delete_snapshot

    def check(**kwargs: Any) -> Any:
        calls.append(("check", owners[kwargs["SnapshotId"]]))
        return real_check(**kwargs)

    def delete(**kwargs: Any) -> Any:
        calls.append(("delete", owners[kwargs["SnapshotId"]]))
        return real_delete(**kwargs)

    aws.ec2.describe_snapshot_attribute = check
    aws.ec2.delete_snapshot = delete


def test_an_instance_s_sets_are_deleted_before_the_next_instance_s_are_checked(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a, b = instances[0].instance_id, instances[1].instance_id
    owners = {
        sid: inst.instance_id
        for inst in instances[:2]
        for sids in history(aws, inst, "nightly", range(1, 4)).values()
        for sid in sids
    }
    calls: list[tuple[str, str]] = []
    _record_checks_and_deletes(aws, owners, calls)
    results = retain_sets(aws.ec2, policy(count=1), [a, b], CURRENT, NOW)
    assert [len(results[i].deleted) for i in (a, b)] == [4, 4]  # d2 and d3, two volumes each
    # the deletions spend the bucket while the later instances are still being checked
    assert list(dict.fromkeys(calls)) == [("check", a), ("delete", a), ("check", b), ("delete", b)]


def test_out_of_time_only_the_instances_left_unchecked_say_so(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a, b = instances[0].instance_id, instances[1].instance_id
    sets = {inst.instance_id: history(aws, inst, "nightly", range(1, 4)) for inst in instances[:2]}
    owners = {sid: iid for iid, by_day in sets.items() for s in by_day.values() for sid in s}
    calls: list[tuple[str, str]] = []
    _record_checks_and_deletes(aws, owners, calls)
    # time runs out once a's two sets are deleted, before b's are checked
    deadline = Deadline(at=1.0, clock=lambda: 2.0 if calls.count(("delete", a)) == 4 else 0.0)
    results = retain_sets(aws.ec2, policy(count=1), [a, b], CURRENT, NOW, deadline=deadline)
    assert set(results[a].deleted) == ids(sets[a], [2, 3])
    assert results[a].errors == ()
    assert (results[b].deleted, results[b].remaining, results[b].kept) == ((), 2, 1)
    [error] = results[b].errors
    assert (error.code, error.snapshot_id) == ("Timeout", None)
    assert (
        error.message == "out of invocation time: kept 2 set(s) unchecked; the next run continues"
    )
    assert ids(sets[b], [1, 2, 3]) <= aws.existing()
    assert ("check", b) not in calls


def test_retention_asks_its_check_pacer_before_each_sharing_check(
    aws: Aws, instances: list[FleetInstance]
) -> None:
    a = instances[0]
    sets = history(aws, a, "nightly", range(1, 4))
    # one token a minute, 30 s left: the first snapshot is asked about, then nothing more
    deadline = Deadline(at=30.0, clock=lambda: 0.0)
    pacer = Pacer(1 / 60, 1, clock=lambda: 0.0)
    result = retain_sets(
        aws.ec2,
        policy(count=1),
        [a.instance_id],
        CURRENT,
        NOW,
        deadline=deadline,
        check_pacer=pacer,
    )[a.instance_id]
    assert (result.deleted, result.remaining, result.kept) == ((), 2, 1)
    assert [e.message for e in result.errors] == [
        "out of invocation time: kept 2 set(s) unchecked; the next run continues"
    ]
    assert ids(sets, [1, 2, 3]) <= aws.existing()
