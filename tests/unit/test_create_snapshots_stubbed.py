"""The exact CreateSnapshots request for every option, pinned with botocore's Stubber."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from snapset.deadline import Deadline
from snapset.errors import ROOT_VOLUME_EXCLUDED, TOO_MANY_EXCLUSIONS
from snapset.outcomes import InstanceStatus
from snapset.pacing import Pacer
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.snapshots import RetryBudget, run_lookups, snapshot_instance
from snapset.targets import AttachedVolume, Instance

IID = "i-0123456789abcdef0"
ROOT = "vol-00000000000000001"
DATA1 = "vol-00000000000000002"
DATA2 = "vol-00000000000000003"
OUTPOST = "arn:aws:outposts:us-east-1:123456789012:outpost/op-0123456789abcdef0"
WHEN = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
MANAGED = [
    {"Key": "snapset:policy", "Value": "nightly"},
    {"Key": "snapset:trigger-id", "Value": "nightly@2026-11-27T03:00:00Z"},
    {"Key": "snapset:instance-id", "Value": IID},
    {"Key": "snapset:consistency", "Value": "crash"},
]


def instance(extra_data: int = 2, state: str = "running") -> Instance:
    volumes = [AttachedVolume(ROOT, "/dev/xvda", True)]
    volumes += [
        AttachedVolume(f"vol-{n:017x}", f"/dev/sd{chr(ord('f') + n)}", False)
        for n in range(2, 2 + extra_data)
    ]
    return Instance(instance_id=IID, state=state, tags={}, volumes=tuple(volumes))


def request(**fields: Any) -> SnapshotRequest:
    policy = SnapshotPolicy.model_validate({"policy": "nightly", "instance_ids": [IID], **fields})
    trigger = Trigger(type=TriggerType.SCHEDULE, id="nightly@2026-11-27T03:00:00Z", time=WHEN)
    return SnapshotRequest(policy=policy, trigger=trigger)


def snapshot_response(*volume_ids: str) -> dict[str, Any]:
    return {
        "Snapshots": [
            {
                "SnapshotId": f"snap-{n:017x}",
                "VolumeId": v,
                "State": "pending",
                "VolumeSize": 8,
                "Encrypted": True,
            }
            for n, v in enumerate(volume_ids, start=1)
        ]
    }


@pytest.fixture
def ec2() -> Any:
    return boto3.client("ec2", region_name="us-east-1")


def existing_sets_listing(req: SnapshotRequest) -> dict[str, Any]:
    """The parameters of a run's one listing of the trigger's sets (`list_existing_sets`)."""
    return {
        "OwnerIds": ["self"],
        "Filters": [
            {"Name": "tag:snapset:trigger-id", "Values": [req.trigger.id]},
            {"Name": "tag:snapset:policy", "Values": [req.policy.name]},
        ],
        "MaxResults": 1000,
    }


def existing_set_filters(req: SnapshotRequest, instance_id: str) -> list[dict[str, Any]]:
    """The filters of one instance's look-up for its set (`find_existing_set`)."""
    return [
        {"Name": "tag:snapset:trigger-id", "Values": [req.trigger.id]},
        {"Name": "tag:snapset:instance-id", "Values": [instance_id]},
        {"Name": "tag:snapset:policy", "Values": [req.policy.name]},
    ]


