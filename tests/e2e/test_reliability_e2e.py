"""Reliability (issue 5) against the local AWS, through the deployed stack and the router.

The handler's own retry budget sleeps for real (base 1 s), so these tests give the Lambda
context a few seconds and set SNAPSET_SAFETY_MARGIN_MS=0 through the function's environment:
what cannot start in time is reported as a retryable `Timeout` and redelivered.

botocore's own retry sleeps (legacy backoff: up to 1, 2, 4, 8, 16, 20 s between attempts) are
divided by 50 inside the function's execution environment (`worker_setup/fast_sdk_backoff.py`):
the attempts, their number and the errors are real, only the waiting is shortened. The handler's
retry budget is not touched.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ACCOUNT, SCHEDULED_TAGS, STOP_TAGS, Fleet, snapshots_of, unique_time

from localaws import ErrorFault, FaultRule, LocalAws, Throttle
from localaws.deploy import Deployment
from localaws.lambda_runtime import Invocation
from localaws.report_inbox import ReportInbox
from localaws.router import Router, instance_state_change_event
from snapset.clients import SNS_CONFIG
from snapset.errors import RETRY_ON_REDELIVERY_CODES

pytestmark = pytest.mark.e2e


WORKER_SETUP = Path(__file__).with_name("worker_setup")


@pytest.fixture(scope="module")
def short_router(local_aws: LocalAws, deployment: Deployment) -> Iterator[Router]:
    """Invocations with 4 s left and no safety margin: the retry budget ends quickly. The
    whole of EC2's buckets and 32 threads keep these fleets' estimates inside the invocation,
    so they run inline, redelivered as Lambda's async retries would (the fan-out has its own
    tests)."""
    routed = Router(
        local_aws,
        deployment,
        remaining_ms=4000,
        env_overrides={
            "SNAPSET_SAFETY_MARGIN_MS": "0",
            "SNAPSET_EC2_API_SHARE": "1.0",
            "SNAPSET_MAX_WORKERS": "32",
        },
        worker_setup=(WORKER_SETUP / "fast_sdk_backoff.py",),
    )
    yield routed
    routed.close()


def volumes_once(ec2: Any, trigger_id: str) -> list[str]:
    """The volumes snapshotted for a trigger; fails if any volume was snapshotted twice."""
    counts = Counter(s["VolumeId"] for s in snapshots_of(ec2, trigger_id))
    assert [v for v, n in counts.items() if n > 1] == []
    return sorted(counts)


def deliver_until_done(
    router: Router, payload: dict[str, Any], rounds: int = 20
) -> list[Invocation]:
    """Redeliver a trigger as Lambda's async retry would, until an invocation succeeds."""
    invocations = []
    for _ in range(rounds):
        invocation = router.invoke(payload)
        invocations.append(invocation)
        if invocation.ok:
            return invocations
    pytest.fail(f"still failing after {rounds} deliveries: {invocations[-1].error!r}")


