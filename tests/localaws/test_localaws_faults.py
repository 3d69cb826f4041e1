"""Fault injection through the control API, observed with real boto3 clients."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from localaws_testlib import Instance

from localaws import ErrorFault, FaultRule, LocalAws, Throttle


def _code_status(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _outcomes(call: Any, n: int) -> list[str]:
    """'ok' or the error code of each of n calls."""
    results = []
    for _ in range(n):
        try:
            call()
            results.append("ok")
        except ClientError as exc:
            results.append(exc.response["Error"]["Code"])
    return results


def test_no_faults_by_default(aws: LocalAws, ec2: Any) -> None:
    assert aws.faults()["rules"] == []
    assert _outcomes(ec2.describe_volumes, 20) == ["ok"] * 20


# --- throttling --------------------------------------------------------------------------------


def test_ec2_throttle_is_request_limit_exceeded_503(aws: LocalAws, ec2: Any) -> None:
    aws.set_faults(FaultRule("ec2:DescribeVolumes", throttle=Throttle(2, 0)))
    assert _outcomes(ec2.describe_volumes, 4) == ["ok", "ok"] + ["RequestLimitExceeded"] * 2
    with pytest.raises(ClientError) as exc:
        ec2.describe_volumes()
    assert _code_status(exc) == ("RequestLimitExceeded", 503)
    # Only the named action is throttled.
    assert _outcomes(ec2.describe_instances, 3) == ["ok"] * 3


def test_ec2_throttle_uses_the_ec2_xml_error_format(aws: LocalAws) -> None:
    aws.set_faults(FaultRule("ec2:*", throttle=Throttle(1, 0)))
    request = urllib.request.Request(
        aws.endpoint_url + "/",
        data=b"Action=DescribeVolumes&Version=2016-11-15",
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/"
            "aws4_request, SignedHeaders=host, Signature=0",
        },
    )
    urllib.request.urlopen(request).read()  # the one token
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request)
    assert exc.value.code == 503
    root = ET.fromstring(exc.value.read())
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "RequestLimitExceeded"
    assert root.findtext("Errors/Error/Message")
    assert root.findtext("RequestID")


def test_token_bucket_burst_then_refill_rate(aws: LocalAws, ec2: Any) -> None:
    # The server's clock stands still between the calls: the counts are exact, however slow
    # the machine, and nothing here sleeps.
    aws.freeze_clock()
    capacity, rate = 3, 5.0
    aws.set_faults(FaultRule("ec2:DescribeVolumes", throttle=Throttle(capacity, rate)))
    throttled = ["RequestLimitExceeded"]
    assert _outcomes(ec2.describe_volumes, 5) == ["ok"] * 3 + throttled * 2  # the burst

    aws.advance_clock(10.0)  # 50 tokens' worth of time, capped at the capacity
    assert _outcomes(ec2.describe_volumes, 5) == ["ok"] * 3 + throttled * 2

    aws.advance_clock(0.1)  # half a token: still throttled
    assert _outcomes(ec2.describe_volumes, 1) == throttled
    aws.advance_clock(0.1)  # the other half: one call gets through
    assert _outcomes(ec2.describe_volumes, 2) == ["ok", *throttled]
    aws.advance_clock(0.4)  # the sustained rate: 5 per second
    assert _outcomes(ec2.describe_volumes, 4) == ["ok"] * 2 + throttled * 2

    [stats] = aws.faults()["stats"]
    assert (stats["calls"], stats["throttled"]) == (17, 8)
    # when the bucket let each of the other 9 through, on the (frozen, advanced) server clock
    admitted = stats["admitted_at"]
    assert len(admitted) == 9
    assert admitted == sorted(admitted)
    assert [round(t - admitted[0], 6) for t in admitted] == [0, 0, 0, *[10.0] * 3, 10.2, 10.6, 10.6]


def test_the_clock_is_real_again_after_reset(aws: LocalAws) -> None:
    frozen = aws.freeze_clock()
    assert frozen["frozen"] is True
    assert aws.advance_clock(3600)["offset_seconds"] == 3600
    aws.reset()
    assert (aws.clock()["frozen"], aws.clock()["offset_seconds"]) == (False, 0)


def test_throttled_create_snapshots_creates_nothing(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance]
) -> None:
    inst = make_instance()
    aws.set_faults(FaultRule("ec2:CreateSnapshots", throttle=Throttle(1, 0)))
    spec = {"InstanceId": inst.instance_id}
    assert len(ec2.create_snapshots(InstanceSpecification=spec)["Snapshots"]) == 3
    with pytest.raises(ClientError) as exc:
        ec2.create_snapshots(InstanceSpecification=spec)
    assert _code_status(exc) == ("RequestLimitExceeded", 503)
    volume_ids = [inst.root_volume_id, *inst.data_volume_ids]
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": volume_ids}])
    assert len(snapshots["Snapshots"]) == 3


def test_throttled_calls_are_retried_by_botocore(aws: LocalAws) -> None:
    # Deterministic, not timed: the next two calls are refused with EC2's throttling error.
    refusal = ErrorFault(fail_next=2, probability=0.0, code="RequestLimitExceeded", status=503)
    aws.set_faults(FaultRule("ec2:DescribeVolumes", error=refusal))
    ec2 = aws.client("ec2", max_attempts=5)
    response = ec2.describe_volumes()  # standard retry mode backs off and gets through
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    [rule] = aws.faults()["stats"]
    assert (rule["calls"], rule["errors"]) == (3, 2)
    aws.set_faults(FaultRule("ec2:DescribeVolumes", error=refusal))
    single = aws.client("ec2", max_attempts=1)
    with pytest.raises(ClientError):  # without retries the refusal reaches the caller
        single.describe_volumes()


def test_sns_query_protocol_throttle(aws: LocalAws) -> None:
    sns = aws.client("sns", max_attempts=1)
    arn = sns.create_topic(Name="t")["TopicArn"]
    aws.set_faults(FaultRule("sns:Publish", throttle=Throttle(1, 0)))
    sns.publish(TopicArn=arn, Message="one")
    with pytest.raises(ClientError) as exc:
        sns.publish(TopicArn=arn, Message="two")
    assert _code_status(exc) == ("Throttled", 429)
    sns.list_topics()  # other actions pass


def test_sqs_json_protocol_throttle_by_target_header(aws: LocalAws) -> None:
    sqs = aws.client("sqs", max_attempts=1)
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    aws.set_faults(FaultRule("sqs:SendMessage", throttle=Throttle(1, 0)))
    sqs.send_message(QueueUrl=url, MessageBody="one")
    with pytest.raises(ClientError) as exc:
        sqs.send_message(QueueUrl=url, MessageBody="two")
    assert _code_status(exc)[0] == "RequestThrottled"
    sqs.get_queue_url(QueueName="q")


def test_dynamodb_throttle(aws: LocalAws) -> None:
    ddb = aws.client("dynamodb", max_attempts=1)
    aws.set_faults(FaultRule("dynamodb:*", throttle=Throttle(1, 0)))
    ddb.list_tables()
    with pytest.raises(ClientError) as exc:
        ddb.list_tables()
    assert _code_status(exc) == ("ThrottlingException", 400)


def test_wildcard_rule_applies_to_every_service(aws: LocalAws, ec2: Any) -> None:
    aws.set_faults({"api": "*", "throttle": {"capacity": 1, "refill_per_second": 0}})
    sns = aws.client("sns", max_attempts=1)
    ec2.describe_volumes()
    assert _outcomes(sns.list_topics, 1) == ["Throttled"]


# --- server errors -----------------------------------------------------------------------------


def test_fail_next_n_calls(aws: LocalAws, ec2: Any) -> None:
    aws.set_faults(FaultRule("ec2:DescribeVolumes", error=ErrorFault(fail_next=2)))
    assert _outcomes(ec2.describe_volumes, 4) == ["InternalError", "InternalError", "ok", "ok"]


def test_fail_next_status_is_500(aws: LocalAws, ec2: Any) -> None:
    aws.set_faults(FaultRule("ec2:DescribeVolumes", error=ErrorFault(fail_next=1)))
    with pytest.raises(ClientError) as exc:
        ec2.describe_volumes()
    assert _code_status(exc) == ("InternalError", 500)


def test_service_unavailable_is_retried(aws: LocalAws) -> None:
    aws.set_faults(
        FaultRule(
            "ec2:DescribeVolumes",
            error=ErrorFault(fail_next=1, code="ServiceUnavailable", status=503),
        )
    )
    response = aws.client("ec2", max_attempts=2).describe_volumes()
    assert response["ResponseMetadata"]["RetryAttempts"] == 1


def test_error_probability_is_deterministic_with_a_seed(aws: LocalAws, ec2: Any) -> None:
    rule = FaultRule("ec2:DescribeVolumes", error=ErrorFault(probability=0.5))
    aws.set_faults(rule, seed=1234)
    first = _outcomes(ec2.describe_volumes, 24)
    aws.set_faults(rule, seed=1234)
    second = _outcomes(ec2.describe_volumes, 24)
    assert first == second
    assert 4 <= first.count("InternalError") <= 20
    aws.set_faults(rule, seed=99)
    assert _outcomes(ec2.describe_volumes, 24) != first


def test_probability_zero_and_one(aws: LocalAws, ec2: Any) -> None:
    aws.set_faults(FaultRule("ec2:DescribeVolumes", error=ErrorFault(probability=1.0)))
    assert _outcomes(ec2.describe_volumes, 3) == ["InternalError"] * 3
    aws.set_faults(FaultRule("ec2:DescribeVolumes", error=ErrorFault(probability=0.0)))
    assert _outcomes(ec2.describe_volumes, 3) == ["ok"] * 3


def test_json_protocol_server_error(aws: LocalAws) -> None:
    ddb = aws.client("dynamodb", max_attempts=1)
    aws.set_faults(
        FaultRule("dynamodb:ListTables", error=ErrorFault(fail_next=1, code="InternalServerError"))
    )
    with pytest.raises(ClientError) as exc:
        ddb.list_tables()
    assert _code_status(exc) == ("InternalServerError", 500)


# --- latency -----------------------------------------------------------------------------------


def test_added_latency(aws: LocalAws, ec2: Any) -> None:
    aws.set_faults(FaultRule("ec2:DescribeVolumes", latency_ms=400))
    start = time.monotonic()
    ec2.describe_volumes()
    delayed = time.monotonic() - start
    start = time.monotonic()
    ec2.describe_instances()
    undelayed = time.monotonic() - start
    assert delayed >= 0.4
    assert undelayed < delayed


# --- control API -------------------------------------------------------------------------------


def test_faults_are_cleared_by_reset_and_by_clear(aws: LocalAws, ec2: Any) -> None:
    for clear in (aws.clear_faults, aws.reset):
        aws.set_faults(FaultRule("ec2:*", error=ErrorFault(probability=1.0)))
        with pytest.raises(ClientError):
            ec2.describe_volumes()  # the fault applies...
        clear()
        ec2.describe_volumes()  # ...and no longer does
        assert aws.faults()["rules"] == []


def test_invalid_fault_config_is_a_400(aws: LocalAws) -> None:
    payloads: list[dict[str, Any]] = [
        {"rules": [{"api": "ec2:*", "throttle": {"capacity": 0, "refill_per_second": 1}}]},
        {"rules": [{"api": "ec2:*", "bogus": 1}]},
        {"nope": []},
    ]
    for payload in payloads:
        request = urllib.request.Request(
            aws.endpoint_url + "/_localaws/faults",
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(request)
        assert exc.value.code == 400
        assert "error" in json.loads(exc.value.read())


def test_control_endpoints_are_never_faulted(aws: LocalAws) -> None:
    aws.set_faults(FaultRule("*", error=ErrorFault(probability=1.0)))
    assert aws.health()["status"] == "ok"
    assert aws.events() == []