def run(
    ec2: Any,
    req: SnapshotRequest,
    inst: Instance,
    expected: dict[str, Any] | None,
    response: dict[str, Any] | None = None,
    error: tuple[str, int] | None = None,
    describe_volumes: tuple[dict[str, Any], dict[str, Any]] | None = None,
    existing_sets: list[dict[str, Any]] | None = None,
) -> Any:
    """Run's lookups, then one instance; `existing_sets` is what a redelivery's listing of the
    trigger's sets answers (None: the trigger's first delivery, which makes no listing)."""
    with Stubber(ec2) as stub:
        if existing_sets is not None:
            stub.add_response(
                "describe_snapshots", {"Snapshots": existing_sets}, existing_sets_listing(req)
            )
        if describe_volumes is not None:
            stub.add_response("describe_volumes", describe_volumes[1], describe_volumes[0])
        listed = {t["Value"] for s in existing_sets or [] for t in s["Tags"]}
        if existing_sets is not None and not req.policy.dry_run and inst.instance_id not in listed:
            # a redelivery looks for the set of an instance its listing missed, just before
            stub.add_response(
                "describe_snapshots",
                {"Snapshots": []},
                {"OwnerIds": ["self"], "Filters": existing_set_filters(req, inst.instance_id)},
            )
        if expected is not None:
            if error is not None:
                stub.add_client_error(
                    "create_snapshots",
                    service_error_code=error[0],
                    service_message=f"{error[0]} happened",
                    http_status_code=error[1],
                    expected_params=expected,
                )
            else:
                stub.add_response("create_snapshots", response or {}, expected)
        lookups = run_lookups(ec2, req, [inst], first_delivery=existing_sets is None)
        outcome = snapshot_instance(ec2, req, inst, ec2_create=ec2, lookups=lookups)
        stub.assert_no_pending_responses()
    return outcome


def attached(volume_id: str, instance_id: str = IID) -> dict[str, Any]:
    """A DescribeVolumes entry attached to `instance_id`."""
    return {"VolumeId": volume_id, "Attachments": [{"InstanceId": instance_id}]}


def test_defaults_send_copy_tags_and_managed_tags(ec2: Any) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(ec2, request(), instance(), expected, snapshot_response(ROOT, DATA1, DATA2))
    assert outcome.status is InstanceStatus.STARTED
    assert [s.volume_id for s in outcome.snapshots] == [ROOT, DATA1, DATA2]
    assert outcome.snapshots[0].state == "pending"
    assert outcome.snapshots[0].encrypted is True


def test_every_option_together(ec2: Any) -> None:
    req = request(
        exclude_boot_volume=True,
        exclude_data_volume_ids=[DATA2, "vol-0000000000000ffff"],  # the second is not attached
        tags={"Name": "{policy}-{instance_id}", "When": "{timestamp}", "Why": "{trigger}"},
        description="Snapset {policy} of {instance_id} at {timestamp}",
        outpost_arn=OUTPOST,
    )
    expected = {
        "InstanceSpecification": {
            "InstanceId": IID,
            "ExcludeBootVolume": True,
            "ExcludeDataVolumeIds": [DATA2],
        },
        "TagSpecifications": [
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": "Name", "Value": f"nightly-{IID}"},
                    {"Key": "When", "Value": "2026-11-27T03:00:00Z"},
                    {"Key": "Why", "Value": "schedule"},
                    *MANAGED,
                ],
            }
        ],
        "DryRun": False,
        "Description": f"Snapset nightly of {IID} at 2026-11-27T03:00:00Z",
        "OutpostArn": OUTPOST,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(ec2, req, instance(), expected, snapshot_response(DATA1))
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.excluded_volume_ids == (DATA2,)


def test_copy_tags_off_omits_the_parameter(ec2: Any) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
    }
    outcome = run(
        ec2, request(copy_tags_from_source=None), instance(), expected, snapshot_response(ROOT)
    )
    assert outcome.status is InstanceStatus.STARTED


def test_merged_exclusions_from_ids_and_volume_tags(ec2: Any) -> None:
    req = request(exclude_data_volume_ids=[DATA1], exclude_data_volume_tags={"NoBackup": ["true"]})
    describe = (
        {
            "Filters": [
                {"Name": "attachment.instance-id", "Values": [IID]},
                {"Name": "tag:NoBackup", "Values": ["true"]},
            ],
            "MaxResults": 500,
        },
        {"Volumes": [attached(DATA2), attached(DATA1)]},
    )
    expected = {
        "InstanceSpecification": {
            "InstanceId": IID,
            "ExcludeBootVolume": False,
            "ExcludeDataVolumeIds": [DATA1, DATA2],
        },
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(
        ec2, req, instance(), expected, snapshot_response(ROOT), describe_volumes=describe
    )
    assert outcome.excluded_volume_ids == (DATA1, DATA2)


def test_dry_run_operation_means_it_would_succeed(ec2: Any) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": True,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(ec2, request(dry_run=True), instance(), expected, error=("DryRunOperation", 412))
    assert outcome.status is InstanceStatus.DRY_RUN_OK
    assert outcome.error is None


@pytest.mark.parametrize(
    ("code", "http"),
    [
        ("UnauthorizedOperation", 403),
        ("InvalidInstanceID.NotFound", 400),
        ("IncorrectState", 400),
        ("ConcurrentSnapshotLimitExceeded", 400),
        ("SnapshotCreationPerVolumeRateExceeded", 400),
        ("RequestLimitExceeded", 503),
    ],
)
def test_each_error_code_is_a_failed_outcome_naming_the_instance(
    ec2: Any, code: str, http: int
) -> None:
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": code == "UnauthorizedOperation",
        "CopyTagsFromSource": "volume",
    }
    req = request(dry_run=code == "UnauthorizedOperation")
    outcome = run(ec2, req, instance(), expected, error=(code, http))
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == code
    assert IID in outcome.error.message


