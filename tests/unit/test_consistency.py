"""Application-consistent sets: the policy field, the exact Run Command requests (botocore's
Stubber), and the order of pre script, CreateSnapshots and post script on one instance
whatever happens between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from pydantic import ValidationError

from snapset.consistency import (
    DELIVERY_TIMEOUT_SECONDS,
    MAX_BRACKETED_CALLS,
    POST_DELIVERY_TIMEOUT_SECONDS,
    SCRIPT_WORKERS,
    PingListingFailed,
    ScriptRunner,
    list_ping_statuses,
    workers_for,
)
from snapset.deadline import Deadline
from snapset.errors import PRE_SCRIPT_FAILED, TIMEOUT, UNEXPECTED_ERROR
from snapset.outcomes import (
    Consistency,
    InstanceOutcome,
    InstanceStatus,
    ScriptResult,
    SnapshotInfo,
)
from snapset.policy import (
    SnapshotPolicy,
    SnapshotRequest,
    Trigger,
    TriggerType,
    describe_validation_error,
)
from snapset.report import ReportStatus, build_report, fit_message
from snapset.snapshots import RetryBudget, RunLookups, run_lookups, snapshot_instance
from snapset.targets import AttachedVolume, Instance

IID = "i-0123456789abcdef0"
ROOT = "vol-00000000000000001"
DATA = "vol-00000000000000002"
DOCUMENT = "snapset-fsfreeze"
WHEN = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


@dataclass
class FakeTime:
    """A clock the runner's waits move forward instead of sleeping."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def instance() -> Instance:
    return Instance(
        instance_id=IID,
        state="running",
        tags={},
        volumes=(AttachedVolume(ROOT, "/dev/xvda", True), AttachedVolume(DATA, "/dev/sdf", False)),
    )


def request(dry_run: bool = False, **scripts: Any) -> SnapshotRequest:
    policy = SnapshotPolicy.model_validate(
        {
            "policy": "db",
            "instance_ids": [IID],
            "dry_run": dry_run,
            "scripts": {"document": DOCUMENT, **scripts},
        }
    )
    trigger = Trigger(type=TriggerType.SCHEDULE, id="db@2026-11-27T03:00:00Z", time=WHEN)
    return SnapshotRequest(policy=policy, trigger=trigger)


