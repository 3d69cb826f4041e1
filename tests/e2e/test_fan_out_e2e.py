"""Fan-out through the deployed stack: the schedule's invocation hands a fleet that does not fit
it to the deployed state machine, which runs on the local AWS (moto's interpreter, its Lambda
tasks served by the router, IAM enforced on both roles) and ends in one run report.

The function gets 2% of EC2's buckets with their refill scaled by 100 (2 tokens of burst,
10 calls per second) and 4 s of invocation: 20 instances are estimated at ~3 s, more than half
of it, so they are handed off in batches. Step Functions' retry waits are scaled to 0.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import SCHEDULED_TAGS, Fleet, snapshots_of, unique_time

from localaws import FaultRule, LocalAws, Throttle
from localaws.deploy import Deployment
from localaws.report_inbox import ReportInbox
from localaws.router import Router

pytestmark = pytest.mark.e2e

FLEET = 20


@pytest.fixture(scope="module")
def fan_router(local_aws: LocalAws, deployment: Deployment) -> Iterator[Router]:
    routed = Router(
        local_aws,
        deployment,
        remaining_ms=5_000,
        env_overrides={
            "SNAPSET_SAFETY_MARGIN_MS": "1000",
            "SNAPSET_EC2_API_SHARE": "0.02",
            "SNAPSET_EC2_RATE_SCALE": "100",
        },
    )
    yield routed
    routed.close()


@pytest.fixture
def fast_states(local_aws: LocalAws, fan_router: Router) -> Iterator[None]:
    fan_router.invocations.clear()
    local_aws.set_states_wait_scale(0)
    yield
    local_aws.set_states_wait_scale(1)


def _launch(fleet: Fleet) -> list[str]:
    return sorted(fleet.launch(SCHEDULED_TAGS).instance_id for _ in range(FLEET))


def _executions(local_aws: LocalAws, execution_arn: str) -> list[dict[str, Any]]:
    machine = execution_arn.replace(":execution:", ":stateMachine:").rsplit(":", 1)[0]
    sfn = local_aws.client("stepfunctions")
    listed: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=machine)["executions"]
    return [e for e in listed if e["name"] == execution_arn.rsplit(":", 1)[1]]


def _run_reports(inbox: ReportInbox) -> list[dict[str, Any]]:
    return [r.message for r in inbox.drain() if r.kind == "run"]


def test_a_fleet_too_big_for_one_invocation_fans_out_into_one_report(
    local_aws: LocalAws,
    fan_router: Router,
    fleet: Fleet,
    inbox: ReportInbox,
    ec2: Any,
    fast_states: None,
) -> None:
    ids = _launch(fleet)
    when = unique_time()
    answer = fan_router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()
    assert answer["status"] == "handed_off"
    assert answer["instances"] == FLEET
    assert answer["batches"] >= 2
    # Scheduler delivers the same schedule twice: the second starts no execution
    again = fan_router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()
    assert again["execution_arn"] == answer["execution_arn"]
    done = local_aws.wait_for_execution(answer["execution_arn"], timeout=180)
    assert done["status"] == "SUCCEEDED", done
    assert len(_executions(local_aws, answer["execution_arn"])) == 1
    # every batch ran through the deployed function, each once, and its retention once its
    # creation had settled (a retain task that came earlier was told CreationPending and
    # retried, before any EC2 call), then the aggregator
    states = [i for i in fan_router.invocations if i.source == "states"]
    tasks = Counter(i.payload.get("snapset_task") for i in states if i.ok)
    assert tasks == {"batch": answer["batches"], "retain": answer["batches"], "aggregate": 1}
    refused = {(i.payload["snapset_task"], i.error.error_type) for i in states if i.error}
    assert refused <= {("retain", "CreationPending")}
    [report] = _run_reports(inbox)
    assert report["status"] == "succeeded"
    assert report["execution_arn"] == answer["execution_arn"]
    assert [i["instance_id"] for i in report["instances"]] == ids
    assert report["summary"]["started"] == FLEET
    # one set per instance: its data volume, once (the boot volume is excluded by the policy)
    trigger = report["trigger"]["id"]
    volumes = Counter(s["VolumeId"] for s in snapshots_of(ec2, trigger))
    assert len(volumes) == FLEET
    assert set(volumes.values()) == {1}
    # the full report in S3 is the one the SNS message summarizes
    location = report["full_report"]
    stored = local_aws.client("s3").get_object(Bucket=location["bucket"], Key=location["key"])
    full = json.loads(stored["Body"].read())
    assert full["summary"] == report["summary"]
    assert len(full["instances"]) == FLEET


def test_throttling_past_every_retry_fails_instances_without_losing_or_doubling_a_set(
    local_aws: LocalAws,
    fan_router: Router,
    fleet: Fleet,
    inbox: ReportInbox,
    ec2: Any,
    fast_states: None,
) -> None:
    ids = _launch(fleet)
    # CreateSnapshots' bucket holds 6 tokens and barely refills: most of the fleet is refused
    # on every attempt the Map makes
    local_aws.set_faults(
        FaultRule("ec2:CreateSnapshots", throttle=Throttle(capacity=6, refill_per_second=0.01))
    )
    answer = fan_router.fire_schedule(policy="nightly-app", scheduled_time=unique_time()).unwrap()
    done = local_aws.wait_for_execution(answer["execution_arn"], timeout=240)
    local_aws.clear_faults()
    assert done["status"] == "SUCCEEDED", done
    [report] = _run_reports(inbox)
    assert report["status"] == "partial"
    assert [i["instance_id"] for i in report["instances"]] == ids
    started = {i["instance_id"] for i in report["instances"] if i["status"] == "started"}
    failed = {i["instance_id"] for i in report["instances"] if i["status"] == "failed"}
    assert started
    assert failed
    assert started | failed == set(ids)
    # each failure names why: refused by EC2, or not started before the worker's deadline
    assert {i["error"]["code"] for i in report["instances"] if i["status"] == "failed"} <= {
        "RequestLimitExceeded",
        "Timeout",
    }
    # the sets that started are the report's, once each; nothing else was made
    trigger = report["trigger"]["id"]
    made = Counter(s["VolumeId"] for s in snapshots_of(ec2, trigger))
    assert set(made.values()) == {1}
    assert len(made) == len(started)
    # the Map retried the refused batches before giving up
    batches = [
        i for i in fan_router.invocations if isinstance(i.payload, dict) and i.source == "states"
    ]
    assert max(i.payload.get("attempt", 0) for i in batches) >= 1