def test_root_volume_in_data_exclusions_fails_without_calling_aws(ec2: Any) -> None:
    outcome = run(ec2, request(exclude_data_volume_ids=[ROOT]), instance(), None)
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == ROOT_VOLUME_EXCLUDED
    assert "exclude_boot_volume" in outcome.error.message
    assert ROOT in outcome.error.message


def test_root_volume_matched_by_tag_is_dropped_when_boot_is_excluded(ec2: Any) -> None:
    req = request(exclude_boot_volume=True, exclude_data_volume_tags={"NoBackup": ["*"]})
    describe = ({"Filters": ANY, "MaxResults": 500}, {"Volumes": [attached(ROOT), attached(DATA1)]})
    expected = {
        "InstanceSpecification": {
            "InstanceId": IID,
            "ExcludeBootVolume": True,
            "ExcludeDataVolumeIds": [DATA1],
        },
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(
        ec2, req, instance(), expected, snapshot_response(DATA2), describe_volumes=describe
    )
    assert outcome.status is InstanceStatus.STARTED


def test_root_volume_matched_by_tag_fails_when_boot_is_kept(ec2: Any) -> None:
    req = request(exclude_data_volume_tags={"NoBackup": ["*"]})
    describe = ({"Filters": ANY, "MaxResults": 500}, {"Volumes": [attached(ROOT)]})
    outcome = run(ec2, req, instance(), None, describe_volumes=describe)
    assert outcome.error is not None
    assert outcome.error.code == ROOT_VOLUME_EXCLUDED


def test_more_than_40_exclusions_after_merging_fails(ec2: Any) -> None:
    inst = instance(extra_data=42)
    ids = [v.volume_id for v in inst.volumes if not v.is_root]
    req = request(exclude_data_volume_ids=ids[:30], exclude_data_volume_tags={"Scratch": ["yes"]})
    describe = ({"Filters": ANY, "MaxResults": 500}, {"Volumes": [attached(v) for v in ids[25:]]})
    outcome = run(ec2, req, inst, None, describe_volumes=describe)
    assert outcome.error is not None
    assert outcome.error.code == TOO_MANY_EXCLUSIONS
    assert "42" in outcome.error.message


def test_everything_excluded_is_skipped_without_calling_aws(ec2: Any) -> None:
    outcome = run(
        ec2,
        request(exclude_boot_volume=True, exclude_data_volume_ids=[DATA1, DATA2]),
        instance(),
        None,
    )
    assert outcome.status is InstanceStatus.SKIPPED
    assert outcome.reason is not None
    assert "nothing to snapshot" in outcome.reason


@pytest.mark.parametrize("state", ["terminated", "shutting-down"])
def test_terminated_or_shutting_down_is_skipped(ec2: Any, state: str) -> None:
    outcome = run(ec2, request(), instance(state=state), None)
    assert outcome.status is InstanceStatus.SKIPPED
    assert outcome.reason == f"instance is {state}"


# --- the run's listings: one per run (per page), not one per instance ----------------------------


def instance_of(instance_id: str, state: str = "running") -> Instance:
    volumes = (AttachedVolume(f"vol-{instance_id[2:]}", "/dev/xvda", True),)
    return Instance(instance_id=instance_id, state=state, tags={}, volumes=volumes)


def managed_snapshot(n: int, instance_id: str, volume_id: str) -> dict[str, Any]:
    return {
        "SnapshotId": f"snap-{n:017x}",
        "VolumeId": volume_id,
        "State": "pending",
        "Tags": [
            {"Key": "snapset:policy", "Value": "nightly"},
            {"Key": "snapset:trigger-id", "Value": "nightly@2026-11-27T03:00:00Z"},
            {"Key": "snapset:instance-id", "Value": instance_id},
        ],
    }


def test_a_redelivery_reports_the_listed_set_without_calling_create_snapshots(ec2: Any) -> None:
    made = [managed_snapshot(1, IID, ROOT), managed_snapshot(2, IID, DATA1)]
    outcome = run(ec2, request(), instance(extra_data=1), None, existing_sets=made)
    assert outcome.status is InstanceStatus.STARTED
    assert [s.snapshot_id for s in outcome.snapshots] == [f"snap-{1:017x}", f"snap-{2:017x}"]
    assert outcome.reason == "set already created by an earlier delivery of this trigger"


def test_a_redelivery_makes_the_set_of_an_instance_the_listing_did_not_find(ec2: Any) -> None:
    other = "i-0fffffffffffffff0"
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(
        ec2,
        request(),
        instance(extra_data=0),
        expected,
        snapshot_response(ROOT),
        existing_sets=[managed_snapshot(9, other, "vol-0fffffffffffffff0")],
    )
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.reason is None
    assert [s.volume_id for s in outcome.snapshots] == [ROOT]


def test_a_redelivery_finds_a_set_made_after_its_listing_and_makes_none(ec2: Any) -> None:
    """A concurrent duplicate delivery made the set after this delivery's listing (and could
    not save its record): the look-up just before CreateSnapshots finds it."""
    req, inst = request(), instance(extra_data=0)
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", {"Snapshots": []}, existing_sets_listing(req))
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [managed_snapshot(7, IID, ROOT)]},
            {"OwnerIds": ["self"], "Filters": existing_set_filters(req, IID)},
        )
        lookups = run_lookups(ec2, req, [inst], first_delivery=False)
        outcome = snapshot_instance(ec2, req, inst, ec2_create=ec2, lookups=lookups)
        stub.assert_no_pending_responses()  # and no CreateSnapshots: the stub has none
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.reason == "set already created by an earlier delivery of this trigger"
    assert [s.snapshot_id for s in outcome.snapshots] == [f"snap-{7:017x}"]