def test_100_deliveries_of_one_schedule_trigger_make_one_set_per_instance(
    router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    instances = [fleet.launch(SCHEDULED_TAGS, data=[{"D": "1"}, {"D": "2"}]) for _ in range(3)]
    when = unique_time()

    results = [
        router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap() for _ in range(100)
    ]

    trigger_id = results[0]["trigger"]["id"]
    assert volumes_once(ec2, trigger_id) == sorted(v for i in instances for v in i.data_volume_ids)
    first = {o["instance_id"]: o["snapshots"] for o in results[0]["instances"]}
    for result in results[1:]:  # every redelivery reports the original set
        assert {o["instance_id"]: o["snapshots"] for o in result["instances"]} == first
        assert result["status"] == "succeeded"
    assert len(inbox.drain()) == 100


def test_100_deliveries_of_one_instance_event_make_one_set(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    target = fleet.launch(STOP_TAGS, data=[{"D": "1"}])
    ec2.stop_instances(InstanceIds=[target.instance_id])
    event = instance_state_change_event(
        target.instance_id, "stopped", account=ACCOUNT, region=local_aws.region
    )

    for _ in range(100):
        (invocation,) = router.route_event(event)
        assert invocation.unwrap()["summary"]["started"] == 1

    assert volumes_once(ec2, event["id"]) == sorted(target.volume_ids)
    assert {r.status for r in inbox.drain()} == {"succeeded"}


def test_concurrent_duplicate_deliveries_make_one_set(
    router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    instances = [fleet.launch(SCHEDULED_TAGS) for _ in range(4)]
    when = unique_time()
    start = threading.Barrier(8)
    results: list[Invocation] = []
    lock = threading.Lock()

    def deliver() -> None:
        start.wait()
        invocation = router.fire_schedule(policy="nightly-app", scheduled_time=when)
        with lock:
            results.append(invocation)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # A duplicate either stands down (skipped) or fails the instance with a code that a
    # redelivery retries (the invocation then raises IncompleteRun after reporting).
    # (Each delivery may have made some sets and stood down on others: all may raise.)
    assert all(r.error is None or r.error.error_type == "IncompleteRun" for r in results)
    reports = [r.message for r in inbox.drain()]
    assert len(reports) == 8
    for report in reports:
        for outcome in report["instances"]:
            assert outcome["status"] in ("started", "skipped") or (
                outcome["error"]["code"] in RETRY_ON_REDELIVERY_CODES
            ), outcome
    trigger_id = reports[0]["trigger"]["id"]
    made = volumes_once(ec2, trigger_id)
    assert made == sorted(v for i in instances for v in i.data_volume_ids)

    again = router.fire_schedule(policy="nightly-app", scheduled_time=when).unwrap()

    assert again["summary"]["started"] == len(instances)
    assert volumes_once(ec2, trigger_id) == made
    inbox.drain()


def test_throttled_create_snapshots_for_60_instances_completes_by_redelivery(
    local_aws: LocalAws, short_router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    """A CreateSnapshots token bucket 6x smaller than the fleet, on the server's frozen clock.

    No tokens come while a delivery runs; 10 s pass between deliveries (Lambda's async retries
    are minutes apart), refilling exactly the 10 of the capacity. So each delivery starts at
    most 10 sets however fast the machine is, and at least 6 deliveries are needed. The bucket
    is small so that even a slow machine spends it within a delivery's 4 s (CI's started 48 sets
    in its first delivery), and the bucket really runs dry.
    """
    tag = f"tb-{uuid.uuid4().hex[:8]}"
    ids = fleet.launch_many(60, {"Bench": tag})
    local_aws.freeze_clock()
    local_aws.set_faults(
        FaultRule("ec2:CreateSnapshots", throttle=Throttle(capacity=10, refill_per_second=1))
    )
    payload = {"policy": "throttled", "target_tags": {"Bench": [tag]}, "request_id": tag}
    invocations: list[Invocation] = []
    try:
        for _ in range(60):  # later deliveries are bounded by the machine's speed, not tokens
            invocations.append(short_router.invoke(payload))
            if invocations[-1].ok:
                break
            local_aws.advance_clock(10.0)
    finally:
        local_aws.reset_clock()
    assert invocations[-1].ok, invocations[-1].error

    assert local_aws.faults()["stats"][0]["throttled"] > 0  # the bucket really ran dry
    assert len(invocations) >= 6  # 60 sets, at most 10 per delivery
    reports = [r.message for r in inbox.drain() if r.kind == "run"]
    assert len(reports) == len(invocations)
    for report in reports:
        for outcome in report["instances"]:
            assert outcome["status"] == "started" or (
                outcome["status"] == "failed"
                and outcome["error"]["code"] in RETRY_ON_REDELIVERY_CODES
            ), outcome
    assert reports[-1]["summary"]["started"] == 60
    assert len(volumes_once(ec2, tag)) == 60  # every instance once: root volume only
    started = {
        o["instance_id"] for r in reports for o in r["instances"] if o["status"] == "started"
    }
    assert started == set(ids)


def test_bursts_of_5xx_on_create_snapshots(
    local_aws: LocalAws, short_router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any
) -> None:
    tag = f"5xx-{uuid.uuid4().hex[:8]}"
    fleet.launch_many(20, {"Burst": tag})
    local_aws.set_faults(
        FaultRule(
            "ec2:CreateSnapshots",
            error=ErrorFault(probability=0.3, fail_next=5, code="ServiceUnavailable", status=503),
        ),
        seed=5,
    )
    payload = {"policy": "bursty", "target_tags": {"Burst": [tag]}, "request_id": tag}

    deliver_until_done(short_router, payload)

    assert local_aws.faults()["stats"][0]["errors"] > 0
    assert len(volumes_once(ec2, tag)) == 20
    inbox.drain()


@pytest.mark.parametrize("extra_failures", [1, 2, 3])
def test_sns_unavailable_past_botocores_retries_fails_then_the_redelivery_reports(
    extra_failures: int,
    local_aws: LocalAws,
    short_router: Router,
    fleet: Fleet,
    inbox: ReportInbox,
    ec2: Any,
) -> None:
    # botocore rewrites the shared config's `max_attempts` (retries) to `total_max_attempts`
    retries = SNS_CONFIG.retries
    sns_attempts = retries.get("total_max_attempts") or retries["max_attempts"] + 1
    target = fleet.launch({"Name": "sns"})
    request_id = f"sns-{uuid.uuid4().hex[:8]}"
    payload = {"policy": "sns-down", "instance_ids": [target.instance_id], "request_id": request_id}
    local_aws.set_faults(
        FaultRule(
            "sns:Publish",
            error=ErrorFault(
                fail_next=sns_attempts + extra_failures, code="ServiceUnavailable", status=503
            ),
        )
    )

    first = short_router.invoke(payload)

    assert first.error is not None
    assert first.error.error_type == "ClientError"
    assert "(ServiceUnavailable) when calling the Publish operation" in first.error.message
    made = volumes_once(ec2, request_id)
    assert made == sorted(target.volume_ids)
    assert inbox.drain() == []

    second = short_router.invoke(payload)  # its first `extra_failures` attempts still fail

    assert second.ok, second.error
    assert volumes_once(ec2, request_id) == made  # no second set
    (report,) = inbox.drain()
    assert report.status == "succeeded"
    (outcome,) = report.message["instances"]
    assert sorted(s["volume_id"] for s in outcome["snapshots"]) == made


def test_instance_terminated_between_discovery_and_snapshot(
    local_aws: LocalAws,
    deployment: Deployment,
    fleet: Fleet,
    inbox: ReportInbox,
    ec2: Any,
    tmp_path: Path,
) -> None:
    tag = f"term-{uuid.uuid4().hex[:8]}"
    victim, *others = (fleet.launch({"Gone": tag}) for _ in range(3))
    payload = {"policy": "terminated", "target_tags": {"Gone": [tag]}, "request_id": tag}
    mark = tmp_path / "terminated"
    # The hook runs in the function's environment, on its own session, before CreateSnapshots.
    hooked = Router(
        local_aws,
        deployment,
        remaining_ms=4000,
        env_overrides={
            "SNAPSET_SAFETY_MARGIN_MS": "0",
            "E2E_TERMINATE_BEFORE_CREATE": victim.instance_id,
            "E2E_TERMINATED_MARK": str(mark),
            "E2E_ADMIN_CREDENTIALS": ",".join(c or "" for c in local_aws.credentials),
        },
        worker_setup=(WORKER_SETUP / "terminate_before_create.py",),
    )
    try:
        result = hooked.invoke(payload).unwrap()
    finally:
        hooked.close()

    terminated = mark
    assert terminated.exists()
    outcomes = {o["instance_id"]: o for o in result["instances"]}
    gone = outcomes[victim.instance_id]
    assert gone["status"] == "skipped" or gone["error"]["code"] == "IncorrectState", gone
    assert [outcomes[o.instance_id]["status"] for o in others] == ["started", "started"]
    assert volumes_once(ec2, tag) == sorted(v for o in others for v in o.volume_ids)
    assert result["status"] == "partial"
    inbox.drain()
