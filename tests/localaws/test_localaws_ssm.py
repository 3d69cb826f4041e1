"""SSM Run Command on the local AWS (`localaws/ssm_commands.py`), written from the SSM API
reference (SendCommand, GetCommandInvocation, ListCommandInvocations, CancelCommand,
DescribeInstanceInformation), through boto3 against the server. Time is the server's frozen
clock, moved by the tests."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from localaws_testlib import Instance
from moto import mock_aws
from moto.core.base_backend import BackendDict

from localaws import ErrorFault, FaultRule, LocalAws, ssm_commands
from localaws.clock import CLOCK
from localaws.process import LocalAwsError

DOCUMENT = "SnapsetAppConsistent"
STEP = "run_pre_post_scripts"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _dlm_document(timeout_seconds: int | None = None) -> dict[str, Any]:
    """A command document following Data Lifecycle Manager's pre/post script convention."""
    inputs: dict[str, Any] = {"runCommand": ["#!/bin/bash", "echo {{ command }}"]}
    if timeout_seconds is not None:
        inputs["timeoutSeconds"] = str(timeout_seconds)
    return {
        "schemaVersion": "2.2",
        "description": "Snapset pre/post scripts",
        "parameters": {
            "executionId": {
                "type": "String",
                "default": "None",
                "allowedPattern": "^(None|[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-"
                "[a-fA-F0-9]{4}-[a-fA-F0-9]{12})$",
            },
            "command": {
                "type": "String",
                "allowedValues": ["pre-script", "post-script", "dry-run"],
            },
        },
        "mainSteps": [{"action": "aws:runShellScript", "name": STEP, "inputs": inputs}],
    }


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


@pytest.fixture(scope="session")
def _ssm_clients(local_aws_server: LocalAws) -> tuple[Any, Any]:
    strict = local_aws_server.client("ssm", max_attempts=1)
    # botocore checks lower bounds itself; this one lets them reach the server
    raw = local_aws_server.client(
        "ssm",
        config=Config(parameter_validation=False, retries={"total_max_attempts": 1}),
    )
    return strict, raw


@pytest.fixture
def ssm(aws: LocalAws, _ssm_clients: tuple[Any, Any]) -> Any:
    """SSM client without retries, the server reset, its clock frozen, the document created."""
    client = _ssm_clients[0]
    aws.freeze_clock()
    client.create_document(
        Name=DOCUMENT,
        Content=json.dumps(_dlm_document(timeout_seconds=60)),
        DocumentType="Command",
        DocumentFormat="JSON",
    )
    return client


@pytest.fixture
def raw_ssm(ssm: Any, _ssm_clients: tuple[Any, Any]) -> Any:
    """SSM client that skips botocore's own parameter validation."""
    return _ssm_clients[1]


@pytest.fixture
def instance(make_instance: Callable[..., Instance]) -> Callable[[], str]:
    def make() -> str:
        return make_instance(data_volume_tags=()).instance_id

    return make


def _send(ssm: Any, instance_id: str, command: str = "pre-script", **kwargs: Any) -> str:
    kwargs.setdefault("DocumentName", DOCUMENT)
    kwargs.setdefault("Parameters", {"command": [command]})
    kwargs.setdefault("TimeoutSeconds", 30)
    sent = ssm.send_command(InstanceIds=[instance_id], Comment=f"test {command}", **kwargs)
    command_id: str = sent["Command"]["CommandId"]
    return command_id


def _invocation(ssm: Any, command_id: str, instance_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    return found


def _status(ssm: Any, command_id: str, instance_id: str) -> tuple[str, str, int]:
    found = _invocation(ssm, command_id, instance_id)
    return found["Status"], found["StatusDetails"], found["ResponseCode"]


def _listed(ssm: Any, **kwargs: Any) -> dict[str, str]:
    rows = ssm.describe_instance_information(**kwargs)["InstanceInformationList"]
    return {row["InstanceId"]: row["PingStatus"] for row in rows}


def _events(log: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [e for e in log if e["event"] in names]


# --- DescribeInstanceInformation -------------------------------------------------------------


def test_running_instances_are_managed_and_online(ssm: Any, instance: Callable[[], str]) -> None:
    first, second = instance(), instance()
    rows = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [first, second]}], MaxResults=50
    )["InstanceInformationList"]
    assert [r["InstanceId"] for r in rows] == sorted([first, second])
    row = rows[0]
    assert row["PingStatus"] == "Online"
    assert row["PlatformType"] == "Linux"
    assert row["PlatformName"] == "Amazon Linux"
    assert row["ResourceType"] == "EC2Instance"
    assert row["IsLatestVersion"] is True
    assert re.fullmatch(r"\d+(\.\d+){2,3}", row["AgentVersion"])
    assert row["IPAddress"]
    assert row["ComputerName"].endswith(".internal")
    assert row["LastPingDateTime"].tzinfo is not None
    assert "NextToken" not in ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [first, second]}], MaxResults=50
    )


def test_pages_follow_instance_ids_with_next_token(ssm: Any, instance: Callable[[], str]) -> None:
    ids = sorted(instance() for _ in range(7))
    first = ssm.describe_instance_information(MaxResults=5)
    assert [r["InstanceId"] for r in first["InstanceInformationList"]] == ids[:5]
    second = ssm.describe_instance_information(MaxResults=5, NextToken=first["NextToken"])
    assert [r["InstanceId"] for r in second["InstanceInformationList"]] == ids[5:]
    assert "NextToken" not in second
    # the paginator Snapset uses: pages of 50 within one chunk's filter
    pages = ssm.get_paginator("describe_instance_information").paginate(
        Filters=[{"Key": "InstanceIds", "Values": ids[1:]}], PaginationConfig={"PageSize": 5}
    )
    listed = [r["InstanceId"] for p in pages for r in p["InstanceInformationList"]]
    assert listed == ids[1:]
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information(MaxResults=5, NextToken="not-a-token")
    assert _code(exc) == "InvalidNextToken"


def test_max_results_outside_5_to_50_is_refused(raw_ssm: Any, instance: Callable[[], str]) -> None:
    instance()
    for bad in (4, 51):
        with pytest.raises(ClientError) as exc:
            raw_ssm.describe_instance_information(MaxResults=bad)
        assert _code(exc) == "ValidationException"
        assert "maxResults" in str(exc.value)
    for good in (5, 50):
        page = raw_ssm.describe_instance_information(MaxResults=good)
        assert len(page["InstanceInformationList"]) == 1


def test_a_filter_takes_at_most_100_values(ssm: Any, instance: Callable[[], str]) -> None:
    iid = instance()
    values = [iid] + [f"i-{n:017x}" for n in range(99)]
    assert list(_listed(ssm, Filters=[{"Key": "InstanceIds", "Values": values}])) == [iid]
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [*values, "i-0123456789abcdef0"]}]
        )
    assert _code(exc) == "ValidationException"
    assert "less than or equal to 100" in str(exc.value)