def test_a_first_delivery_neither_lists_nor_looks(ec2: Any) -> None:
    req, inst = request(), instance(extra_data=0)
    lookups = run_lookups(ec2, req, [inst], first_delivery=True)
    assert not lookups.recheck
    assert lookups.existing_sets == {}


def test_the_sets_listing_follows_every_page_and_groups_by_instance(ec2: Any) -> None:
    other = "i-0fffffffffffffff0"
    params = {
        "OwnerIds": ["self"],
        "Filters": [
            {"Name": "tag:snapset:trigger-id", "Values": ["nightly@2026-11-27T03:00:00Z"]},
            {"Name": "tag:snapset:policy", "Values": ["nightly"]},
        ],
        "MaxResults": 1000,
    }
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [managed_snapshot(1, IID, ROOT)], "NextToken": "page-2"},
            params,
        )
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [managed_snapshot(2, other, DATA2), managed_snapshot(3, IID, DATA1)]},
            {**params, "NextToken": "page-2"},
        )
        lookups = run_lookups(
            ec2, request(), [instance(), instance_of(other)], first_delivery=False
        )
        stub.assert_no_pending_responses()
    assert isinstance(lookups.existing_sets, dict)
    found = {iid: [s.snapshot_id for s in snaps] for iid, snaps in lookups.existing_sets.items()}
    assert found == {IID: [f"snap-{1:017x}", f"snap-{3:017x}"], other: [f"snap-{2:017x}"]}


