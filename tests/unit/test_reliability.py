"""Idempotent triggers, deadline-bound retries and completion reports (in-process moto)."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError
from botocore.stub import Stubber

from localaws.fleet import DataVolume, launch_instance, snapshots_by_volume
from snapset import handler as handler_module
from snapset.clients import make_clients
from snapset.deadline import NEVER, Deadline
from snapset.errors import CREATE_UNCONFIRMED, TIMEOUT
from snapset.handler import IncompleteRun, handler
from snapset.idempotency import KEY_PREFIX
from snapset.outcomes import InstanceStatus
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.snapshots import RetryBudget, RunLookups, create_error_kind, snapshot_instance
from snapset.targets import AttachedVolume, Instance
from tests.conftest import load_event
from tests.unit.conftest import IDEMPOTENCY_TABLE, Aws, LambdaContext


def set_count(aws: Aws) -> int:
    return sum(len(v) for v in snapshots_by_volume(aws.ec2).values())


def test_redelivered_schedule_trigger_makes_one_set_and_reports_the_same_ids(
    aws: Aws, context: LambdaContext
) -> None:
    fleet = [
        launch_instance(aws.ec2, tags={"Backup": "nightly"}, data_volumes=[DataVolume()])
        for _ in range(3)
    ]
    payload = {
        "policy": "nightly",
        "target_tags": {"Backup": ["nightly"]},
        "schedule": {"scheduled_time": "2026-11-27T03:00:00Z", "schedule_arn": "arn:x"},
    }
    first = handler(payload, context)
    for _ in range(9):
        again = handler(payload, context)
        assert again["instances"] == first["instances"]
    assert set_count(aws) == 2 * len(fleet)
    assert first["trigger"]["id"] == "nightly@2026-11-27T03:00:00Z"


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        ("RequestLimitExceeded", 503, TIMEOUT),  # throttled until the invocation's time ran out
        ("InternalError", 500, CREATE_UNCONFIRMED),  # no time left to wait and look again
    ],
)
def test_retry_redoes_only_instances_that_did_not_start(
    aws: Aws, context: LambdaContext, refusal: str, status: int, code: str
) -> None:
    good = launch_instance(aws.ec2, tags={"Backup": "x"})
    bad = launch_instance(aws.ec2, tags={"Backup": "x"}, data_volumes=[DataVolume()])
    payload = {"policy": "p", "target_tags": {"Backup": ["x"]}, "request_id": "retry-1"}
    creates: list[str] = []
    refusing = [True]

    def create_snapshots(params: dict[str, Any], **_: Any) -> None:
        instance_id = params["InstanceSpecification"]["InstanceId"]
        creates.append(instance_id)
        if refusing[0] and instance_id == bad.instance_id:
            error = {"Code": refusal, "Message": "refused"}
            meta = {"HTTPStatusCode": status}
            raise ClientError({"Error": error, "ResponseMetadata": meta}, "CreateSnapshots")

    events = handler_module.session().events
    events.register("provide-client-params.ec2.CreateSnapshots", create_snapshots)
    try:
        # 4 s of invocation time past the safety margin: too little to settle a server error
        # (5 s), and throttling is retried until it runs out
        context.remaining_ms = 10_000 + 4_000
        with pytest.raises(IncompleteRun, match=bad.instance_id):
            handler(payload, context)
        (note,) = aws.messages()
        first = {i["instance_id"]: i for i in json.loads(note["Message"])["instances"]}
        assert first[good.instance_id]["status"] == "started"
        assert first[bad.instance_id]["error"]["code"] == code
        assert set_count(aws) == 1
        assert creates.count(good.instance_id) == 1

        refusing[0] = False  # the redelivery finds EC2 willing again
        context.remaining_ms = 300_000
        creates.clear()
        second = handler(payload, context)
    finally:
        events.unregister("provide-client-params.ec2.CreateSnapshots", create_snapshots)
    again = {i["instance_id"]: i for i in second["instances"]}
    # bad, which did not start, was done now; good, which had started, was not done again and
    # reports its original set
    assert creates == [bad.instance_id]
    assert again[bad.instance_id]["status"] == "started"
    assert len(again[bad.instance_id]["snapshots"]) == 2
    assert again[good.instance_id] == first[good.instance_id]
    assert set_count(aws) == 1 + 2


def test_concurrent_duplicate_deliveries_make_one_set(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each delivery in its own execution environment, as on Lambda: its own boto3 session
    # (botocore's client creation from one session is not thread-safe) and its own request id
    # (in-process moto's S3 is not thread-safe for concurrent puts of one key).
    local = threading.local()

    def own_session() -> boto3.Session:
        if not hasattr(local, "session"):
            local.session = boto3.Session()
        return local.session

    monkeypatch.setattr(handler_module, "session", own_session)
    inst = launch_instance(aws.ec2, tags={"Backup": "x"}, data_volumes=[DataVolume()])
    event = load_event("ec2-instance-state-change")
    event["detail"]["instance-id"] = inst.instance_id
    payload = {"policy": {"policy": "on-stop", "instance_ids": [inst.instance_id]}, "event": event}
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def deliver(n: int) -> None:
        # each delivery is its own invocation, with its own request id (and report object)
        own = dataclasses.replace(context, aws_request_id=f"00000000-0000-0000-0000-{n:012d}")
        try:
            results.append(handler(payload, own))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set_count(aws) == 2
    # Deliveries that found another one in progress fail, so Lambda redelivers them...
    assert all(isinstance(e, IncompleteRun) for e in errors), [repr(e) for e in errors]
    assert [r["instances"][0]["status"] for r in results].count("started") >= 1
    # ...and a redelivery reports the set the winner made.
    again = handler(payload, context)
    assert again["instances"][0]["status"] == "started"
    assert set_count(aws) == 2


def test_a_lost_idempotency_record_is_covered_by_the_tag_look_up(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "x"})
    payload = {"policy": "p", "instance_ids": [inst.instance_id], "request_id": "same"}
    first = handler(payload, context)
    # As if the first delivery crashed between CreateSnapshots and saving its record: the
    # trigger's run marker, written before anything was snapshotted, stays.
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    for item in ddb.scan(TableName=IDEMPOTENCY_TABLE)["Items"]:
        if item["id"]["S"].startswith(f"{KEY_PREFIX}#"):
            ddb.delete_item(TableName=IDEMPOTENCY_TABLE, Key={"id": item["id"]})
    second = handler(payload, context)
    assert set_count(aws) == 1
    assert (
        second["instances"][0]["snapshots"][0]["snapshot_id"]
        == (first["instances"][0]["snapshots"][0]["snapshot_id"])
    )
    assert "earlier delivery" in second["instances"][0]["reason"]


def test_out_of_time_instances_fail_with_timeout_and_the_invocation_fails(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "x"})
    context.remaining_ms = 1_000  # below the 10 s safety margin
    with pytest.raises(IncompleteRun, match=inst.instance_id):
        handler({"policy": "p", "instance_ids": [inst.instance_id]}, context)
    (note,) = aws.messages()
    report = json.loads(note["Message"])
    assert report["instances"][0]["error"]["code"] == TIMEOUT
    assert set_count(aws) == 0


def _one_instance_request() -> tuple[SnapshotRequest, Instance]:
    iid = "i-0123456789abcdef0"
    policy = SnapshotPolicy(policy="p", instance_ids=[iid])
    trigger = Trigger(type=TriggerType.MANUAL, id="t-1", time=datetime(2026, 1, 1, tzinfo=UTC))
    inst = Instance(
        iid, "running", {}, (AttachedVolume("vol-0123456789abcdef0", "/dev/xvda", True),)
    )
    return SnapshotRequest(policy=policy, trigger=trigger), inst


# What a trigger's first delivery knows: no set of it exists, no volume is excluded by tag.
FIRST_DELIVERY = RunLookups(existing_sets={}, tag_excluded={})
# The one instance's own lookup, made only after a CreateSnapshots that may have made its set.
LOOK_FOR_THE_SET = {
    "OwnerIds": ["self"],
    "Filters": [
        {"Name": "tag:snapset:trigger-id", "Values": ["t-1"]},
        {"Name": "tag:snapset:instance-id", "Values": ["i-0123456789abcdef0"]},
        {"Name": "tag:snapset:policy", "Values": ["p"]},
    ],
}


@pytest.mark.parametrize(
    ("code", "unconfirmed"),
    [
        ("RequestLimitExceeded", False),
        ("SnapshotCreationPerVolumeRateExceeded", False),
        ("InternalError", True),
    ],
)
def test_transient_errors_are_retried_within_the_budget(code: str, unconfirmed: bool) -> None:
    request, inst = _one_instance_request()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    sleeps: list[float] = []
    budget = RetryBudget(deadline=NEVER, sleep=sleeps.append)
    with Stubber(ec2) as stub:
        for attempt in range(3):
            # a refused call made no set: only after a server error is the set looked for
            if unconfirmed and attempt > 0:
                stub.add_response("describe_snapshots", {"Snapshots": []}, LOOK_FOR_THE_SET)
            stub.add_client_error("create_snapshots", code, http_status_code=400)
        if unconfirmed:
            stub.add_response("describe_snapshots", {"Snapshots": []}, LOOK_FOR_THE_SET)
        stub.add_response(
            "create_snapshots",
            {
                "Snapshots": [
                    {"SnapshotId": "snap-0123456789abcdef0", "VolumeId": "vol-0123456789abcdef0"}
                ]
            },
        )
        outcome = snapshot_instance(
            ec2, request, inst, budget, ec2_create=ec2, lookups=FIRST_DELIVERY
        )
        stub.assert_no_pending_responses()
    assert outcome.status is InstanceStatus.STARTED
    assert len(sleeps) == 3
    assert all(0 <= s <= 20 for s in sleeps)


def test_a_throttled_retry_after_a_server_error_still_looks_first() -> None:
    request, inst = _one_instance_request()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    budget = RetryBudget(deadline=NEVER, sleep=lambda s: None)
    with Stubber(ec2) as stub:
        stub.add_client_error("create_snapshots", "InternalError", http_status_code=500)
        stub.add_response("describe_snapshots", {"Snapshots": []}, LOOK_FOR_THE_SET)
        stub.add_client_error("create_snapshots", "RequestLimitExceeded", http_status_code=503)
        # the set the server error made may only now be visible (DescribeSnapshots is
        # eventually consistent): looked for again, found, not made twice
        made = {"SnapshotId": "snap-0123456789abcdef0", "VolumeId": "vol-0123456789abcdef0"}
        stub.add_response("describe_snapshots", {"Snapshots": [made]}, LOOK_FOR_THE_SET)
        outcome = snapshot_instance(
            ec2, request, inst, budget, ec2_create=ec2, lookups=FIRST_DELIVERY
        )
        stub.assert_no_pending_responses()
    assert outcome.status is InstanceStatus.STARTED
    assert [s.snapshot_id for s in outcome.snapshots] == ["snap-0123456789abcdef0"]
    # this delivery's own call made it: what it captured is known
    assert outcome.reason == "CreateSnapshots failed but had made the set"
    assert outcome.consistency == "crash"


def test_transient_error_past_the_deadline_is_a_timeout() -> None:
    request, inst = _one_instance_request()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    now = [100.0]
    budget = RetryBudget(
        deadline=Deadline(100.5, clock=lambda: now[0]), base_delay=1.0, sleep=lambda s: None
    )
    with Stubber(ec2) as stub:
        for _ in range(20):
            stub.add_client_error("create_snapshots", "ConcurrentSnapshotLimitExceeded")
        outcome = snapshot_instance(
            ec2, request, inst, budget, ec2_create=ec2, lookups=FIRST_DELIVERY
        )
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == TIMEOUT
    assert "ConcurrentSnapshotLimitExceeded" in outcome.error.message


def test_permanent_errors_are_not_retried() -> None:
    request, inst = _one_instance_request()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    with Stubber(ec2) as stub:
        stub.add_client_error("create_snapshots", "UnauthorizedOperation", http_status_code=403)
        outcome = snapshot_instance(
            ec2,
            request,
            inst,
            RetryBudget(sleep=lambda s: None),
            ec2_create=ec2,
            lookups=FIRST_DELIVERY,
        )
        stub.assert_no_pending_responses()
    assert outcome.error is not None
    assert outcome.error.code == "UnauthorizedOperation"


def test_completion_event_reports_snapset_sets_and_ignores_foreign_ones(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2, tags={"Backup": "x"}, data_volumes=[DataVolume()])
    run = handler({"policy": "p", "instance_ids": [inst.instance_id], "request_id": "r1"}, context)
    aws.messages()
    ours = [s["snapshot_id"] for s in run["instances"][0]["snapshots"]]
    foreign = aws.ec2.create_snapshot(VolumeId=inst.root_volume_id)["SnapshotId"]
    event = load_event("ebs-multi-volume-completion-succeeded")
    event["detail"]["snapshots"] = [
        {
            "snapshot_id": f"arn:aws:ec2::us-east-1:snapshot/{sid}",
            "source": "arn:aws:ec2::us-east-1:volume/vol-0123456789abcdef0",
            "status": "completed",
        }
        for sid in [*ours, foreign]
    ]
    result = handler(event, context)
    (note,) = aws.messages()
    body = json.loads(note["Message"])
    assert body["kind"] == "completion"
    assert body["policy"] == "p"
    assert body["instance_id"] == inst.instance_id
    assert body["trigger"] == {"id": "r1"}
    assert body["result"] == "succeeded"
    assert sorted(s["snapshot_id"] for s in body["snapshots"]) == sorted(ours)
    assert note["MessageAttributes"]["kind"]["Value"] == "completion"
    assert len(result["reports"]) == 1

    foreign_only = load_event("ebs-snapshot-notification-failed")
    foreign_only["detail"]["snapshot_id"] = f"arn:aws:ec2::us-east-1:snapshot/{foreign}"
    assert handler(foreign_only, context)["reports"] == []
    assert aws.messages() == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: e["detail"].pop("snapshots"), "snapshots"),
        (lambda e: e["detail"].update(result="maybe"), "result"),
        (
            lambda e: e["detail"]["snapshots"][0].update(snapshot_id="arn:aws:ec2::x:volume/vol-1"),
            "snap",
        ),
    ],
)
def test_malformed_completion_event_is_rejected_naming_the_field(
    aws: Aws, context: LambdaContext, mutate: Any, needle: str
) -> None:
    event = load_event("ebs-multi-volume-completion-failed")
    mutate(event)
    with pytest.raises(ValueError, match=needle):
        handler(event, context)


def test_server_error_waits_to_settle_then_finds_the_set_instead_of_making_another() -> None:
    request, inst = _one_instance_request()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    sleeps: list[float] = []
    made = {"SnapshotId": "snap-0123456789abcdef0", "VolumeId": "vol-0123456789abcdef0"}
    with Stubber(ec2) as stub:
        stub.add_client_error("create_snapshots", "InternalError", http_status_code=500)
        # it was created after all
        stub.add_response("describe_snapshots", {"Snapshots": [made]}, LOOK_FOR_THE_SET)
        outcome = snapshot_instance(
            ec2,
            request,
            inst,
            RetryBudget(sleep=sleeps.append),
            ec2_create=ec2,
            lookups=FIRST_DELIVERY,
        )
        stub.assert_no_pending_responses()
    assert outcome.status is InstanceStatus.STARTED
    assert [s.snapshot_id for s in outcome.snapshots] == ["snap-0123456789abcdef0"]
    assert sleeps
    assert sleeps[0] >= 5.0


def test_server_error_without_time_to_settle_is_left_to_the_next_delivery() -> None:
    request, inst = _one_instance_request()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    now = [0.0]
    budget = RetryBudget(deadline=Deadline(3.0, clock=lambda: now[0]), sleep=lambda s: None)
    with Stubber(ec2) as stub:
        stub.add_client_error("create_snapshots", "ServiceUnavailable", http_status_code=503)
        outcome = snapshot_instance(
            ec2, request, inst, budget, ec2_create=ec2, lookups=FIRST_DELIVERY
        )
    assert outcome.error is not None
    assert outcome.error.code == CREATE_UNCONFIRMED
    assert outcome.error.retry_on_redelivery


def test_create_client_never_resends_create_snapshots_itself() -> None:
    clients = make_clients(region="us-east-1")
    assert clients.ec2_create.meta.config.retries["total_max_attempts"] == 1
    assert clients.ec2.meta.config.retries["mode"] == "adaptive"


@pytest.mark.parametrize(
    "error", [NoCredentialsError(), ParamValidationError(report="bad")], ids=type
)
def test_client_side_errors_are_not_retried(error: Exception) -> None:
    assert create_error_kind(error) == "permanent"
    # behaviour, not the label: CreateSnapshots is tried once, nothing waits, the instance
    # fails with the error's own name
    ec2 = boto3.client("ec2", region_name="us-east-1")
    calls, sleeps = [], []

    def create_snapshots(**_: Any) -> Any:
        calls.append(1)
        raise error

    creator = type("Creator", (), {"create_snapshots": staticmethod(create_snapshots)})()
    request, inst = _one_instance_request()
    with Stubber(ec2):
        outcome = snapshot_instance(
            ec2,
            request,
            inst,
            RetryBudget(sleep=sleeps.append),
            ec2_create=creator,
            lookups=FIRST_DELIVERY,
        )
    assert (len(calls), sleeps) == (1, [])
    assert outcome.error is not None
    assert outcome.error.code == type(error).__name__


def test_manual_payload_without_request_id_keeps_lambdas_request_id_across_retries(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2)
    context.aws_request_id = "6f0c7c5e-1111-2222-3333-444455556666"
    payload = {"policy": "p", "instance_ids": [inst.instance_id]}
    first = handler(payload, context)
    again = handler(payload, context)  # Lambda's async retry keeps the request id
    assert first["trigger"]["id"] == context.aws_request_id
    assert again["instances"] == first["instances"]
    assert set_count(aws) == 1


def test_completion_event_ignores_look_alike_tags_that_could_break_sns(
    aws: Aws, context: LambdaContext
) -> None:
    inst = launch_instance(aws.ec2)
    sid = aws.ec2.create_snapshot(
        VolumeId=inst.root_volume_id,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": "snapset:policy", "Value": "ünïcode policy"},
                    {"Key": "snapset:trigger-id", "Value": "t"},
                    {"Key": "snapset:instance-id", "Value": inst.instance_id},
                ],
            }
        ],
    )["SnapshotId"]
    event = load_event("ebs-snapshot-notification-failed")
    event["detail"]["snapshot_id"] = f"arn:aws:ec2::us-east-1:snapshot/{sid}"
    assert handler(event, context)["reports"] == []
    assert aws.messages() == []


def test_past_the_deadline_instances_cost_no_idempotency_records(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance reached after the deadline is reported Timeout without writing (and then
    deleting) its record: at fleet scale those calls would outlast the invocation."""
    fleet = [launch_instance(aws.ec2, tags={"Backup": "late"}) for _ in range(3)]
    context.remaining_ms = 5_000  # less than the 10 s safety margin: the deadline has passed
    calls: list[str] = []
    real = BaseClient._make_api_call

    def record(self: BaseClient, operation: str, params: Any) -> Any:
        calls.append(f"{self.meta.service_model.service_name}:{operation}")
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", record)
    with pytest.raises(IncompleteRun):
        handler({"policy": "p", "target_tags": {"Backup": ["late"]}}, context)
    monkeypatch.undo()
    [report] = [json.loads(m["Message"]) for m in aws.messages()]
    assert {i["error"]["code"] for i in report["instances"]} == {"Timeout"}
    assert len(report["instances"]) == len(fleet)
    assert "ec2:CreateSnapshots" not in calls
    # the run marker only: claimed, then released; no record per instance
    assert [c for c in calls if c.startswith("dynamodb:")] == [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