def test_filters_and_the_legacy_filter_list(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    online, lost = instance(), instance()
    aws.set_ssm(instances={lost: {"ping_status": "ConnectionLost"}})
    assert _listed(ssm, Filters=[{"Key": "PingStatus", "Values": ["ConnectionLost"]}]) == {
        lost: "ConnectionLost"
    }
    both = [
        {"Key": "PingStatus", "Values": ["Online"]},
        {"Key": "PlatformTypes", "Values": ["Linux"]},
    ]
    assert _listed(ssm, Filters=both) == {online: "Online"}
    assert _listed(ssm, Filters=[{"Key": "PlatformTypes", "Values": ["Windows"]}]) == {}
    assert _listed(ssm, Filters=[{"Key": "ResourceType", "Values": ["EC2Instance"]}]) == {
        online: "Online",
        lost: "ConnectionLost",
    }
    legacy = [{"key": "InstanceIds", "valueSet": [lost]}]
    assert _listed(ssm, InstanceInformationFilterList=legacy) == {lost: "ConnectionLost"}
    legacy_ping = [{"key": "PingStatus", "valueSet": ["Online"]}]
    assert _listed(ssm, InstanceInformationFilterList=legacy_ping) == {online: "Online"}

    refusals = [
        ({"Filters": [{"Key": "Color", "Values": ["blue"]}]}, "InvalidFilterKey"),
        (
            {"Filters": [{"Key": "PingStatus", "Values": ["Sleeping"]}]},
            "InvalidInstanceInformationFilterValue",
        ),
        (
            {
                "Filters": [{"Key": "PingStatus", "Values": ["Online"]}],
                "InstanceInformationFilterList": legacy,
            },
            "ValidationException",
        ),
    ]
    for kwargs, code in refusals:
        with pytest.raises(ClientError) as exc:
            ssm.describe_instance_information(**kwargs)
        assert _code(exc) == code, kwargs


def test_unmanaged_and_connection_lost_instances(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    plain, hidden, lost = instance(), instance(), instance()
    aws.set_ssm(instances={hidden: {"managed": False}, lost: {"ping_status": "ConnectionLost"}})
    assert _listed(ssm) == {plain: "Online", lost: "ConnectionLost"}
    for iid in (hidden, lost):
        with pytest.raises(ClientError) as exc:
            _send(ssm, iid)
        assert _code(exc) == "InvalidInstanceId"
        assert f"Instances [[{iid}]] not in a valid state for account 123456789012" in str(
            exc.value
        )
    aws.set_ssm(instances={lost: {"ping_status": None}, hidden: None})  # injections undone
    assert _listed(ssm) == {plain: "Online", hidden: "Online", lost: "Online"}


def test_stopped_is_connection_lost_and_terminated_is_not_listed(
    ssm: Any, ec2: Any, instance: Callable[[], str]
) -> None:
    running, stopped, terminated = instance(), instance(), instance()
    ec2.stop_instances(InstanceIds=[stopped])
    ec2.terminate_instances(InstanceIds=[terminated])
    assert _listed(ssm) == {running: "Online", stopped: "ConnectionLost"}
    with pytest.raises(ClientError) as exc:
        _send(ssm, stopped)
    assert _code(exc) == "InvalidInstanceId"


# --- SendCommand validation ------------------------------------------------------------------


def test_send_command_refuses_what_aws_refuses(
    ssm: Any, raw_ssm: Any, instance: Callable[[], str]
) -> None:
    iid = instance()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"DocumentName": "NoSuchDocument"}, "InvalidDocument"),
        ({"Parameters": {"command": ["freeze"]}}, "InvalidParameters"),
        ({"Parameters": {}}, "InvalidParameters"),  # command has no default: required
        ({"Parameters": {"command": ["pre-script"], "extra": ["x"]}}, "InvalidParameters"),
        ({"Parameters": {"command": ["pre-script"], "executionId": ["nope"]}}, "InvalidParameters"),
        ({"DocumentVersion": "7"}, "InvalidDocumentVersion"),
        ({"TimeoutSeconds": 2592001}, "ValidationException"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as exc:
            _send(ssm, iid, **kwargs)
        assert _code(exc) == code, kwargs
    with pytest.raises(ClientError) as exc:
        _send(raw_ssm, iid, TimeoutSeconds=29)
    assert _code(exc) == "ValidationException"
    assert "timeoutSeconds" in str(exc.value)
    with pytest.raises(ClientError) as exc:
        ssm.send_command(
            InstanceIds=[iid] + [f"i-{n:017x}" for n in range(50)],
            DocumentName=DOCUMENT,
            Parameters={"command": ["pre-script"]},
        )
    assert _code(exc) == "ValidationException"
    with pytest.raises(ClientError) as exc:
        _send(ssm, "i-0123456789abcdef0")  # no such instance
    assert _code(exc) == "InvalidInstanceId"
    # the bounds themselves are accepted, and an AWS-owned document exists without CreateDocument
    assert _send(ssm, iid, TimeoutSeconds=30)
    assert _send(ssm, iid, TimeoutSeconds=2592000)
    assert _send(ssm, iid, DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]})
    with pytest.raises(ClientError) as exc:
        _send(
            ssm,
            iid,
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"], "executionTimeout": ["172801"]},
        )
    assert _code(exc) == "InvalidParameters"