def test_a_fleet_lists_its_tagged_volumes_once_by_tag_and_groups_them_by_attachment(
    ec2: Any,
) -> None:
    ids = [f"i-{n:017x}" for n in range(1, 451)]
    fleet = [instance_of(i) for i in ids] + [instance_of("i-0eeeeeeeeeeeeeee0", "terminated")]
    req = request(exclude_data_volume_tags={"NoBackup": ["true"]})
    params: dict[str, Any] = {
        "Filters": [{"Name": "tag:NoBackup", "Values": ["true"]}],
        "MaxResults": 500,
    }
    stranger = "i-0ddddddddddddddd0"  # not a target: its volumes are none of the run's business
    multi = {
        "VolumeId": "vol-0multi",
        "Attachments": [{"InstanceId": ids[0]}, {"InstanceId": ids[449]}],
    }
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_volumes",
            {
                "Volumes": [attached(f"vol-{i[2:]}", i) for i in ids[:3]]
                + [attached("vol-0stranger", stranger), {"VolumeId": "vol-0free"}],
                "NextToken": "page-2",
            },
            params,
        )
        stub.add_response(
            "describe_volumes",
            {"Volumes": [attached(f"vol-{ids[300][2:]}", ids[300]), multi]},
            {**params, "NextToken": "page-2"},
        )
        # the first delivery of a trigger lists no sets: none can exist yet
        lookups = run_lookups(ec2, req, fleet, first_delivery=True)
        stub.assert_no_pending_responses()
    assert lookups.existing_sets == {}
    assert lookups.tag_excluded == {
        ids[0]: frozenset({f"vol-{ids[0][2:]}", "vol-0multi"}),
        ids[1]: frozenset({f"vol-{ids[1][2:]}"}),
        ids[2]: frozenset({f"vol-{ids[2][2:]}"}),
        ids[300]: frozenset({f"vol-{ids[300][2:]}"}),
        ids[449]: frozenset({"vol-0multi"}),
    }


def test_up_to_200_instances_list_only_their_own_tagged_volumes(ec2: Any) -> None:
    ids = [f"i-{n:017x}" for n in range(1, 201)]
    req = request(exclude_data_volume_tags={"NoBackup": ["true"]})
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_volumes",
            {"Volumes": [attached("vol-0one", ids[7])]},
            {
                "Filters": [
                    {"Name": "attachment.instance-id", "Values": ids},
                    {"Name": "tag:NoBackup", "Values": ["true"]},
                ],
                "MaxResults": 500,
            },
        )
        lookups = run_lookups(ec2, req, [instance_of(i) for i in ids], first_delivery=True)
        stub.assert_no_pending_responses()
    assert lookups.tag_excluded == {ids[7]: frozenset({"vol-0one"})}


def test_exclusions_the_plan_brought_are_not_listed_again(ec2: Any) -> None:
    req = request(exclude_data_volume_tags={"NoBackup": ["true"]})
    planned = {IID: frozenset({DATA1})}
    with Stubber(ec2) as stub:  # no DescribeVolumes expected
        lookups = run_lookups(ec2, req, [instance()], first_delivery=True, tag_excluded=planned)
        stub.assert_no_pending_responses()
    assert lookups.tag_excluded == planned


def test_a_failed_volume_listing_fails_each_instance_that_needed_it_naming_the_call(
    ec2: Any,
) -> None:
    req = request(exclude_data_volume_tags={"NoBackup": ["true"]})
    gone = instance_of("i-0eeeeeeeeeeeeeee0", "terminated")
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_volumes", "UnauthorizedOperation", "denied", 403)
        lookups = run_lookups(ec2, req, [instance(), gone], first_delivery=True)
        outcome = snapshot_instance(ec2, req, instance(), ec2_create=ec2, lookups=lookups)
        skipped = snapshot_instance(ec2, req, gone, ec2_create=ec2, lookups=lookups)
        stub.assert_no_pending_responses()  # and no CreateSnapshots was made
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == "UnauthorizedOperation"
    assert outcome.error.message == (
        f"{IID}: not snapshotted, DescribeVolumes (finding the volumes "
        "exclude_data_volume_tags leaves out) failed: denied"
    )
    assert skipped.status is InstanceStatus.SKIPPED  # it did not need the listing


