"""Protection checks: locks and AMIs in batches, sharing per set as the caller reads it, paced.
Out of time (or out of the pacer's tokens in time), the unchecked sets are kept; an image
listing without the optional keys protects nothing by mistake and crashes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from snapset.deadline import NEVER, Deadline
from snapset.pacing import Pacer
from snapset.protections import (
    SharingAnswers,
    ami_backed_ids,
    batch_protected,
    locked_ids,
    shared_kept,
    sharing_answers,
)

REGION = "us-east-1"
SETS = [[f"snap-{s:04x}{v:013x}" for v in range(2)] for s in range(3)]
IDS = [sid for ids in SETS for sid in ids]


def _not_shared(stub: Stubber, sid: str) -> None:
    stub.add_response(
        "describe_snapshot_attribute",
        {"CreateVolumePermissions": []},
        {"SnapshotId": sid, "Attribute": "createVolumePermission"},
    )


def test_locks_and_images_are_asked_once_for_every_set() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_locked_snapshots",
            {"Snapshots": [{"SnapshotId": SETS[1][0], "LockState": "governance"}]},
            {"SnapshotIds": IDS},
        )
        stub.add_response("describe_images", {"Images": []})
        assert batch_protected(ec2, SETS) == ({SETS[1][0]}, None)
        stub.assert_no_pending_responses()


def test_out_of_time_the_sets_not_yet_checked_for_sharing_are_kept() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    expired = iter([False, True])  # the first set is checked, then time runs out
    deadline = Deadline(at=1.0, clock=lambda: float(next(expired, True)))
    with Stubber(ec2) as stub:
        for sid in SETS[0]:  # only the first set's sharing is asked about
            _not_shared(stub, sid)
        answers = list(sharing_answers(ec2, SETS, deadline))
        stub.assert_no_pending_responses()
    assert answers == [[False, False], None, None]
    assert shared_kept(SETS[1], None) == (set(SETS[1]), [])


def test_sharing_is_asked_only_as_the_caller_reads_the_answers() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        for sid in SETS[0]:
            _not_shared(stub, sid)
        answers = sharing_answers(ec2, SETS)
        assert next(answers) == [False, False]
        stub.assert_no_pending_responses()  # the second set is not asked about yet
        answers.close()


def test_sharing_checks_are_paced_and_a_set_the_pacer_grants_too_late_is_kept() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    # 2 tokens, 1 per second, 2.5 s left: the first set is asked at once, the second once its
    # two tokens came (t = 2), the third would need them at t = 4 and is kept unchecked
    pacer = Pacer(1.0, 2, clock=lambda: now[0], sleep=sleep)
    deadline = Deadline(at=2.5, clock=lambda: now[0])
    with Stubber(ec2) as stub:
        for sid in SETS[0] + SETS[1]:
            _not_shared(stub, sid)
        answers = list(sharing_answers(ec2, SETS, deadline, pacer=pacer))
        stub.assert_no_pending_responses()
    assert answers == [[False, False], [False, False], None]
    assert now[0] == 2.0


@pytest.mark.parametrize(
    "images",
    [{}, {"Images": [{"ImageId": "ami-1"}]}, {"Images": [{"BlockDeviceMappings": [{}]}]}],
    ids=["no-images-key", "image-without-mappings", "mapping-without-ebs"],
)
def test_an_image_listing_without_optional_keys_backs_nothing(images: dict[str, Any]) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response("describe_images", images)
        assert ami_backed_ids(ec2, IDS) == set()
        stub.assert_no_pending_responses()


def test_a_lock_listing_without_snapshots_locks_nothing() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response("describe_locked_snapshots", {}, {"SnapshotIds": IDS})
        assert locked_ids(ec2, IDS) == set()
        stub.assert_no_pending_responses()


def _kept(sets: list[list[str]], answers: Iterable[SharingAnswers]) -> tuple[set[str], list[Any]]:
    protected: set[str] = set()
    errors: list[Any] = []
    for snapshot_ids, set_answers in zip(sets, answers, strict=True):
        kept, set_errors = shared_kept(snapshot_ids, set_answers)
        protected |= kept
        errors += set_errors
    return protected, errors


def _moto_sets(ec2: Any, n: int) -> list[list[str]]:
    volume = ec2.create_volume(Size=1, AvailabilityZone=f"{REGION}a")["VolumeId"]
    return [[ec2.create_snapshot(VolumeId=volume)["SnapshotId"]] for _ in range(n)]


@pytest.mark.parametrize("workers", [1, 4])
def test_sharing_checks_on_threads_protect_what_the_sequential_ones_do(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        sets = _moto_sets(ec2, 8)
        for n, account in ((1, "111122223333"), (4, "444455556666"), (6, "999988887777")):
            ec2.modify_snapshot_attribute(
                SnapshotId=sets[n][0],
                Attribute="createVolumePermission",
                OperationType="add",
                UserIds=[account],
            )
        failing = sets[3][0]
        real = ec2.describe_snapshot_attribute

        def refuse_one(**kwargs: Any) -> Any:
            if kwargs["SnapshotId"] == failing:
                raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "x"}}, "D")
            return real(**kwargs)

        monkeypatch.setattr(ec2, "describe_snapshot_attribute", refuse_one)
        protected, errors = _kept(
            sets,
            sharing_answers(
                ec2, sets, NEVER, own_shares=frozenset({"999988887777"}), workers=workers
            ),
        )
    # shared with another account, or not known: kept; shared with the policy's own: not
    assert protected == {sets[1][0], sets[3][0], sets[4][0]}
    [error] = errors
    assert (error.code, error.snapshot_id) == ("RequestLimitExceeded", failing)


def test_out_of_time_before_the_threads_start_every_set_is_kept() -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        sets = _moto_sets(ec2, 5)
        answers = list(sharing_answers(ec2, sets, Deadline(at=0.0, clock=lambda: 1.0), workers=4))
    assert answers == [None] * 5


class _SlowChecks:
    """A client whose sharing answer takes 20 ms; counts the calls that finished."""

    def __init__(self) -> None:
        self.finished = 0
        self._lock = threading.Lock()

    def describe_snapshot_attribute(self, **kwargs: Any) -> dict[str, Any]:
        time.sleep(0.02)
        with self._lock:
            self.finished += 1
        return {"CreateVolumePermissions": []}


def test_closing_the_answers_early_cancels_the_checks_not_yet_started_and_waits_for_the_rest() -> (
    None
):
    ec2 = _SlowChecks()
    sets = [[f"snap-{n:017x}"] for n in range(50)]
    answers = sharing_answers(ec2, sets, workers=2)  # type: ignore[arg-type]
    assert next(answers) == [False]
    answers.close()
    at_close = ec2.finished
    time.sleep(0.1)
    # the checks under way when the reader stopped had finished when close returned, and the
    # 40-odd queued ones were never asked
    assert ec2.finished == at_close
    assert at_close < 10