def test_refused_sends_are_logged_with_their_code(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    with pytest.raises(ClientError):
        _send(ssm, iid, DocumentName="NoSuchDocument")
    [entry] = aws.ssm_log()
    assert entry["event"] == "SendCommand"
    assert entry["outcome"] == "InvalidDocument"
    assert entry["command_id"] is None
    assert entry["instance_id"] == iid


# --- the invocation's lifecycle --------------------------------------------------------------


def test_pending_then_in_progress_then_success_on_the_clock(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    sent = ssm.send_command(
        InstanceIds=[iid],
        DocumentName=DOCUMENT,
        Parameters={"command": ["pre-script"]},
        TimeoutSeconds=30,
        Comment="freeze",
    )["Command"]
    assert sent["Status"] == "Pending"
    assert sent["CompletedCount"] == 0
    command_id = sent["CommandId"]

    pending = _invocation(ssm, command_id, iid)
    assert (pending["Status"], pending["StatusDetails"], pending["ResponseCode"]) == (
        "Pending",
        "Pending",
        -1,
    )
    assert pending["ExecutionStartDateTime"] == ""
    assert pending["ExecutionEndDateTime"] == ""
    assert pending["ExecutionElapsedTime"] == ""
    assert pending["DocumentName"] == DOCUMENT
    assert pending["PluginName"] == STEP
    assert pending["Comment"] == "freeze"

    aws.advance_clock(0.049)
    assert _status(ssm, command_id, iid) == ("Pending", "Pending", -1)
    aws.advance_clock(0.001)  # start_seconds (0.05) reached
    running = _invocation(ssm, command_id, iid)
    assert (running["Status"], running["StatusDetails"], running["ResponseCode"]) == (
        "InProgress",
        "InProgress",
        -1,
    )
    assert TIMESTAMP.match(running["ExecutionStartDateTime"])
    assert running["ExecutionEndDateTime"] == ""

    aws.advance_clock(0.199)
    assert _status(ssm, command_id, iid)[0] == "InProgress"
    aws.advance_clock(0.001)  # script_seconds (0.2) after the start
    done = _invocation(ssm, command_id, iid)
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == (
        "Success",
        "Success",
        0,
    )
    assert TIMESTAMP.match(done["ExecutionEndDateTime"])
    assert done["ExecutionStartDateTime"] == running["ExecutionStartDateTime"]
    assert done["ExecutionElapsedTime"] == "PT0.2S"
    assert done["StandardOutputContent"] == ""
    [listed] = ssm.list_commands(CommandId=command_id)["Commands"]
    assert (listed["Status"], listed["CompletedCount"], listed["ErrorCount"]) == ("Success", 1, 0)


def test_settings_change_the_timings(ssm: Any, aws: LocalAws, instance: Callable[[], str]) -> None:
    iid = instance()
    aws.set_ssm(start_seconds=1.0, script_seconds=5.0)
    command_id = _send(ssm, iid)
    aws.advance_clock(0.9)
    assert _status(ssm, command_id, iid)[0] == "Pending"
    aws.advance_clock(5.0)
    assert _status(ssm, command_id, iid)[0] == "InProgress"
    aws.advance_clock(0.1)
    assert _status(ssm, command_id, iid) == ("Success", "Success", 0)
    assert _invocation(ssm, command_id, iid)["ExecutionElapsedTime"] == "PT5S"


def test_queued_results_per_instance_and_command_value(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid, other = instance(), instance()
    aws.set_ssm(
        instances={
            iid: {
                "results": {
                    "pre-script": [
                        {"status": "Failed", "stderr": "fsfreeze: busy", "stdout": "freezing"},
                        {"status": "Failed", "response_code": 3, "seconds": 1.0},
                    ]
                }
            }
        }
    )
    assert aws.ssm_state()["instances"][iid]["results"]["pre-script"][1]["response_code"] == 3
    first = _send(ssm, iid)
    post = _send(ssm, iid, "post-script")  # its own queue: empty, so the default Success
    elsewhere = _send(ssm, other)  # another instance's queue
    aws.advance_clock(0.25)
    failed = _invocation(ssm, first, iid)
    assert (failed["Status"], failed["StatusDetails"], failed["ResponseCode"]) == (
        "Failed",
        "Failed",
        1,
    )
    assert failed["StandardErrorContent"] == "fsfreeze: busy"
    assert failed["StandardOutputContent"] == "freezing"
    assert _status(ssm, post, iid) == ("Success", "Success", 0)
    assert _status(ssm, elsewhere, other) == ("Success", "Success", 0)

    second = _send(ssm, iid)
    aws.advance_clock(0.25)
    assert _status(ssm, second, iid)[0] == "InProgress"  # its own 1.0 s
    aws.advance_clock(1.0)
    assert _status(ssm, second, iid) == ("Failed", "Failed", 3)
    assert "pre-script" not in aws.ssm_state()["instances"][iid]["results"]  # consumed
    third = _send(ssm, iid)
    aws.advance_clock(0.25)
    assert _status(ssm, third, iid) == ("Success", "Success", 0)  # queue empty: the default


def test_any_command_queue_and_output_limits(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(
        instances={
            iid: {
                "results": {
                    "*": [{"status": "Failed", "stderr": "e" * 9000, "stdout": "o" * 25000}]
                }
            }
        }
    )
    command_id = _send(ssm, iid, "dry-run")
    aws.advance_clock(0.25)
    found = _invocation(ssm, command_id, iid)
    assert found["Status"] == "Failed"
    assert len(found["StandardOutputContent"]) == 24000
    assert len(found["StandardErrorContent"]) == 8000


def test_timed_out_result(ssm: Any, aws: LocalAws, instance: Callable[[], str]) -> None:
    iid = instance()
    aws.set_ssm(instances={iid: {"results": {"pre-script": [{"status": "TimedOut"}]}}})
    command_id = _send(ssm, iid)
    aws.advance_clock(0.25)
    # amazon-ssm-agent reports 137 (128 + SIGKILL) for a Linux script it stopped
    assert _status(ssm, command_id, iid) == ("TimedOut", "Execution Timed Out", 137)
    [listed] = ssm.list_commands(CommandId=command_id)["Commands"]
    assert (listed["Status"], listed["ErrorCount"]) == ("TimedOut", 1)


def test_hang_until_cancel_command(ssm: Any, aws: LocalAws, instance: Callable[[], str]) -> None:
    iid = instance()
    aws.set_ssm(
        instances={iid: {"results": {"pre-script": [{"status": "Hang", "stdout": "so far"}]}}}
    )
    command_id = _send(ssm, iid)
    aws.advance_clock(30.0)
    assert _status(ssm, command_id, iid) == ("InProgress", "InProgress", -1)
    assert ssm.cancel_command(CommandId=command_id, InstanceIds=[iid])["ResponseMetadata"]
    cancelled = _invocation(ssm, command_id, iid)
    assert (cancelled["Status"], cancelled["StatusDetails"], cancelled["ResponseCode"]) == (
        "Cancelled",
        "Cancelled",
        137,
    )
    assert cancelled["ExecutionStartDateTime"]
    assert cancelled["ExecutionEndDateTime"]
    assert cancelled["StandardOutputContent"] == "so far"
    aws.advance_clock(3600.0)  # cancelled for good: the step's timeout no longer applies
    assert _status(ssm, command_id, iid)[0] == "Cancelled"
    cancels = _events(aws.ssm_log(), "CancelCommand")
    assert [(c["instance_id"], c["cancelled"], c["outcome"]) for c in cancels] == [
        (iid, True, "ok")
    ]


def test_cancelling_a_finished_command_changes_nothing(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    command_id = _send(ssm, iid)
    aws.advance_clock(1.0)
    ssm.cancel_command(CommandId=command_id)
    assert _status(ssm, command_id, iid) == ("Success", "Success", 0)
    [cancel] = _events(aws.ssm_log(), "CancelCommand")
    assert cancel["cancelled"] is False


def test_cancel_while_pending_never_runs(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    command_id = _send(ssm, iid)
    ssm.cancel_command(CommandId=command_id, InstanceIds=[iid])
    found = _invocation(ssm, command_id, iid)
    assert (found["Status"], found["ResponseCode"]) == ("Cancelled", -1)
    assert found["ExecutionStartDateTime"] == ""
    aws.advance_clock(1.0)
    assert _status(ssm, command_id, iid)[0] == "Cancelled"


def test_cancelling_takes_cancel_seconds(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(
        cancel_seconds=2.0, instances={iid: {"results": {"pre-script": [{"status": "Hang"}]}}}
    )
    command_id = _send(ssm, iid)
    aws.advance_clock(1.0)
    ssm.cancel_command(CommandId=command_id)
    assert _status(ssm, command_id, iid) == ("Cancelling", "Cancelling", -1)
    aws.advance_clock(2.0)
    assert _status(ssm, command_id, iid) == ("Cancelled", "Cancelled", 137)


def test_hang_times_out_at_the_step_timeout(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(instances={iid: {"results": {"pre-script": [{"status": "Hang"}]}}})
    command_id = _send(ssm, iid)  # the document's step: timeoutSeconds 60
    aws.advance_clock(0.05 + 59.9)
    assert _status(ssm, command_id, iid)[0] == "InProgress"
    aws.advance_clock(0.1)
    assert _status(ssm, command_id, iid) == ("TimedOut", "Execution Timed Out", 137)
    assert _invocation(ssm, command_id, iid)["ExecutionElapsedTime"] == "PT1M"


def test_without_a_step_timeout_a_hang_lasts_an_hour(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    ssm.create_document(
        Name="NoTimeout", Content=json.dumps(_dlm_document()), DocumentType="Command"
    )
    aws.set_ssm(instances={iid: {"results": {"*": [{"status": "Hang"}, {"status": "Hang"}]}}})
    hour = _send(ssm, iid, DocumentName="NoTimeout")
    # AWS-RunShellScript's executionTimeout parameter is its step's timeoutSeconds
    forty = _send(
        ssm,
        iid,
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["sleep 99"], "executionTimeout": ["40"]},
    )
    aws.advance_clock(40.1)
    assert _status(ssm, forty, iid)[:2] == ("TimedOut", "Execution Timed Out")
    assert _invocation(ssm, forty, iid)["PluginName"] == "aws:runShellScript"
    aws.advance_clock(3559.0)
    assert _status(ssm, hour, iid)[0] == "InProgress"
    aws.advance_clock(1.0)
    assert _status(ssm, hour, iid)[:2] == ("TimedOut", "Execution Timed Out")


def test_delivery_timeout_when_the_agent_never_picks_it_up(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(
        instances={iid: {"results": {"pre-script": [{"status": "Success", "start_seconds": 45}]}}}
    )
    command_id = _send(ssm, iid, TimeoutSeconds=30)
    aws.advance_clock(29.9)
    assert _status(ssm, command_id, iid)[0] == "Pending"
    aws.advance_clock(0.1)
    found = _invocation(ssm, command_id, iid)
    assert (found["Status"], found["StatusDetails"], found["ResponseCode"]) == (
        "TimedOut",
        "Delivery Timed Out",
        -1,
    )
    assert found["ExecutionStartDateTime"] == ""
    [listed] = ssm.list_commands(CommandId=command_id)["Commands"]
    assert (listed["DeliveryTimedOutCount"], listed["ErrorCount"]) == (1, 0)


def test_unknown_command_and_instance_not_in_it(ssm: Any, instance: Callable[[], str]) -> None:
    iid, other = instance(), instance()
    command_id = _send(ssm, iid)
    with pytest.raises(ClientError) as exc:
        _invocation(ssm, command_id, other)
    assert _code(exc) == "InvocationDoesNotExist"
    unknown = str(uuid.uuid4())
    with pytest.raises(ClientError) as exc:
        _invocation(ssm, unknown, iid)
    assert _code(exc) == "InvalidCommandId"
    with pytest.raises(ClientError) as exc:
        ssm.cancel_command(CommandId=unknown)
    assert _code(exc) == "InvalidCommandId"
    with pytest.raises(ClientError) as exc:
        ssm.get_command_invocation(CommandId=command_id, InstanceId=iid, PluginName="other-step")
    assert _code(exc) == "InvalidPluginName"
    assert ssm.get_command_invocation(CommandId=command_id, InstanceId=iid, PluginName=STEP)


def test_invisible_seconds_after_send(ssm: Any, aws: LocalAws, instance: Callable[[], str]) -> None:
    iid = instance()
    aws.set_ssm(invisible_seconds=0.5)
    command_id = _send(ssm, iid)
    with pytest.raises(ClientError) as exc:
        _invocation(ssm, command_id, iid)
    assert _code(exc) == "InvocationDoesNotExist"
    aws.advance_clock(0.5)
    assert _status(ssm, command_id, iid) == ("Success", "Success", 0)  # ran meanwhile


# --- ListCommandInvocations ------------------------------------------------------------------


def _list(ssm: Any, **kwargs: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ssm.list_command_invocations(**kwargs)["CommandInvocations"]
    return found


def _listed_one(ssm: Any, command_id: str, instance_id: str) -> dict[str, Any]:
    [found] = _list(ssm, CommandId=command_id, InstanceId=instance_id, Details=True)
    return found


def _two_step_document() -> dict[str, Any]:
    document = _dlm_document(timeout_seconds=60)
    document["mainSteps"].append(
        {"action": "aws:runShellScript", "name": "second_step", "inputs": {"runCommand": ["true"]}}
    )
    return document


def test_list_follows_the_invocation_with_its_plugin(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(
        instances={iid: {"results": {"pre-script": [{"status": "Success", "stdout": "ok"}]}}}
    )
    command_id = _send(ssm, iid)

    pending = _listed_one(ssm, command_id, iid)
    assert (pending["CommandId"], pending["InstanceId"]) == (command_id, iid)
    assert (pending["InstanceName"], pending["TraceOutput"]) == ("", "")
    assert (pending["StandardOutputUrl"], pending["StandardErrorUrl"]) == ("", "")
    assert (pending["DocumentName"], pending["DocumentVersion"]) == (DOCUMENT, "$DEFAULT")
    assert pending["Comment"] == "test pre-script"
    assert pending["ServiceRole"] == ""
    assert pending["NotificationConfig"] == {
        "NotificationArn": "",
        "NotificationEvents": [],
        "NotificationType": "",
    }
    assert pending["CloudWatchOutputConfig"] == {
        "CloudWatchLogGroupName": "",
        "CloudWatchOutputEnabled": False,
    }
    [sent] = ssm.list_commands(CommandId=command_id)["Commands"]
    assert pending["RequestedDateTime"] == sent["RequestedDateTime"]
    assert (pending["Status"], pending["StatusDetails"]) == ("Pending", "Pending")
    [plugin] = pending["CommandPlugins"]
    assert plugin == {
        "Name": STEP,
        "Status": "Pending",
        "StatusDetails": "Pending",
        "ResponseCode": -1,
        "Output": "",
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "OutputS3Region": "us-east-1",
        "OutputS3BucketName": "",
        "OutputS3KeyPrefix": "",
    }
    # without Details, no plugins
    [brief] = _list(ssm, CommandId=command_id)
    assert brief["CommandPlugins"] == []
    assert brief["Status"] == "Pending"

    aws.advance_clock(0.05)
    running = _listed_one(ssm, command_id, iid)
    assert (running["Status"], running["StatusDetails"]) == ("InProgress", "InProgress")
    [plugin] = running["CommandPlugins"]
    assert (plugin["Status"], plugin["ResponseCode"], plugin["Output"]) == ("InProgress", -1, "")
    assert _seconds_between(pending["RequestedDateTime"], plugin["ResponseStartDateTime"]) == 0.05
    assert "ResponseFinishDateTime" not in plugin

    aws.advance_clock(0.2)
    done = _listed_one(ssm, command_id, iid)
    got = _invocation(ssm, command_id, iid)
    assert (done["Status"], done["StatusDetails"]) == (got["Status"], got["StatusDetails"])
    assert done["Status"] == "Success"
    [plugin] = done["CommandPlugins"]
    assert (plugin["Status"], plugin["StatusDetails"], plugin["ResponseCode"]) == (
        "Success",
        "Success",
        0,
    )
    assert plugin["Output"] == "ok"
    assert (
        _seconds_between(plugin["ResponseStartDateTime"], plugin["ResponseFinishDateTime"]) == 0.2
    )
    assert _iso_ms(plugin["ResponseStartDateTime"]) == got["ExecutionStartDateTime"]
    assert _iso_ms(plugin["ResponseFinishDateTime"]) == got["ExecutionEndDateTime"]


def _seconds_between(start: datetime, end: datetime) -> Any:
    """The time between two of the response's timestamps (milliseconds, truncated: +-1 ms)."""
    return pytest.approx((end - start).total_seconds(), abs=0.0015)


def _iso_ms(moment: Any) -> str:
    text: str = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return text


def test_list_output_is_stdout_then_stderr_cut_at_2500(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    results = [
        {"status": "Failed", "stdout": "freezing", "stderr": "fsfreeze: busy", "response_code": 2},
        {"status": "Failed", "stderr": "e" * 3000},
        {"status": "Success", "stdout": "o" * 3000},
        {"status": "Failed", "stdout": "o" * 3000, "stderr": "e" * 3000},
    ]
    aws.set_ssm(instances={iid: {"results": {"*": results}}})
    failed, err_only, out_only, both = (_send(ssm, iid) for _ in range(4))
    aws.advance_clock(0.25)

    listed = _listed_one(ssm, failed, iid)
    assert (listed["Status"], listed["StatusDetails"]) == ("Failed", "Failed")
    [plugin] = listed["CommandPlugins"]
    assert (plugin["Status"], plugin["ResponseCode"]) == ("Failed", 2)
    # amazon-ssm-agent's combined output: stdout, an error title, stderr
    assert plugin["Output"] == "freezing\n----------ERROR-------\nfsfreeze: busy"

    # cut to 2500 characters with the agent's markers (iohandler.TruncateOutput)
    title, cut_out, cut_err = (
        "\n----------ERROR-------\n",
        "\n---Output truncated---",
        "\n---Error truncated----",
    )
    [plugin] = _listed_one(ssm, err_only, iid)["CommandPlugins"]
    assert plugin["Output"] == title + "e" * (2500 - len(title) - len(cut_err)) + cut_err
    [plugin] = _listed_one(ssm, out_only, iid)["CommandPlugins"]
    assert plugin["Output"] == "o" * (2500 - len(cut_out)) + cut_out
    [plugin] = _listed_one(ssm, both, iid)["CommandPlugins"]
    half = (2500 - len(title) - len(cut_out) - len(cut_err)) // 2
    assert plugin["Output"] == "o" * half + cut_out + title + "e" * half + cut_err
    for command_id in (err_only, out_only, both):
        [plugin] = _listed_one(ssm, command_id, iid)["CommandPlugins"]
        assert len(plugin["Output"]) == 2500
    # GetCommandInvocation still has the whole streams (up to its own limits)
    assert _invocation(ssm, both, iid)["StandardOutputContent"] == "o" * 3000


def test_list_cancelling_then_cancelled_and_timeouts(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    queue = [{"status": "Hang", "stdout": "so far"}, {"status": "TimedOut"}]
    aws.set_ssm(cancel_seconds=2.0, instances={iid: {"results": {"pre-script": queue}}})
    hang = _send(ssm, iid)
    timed_out = _send(ssm, iid)
    aws.set_ssm(
        instances={iid: {"results": {"post-script": [{"start_seconds": 45, "status": "Success"}]}}}
    )
    undelivered = _send(ssm, iid, "post-script")
    pending = _send(ssm, iid, "dry-run", TimeoutSeconds=600)
    ssm.cancel_command(CommandId=pending)  # still pending: Cancelled at once, never ran
    aws.advance_clock(1.0)
    ssm.cancel_command(CommandId=hang)

    cancelling = _listed_one(ssm, hang, iid)
    assert (cancelling["Status"], cancelling["StatusDetails"]) == ("Cancelling", "Cancelling")
    [plugin] = cancelling["CommandPlugins"]
    # CommandPluginStatus has no Cancelling: the step still runs
    assert (plugin["Status"], plugin["ResponseCode"], plugin["Output"]) == ("InProgress", -1, "")
    never = _listed_one(ssm, pending, iid)
    assert (never["Status"], never["StatusDetails"]) == ("Cancelled", "Cancelled")
    [plugin] = never["CommandPlugins"]
    assert (plugin["Status"], plugin["ResponseCode"]) == ("Cancelled", -1)
    assert "ResponseStartDateTime" not in plugin
    assert "ResponseFinishDateTime" not in plugin

    aws.advance_clock(2.0)
    cancelled = _listed_one(ssm, hang, iid)
    assert (cancelled["Status"], cancelled["StatusDetails"]) == ("Cancelled", "Cancelled")
    [plugin] = cancelled["CommandPlugins"]
    assert (plugin["Status"], plugin["ResponseCode"], plugin["Output"]) == (
        "Cancelled",
        137,
        "so far",
    )
    assert (
        _seconds_between(plugin["ResponseStartDateTime"], plugin["ResponseFinishDateTime"]) == 2.95
    )
    execution = _listed_one(ssm, timed_out, iid)
    assert (execution["Status"], execution["StatusDetails"]) == ("TimedOut", "Execution Timed Out")
    assert execution["CommandPlugins"][0]["ResponseCode"] == 137

    aws.advance_clock(27.0)  # the post script's 30 s delivery timeout
    delivery = _listed_one(ssm, undelivered, iid)
    assert (delivery["Status"], delivery["StatusDetails"]) == ("TimedOut", "Delivery Timed Out")
    assert delivery["CommandPlugins"][0]["ResponseCode"] == -1
    # the same statuses as GetCommandInvocation's at the same clock time
    for command_id in (hang, timed_out, undelivered, pending):
        got = _invocation(ssm, command_id, iid)
        listed = _listed_one(ssm, command_id, iid)
        assert (listed["Status"], listed["StatusDetails"]) == (got["Status"], got["StatusDetails"])
        assert listed["CommandPlugins"][0]["ResponseCode"] == got["ResponseCode"]

    def statuses(value: str) -> set[str]:
        return {i["CommandId"] for i in _list(ssm, Filters=[{"key": "Status", "value": value}])}

    assert statuses("TimedOut") == {timed_out, undelivered}
    assert statuses("ExecutionTimedOut") == {timed_out}
    assert statuses("DeliveryTimedOut") == {undelivered}
    assert statuses("Cancelled") == {hang, pending}
    assert statuses("Delayed") == set()


def test_list_filters_by_command_instance_and_filters(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    first, second, idle = instance(), instance(), instance()
    both = ssm.send_command(
        InstanceIds=[second, first],
        DocumentName=DOCUMENT,
        Parameters={"command": ["pre-script"]},
        TimeoutSeconds=30,
    )["Command"]["CommandId"]
    aws.advance_clock(1.0)
    shell = _send(ssm, first, DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]})

    [one] = _list(ssm, CommandId=both, InstanceId=second)
    assert (one["CommandId"], one["InstanceId"]) == (both, second)
    assert [i["InstanceId"] for i in _list(ssm, CommandId=both)] == sorted([first, second])
    assert [i["CommandId"] for i in _list(ssm, InstanceId=first)] == [shell, both]
    assert _list(ssm, InstanceId=idle) == []  # no invocation there: an empty list
    assert _list(ssm, CommandId=shell, InstanceId=second) == []

    def listed(*filters: tuple[str, str]) -> list[tuple[str, str]]:
        rows = _list(ssm, Filters=[{"key": k, "value": v} for k, v in filters])
        return [(r["CommandId"], r["InstanceId"]) for r in rows]

    assert listed(("DocumentName", "AWS-RunShellScript")) == [(shell, first)]
    assert listed(("DocumentName", DOCUMENT), ("Status", "Success")) == [
        (both, i) for i in sorted([first, second])
    ]
    aws.advance_clock(1.0)  # the shell command ends too
    [sent_both] = ssm.list_commands(CommandId=both)["Commands"]
    half_after = (sent_both["RequestedDateTime"] + timedelta(seconds=0.5)).astimezone(UTC)
    stamp = half_after.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert listed(("InvokedAfter", stamp)) == [(shell, first)]
    assert listed(("InvokedBefore", stamp), ("Status", "Success")) == [
        (both, i) for i in sorted([first, second])
    ]
    assert listed(("Status", "Pending")) == []

    refusals = [
        ([{"key": "ExecutionStage", "value": "Executing"}], "InvalidFilterKey"),
        ([{"key": "Status", "value": "Cancelling"}], "InvalidFilterKey"),
        ([{"key": "InvokedAfter", "value": "yesterday"}], "InvalidFilterKey"),
        ([{"key": "Color", "value": "blue"}], "ValidationException"),
        ([{"key": "DocumentName", "value": "x" * 129}], "ValidationException"),
        ([{"key": "Status", "value": "Success"}] * 6, "ValidationException"),
    ]
    for filters, code in refusals:
        with pytest.raises(ClientError) as exc:
            ssm.list_command_invocations(Filters=filters)
        assert _code(exc) == code, filters
    with pytest.raises(ClientError) as exc:
        ssm.list_command_invocations(Filters=[{"key": "ExecutionStage", "value": "Complete"}])
    assert "ExecutionStage" in str(exc.value)


def test_list_pages_newest_first_with_next_token(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    a, b = sorted([instance(), instance()])
    sent = []
    for _ in range(3):
        sent.append(
            ssm.send_command(
                InstanceIds=[b, a],
                DocumentName=DOCUMENT,
                Parameters={"command": ["pre-script"]},
                TimeoutSeconds=30,
            )["Command"]["CommandId"]
        )
        aws.advance_clock(1.0)
    same_time = _send(ssm, a)  # two sends at the same clock time: the later one first
    later_same_time = _send(ssm, a)
    expected = [(later_same_time, a), (same_time, a)] + [
        (c, i) for c in reversed(sent) for i in (a, b)
    ]

    seen: list[tuple[str, str]] = []
    token = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"MaxResults": 3}
        if token:
            kwargs["NextToken"] = token
        page = ssm.list_command_invocations(**kwargs)
        assert len(page["CommandInvocations"]) <= 3
        seen += [(i["CommandId"], i["InstanceId"]) for i in page["CommandInvocations"]]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert seen == expected
    assert pages == 3
    times = [i["RequestedDateTime"] for i in _list(ssm)]
    assert times == sorted(times, reverse=True)
    # boto3's paginator, with a command sent between pages: the pages go on from where they were
    paginator = ssm.get_paginator("list_command_invocations")
    pages_iter = iter(paginator.paginate(PaginationConfig={"PageSize": 4}))
    first_page = next(pages_iter)
    newest = _send(ssm, b)
    rest = [(i["CommandId"], i["InstanceId"]) for p in pages_iter for i in p["CommandInvocations"]]
    listed_first = [(i["CommandId"], i["InstanceId"]) for i in first_page["CommandInvocations"]]
    assert listed_first + rest == expected
    assert _list(ssm, MaxResults=1)[0]["CommandId"] == newest

    with pytest.raises(ClientError) as exc:
        ssm.list_command_invocations(NextToken="not-a-token")
    assert _code(exc) == "InvalidNextToken"


def test_list_max_results_1_to_50_default_50(
    ssm: Any, raw_ssm: Any, ec2: Any, image_id: str
) -> None:
    ids = [
        i["InstanceId"]
        for i in ec2.run_instances(ImageId=image_id, MinCount=26, MaxCount=26)["Instances"]
    ]
    for _ in range(2):
        ssm.send_command(
            InstanceIds=ids,
            DocumentName=DOCUMENT,
            Parameters={"command": ["pre-script"]},
            TimeoutSeconds=30,
        )
    page = ssm.list_command_invocations()
    assert len(page["CommandInvocations"]) == 50
    rest = ssm.list_command_invocations(NextToken=page["NextToken"])
    assert len(rest["CommandInvocations"]) == 2
    assert "NextToken" not in rest
    for bad in (0, 51):
        with pytest.raises(ClientError) as exc:
            raw_ssm.list_command_invocations(MaxResults=bad)
        assert _code(exc) == "ValidationException"
        assert "maxResults" in str(exc.value)
    assert len(raw_ssm.list_command_invocations(MaxResults=1)["CommandInvocations"]) == 1
    assert len(raw_ssm.list_command_invocations(MaxResults=50)["CommandInvocations"]) == 50


def test_list_unknown_command_and_malformed_ids(
    ssm: Any, raw_ssm: Any, instance: Callable[[], str]
) -> None:
    iid = instance()
    _send(ssm, iid)
    with pytest.raises(ClientError) as exc:
        ssm.list_command_invocations(CommandId=str(uuid.uuid4()))
    assert _code(exc) == "InvalidCommandId"
    for kwargs, member in (
        ({"CommandId": "x" * 37}, "commandId"),
        ({"InstanceId": "instance-1"}, "instanceId"),
    ):
        with pytest.raises(ClientError) as exc:
            raw_ssm.list_command_invocations(**kwargs)
        assert _code(exc) == "ValidationException"
        assert member in str(exc.value)


def test_list_waits_for_invisible_seconds(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(invisible_seconds=0.5)
    command_id = _send(ssm, iid)
    assert _list(ssm, CommandId=command_id) == []  # the command exists: no InvalidCommandId
    assert _list(ssm) == []
    aws.advance_clock(0.499)
    assert _list(ssm, InstanceId=iid) == []
    aws.advance_clock(0.001)
    [listed] = _list(ssm, CommandId=command_id)
    assert listed["Status"] == "Success"  # it ran meanwhile


def test_two_step_document_needs_plugin_name_but_lists(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    ssm.create_document(
        Name="TwoSteps", Content=json.dumps(_two_step_document()), DocumentType="Command"
    )
    aws.set_ssm(
        instances={iid: {"results": {"pre-script": [{"status": "Failed", "stderr": "no"}]}}}
    )
    command_id = _send(ssm, iid, DocumentName="TwoSteps")
    aws.advance_clock(0.25)
    with pytest.raises(ClientError) as exc:
        _invocation(ssm, command_id, iid)
    assert _code(exc) == "InvalidPluginName"
    named = ssm.get_command_invocation(CommandId=command_id, InstanceId=iid, PluginName=STEP)
    assert (named["Status"], named["PluginName"]) == ("Failed", STEP)
    with pytest.raises(ClientError) as exc:  # a step localaws does not model
        ssm.get_command_invocation(CommandId=command_id, InstanceId=iid, PluginName="second_step")
    assert _code(exc) == "ValidationException"
    assert "second_step" in str(exc.value)
    listed = _listed_one(ssm, command_id, iid)
    assert (listed["Status"], listed["StatusDetails"]) == ("Failed", "Failed")
    assert [p["Name"] for p in listed["CommandPlugins"]] == [STEP]
    assert listed["CommandPlugins"][0]["Output"] == "\n----------ERROR-------\nno"
    # a one-step document needs no PluginName (the fixture's)
    single = _send(ssm, iid)
    assert _invocation(ssm, single, iid)["PluginName"] == STEP


def test_list_echoes_the_sends_output_and_notification_settings(
    ssm: Any, instance: Callable[[], str]
) -> None:
    iid = instance()
    role = "arn:aws:iam::123456789012:role/ssm-notify"
    topic = "arn:aws:sns:us-east-1:123456789012:ssm"
    notification = {
        "NotificationArn": topic,
        "NotificationEvents": ["Success", "Failed"],
        "NotificationType": "Invocation",
    }
    command_id = _send(
        ssm,
        iid,
        OutputS3BucketName="script-output",
        OutputS3KeyPrefix="pre",
        OutputS3Region="eu-west-1",
        ServiceRoleArn=role,
        NotificationConfig=notification,
    )
    listed = _listed_one(ssm, command_id, iid)
    assert (listed["ServiceRole"], listed["NotificationConfig"]) == (role, notification)
    [plugin] = listed["CommandPlugins"]
    assert (plugin["OutputS3BucketName"], plugin["OutputS3KeyPrefix"]) == ("script-output", "pre")
    assert plugin["OutputS3Region"] == "eu-west-1"
    assert (plugin["StandardOutputUrl"], plugin["StandardErrorUrl"]) == ("", "")  # none written


def test_list_includes_moto_targets_commands(
    ssm: Any, ec2: Any, instance: Callable[[], str]
) -> None:
    iid = instance()
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "role", "Value": "db"}])
    command_id = ssm.send_command(
        Targets=[{"Key": "tag:role", "Values": ["db"]}],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    )["Command"]["CommandId"]
    listed = _listed_one(ssm, command_id, iid)
    assert (listed["Status"], listed["DocumentName"]) == ("Success", "AWS-RunShellScript")
    [plugin] = listed["CommandPlugins"]
    assert (plugin["Name"], plugin["Status"], plugin["ResponseCode"]) == (
        "aws:runShellScript",
        "Success",
        0,
    )


# --- the order log ---------------------------------------------------------------------------


def test_the_log_orders_scripts_around_create_snapshots(
    ssm: Any, ec2: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.ssm_log(drain=True)
    pre = _send(ssm, iid, "pre-script")
    aws.advance_clock(0.3)
    assert _status(ssm, pre, iid)[0] == "Success"
    snapshots = ec2.create_snapshots(InstanceSpecification={"InstanceId": iid})["Snapshots"]
    post = _send(ssm, iid, "post-script")
    aws.advance_clock(0.3)
    with pytest.raises(ClientError):
        ec2.create_snapshots(InstanceSpecification={"InstanceId": "i-0123456789abcdef0"})

    log = aws.ssm_log()
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    summary = [(e["event"], e.get("command"), e.get("outcome", e.get("status"))) for e in log]
    assert summary == [
        ("SendCommand", "pre-script", "ok"),
        ("InvocationEnded", "pre-script", "Success"),
        ("CreateSnapshots", None, "ok"),
        ("SendCommand", "post-script", "ok"),
        ("InvocationEnded", "post-script", "Success"),
        ("CreateSnapshots", None, "InvalidInstanceID.NotFound"),
    ]
    sent, ended, created = log[0], log[1], log[2]
    assert sent["command_id"] == pre
    assert sent["document"] == DOCUMENT
    assert log[3]["command_id"] == post
    assert ended["instance_id"] == created["instance_id"] == iid
    assert created["snapshot_ids"] == [s["SnapshotId"] for s in snapshots]
    # server-clock times: the start 0.05 s and the end 0.25 s after the send
    assert ended["started_at"] == pytest.approx(sent["at"] + 0.05)
    assert ended["at"] == pytest.approx(sent["at"] + 0.25)
    assert [e["at"] for e in log] == sorted(e["at"] for e in log)
    assert all(TIMESTAMP.match(e["time"]) for e in log)
    assert aws.ssm_log(drain=True) == log
    assert aws.ssm_log() == []


def test_peak_in_progress(ssm: Any, aws: LocalAws, instance: Callable[[], str]) -> None:
    a, b, c = instance(), instance(), instance()
    _send(ssm, a)
    aws.advance_clock(0.1)  # a is running
    _send(ssm, b)
    aws.advance_clock(0.1)  # a and b are running
    assert aws.ssm_state()["in_progress"] == 2
    aws.advance_clock(1.0)  # both ended
    _send(ssm, c)
    aws.advance_clock(0.1)
    state = aws.ssm_state()
    assert (state["peak_in_progress"], state["in_progress"]) == (2, 1)
    # the same figure from the log's intervals
    ends = _events(state["log"], "InvocationEnded")
    intervals = [(e["started_at"], e["at"]) for e in ends]
    assert max(sum(1 for s, t in intervals if s <= x < t) for x, _ in intervals) == 2


def test_reset_clears_settings_injections_and_log(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_ssm(
        script_seconds=9.0, instances={iid: {"results": {"pre-script": [{"status": "Hang"}]}}}
    )
    _send(ssm, iid)
    assert aws.ssm_log()
    aws._control("POST", "reset")  # localaws's reset alone
    state = aws.ssm_state()
    assert (state["script_seconds"], state["instances"], state["log"]) == (0.2, {}, [])
    aws.set_ssm(instances={iid: {"managed": False}})
    aws.reset()  # moto's reset too
    state = aws.ssm_state()
    assert (state["instances"], state["log"], state["peak_in_progress"]) == ({}, [], 0)


def test_control_api_refuses_unknown_fields(aws: LocalAws) -> None:
    bad_bodies: list[dict[str, Any]] = [
        {"script_secs": 1},
        {"instances": {"i-0123456789abcdef0": {"managed": "no"}}},
        {
            "instances": {
                "i-0123456789abcdef0": {"results": {"pre-script": [{"status": "Crashed"}]}}
            }
        },
        {
            "instances": {
                "i-0123456789abcdef0": {
                    "results": {"pre-script": [{"status": "Failed", "exit": 2}]}
                }
            }
        },
        {"start_seconds": -1},
    ]
    for body in bad_bodies:
        with pytest.raises(LocalAwsError, match="400"):
            aws.set_ssm(**body)
    assert aws.ssm_state()["instances"] == {}


def test_fault_rules_match_ssm_actions(
    ssm: Any, aws: LocalAws, instance: Callable[[], str]
) -> None:
    iid = instance()
    aws.set_faults(
        FaultRule(
            "ssm:SendCommand", error=ErrorFault(fail_next=1, code="ThrottlingException", status=400)
        )
    )
    with pytest.raises(ClientError) as exc:
        _send(ssm, iid)
    assert _code(exc) == "ThrottlingException"
    assert aws.ssm_log() == []  # refused before SSM saw it
    assert _send(ssm, iid)


# --- IAM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iam_server() -> Iterator[LocalAws]:
    server = LocalAws(snapshot_delay=None, enforce_iam=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        server.start()
    try:
        yield server
    finally:
        server.stop()


def test_ssm_calls_are_checked_under_their_iam_actions(iam_server: LocalAws) -> None:
    iam = iam_server.client("iam")
    iam.create_user(UserName="ssm-reader")
    iam.put_user_policy(
        UserName="ssm-reader",
        PolicyName="read",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "ssm:DescribeInstanceInformation",
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="ssm-reader")["AccessKey"]
    reader = iam_server.client(
        "ssm",
        max_attempts=1,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    assert reader.describe_instance_information()["InstanceInformationList"] == []
    for call, action in (
        (lambda: reader.cancel_command(CommandId=str(uuid.uuid4())), "ssm:CancelCommand"),
        (reader.list_command_invocations, "ssm:ListCommandInvocations"),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert _code(exc) == "AccessDeniedException"
        assert action in str(exc.value)
    iam.put_user_policy(
        UserName="ssm-reader",
        PolicyName="list",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "ssm:ListCommandInvocations", "Resource": "*"}
                ],
            }
        ),
    )
    assert reader.list_command_invocations()["CommandInvocations"] == []


# --- in-process ------------------------------------------------------------------------------


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """moto in this process with the patch, which is taken out again unless something else in
    this process installed it: other in-process tests expect moto's SSM."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # ~1300 AMIs: seconds
    was_installed = ssm_commands.installed()
    ssm_commands.install()
    try:
        with mock_aws():
            yield (
                boto3.client("ec2", region_name="us-east-1"),
                boto3.client("ssm", region_name="us-east-1"),
            )
    finally:
        CLOCK.reset()
        if not was_installed:
            ssm_commands.uninstall()


def test_in_process_under_mock_aws(in_process: tuple[Any, Any]) -> None:
    ec2, ssm = in_process
    iid = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    ssm.create_document(Name=DOCUMENT, Content=json.dumps(_dlm_document()), DocumentType="Command")
    failing_post = {iid: {"results": {"post-script": [{"status": "Failed"}]}}}
    ssm_commands.configure({"script_seconds": 0, "start_seconds": 0, "instances": failing_post})
    CLOCK.freeze()
    pre, post = _send(ssm, iid), _send(ssm, iid, "post-script")
    assert _status(ssm, pre, iid) == ("Success", "Success", 0)
    assert _status(ssm, post, iid) == ("Failed", "Failed", 1)
    assert [e["event"] for e in ssm_commands.log()] == [
        "SendCommand",
        "InvocationEnded",
        "SendCommand",
        "InvocationEnded",
    ]
    ssm_commands.install()  # idempotent: still one log entry per call
    _send(ssm, iid)
    assert len(_events(ssm_commands.log(), "SendCommand")) == 3
    BackendDict.reset()  # moto's reset (mock_aws's on start) forgets it all
    assert ssm_commands.state()["log"] == []
    assert ssm_commands.state()["script_seconds"] == 0.2
