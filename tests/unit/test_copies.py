"""Copies to other regions and shares with other accounts: the exact CopySnapshot requests
(botocore's Stubber), what an advance starts, queues, refuses and reports, and the claims
that keep two invocations from copying one snapshot twice (in-process moto DynamoDB)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from snapset.copies import (
    COPY_LIMIT_CODE,
    Copier,
    CopyClaims,
    CopyingPolicy,
    CopyRecord,
    CopyReport,
    SourceSet,
    SourceSnapshot,
    advance_copies,
    copy_snapshot_request,
    describe_sets,
    find_copies,
    format_copy_errors,
    parse_copy_errors,
    publish_copy_report,
    share_set,
    sweep_copies,
)
from snapset.deadline import Deadline
from snapset.errors import InvalidInput
from snapset.pacing import Pacer
from snapset.policy import (
    COPIES_DONE,
    COPIES_NONE,
    COPIES_PENDING,
    MAX_TAG_VALUE_LEN,
    MAX_TAGS_PER_RESOURCE,
    TAG_CONSISTENCY,
    TAG_COPIES,
    TAG_COPY_ERRORS,
    TAG_COPY_INSTANCE_ID,
    TAG_COPY_OF,
    TAG_COPY_POLICY,
    TAG_COPY_SOURCE_REGION,
    TAG_COPY_TRIGGER_ID,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    CopyRule,
    Distribution,
    Retention,
    SnapshotPolicy,
    SnapshotRequest,
    Trigger,
    TriggerType,
)
from snapset.triggers import with_deployed_copies

HOME = "us-east-1"
DEST = "us-west-2"
TABLE = "idempotency"
IID = "i-0123456789abcdef0"
TRIGGER = "schedule:nightly@2026-12-01T02:00:00Z"
WHEN = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
KEY = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _tags(**extra: str) -> dict[str, str]:
    return {
        TAG_POLICY: "nightly",
        TAG_TRIGGER_ID: TRIGGER,
        TAG_INSTANCE_ID: IID,
        TAG_CONSISTENCY: "crash",
        TAG_COPIES: COPIES_PENDING,
        "CostCenter": "platform",
        **extra,
    }


def _snap(sid: str, vol: str, state: str = "completed", **tags: str) -> SourceSnapshot:
    return SourceSnapshot(
        snapshot_id=sid, volume_id=vol, state=state, start_time=WHEN, tags=_tags(**tags)
    )


def _set(*snaps: SourceSnapshot) -> SourceSet:
    return SourceSet("nightly", TRIGGER, IID, snaps)


SNAP_A = "snap-0000000000000000a"
SNAP_B = "snap-0000000000000000b"
TWO = _set(_snap(SNAP_A, "vol-0000000000000000a"), _snap(SNAP_B, "vol-0000000000000000b"))


def _policy(
    *rules: CopyRule, retention: Retention | None = None, shares: tuple[str, ...] = ()
) -> dict[str, CopyingPolicy]:
    rules = rules or (CopyRule(region=DEST),)
    return {
        "nightly": CopyingPolicy(
            "nightly",
            Distribution(copies=list(rules), share_with_accounts=list(shares)),
            retention,
        )
    }


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name=HOME)
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


@dataclass
class World:
    home: Any
    dest: Any
    home_stub: Stubber
    dest_stub: Stubber
    claims: CopyClaims

    def copier(self, policies: dict[str, CopyingPolicy] | None = None, **kw: Any) -> Copier:
        return Copier(
            home_ec2=self.home,
            ec2_in=lambda region: {DEST: self.dest}[region],
            claims=self.claims,
            policies=policies or _policy(),
            home_region=HOME,
            now=WHEN + timedelta(hours=1),
            **kw,
        )

    def finds(
        self,
        *copies: tuple[str, ...],
        in_flight: int | None = None,
        looks: bool = True,
        sources: list[str] | None = None,
    ) -> None:
        """The destination's look-ups: the count of Snapset's copies in flight there, then
        (`looks`: some set has room or copies started) the copies by source, given as
        `(source, copy, state[, state message])`, asked for exactly `sources` when given."""
        pending = sum(1 for found in copies if found[2] == "pending")
        self.dest_stub.add_response(
            "describe_snapshots",
            {
                "Snapshots": [
                    {"SnapshotId": f"snap-{n:017x}", "State": "pending", "StartTime": WHEN}
                    for n in range(pending if in_flight is None else in_flight)
                ]
            },
            {
                "OwnerIds": ["self"],
                "Filters": [
                    {"Name": "status", "Values": ["pending"]},
                    {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [HOME]},
                ],
                "MaxResults": 1000,
            },
        )
        if not looks:
            return
        self.dest_stub.add_response(
            "describe_snapshots",
            {
                "Snapshots": [
                    {
                        "SnapshotId": found[1],
                        "State": found[2],
                        "StartTime": WHEN,
                        "Tags": [{"Key": TAG_COPY_OF, "Value": found[0]}],
                        **({"StateMessage": found[3]} if len(found) > 3 else {}),
                    }
                    for found in copies
                ]
            },
            {
                "OwnerIds": ["self"],
                "Filters": [
                    {"Name": f"tag:{TAG_COPY_OF}", "Values": ANY if sources is None else sources},
                    {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [HOME]},
                ],
                "MaxResults": 1000,
            },
        )

    def copies(self, source: str, copy: str) -> None:
        self.dest_stub.add_response(
            "copy_snapshot",
            {"SnapshotId": copy},
            {
                "SourceRegion": HOME,
                "SourceSnapshotId": source,
                "Description": ANY,
                "TagSpecifications": ANY,
            },
        )

    def refuses(self, code: str, status: int = 400) -> None:
        self.dest_stub.add_client_error(
            "copy_snapshot",
            service_error_code=code,
            service_message=f"{code} here",
            http_status_code=status,
        )


@pytest.fixture
def world(dynamodb: Any) -> Iterator[World]:
    home = boto3.client("ec2", region_name=HOME)
    dest = boto3.client("ec2", region_name=DEST)
    with Stubber(home) as home_stub, Stubber(dest) as dest_stub:
        yield World(home, dest, home_stub, dest_stub, CopyClaims(dynamodb, TABLE))
        home_stub.assert_no_pending_responses()
        dest_stub.assert_no_pending_responses()


# --- the request -----------------------------------------------------------------------------


def test_a_copy_carries_the_sources_tags_its_identity_and_a_description() -> None:
    params = copy_snapshot_request(TWO, TWO.snapshots[0], CopyRule(region=DEST), HOME)
    tags = {t["Key"]: t["Value"] for t in params["TagSpecifications"][0]["Tags"]}
    assert tags == {
        "CostCenter": "platform",
        TAG_COPY_POLICY: "nightly",
        TAG_COPY_TRIGGER_ID: TRIGGER,
        TAG_COPY_INSTANCE_ID: IID,
        TAG_COPY_OF: SNAP_A,
        TAG_COPY_SOURCE_REGION: HOME,
        TAG_CONSISTENCY: "crash",
    }
    assert params["SourceRegion"] == HOME
    assert params["SourceSnapshotId"] == SNAP_A
    assert SNAP_A in params["Description"]
    assert HOME in params["Description"]
    assert "Encrypted" not in params
    assert "KmsKeyId" not in params


def test_copy_tags_false_copies_only_the_identity() -> None:
    params = copy_snapshot_request(
        TWO, TWO.snapshots[0], CopyRule(region=DEST, copy_tags=False), HOME
    )
    keys = {t["Key"] for t in params["TagSpecifications"][0]["Tags"]}
    assert "CostCenter" not in keys
    assert TAG_COPY_OF in keys


def test_a_copy_never_exceeds_ec2s_tags_per_resource() -> None:
    many = {f"k{n:02}": "v" for n in range(48)}
    snap = _snap(SNAP_A, "vol-0000000000000000a", **many)
    tags = copy_snapshot_request(_set(snap), snap, CopyRule(region=DEST), HOME)[
        "TagSpecifications"
    ][0]["Tags"]
    assert len(tags) == MAX_TAGS_PER_RESOURCE
    assert {TAG_COPY_OF, TAG_COPY_POLICY} <= {t["Key"] for t in tags}


def test_the_destination_key_encrypts_the_copy_and_an_encrypted_source_stays_encrypted() -> None:
    keyed = copy_snapshot_request(
        TWO, TWO.snapshots[0], CopyRule(region=DEST, kms_key_arn=KEY), HOME
    )
    assert (keyed["Encrypted"], keyed["KmsKeyId"]) == (True, KEY)
    encrypted = SourceSnapshot(SNAP_A, "vol-0000000000000000a", "completed", WHEN, encrypted=True)
    params = copy_snapshot_request(_set(encrypted), encrypted, CopyRule(region=DEST), HOME)
    assert params["Encrypted"] is True
    assert "KmsKeyId" not in params


def test_copy_errors_round_trip_and_fit_one_tag_for_three_regions() -> None:
    errors = dict.fromkeys(
        ("eu-west-1", "us-west-2", "ap-south-1"), "InvalidParameterValue: " + "x" * 300
    )
    value = format_copy_errors(errors)
    assert len(value) <= MAX_TAG_VALUE_LEN
    assert set(parse_copy_errors(value)) == set(errors)
    assert parse_copy_errors(format_copy_errors({"eu-west-1": "A: b; c"})) == {
        "eu-west-1": "A: b, c"
    }


# --- advancing -------------------------------------------------------------------------------


def test_only_the_missing_copy_is_claimed_and_started(world: World) -> None:
    world.finds((SNAP_A, "snap-copy-a", "completed"))
    world.copies(SNAP_B, "snap-copy-b")
    world.home_stub.add_response(
        "create_tags",
        {},
        {"Resources": [SNAP_A, SNAP_B], "Tags": [{"Key": TAG_COPIES, "Value": "copying"}]},
    )
    progress = advance_copies(world.copier(), [TWO])
    assert progress.started == {DEST: 1}
    assert progress.errors == []
    assert progress.finished == []  # the new copy is pending
    assert not world.claims.claim(DEST, SNAP_B)  # held by the advance that started it
    assert world.claims.claim(DEST, SNAP_A)  # never claimed: it existed


def test_a_set_is_reported_once_every_copy_completed(world: World) -> None:
    world.finds((SNAP_A, "snap-copy-a", "completed"), (SNAP_B, "snap-copy-b", "completed"))
    progress = advance_copies(world.copier(), [TWO])
    [(source, report)] = progress.finished
    assert source == TWO
    assert report.status == "succeeded"
    assert report.kind == "copy"
    assert report.source_region == HOME
    [region] = report.regions
    assert region.region == DEST
    assert region.status == "completed"
    assert [(c.source_snapshot_id, c.snapshot_id, c.state) for c in region.copies] == [
        (SNAP_A, "snap-copy-a", "completed"),
        (SNAP_B, "snap-copy-b", "completed"),
    ]
    assert region.retention is None  # neither the rule nor the policy retains


def test_a_failed_copy_fails_its_region_and_names_both_snapshots(world: World) -> None:
    world.finds(
        (SNAP_A, "snap-copy-a", "completed"),
        (SNAP_B, "snap-copy-b", "error", "Given key ID is not accessible"),
    )
    [(_, report)] = advance_copies(world.copier(), [TWO]).finished
    assert report.status == "failed"
    error = report.regions[0].copies[1].error
    assert error is not None
    assert error.code == "CopyFailed"
    assert "snap-copy-b" in error.message
    assert SNAP_B in error.message
    assert "Given key ID is not accessible" in error.message
    assert report.regions[0].copies[0].error is None


def test_copies_wait_while_the_destination_has_its_quota_in_flight(world: World) -> None:
    # a backlog of sets none of whose copies started costs no look-up in the destination
    world.finds(in_flight=20, looks=False)
    progress = advance_copies(world.copier(), [TWO])
    assert progress.started == {}
    assert progress.queued == {DEST: 2}
    assert progress.backlog == 2
    assert progress.finished == []
    assert world.claims.claim(DEST, SNAP_A)  # nothing was claimed


def test_a_set_whose_copies_started_is_looked_at_even_with_the_quota_in_flight(
    world: World,
) -> None:
    copying = _set(
        _snap(SNAP_A, "vol-0000000000000000a", **{TAG_COPIES: "copying"}),
        _snap(SNAP_B, "vol-0000000000000000b", **{TAG_COPIES: "copying"}),
    )
    world.finds(
        (SNAP_A, "snap-copy-a", "completed"), (SNAP_B, "snap-copy-b", "completed"), in_flight=20
    )
    [(source, report)] = advance_copies(world.copier(), [copying]).finished
    assert source == copying
    assert report.status == "succeeded"


def test_only_as_many_waiting_sets_as_the_destination_has_room_for_are_looked_at(
    world: World,
) -> None:
    sets = [
        SourceSet("nightly", f"t{n}", IID, (_snap(f"snap-{n:017x}", f"vol-{n:017x}"),))
        for n in range(1, 5)
    ]
    # room for 2: only the two oldest sets' copies are looked up
    world.finds(in_flight=18, sources=[f"snap-{n:017x}" for n in (1, 2)])
    for n in (1, 2):
        world.copies(f"snap-{n:017x}", f"snap-copy-{n}")
    world.home_stub.add_response("create_tags", {}, {"Resources": ANY, "Tags": ANY})
    progress = advance_copies(world.copier(), sets)
    assert progress.started == {DEST: 2}
    assert progress.queued == {DEST: 2}


def test_a_quota_refusal_queues_the_rest_and_frees_the_claim(world: World) -> None:
    world.finds()
    world.refuses(COPY_LIMIT_CODE)
    progress = advance_copies(world.copier(), [TWO])
    assert progress.queued == {DEST: 2}
    assert progress.started == {}
    assert world.claims.claim(DEST, SNAP_A)  # released: the next sweep may start it


def test_a_refused_copy_is_remembered_on_the_set_and_reported(world: World) -> None:
    world.finds()
    world.refuses("InvalidParameterValue")
    world.home_stub.add_response(
        "create_tags",
        {},
        {
            "Resources": [SNAP_A, SNAP_B],
            "Tags": [
                {
                    "Key": TAG_COPY_ERRORS,
                    "Value": format_copy_errors(
                        {DEST: "InvalidParameterValue: InvalidParameterValue here"}
                    ),
                }
            ],
        },
    )
    progress = advance_copies(world.copier(), [TWO])
    assert progress.refused == 1
    [(_, report)] = progress.finished
    assert report.status == "failed"
    states = [(c.state, c.error.code if c.error else None) for c in report.regions[0].copies]
    # The second snapshot is not sent: the region already refused this set.
    assert states == [("refused", "InvalidParameterValue"), ("refused", "InvalidParameterValue")]


def test_a_refusal_recorded_on_the_set_is_not_asked_again(world: World) -> None:
    errors = format_copy_errors({DEST: "InvalidParameterValue: bad key"})
    refused = _set(
        _snap(SNAP_A, "vol-0000000000000000a", **{TAG_COPY_ERRORS: errors}),
        _snap(SNAP_B, "vol-0000000000000000b", **{TAG_COPY_ERRORS: errors}),
    )
    world.finds()
    [(_, report)] = advance_copies(world.copier(), [refused]).finished
    assert {c.state for c in report.regions[0].copies} == {"refused"}


def test_an_unknown_outcome_keeps_the_claim_until_the_copy_can_be_seen(world: World) -> None:
    world.finds()
    world.refuses("InternalError", status=500)
    world.refuses("InternalError", status=500)
    progress = advance_copies(world.copier(), [TWO])
    assert progress.queued == {DEST: 2}
    assert progress.refused == 0
    assert not world.claims.claim(DEST, SNAP_A)  # the copy may exist: still held


def test_a_copy_claimed_by_another_invocation_is_not_started(world: World) -> None:
    assert world.claims.claim(DEST, SNAP_A)
    assert world.claims.claim(DEST, SNAP_B)
    world.finds()
    progress = advance_copies(world.copier(), [TWO])
    assert progress.started == {}
    assert progress.queued == {DEST: 2}


def test_a_lapsed_claim_can_be_taken_again(dynamodb: Any) -> None:
    now = [1000.0]
    claims = CopyClaims(dynamodb, TABLE, clock=lambda: now[0], hold_seconds=60)
    assert claims.claim(DEST, SNAP_A)
    assert not claims.claim(DEST, SNAP_A)
    now[0] += 61
    assert claims.claim(DEST, SNAP_A)
    assert claims.claim("eu-west-1", SNAP_A)  # claims are per region


def test_a_set_already_reported_or_not_pending_is_left_alone(world: World) -> None:
    done = _set(_snap(SNAP_A, "vol-0000000000000000a", **{TAG_COPIES: COPIES_DONE}))
    progress = advance_copies(world.copier(), [done])
    assert progress.not_pending_sets == 1
    assert progress.finished == []


def test_a_set_still_in_flight_waits(world: World) -> None:
    pending = _set(_snap(SNAP_A, "vol-0000000000000000a", state="pending"))
    progress = advance_copies(world.copier(), [pending])
    assert progress.waiting_sets == 1
    assert progress.started == {}


@pytest.mark.parametrize(
    ("state", "policy"),
    [("error", "nightly"), ("completed", "weekly")],
    ids=["failed-set", "policy-deployed-without-copies"],
)
def test_the_sweep_tags_sets_it_will_not_copy_so_they_are_listed_no_more(
    world: World, state: str, policy: str
) -> None:
    world.home_stub.add_response(
        "describe_snapshots",
        {
            "Snapshots": [
                {
                    "SnapshotId": SNAP_A,
                    "VolumeId": "vol-0000000000000000a",
                    "State": state,
                    "StartTime": WHEN,
                    "Tags": [
                        {"Key": k, "Value": v} for k, v in (_tags() | {TAG_POLICY: policy}).items()
                    ],
                }
            ]
        },
        {
            "OwnerIds": ["self"],
            "Filters": [{"Name": f"tag:{TAG_COPIES}", "Values": ["copying", "pending"]}],
            "MaxResults": 1000,
        },
    )
    world.home_stub.add_response(
        "create_tags",
        {},
        {"Resources": [SNAP_A], "Tags": [{"Key": TAG_COPIES, "Value": COPIES_NONE}]},
    )
    progress = sweep_copies(world.copier())
    assert len(progress.failed_sets + progress.unconfigured_sets) == 1
    assert progress.started == {}


def test_destination_retention_lists_this_regions_copies_once_for_all_finished_sets(
    world: World,
) -> None:
    other_iid = "i-0fedcba9876543210"
    snap_c = "snap-0000000000000000c"
    other = SourceSet(
        "nightly",
        TRIGGER,
        other_iid,
        (_snap(snap_c, "vol-0000000000000000c", **{TAG_INSTANCE_ID: other_iid}),),
    )
    world.finds(
        (SNAP_A, "snap-copy-a", "completed"),
        (SNAP_B, "snap-copy-b", "completed"),
        (snap_c, "snap-copy-c", "completed"),
    )
    # one listing for both instances (calls grow with pages, not sets)
    world.dest_stub.add_response(
        "describe_snapshots",
        {"Snapshots": []},
        {
            "OwnerIds": ["self"],
            "Filters": [
                {"Name": f"tag:{TAG_COPY_POLICY}", "Values": ["nightly"]},
                {"Name": f"tag:{TAG_COPY_INSTANCE_ID}", "Values": [IID, other_iid]},
                {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [HOME]},
            ],
            "MaxResults": 1000,
        },
    )
    copier = world.copier(
        _policy(CopyRule(region=DEST, retention=Retention(count=3)), retention=Retention(count=7))
    )
    finished = advance_copies(copier, [TWO, other]).finished
    assert [s.instance_id for s, _ in finished] == [IID, other_iid]
    assert all(r.regions[0].retention is not None for _, r in finished)


def test_destination_retention_asks_the_regions_check_pacer_before_each_sharing_check(
    world: World,
) -> None:
    def copy_set(sid: str, trigger: str, days: int) -> dict[str, Any]:
        tags = {
            TAG_COPY_POLICY: "nightly",
            TAG_COPY_TRIGGER_ID: trigger,
            TAG_COPY_INSTANCE_ID: IID,
            TAG_COPY_SOURCE_REGION: HOME,
        }
        return {
            "SnapshotId": sid,
            "State": "completed",
            "StartTime": WHEN - timedelta(days=days),
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }

    world.finds((SNAP_A, "snap-copy-a", "completed"), (SNAP_B, "snap-copy-b", "completed"))
    older = "snap-00000000000000d02"
    world.dest_stub.add_response(
        "describe_snapshots",
        {"Snapshots": [copy_set("snap-00000000000000d01", "d1", 1), copy_set(older, "d2", 2)]},
        {"OwnerIds": ["self"], "Filters": ANY, "MaxResults": 1000},
    )
    world.dest_stub.add_response(
        "describe_locked_snapshots", {"Snapshots": []}, {"SnapshotIds": [older]}
    )
    world.dest_stub.add_response("describe_images", {"Images": []})
    # an empty bucket refilling once a minute, 30 s left: d2 (beyond count 1) is not asked
    # about, so it is kept for the next run, and no DescribeSnapshotAttribute is made
    copier = world.copier(
        _policy(CopyRule(region=DEST, retention=Retention(count=1))),
        deadline=Deadline(at=30.0, clock=lambda: 0.0),
        check_pacer_for=lambda region: Pacer(1 / 60, 1, start_full=False, clock=lambda: 0.0),
    )
    [(_, report)] = advance_copies(copier, [TWO]).finished
    retention = report.regions[0].retention
    assert retention is not None
    assert (retention.deleted, retention.remaining) == ((), 1)
    assert [e.message for e in retention.errors] == [
        "out of invocation time: kept 1 set(s) unchecked; the next run continues"
    ]


# --- shares ----------------------------------------------------------------------------------


def test_a_share_refused_for_the_aws_managed_key_names_the_key() -> None:
    ec2 = boto3.client("ec2", region_name=HOME)
    managed = "arn:aws:kms:us-east-1:123456789012:key/aaaaaaaa-1111-2222-3333-444444444444"
    snaps = (
        SourceSnapshot(SNAP_A, "vol-0000000000000000a", "completed", WHEN, True, managed),
        SourceSnapshot(SNAP_B, "vol-0000000000000000b", "completed", WHEN),
    )
    with Stubber(ec2) as stub:
        stub.add_client_error("modify_snapshot_attribute", "InvalidParameter", "cannot share")
        stub.add_response(
            "modify_snapshot_attribute",
            {},
            {
                "SnapshotId": SNAP_B,
                "Attribute": "createVolumePermission",
                "OperationType": "add",
                "UserIds": ["111122223333"],
            },
        )
        result = share_set(ec2, _set(*snaps), ["111122223333"])
    assert result.shared == (SNAP_B,)
    [error] = result.errors
    assert error.code == "InvalidParameter"
    assert managed in error.message
    assert SNAP_A in error.message


# --- copies and shares come from the stack only ----------------------------------------------


def _request(trigger: TriggerType, **fields: Any) -> SnapshotRequest:
    policy = SnapshotPolicy.model_validate({"policy": "nightly", "instance_ids": [IID], **fields})
    return SnapshotRequest(policy=policy, trigger=Trigger(type=trigger, id="t", time=WHEN))


DEPLOYED = {
    "nightly": Distribution(copies=[CopyRule(region=DEST)], share_with_accounts=["111122223333"])
}


def test_a_run_gets_its_deployed_copies_and_shares() -> None:
    policy = with_deployed_copies(_request(TriggerType.MANUAL), DEPLOYED).policy
    assert [c.region for c in policy.copies] == [DEST]
    assert policy.share_with_accounts == ["111122223333"]


@pytest.mark.parametrize(
    ("trigger", "fields", "named"),
    [
        (TriggerType.MANUAL, {"copies": [{"region": DEST}]}, "copies"),
        (TriggerType.MANUAL, {"share_with_accounts": ["111122223333"]}, "share_with_accounts"),
        (TriggerType.SCHEDULE, {"copies": [{"region": "eu-west-1"}]}, "copies"),
    ],
)
def test_a_payload_cannot_choose_where_sets_go(
    trigger: TriggerType, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^{named}: policy 'nightly' runs with"):
        with_deployed_copies(_request(trigger, **fields), DEPLOYED)


def test_an_undeployed_policy_may_not_copy_or_share() -> None:
    with pytest.raises(InvalidInput, match=r"^share_with_accounts:"):
        with_deployed_copies(_request(TriggerType.MANUAL, share_with_accounts=["111122223333"]), {})
    plain = with_deployed_copies(_request(TriggerType.MANUAL), {}).policy
    assert plain.copies == []
    assert plain.share_with_accounts == []


def test_a_schedule_carrying_its_deployed_copies_runs() -> None:
    request = _request(
        TriggerType.SCHEDULE,
        copies=[{"region": DEST}],
        share_with_accounts=["111122223333"],
    )
    assert with_deployed_copies(request, DEPLOYED).policy.copies == [CopyRule(region=DEST)]


def test_of_two_copies_of_one_source_the_best_counts(world: World) -> None:
    world.finds(
        (SNAP_A, "snap-copy-failed", "error"),
        (SNAP_A, "snap-copy-done", "completed"),
        (SNAP_A, "snap-copy-later", "pending"),
        (SNAP_B, "snap-copy-b1", "pending"),
        (SNAP_B, "snap-copy-b2", "completed"),
        (SNAP_B, "snap-copy-b3", "error"),
    )
    progress = advance_copies(world.copier(), [TWO])
    [(_, report)] = progress.finished
    assert report.status == "succeeded"
    assert [c.snapshot_id for c in report.regions[0].copies] == ["snap-copy-done", "snap-copy-b2"]
    assert progress.started == {}


def test_a_destination_that_cannot_be_read_takes_no_copy_and_says_why(world: World) -> None:
    world.dest_stub.add_client_error("describe_snapshots", "UnauthorizedOperation", "denied")
    progress = advance_copies(world.copier(), [TWO])
    assert progress.started == {}
    assert progress.queued == {DEST: 2}
    [error] = progress.errors
    assert f"DescribeSnapshots in {DEST} failed: UnauthorizedOperation" in error
    assert "denied" in error


def test_the_set_and_snapshot_look_ups_ask_exactly_for_them() -> None:
    ec2 = boto3.client("ec2", region_name=HOME)
    raw = {
        "SnapshotId": SNAP_A,
        "VolumeId": "vol-0000000000000000a",
        "State": "completed",
        "StartTime": WHEN,
        "Tags": [{"Key": k, "Value": v} for k, v in _tags().items()],
    }
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [raw]},
            {"OwnerIds": ["self"], "Filters": [{"Name": "snapshot-id", "Values": [SNAP_A]}]},
        )
        [source] = describe_sets(ec2, [SNAP_A])
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [], "NextToken": "t"},
            {
                "OwnerIds": ["self"],
                "Filters": [
                    {"Name": f"tag:{TAG_COPY_OF}", "Values": [SNAP_A]},
                    {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [HOME]},
                ],
                "MaxResults": 1000,
            },
        )
        stub.add_response(
            "describe_snapshots",
            {
                "Snapshots": [
                    {
                        "SnapshotId": "snap-copy-a",
                        "State": "error",
                        "StartTime": WHEN,
                        "StateMessage": "why",
                        "Tags": [{"Key": TAG_COPY_OF, "Value": SNAP_A}],
                    }
                ]
            },
            {
                "OwnerIds": ["self"],
                "Filters": [
                    {"Name": f"tag:{TAG_COPY_OF}", "Values": [SNAP_A]},
                    {"Name": f"tag:{TAG_COPY_SOURCE_REGION}", "Values": [HOME]},
                ],
                "MaxResults": 1000,
                "NextToken": "t",
            },
        )
        found = find_copies(ec2, HOME, [SNAP_A])
        stub.assert_no_pending_responses()
    assert (source.key, source.state, source.snapshot_ids) == (
        ("nightly", TRIGGER, IID),
        COPIES_PENDING,
        [SNAP_A],
    )
    assert source.snapshots[0].volume_id == "vol-0000000000000000a"
    assert found == {SNAP_A: CopyRecord("snap-copy-a", SNAP_A, "error", "why")}


def test_the_copy_report_message_subject_and_attributes() -> None:
    sns = boto3.client("sns", region_name=HOME)
    report = CopyReport(
        policy="nightly",
        instance_id=IID,
        trigger={"id": TRIGGER},
        source_region=HOME,
        status="partial",
        regions=(),
    )
    with Stubber(sns) as stub:
        stub.add_response(
            "publish",
            {"MessageId": "m"},
            {
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                "Subject": f"Snapset nightly: copies of {IID}'s set partial (0 copies in )",
                "Message": ANY,
                "MessageAttributes": {
                    "status": {"DataType": "String", "StringValue": "partial"},
                    "policy": {"DataType": "String", "StringValue": "nightly"},
                    "kind": {"DataType": "String", "StringValue": "copy"},
                },
            },
        )
        assert publish_copy_report(sns, "arn:aws:sns:us-east-1:123456789012:t", report) == "m"