@pytest.fixture
def clients() -> tuple[Any, Any, list[str]]:
    """An SSM and an EC2 client, each stubbed, and the order of the calls made on both."""
    ssm = boto3.client("ssm", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    calls: list[str] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        command = params.get("Parameters", {}).get("command", [""])[0]
        calls.append(f"{model.name}:{command}" if command else model.name)

    for client in (ssm, ec2):
        client.meta.events.register("before-parameter-build.*.*", record)
    return ssm, ec2, calls


def cid(n: int) -> str:
    """A command id in SSM's shape (36 characters)."""
    return f"{n:08d}-0000-4000-8000-000000000000"


def send(command: str, command_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """SendCommand's exact parameters for one command, and its answer."""
    params = {
        "InstanceIds": [IID],
        "DocumentName": DOCUMENT,
        "Parameters": {"command": [command]},
        # a thaw may be delivered late, a freeze may not
        "TimeoutSeconds": POST_DELIVERY_TIMEOUT_SECONDS
        if command == "post-script"
        else DELIVERY_TIMEOUT_SECONDS,
        "Comment": f"Snapset policy db: {command}",
    }
    return params, {"Command": {"CommandId": command_id}}


def invocation(command_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"CommandId": command_id, "InstanceId": IID, "Status": status, **extra}


def script(stub: Stubber, command: str, command_id: str, *statuses: str, **extra: Any) -> None:
    """One command sent, then ListCommandInvocations answering each status in turn."""
    params, answer = send(command, command_id)
    stub.add_response("send_command", answer, params)
    for status in statuses:
        poll(stub, command_id, status, **extra)


def poll(stub: Stubber, command_id: str, status: str | None, **extra: Any) -> None:
    """One ListCommandInvocations for the command on the instance (None: not listed yet)."""
    listed = [] if status is None else [invocation(command_id, status, **extra)]
    stub.add_response(
        "list_command_invocations",
        {"CommandInvocations": listed},
        {"CommandId": command_id, "InstanceId": IID, "Details": True},
    )


def failed_plugin(code: int, output: str) -> dict[str, Any]:
    plugin = {"Name": "freeze_or_thaw", "Status": "Failed", "ResponseCode": code, "Output": output}
    return {"StatusDetails": "Failed", "CommandPlugins": [plugin]}


def created() -> dict[str, Any]:
    return {
        "Snapshots": [
            {"SnapshotId": "snap-00000000000000001", "VolumeId": ROOT, "State": "pending"},
            {"SnapshotId": "snap-00000000000000002", "VolumeId": DATA, "State": "pending"},
        ]
    }


def lookups(ping: str | None = "Online") -> RunLookups:
    return RunLookups(
        existing_sets={}, tag_excluded={}, ping_statuses={} if ping is None else {IID: ping}
    )


def snapshot(
    ssm: Any,
    ec2: Any,
    req: SnapshotRequest,
    time: FakeTime,
    *,
    found: RunLookups | None = None,
    budget: RetryBudget | None = None,
) -> InstanceOutcome:
    runner = ScriptRunner(ssm, req.policy.scripts, "db", sleep=time.sleep, clock=time.clock)  # type: ignore[arg-type]
    return snapshot_instance(
        ec2,
        req,
        instance(),
        budget or RetryBudget(sleep=time.sleep),
        ec2_create=ec2,
        lookups=found or lookups(),
        scripts=runner,
    )


def consistency_tag(consistency: str) -> list[dict[str, Any]]:
    return [
        {
            "ResourceType": "snapshot",
            "Tags": [
                {"Key": "snapset:policy", "Value": "db"},
                {"Key": "snapset:trigger-id", "Value": "db@2026-11-27T03:00:00Z"},
                {"Key": "snapset:instance-id", "Value": IID},
                {"Key": "snapset:consistency", "Value": consistency},
            ],
        }
    ]


def create_params(consistency: str, dry_run: bool = False) -> dict[str, Any]:
    return {
        "InstanceSpecification": {"InstanceId": IID, "ExcludeBootVolume": False},
        "TagSpecifications": consistency_tag(consistency),
        "DryRun": dry_run,
        "CopyTagsFromSource": "volume",
    }


# --- the policy field ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scripts", "named"),
    [
        ({"document": "ab"}, "scripts.document"),
        ({"document": "bad name!"}, "scripts.document"),
        ({"document": "AWS_VSS_BACKUP"}, "AWS_VSS_BACKUP"),
        ({"document": DOCUMENT, "timeout_seconds": 9}, "scripts.timeout_seconds"),
        ({"document": DOCUMENT, "timeout_seconds": 121}, "scripts.timeout_seconds"),
        ({"document": DOCUMENT, "max_retries": 4}, "scripts.max_retries"),
        ({"document": DOCUMENT, "stages": []}, "scripts.stages"),
        ({"document": DOCUMENT, "stages": ["pre", "pre"]}, "scripts.stages"),
        ({"document": DOCUMENT, "stages": ["during"]}, "scripts.stages"),
        ({"document": DOCUMENT, "on_script_failure": "ignore"}, "scripts.on_script_failure"),
        (
            {"document": DOCUMENT, "stages": ["post"], "on_script_failure": "skip"},
            "on_script_failure",
        ),
        ({"document": DOCUMENT, "handler": "x"}, "scripts.handler"),
    ],
)
def test_a_bad_scripts_field_names_itself(scripts: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as err:
        SnapshotPolicy.model_validate({"policy": "db", "instance_ids": [IID], "scripts": scripts})
    assert named in describe_validation_error(err.value)


def test_the_scripts_field_takes_dlm_documents_by_name_or_arn_with_dlm_defaults() -> None:
    arn = "arn:aws:ssm:us-east-1:111122223333:document/shared-freeze"
    for document in (DOCUMENT, arn, "AWSSystemsManagerSAP-CreateDLMSnapshotForSAPHANA"):
        policy = SnapshotPolicy.model_validate(
            {"policy": "db", "instance_ids": [IID], "scripts": {"document": document}}
        )
        assert policy.scripts is not None
        assert policy.scripts.document == document
        assert [s.value for s in policy.scripts.stages] == ["pre", "post"]
        assert policy.scripts.timeout_seconds == 10
        assert policy.scripts.max_retries == 0
        assert policy.scripts.on_script_failure.value == "crash_consistent"


# --- one stage's requests --------------------------------------------------------------------


def runner(ssm: Any, req: SnapshotRequest, time: FakeTime) -> ScriptRunner:
    assert req.policy.scripts is not None
    return ScriptRunner(ssm, req.policy.scripts, "db", sleep=time.sleep, clock=time.clock)


def test_a_stage_sends_the_document_to_one_instance_and_polls_until_it_ends() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        script(stub, "pre-script", cid(1), "Pending", "InProgress", "Success")
        result = runner(ssm, request(), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert (result.status, result.attempts, result.command_id) == ("Success", 1, cid(1))
    assert result.error is None
    # quick polls first (a frozen instance waits for its pre script's end to be noticed)
    assert time.slept == [0.25, 0.25, 0.5]


def test_an_invocation_not_listed_yet_and_a_throttled_poll_are_polled_again() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        params, answer = send("pre-script", cid(1))
        stub.add_response("send_command", answer, params)
        poll(stub, cid(1), None)
        stub.add_client_error("list_command_invocations", "ThrottlingException", "slow", 400)
        poll(stub, cid(1), "Success")
        result = runner(ssm, request(), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert result.status == "Success"


def test_a_pre_script_past_its_timeout_is_cancelled_and_followed_until_it_cannot_run() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        # Polled at 0.25, 0.5, 1, 1.5, 2.5, ... 9.5 and at the timeout, 10: 13 times.
        script(stub, "pre-script", cid(1), *["InProgress"] * 13)
        stub.add_response("cancel_command", {}, {"CommandId": cid(1), "InstanceIds": [IID]})
        poll(stub, cid(1), "Cancelling")
        poll(stub, cid(1), "Cancelled")
        result = runner(ssm, request(timeout_seconds=10), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert (result.status, result.command_id) == ("TimedOut", cid(1))
    assert result.error is not None
    assert "did not end within 10 s" in result.error.message
    assert "cancelled" in result.error.message


def test_a_pre_script_that_ends_while_being_cancelled_counts_as_done() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        script(stub, "pre-script", cid(1), *["InProgress"] * 13)
        stub.add_response("cancel_command", {}, {"CommandId": cid(1), "InstanceIds": [IID]})
        poll(stub, cid(1), "Success")  # cancelling is not guaranteed: the freeze happened
        result = runner(ssm, request(timeout_seconds=10), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert result.status == "Success"


def test_a_post_script_past_its_timeout_is_never_cancelled() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        script(stub, "post-script", cid(1), *["InProgress"] * 13)
        result = runner(ssm, request(timeout_seconds=10), time).run(IID, "post-script")
        stub.assert_no_pending_responses()  # no CancelCommand: a thaw is left to finish
    assert result.status == "TimedOut"
    assert result.error is not None
    assert "left to end" in result.error.message


def test_a_failed_script_reports_its_exit_code_and_output() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        script(stub, "pre-script", cid(1), "Failed", **failed_plugin(3, "fsfreeze: busy"))
        result = runner(ssm, request(), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert (result.status, result.attempts) == ("Failed", 1)
    assert result.error is not None
    assert result.error.code == "ScriptFailed"
    assert IID in result.error.message
    assert "exit code 3" in result.error.message
    assert "fsfreeze: busy" in result.error.message


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [("InvalidDocument", 400, "NotSent"), ("InternalServerError", 500, "SendFailed")],
)
def test_a_refused_send_command_made_no_command_and_a_failed_one_may_have(
    code: str, status: int, expected: str
) -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        stub.add_client_error("send_command", code, "no luck", status)
        result = runner(ssm, request(max_retries=3), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert result.status == expected
    assert result.error is not None
    assert result.error.code == code
    assert "no luck" in result.error.message


def test_the_run_lists_the_instances_ssm_manages_fifty_a_call() -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    ids = [f"i-{n:017x}" for n in range(120)]
    with Stubber(ssm) as stub:
        for start in (0, 50, 100):
            chunk = ids[start : start + 50]
            stub.add_response(
                "describe_instance_information",
                {
                    "InstanceInformationList": [
                        {"InstanceId": i, "PingStatus": "Online"} for i in chunk[:-1]
                    ]
                    + [{"InstanceId": chunk[-1], "PingStatus": "ConnectionLost"}]
                },
                {"Filters": [{"Key": "InstanceIds", "Values": chunk}], "MaxResults": 50},
            )
        statuses = list_ping_statuses(ssm, ids)
        stub.assert_no_pending_responses()
    assert len(statuses) == 120
    assert statuses[ids[49]] == "ConnectionLost"
    assert statuses[ids[0]] == "Online"


def test_only_a_policy_with_scripts_lists_managed_instances_and_a_failed_listing_is_a_value() -> (
    None
):
    ssm = boto3.client("ssm", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    plain = SnapshotRequest(
        policy=SnapshotPolicy.model_validate({"policy": "db", "instance_ids": [IID]}),
        trigger=request().trigger,
    )
    with Stubber(ssm) as stub:
        assert (
            run_lookups(ec2, plain, [instance()], first_delivery=True, ssm=ssm).ping_statuses
            is None
        )
        stub.add_client_error("describe_instance_information", "AccessDeniedException", "denied")
        found = run_lookups(ec2, request(), [instance()], first_delivery=True, ssm=ssm)
        stub.assert_no_pending_responses()
    assert isinstance(found.ping_statuses, PingListingFailed)
    assert found.ping_statuses.code == "AccessDeniedException"
    assert "DescribeInstanceInformation" in found.ping_statuses.message


# --- pre script, CreateSnapshots, post script --------------------------------------------------


def test_pre_script_then_create_snapshots_then_post_script(clients: Any) -> None:
    ssm, ec2, calls = clients
    time = FakeTime()
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Success")
        e.add_response("create_snapshots", created(), create_params("application"))
        script(s, "post-script", cid(2), "Success")
        outcome = snapshot(ssm, ec2, request(), time)
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls == [
        "SendCommand:pre-script",
        "ListCommandInvocations",
        "CreateSnapshots",
        "SendCommand:post-script",
        "ListCommandInvocations",
    ]
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.consistency is Consistency.APPLICATION
    assert [(r.command, r.status) for r in outcome.scripts] == [
        ("pre-script", "Success"),
        ("post-script", "Success"),
    ]
    assert not outcome.script_failed


def test_the_post_script_runs_after_a_failed_create_snapshots(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Success")
        e.add_client_error("create_snapshots", "InvalidParameterValue", "bad", 400)
        script(s, "post-script", cid(2), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls[-2:] == ["SendCommand:post-script", "ListCommandInvocations"]
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == "InvalidParameterValue"
    assert [r.command for r in outcome.scripts] == ["pre-script", "post-script"]


def test_the_post_script_runs_after_an_exception_in_create_snapshots(clients: Any) -> None:
    ssm, ec2, calls = clients

    def explode(**_: Any) -> None:
        raise RuntimeError("bug between the stages")

    ec2.meta.events.register("before-call.ec2.CreateSnapshots", explode)
    with Stubber(ssm) as s:
        script(s, "pre-script", cid(1), "Success")
        script(s, "post-script", cid(2), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
    assert calls == [
        "SendCommand:pre-script",
        "ListCommandInvocations",
        "CreateSnapshots",
        "SendCommand:post-script",
        "ListCommandInvocations",
    ]
    assert outcome.error is not None
    assert outcome.error.code == UNEXPECTED_ERROR
    assert [(r.command, r.status) for r in outcome.scripts][-1] == ("post-script", "Success")


def test_a_refused_call_is_retried_between_its_own_stages(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Success")
        e.add_client_error("create_snapshots", "RequestLimitExceeded", "slow down", 503)
        script(s, "post-script", cid(2), "Success")
        script(s, "pre-script", cid(3), "Success")
        e.add_response("create_snapshots", created(), create_params("application"))
        script(s, "post-script", cid(4), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    # never frozen while the call waits to be retried
    assert [c for c in calls if c != "ListCommandInvocations"] == [
        "SendCommand:pre-script",
        "CreateSnapshots",
        "SendCommand:post-script",
        "SendCommand:pre-script",
        "CreateSnapshots",
        "SendCommand:post-script",
    ]
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.consistency is Consistency.APPLICATION


def test_skip_takes_no_set_when_the_pre_script_fails_and_still_runs_the_post_script(
    clients: Any,
) -> None:
    ssm, ec2, calls = clients
    failed = failed_plugin(1, "no mysql")
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Failed", **failed)
        script(s, "post-script", cid(2), "Success")
        outcome = snapshot(ssm, ec2, request(on_script_failure="skip"), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert "CreateSnapshots" not in calls
    assert outcome.status is InstanceStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == PRE_SCRIPT_FAILED
    assert "no mysql" in outcome.error.message
    assert "skip" in outcome.error.message
    assert [r.command for r in outcome.scripts] == ["pre-script", "post-script"]


def test_crash_consistent_takes_the_set_anyway_and_says_so(clients: Any) -> None:
    ssm, ec2, _ = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Failed", **failed_plugin(1, "locked"))
        e.add_response("create_snapshots", created(), create_params("crash"))
        script(s, "post-script", cid(2), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.consistency is Consistency.CRASH
    assert outcome.script_failed
    report = build_report("db", request().trigger, False, [outcome])
    assert report.status is ReportStatus.PARTIAL
    assert report.summary.crash_consistent == 1
    assert report.summary.script_failures == 1


@pytest.mark.parametrize(
    ("ping", "why"),
    [(None, "not managed by SSM"), ("ConnectionLost", "PingStatus ConnectionLost")],
)
def test_an_instance_ssm_cannot_reach_gets_no_command(
    clients: Any, ping: str | None, why: str
) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        skipped = snapshot(
            ssm, ec2, request(on_script_failure="skip"), FakeTime(), found=lookups(ping)
        )
        e.add_response("create_snapshots", created(), create_params("crash"))
        taken = snapshot(ssm, ec2, request(), FakeTime(), found=lookups(ping))
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls == ["CreateSnapshots"]
    assert skipped.status is InstanceStatus.FAILED
    assert skipped.error is not None
    assert why in skipped.error.message
    assert IID in skipped.error.message
    assert taken.status is InstanceStatus.STARTED
    assert taken.consistency is Consistency.CRASH
    assert [(r.command, r.status) for r in taken.scripts] == [("pre-script", "NotManaged")]


def test_a_dry_run_sends_dry_run_once_and_takes_no_snapshot(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "dry-run", cid(1), "Success")
        e.add_client_error(
            "create_snapshots",
            "DryRunOperation",
            "would have succeeded",
            412,
            expected_params=create_params("application", dry_run=True),
        )
        outcome = snapshot(ssm, ec2, request(dry_run=True), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls == ["SendCommand:dry-run", "ListCommandInvocations", "CreateSnapshots"]
    assert outcome.status is InstanceStatus.DRY_RUN_OK
    assert outcome.consistency is Consistency.APPLICATION


def test_a_post_only_policy_runs_its_script_after_the_call(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        e.add_response("create_snapshots", created(), create_params("crash"))
        script(s, "post-script", cid(1), "Success")
        outcome = snapshot(ssm, ec2, request(stages=["post"]), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls == ["CreateSnapshots", "SendCommand:post-script", "ListCommandInvocations"]
    assert outcome.consistency is Consistency.CRASH
    assert not outcome.script_failed


def test_no_script_starts_without_time_for_both_stages_and_the_call(clients: Any) -> None:
    ssm, ec2, calls = clients
    time = FakeTime()
    # 2 pre attempts of 30 + 15 s with a 30 s delivery window each (150 s), a thaw after the
    # failed first (2 attempts of 45 s: 90 s), the call (25 s) and the post (90 s): 355 s.
    req = request(timeout_seconds=30, max_retries=1)
    budget = RetryBudget(deadline=Deadline.after(354, clock=time.clock), sleep=time.sleep)
    with Stubber(ssm) as s, Stubber(ec2) as e:
        outcome = snapshot(ssm, ec2, req, time, budget=budget)
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls == []
    assert outcome.error is not None
    assert outcome.error.code == TIMEOUT
    assert "355 s" in outcome.error.message


def test_a_failed_post_script_keeps_its_instance_in_a_trimmed_message() -> None:
    ok = InstanceOutcome(
        instance_id="i-00000000000000001",
        status=InstanceStatus.STARTED,
        consistency=Consistency.APPLICATION,
        reason="x" * 5000,
    )
    frozen = ok.model_copy(
        update={
            "instance_id": "i-00000000000000000",
            "scripts": (
                ScriptResult(command="pre-script", status="Success"),
                ScriptResult(command="post-script", status="Failed"),
            ),
        }
    )
    report = build_report("db", request().trigger, False, [ok, frozen])
    assert report.status is ReportStatus.PARTIAL
    assert report.script_failures == (frozen,)
    fitted, _ = fit_message(report, limit=len(frozen.model_dump_json()) + 1500)
    assert [i.instance_id for i in fitted.instances] == [frozen.instance_id]
    assert fitted.trimmed == 1


def test_a_run_with_scripts_waits_on_more_instances_at_once() -> None:
    assert workers_for(request().policy, 8) == SCRIPT_WORKERS
    assert workers_for(request().policy, 64) == 64
    plain = SnapshotPolicy.model_validate({"policy": "db", "instance_ids": [IID]})
    assert workers_for(plain, 8) == 8


def test_a_failed_pre_script_is_thawed_before_it_is_sent_again(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Failed", **failed_plugin(1, "half frozen"))
        script(s, "post-script", cid(2), "Success")
        script(s, "pre-script", cid(3), "Success")
        e.add_response("create_snapshots", created(), create_params("application"))
        script(s, "post-script", cid(4), "Success")
        outcome = snapshot(ssm, ec2, request(max_retries=1), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    # as DLM retries the whole creation, pre and post scripts included
    assert [c for c in calls if c != "ListCommandInvocations"] == [
        "SendCommand:pre-script",
        "SendCommand:post-script",
        "SendCommand:pre-script",
        "CreateSnapshots",
        "SendCommand:post-script",
    ]
    assert outcome.consistency is Consistency.APPLICATION
    assert [(r.command, r.status, r.attempts) for r in outcome.scripts] == [
        ("pre-script", "Failed", 1),
        ("post-script", "Success", 1),
        ("pre-script", "Success", 2),
        ("post-script", "Success", 1),
    ]


def test_a_thaw_that_may_not_have_been_sent_is_sent_again(clients: Any) -> None:
    ssm, ec2, _ = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "pre-script", cid(1), "Success")
        e.add_response("create_snapshots", created(), create_params("application"))
        s.add_client_error("send_command", "InternalServerError", "oops", 500)
        script(s, "post-script", cid(2), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert [(r.command, r.status, r.attempts) for r in outcome.scripts] == [
        ("pre-script", "Success", 1),
        ("post-script", "Success", 2),
    ]
    assert not outcome.script_failed


def test_a_pre_script_ssm_refused_needs_no_thaw(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        s.add_client_error("send_command", "AccessDeniedException", "not this instance", 400)
        e.add_response("create_snapshots", created(), create_params("crash"))
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls == ["SendCommand:pre-script", "CreateSnapshots"]
    [pre] = outcome.scripts
    assert (pre.status, pre.error.code if pre.error else None) == (
        "NotSent",
        "AccessDeniedException",
    )
    assert outcome.consistency is Consistency.CRASH


def test_a_redelivery_that_finds_the_set_thaws_the_instance_again(clients: Any) -> None:
    ssm, ec2, calls = clients
    earlier = SnapshotInfo(snapshot_id="snap-00000000000000001", volume_id=ROOT)
    found = RunLookups(
        existing_sets={IID: (earlier,)},
        tag_excluded={},
        recheck=True,
        ping_statuses={IID: "Online"},
    )
    with Stubber(ssm) as s, Stubber(ec2) as e:
        script(s, "post-script", cid(1), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime(), found=found)
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    # the earlier delivery may have died between its scripts: no freeze, no second set
    assert calls == ["SendCommand:post-script", "ListCommandInvocations"]
    assert outcome.status is InstanceStatus.STARTED
    assert outcome.snapshots == (earlier,)


def test_a_call_refused_again_and_again_stops_freezing_the_instance(clients: Any) -> None:
    ssm, ec2, calls = clients
    with Stubber(ssm) as s, Stubber(ec2) as e:
        for n in range(MAX_BRACKETED_CALLS):
            script(s, "pre-script", cid(2 * n + 1), "Success")
            e.add_client_error("create_snapshots", "RequestLimitExceeded", "slow down", 503)
            script(s, "post-script", cid(2 * n + 2), "Success")
        outcome = snapshot(ssm, ec2, request(), FakeTime())
        s.assert_no_pending_responses()
        e.assert_no_pending_responses()
    assert calls.count("CreateSnapshots") == MAX_BRACKETED_CALLS
    assert outcome.error is not None
    assert outcome.error.code == TIMEOUT
    assert f"failed {MAX_BRACKETED_CALLS} times between its scripts" in outcome.error.message


def test_an_unreadable_pre_script_is_cancelled_and_reported_with_the_error() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        params, answer = send("pre-script", cid(1))
        stub.add_response("send_command", answer, params)
        stub.add_client_error("list_command_invocations", "AccessDeniedException", "no", 400)
        # cancelling fails too: reported all the same, never raised
        stub.add_client_error("cancel_command", "InvalidCommandId", "gone", 400)
        stub.add_client_error("list_command_invocations", "AccessDeniedException", "no", 400)
        result = runner(ssm, request(), time).run(IID, "pre-script", attempt=2)
        stub.assert_no_pending_responses()
    assert (result.status, result.attempts, result.command_id) == ("NoResult", 2, cid(1))
    assert result.error is not None
    assert result.error.code == "AccessDeniedException"
    assert result.error.message == (
        f"{IID}: pre-script: ListCommandInvocations failed: no; the command was cancelled"
    )


def test_a_scripts_output_in_the_error_is_cut_to_its_last_useful_length() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    long = "x" * 299 + "yz"
    with Stubber(ssm) as stub:
        script(stub, "pre-script", cid(1), "Failed", **failed_plugin(2, f"  {long}  "))
        result = runner(ssm, request(), time).run(IID, "pre-script")
        stub.assert_no_pending_responses()
    assert result.error is not None
    assert result.error.message == f"{IID}: pre-script Failed (exit code 2): {'x' * 297}..."


def test_a_timed_out_script_names_its_last_status() -> None:
    ssm, time = boto3.client("ssm", region_name="us-east-1"), FakeTime()
    with Stubber(ssm) as stub:
        script(stub, "post-script", cid(1), *["Delayed"] * 13)
        result = runner(ssm, request(timeout_seconds=10), time).run(IID, "post-script")
        stub.assert_no_pending_responses()
    assert result.error is not None
    assert (result.error.code, result.error.message) == (
        "ScriptTimedOut",
        f"{IID}: post-script did not end within 10 s (last status Delayed); the command was "
        "left to end",
    )
    assert time.now == 1010.0


@pytest.mark.parametrize(
    ("ping", "code", "message"),
    [
        (
            None,
            "InstanceNotManaged",
            f"{IID}: pre-script not sent, it is not managed by SSM (not in "
            "DescribeInstanceInformation: no SSM agent, or no instance profile that lets it "
            "register)",
        ),
        (
            "Inactive",
            "InstanceNotManaged",
            f"{IID}: pre-script not sent, it is not online in SSM (PingStatus Inactive)",
        ),
        (
            PingListingFailed("ThrottlingException", "DescribeInstanceInformation failed"),
            "ThrottlingException",
            f"{IID}: pre-script not sent, DescribeInstanceInformation failed",
        ),
    ],
)
def test_an_instance_ssm_cannot_reach_is_named_with_why(
    clients: Any, ping: Any, code: str, message: str
) -> None:
    ssm, ec2, _ = clients
    found = RunLookups(
        existing_sets={},
        tag_excluded={},
        ping_statuses=ping
        if isinstance(ping, PingListingFailed)
        else ({} if ping is None else {IID: ping}),
    )
    with Stubber(ssm), Stubber(ec2) as e:
        e.add_response("create_snapshots", created(), create_params("crash"))
        outcome = snapshot(ssm, ec2, request(), FakeTime(), found=found)
    [pre] = outcome.scripts
    assert (pre.command, pre.status, pre.attempts) == ("pre-script", "NotManaged", 0)
    assert pre.error is not None
    assert (pre.error.code, pre.error.message) == (code, message)


def test_the_listing_keeps_every_page_and_an_instance_without_a_ping_status() -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    ids = [f"i-{n:017x}" for n in range(3)]
    with Stubber(ssm) as stub:
        request_params = {"Filters": [{"Key": "InstanceIds", "Values": ids}], "MaxResults": 50}
        stub.add_response(
            "describe_instance_information",
            {"InstanceInformationList": [{"InstanceId": ids[0]}], "NextToken": "t"},
            request_params,
        )
        stub.add_response(
            "describe_instance_information",
            {"InstanceInformationList": [{"InstanceId": ids[2], "PingStatus": "Online"}]},
            {**request_params, "NextToken": "t"},
        )
        statuses = list_ping_statuses(ssm, ids)
        stub.assert_no_pending_responses()
    assert statuses == {ids[0]: "", ids[2]: "Online"}