def test_a_failed_sets_listing_leaves_each_instance_to_its_own_look_up(ec2: Any) -> None:
    req, inst = request(), instance(extra_data=0)
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_snapshots", "RequestLimitExceeded", "slow down", 503)
        stub.add_response(
            "describe_snapshots",
            {"Snapshots": [managed_snapshot(5, IID, ROOT)]},
            {"OwnerIds": ["self"], "Filters": existing_set_filters(req, IID)},
        )
        lookups = run_lookups(ec2, req, [inst], first_delivery=False)
        outcome = snapshot_instance(ec2, req, inst, ec2_create=ec2, lookups=lookups)
        stub.assert_no_pending_responses()  # no CreateSnapshots: its own look-up found the set
    assert lookups.recheck
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.reason == "set already created by an earlier delivery of this trigger"


# --- pacing: the run's share of EC2's CreateSnapshots bucket --------------------------------


def test_a_pacer_with_no_call_left_in_time_fails_the_instance_without_calling(ec2: Any) -> None:
    now = [0.0]
    deadline = Deadline(at=0.5, clock=lambda: now[0])
    pacer = Pacer(1.0, 1, clock=lambda: now[0], sleep=lambda s: None)
    assert pacer.acquire(deadline)  # another instance took the only token
    req = request()
    with Stubber(ec2) as stub:  # no CreateSnapshots is expected: a call would fail the stub
        lookups = run_lookups(ec2, req, [instance()], first_delivery=True)
        outcome = snapshot_instance(
            ec2,
            req,
            instance(),
            RetryBudget(deadline=deadline, pacer=pacer),
            ec2_create=ec2,
            lookups=lookups,
        )
        stub.assert_no_pending_responses()
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == "Timeout"
    assert outcome.error.retry_on_redelivery
    assert outcome.error.message.startswith(f"{IID}: not started, Snapset's share of the")


def test_every_attempt_waits_for_the_pacer_retries_included(ec2: Any) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    pacer = Pacer(1.0, 1, clock=lambda: now[0], sleep=sleep)
    req = request()
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    with Stubber(ec2) as stub:
        stub.add_client_error(
            "create_snapshots",
            "RequestLimitExceeded",
            http_status_code=503,
            expected_params=expected,
        )
        stub.add_response(
            "create_snapshots", snapshot_response(ROOT, DATA1, DATA2), expected_params=expected
        )
        lookups = run_lookups(ec2, req, [instance()], first_delivery=True)
        outcome = snapshot_instance(
            ec2,
            req,
            instance(),
            RetryBudget(base_delay=0.0, pacer=pacer, sleep=sleep),
            ec2_create=ec2,
            lookups=lookups,
        )
        stub.assert_no_pending_responses()
    assert outcome.status is InstanceStatus.STARTED
    # the refused call spent the burst token; the retry waited a whole second for the next
    assert now[0] == 1.0


@pytest.mark.parametrize(
    "answer",
    [{}, {"Volumes": []}, {"Volumes": [{"VolumeId": DATA2}]}],
    ids=["no-volumes-key", "no-volumes", "volume-without-attachments"],
)
def test_a_volume_listing_that_finds_nothing_attached_excludes_nothing(
    ec2: Any, answer: dict[str, Any]
) -> None:
    req = request(exclude_data_volume_tags={"NoBackup": ["true"]})
    describe = (
        {
            "Filters": [
                {"Name": "attachment.instance-id", "Values": [IID]},
                {"Name": "tag:NoBackup", "Values": ["true"]},
            ],
            "MaxResults": 500,
        },
        answer,
    )
    expected = {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": MANAGED}],
        "DryRun": False,
        "CopyTagsFromSource": "volume",
    }
    outcome = run(
        ec2,
        req,
        instance(),
        expected,
        snapshot_response(ROOT, DATA1, DATA2),
        describe_volumes=describe,
    )
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.excluded_volume_ids == ()


def test_a_redelivery_reports_the_listed_set_with_its_exclusions(ec2: Any) -> None:
    made = [managed_snapshot(1, IID, ROOT), managed_snapshot(2, IID, DATA1)]
    req = request(exclude_data_volume_ids=[DATA2])
    outcome = run(ec2, req, instance(extra_data=2), None, existing_sets=made)
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.reason == "set already created by an earlier delivery of this trigger"
    assert outcome.excluded_volume_ids == (DATA2,)
