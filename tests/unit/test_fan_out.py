"""Fan-out: a run that does not fit its invocation is handed to the state machine, and the
state machine's tasks (sent here as the deployed definition sends them) do it batch by batch
with the inline run's guarantees, ending in one report."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from localaws.fleet import DataVolume, FleetInstance, launch_instance, snapshots_by_volume
from snapset import fanout
from snapset import handler as handler_module
from snapset.deadline import Deadline
from snapset.errors import InvalidInput
from snapset.fanout import (
    BATCH_FAILED,
    CreationPending,
    FanOutRun,
    estimate,
    execution_name,
    fan_out_shape,
    script_seconds,
)
from snapset.handler import IncompleteRun, handler
from snapset.outcomes import InstanceOutcome
from snapset.policy import SnapshotPolicy
from snapset.run import IdempotencyStore
from snapset.settings import ENV_EC2_API_SHARE
from snapset.targets import AttachedVolume, Instance
from snapset.triggers import parse_request
from tests.unit.conftest import COMPLETER, Aws, LambdaContext, deploy_policies
from tests.unit.test_retention_in_run import age_all_snapshots

TAGS = {"Backup": ["fan"]}


def _instances(n: int, volumes: int = 2) -> list[Instance]:
    return [
        Instance(
            instance_id=f"i-{k:017x}",
            state="running",
            volumes=tuple(
                AttachedVolume(
                    volume_id=f"vol-{k:08x}{v:09x}", device_name=f"/dev/sd{v}", is_root=v == 0
                )
                for v in range(volumes)
            ),
            tags={},
        )
        for k in range(n)
    ]


def test_the_estimate_is_the_slowest_phase_sum_of_ec2s_buckets_at_the_share() -> None:
    policy = SnapshotPolicy.model_validate({"policy": "p", "target_tags": TAGS})
    price = estimate(policy, _instances(10_000), share=0.5, max_workers=8)
    # 50 of the 100-token burst, then 2.5 per second; plus 0.5 s per call over 8 threads
    assert price.creates == 10_000
    assert price.deletes == 0
    assert price.create_seconds == pytest.approx((10_000 - 50) / 2.5 + 10_000 * 0.5 / 8)
    retaining = SnapshotPolicy.model_validate(
        {"policy": "p", "target_tags": TAGS, "retention": {"count": 7}}
    )
    with_deletes = estimate(retaining, _instances(1_000), share=0.5, rate_scale=20)
    # one expired set of two volumes per instance, the refill times the local time scale, and
    # the calls' latency divided by it like every other duration
    assert with_deletes.deletes == 2_000
    assert with_deletes.delete_seconds == pytest.approx((2_000 - 50) / 50 + 2_000 * 0.5 / 8 / 20)
    assert with_deletes.seconds == with_deletes.create_seconds + with_deletes.delete_seconds


def test_stopped_instances_without_volumes_and_terminated_ones_cost_nothing() -> None:
    policy = SnapshotPolicy.model_validate({"policy": "p", "target_tags": TAGS})
    live = _instances(3)
    terminated = [dataclasses.replace(i, state="terminated") for i in live]
    no_volumes = [dataclasses.replace(i, volumes=()) for i in live]
    assert estimate(policy, live + terminated + no_volumes, share=0.5).creates == 3


def test_the_shape_splits_the_share_and_fills_each_worker() -> None:
    shape = fan_out_shape(share=0.5, worker_seconds=290, volumes_per_instance=2, retention=False)
    # 2.5 creates per second need no more than 2 workers of 8 threads: each gets half
    assert shape.max_concurrency == 2
    assert shape.worker_share == 0.25
    assert shape.batch_size == int(0.6 * 290 * 1.25)
    retaining = fan_out_shape(share=0.5, worker_seconds=290, volumes_per_instance=2, retention=True)
    # two deletes per instance at the same rate: half the batch
    assert retaining.batch_size == int(0.6 * 290 * 1.25 / 2)
    fast = fan_out_shape(
        share=0.5, worker_seconds=14.5, volumes_per_instance=2, retention=False, rate_scale=20
    )
    # a local time scale cuts the same night as a real one: 2 workers, batches as big
    assert (fast.max_concurrency, fast.worker_share) == (shape.max_concurrency, shape.worker_share)
    assert fast.batch_size == shape.batch_size
    single = fan_out_shape(
        share=1.0, worker_seconds=290, volumes_per_instance=2, retention=False, max_workers=1
    )
    # the whole refill (5 per second) over workers of one thread (2 calls per second): 3
    assert single.max_concurrency == 3
    # with retention two Maps run side by side: each gets half of what the function may run
    capped = fan_out_shape(
        share=1.0,
        worker_seconds=290,
        volumes_per_instance=2,
        retention=True,
        max_workers=1,
        concurrency_limit=4,
    )
    assert (capped.max_concurrency, capped.worker_share) == (2, 0.5)
    alone = fan_out_shape(
        share=0.5, worker_seconds=290, volumes_per_instance=2, retention=True, concurrency_limit=1
    )
    assert (alone.max_concurrency, alone.worker_share) == (1, 0.5)


def test_scripts_are_priced_at_their_timeouts_over_the_runs_threads() -> None:
    scripted = SnapshotPolicy.model_validate(
        {"policy": "p", "target_tags": TAGS, "scripts": {"document": "doc", "timeout_seconds": 20}}
    )
    price = estimate(scripted, _instances(1_000), share=0.5, max_workers=8)
    # pre and post of 20 s each over the 32 threads a run with scripts uses
    assert price.create_seconds == pytest.approx((1_000 - 50) / 2.5 + 1_000 * (0.5 / 32 + 40 / 32))
    assert script_seconds(scripted) == 40
    dry = scripted.model_copy(update={"dry_run": True})
    assert script_seconds(dry) == 20  # one dry-run command


def test_a_worker_takes_no_more_scripted_instances_than_its_threads_get_through() -> None:
    shape = fan_out_shape(
        share=0.5,
        worker_seconds=290,
        volumes_per_instance=2,
        retention=False,
        max_workers=32,
        seconds_per_instance=40,
    )
    assert shape.batch_size == int(0.6 * 290 * 32 / 40)


def test_execution_names_are_per_policy_and_trigger_and_valid() -> None:
    name = execution_name("nightly", "a" * 256)
    assert name == execution_name("nightly", "a" * 256)
    assert name != execution_name("nightly", "b")
    assert name != execution_name("other", "a" * 256)
    assert len(name) <= 80
    assert all(c.isalnum() or c in "-_" for c in execution_name("p.with spaces", "x:y/z"))


def _fleet(aws: Aws, n: int, *, tag: str = "fan") -> list[str]:
    return sorted(launch_instance(aws.ec2, tags={"Backup": tag}).instance_id for _ in range(n))


def _tight(monkeypatch: pytest.MonkeyPatch, context: LambdaContext) -> None:
    """2% of EC2's buckets (a burst of 2, 0.1 calls per second) and 20 s of invocation: five
    instances no longer fit (10 s allowed inline, 30 s estimated)."""
    monkeypatch.setenv(ENV_EC2_API_SHARE, "0.02")
    handler_module.settings.cache_clear()
    context.remaining_ms = 30_000


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = BaseClient._make_api_call

    def record(self: BaseClient, operation: str, params: Any) -> Any:
        calls.append(f"{self.meta.service_model.service_name}:{operation}")
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", record)
    return calls


def test_a_small_run_stays_inline(aws: Aws, context: LambdaContext) -> None:
    _fleet(aws, 3)
    answer = handler({"policy": "p", "target_tags": TAGS, "request_id": "r"}, context)
    assert answer["summary"]["started"] == 3
    assert aws.executions() == []


def test_a_run_that_does_not_fit_is_handed_off_without_a_snapshot(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    calls = _count_calls(monkeypatch)
    answer = handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    assert answer["status"] == "handed_off"
    assert answer["instances"] == 5
    assert "ec2:CreateSnapshots" not in calls
    assert aws.messages() == []  # the execution's aggregator reports, not the hand-off
    [execution] = aws.executions()
    assert execution["name"] == execution_name("p", "r1")
    assert answer["execution_arn"] == execution["executionArn"]
    run = FanOutRun.model_validate(execution["input"]["run"])
    assert run.request.trigger.id == "r1"
    assert run.instances == 5
    items = json.loads(aws.s3.get_object(Bucket=run.bucket, Key=run.items_key)["Body"].read())
    assert len(items) == run.batches
    assert sorted(i for b in items for i in b["instance_ids"]) == ids
    assert [b["index"] for b in items] == list(range(run.batches))
    assert run.worker_share * run.max_concurrency == pytest.approx(0.02)


def test_a_duplicate_delivery_starts_no_second_execution(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(aws, 5)
    _tight(monkeypatch, context)
    payload = {"policy": "p", "target_tags": TAGS, "request_id": "r1"}
    first = handler(payload, context)
    _fleet(aws, 1)  # the redelivery finds another plan: it must not replace the first
    again = handler(payload, context)
    [execution] = aws.executions()
    assert again["duplicate"] is True
    assert again["execution_arn"] == first["execution_arn"] == execution["executionArn"]
    run = FanOutRun.model_validate(execution["input"]["run"])
    items = json.loads(aws.s3.get_object(Bucket=run.bucket, Key=run.items_key)["Body"].read())
    assert sum(len(b["instance_ids"]) for b in items) == 5


def _run(aws: Aws) -> dict[str, Any]:
    """The execution's run, its workers paced at a share that keeps the tests fast (the hand-off
    was made at 2%; pacing has its own tests)."""
    [execution] = aws.executions()
    run: dict[str, Any] = execution["input"]["run"]
    return {**run, "worker_share": 0.5}


SCHEDULE = {"scheduled_time": "2026-12-03T01:00:00Z", "schedule_arn": "arn:aws:scheduler:x"}


def _items(aws: Aws, run: dict[str, Any]) -> list[dict[str, Any]]:
    body = aws.s3.get_object(Bucket=run["bucket"], Key=run["items_key"])["Body"].read()
    items: list[dict[str, Any]] = json.loads(body)
    return items


def _execute(aws: Aws, context: LambdaContext, run: dict[str, Any]) -> dict[str, Any]:
    """What the deployed definition does: each batch, retention if the run retains, then the
    aggregator, with the Map's results passed on."""
    created = [
        handler({"snapset_task": "batch", "run": run, "batch": b}, context)
        for b in _items(aws, run)
    ]
    retained = (
        [
            handler({"snapset_task": "retain", "run": run, "batch": b}, context)
            for b in _items(aws, run)
        ]
        if run["retention"]
        else []
    )
    return handler(
        {
            "snapset_task": "aggregate",
            "run": run,
            "created": created,
            "retained": retained,
            "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:m:e",
        },
        context,
    )


def test_the_batches_make_one_set_each_and_the_aggregator_one_report(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "schedule": SCHEDULE}, context)
    context.remaining_ms = 300_000
    calls = _count_calls(monkeypatch)
    answer = _execute(aws, context, _run(aws))
    assert calls.count("ec2:CreateSnapshots") == 5
    # a scheduled batch's first attempt looks for no set: no DescribeSnapshots at all
    assert "ec2:DescribeSnapshots" not in calls
    # without retention the aggregator reads whether it published already, the plan and each
    # batch's results, nothing else (one more read of the plan is this test's own, to send
    # the batches)
    assert calls.count("s3:GetObject") == 1 + 1 + 1 + _run(aws)["batches"]
    assert answer["status"] == "succeeded"
    assert answer["summary"]["started"] == 5
    [report] = [json.loads(m["Message"]) for m in aws.messages()]
    assert [i["instance_id"] for i in report["instances"]] == ids
    assert report["trigger"]["id"] == "p@2026-12-03T01:00:00Z"
    assert report["execution_arn"].endswith(":execution:m:e")
    assert report["full_report"] == answer["full_report"]
    assert len(snapshots_by_volume(aws.ec2)) == 5


EXCLUDING = {"policy": "p", "target_tags": TAGS, "exclude_data_volume_tags": {"NoBackup": ["true"]}}


def _fleet_with_excluded(aws: Aws) -> tuple[list[FleetInstance], list[str]]:
    """Five instances with a data volume each; two of them have a second one tagged
    NoBackup=true. Returns the instances (by id) and the tagged volumes."""
    fleet = sorted(
        (
            launch_instance(
                aws.ec2,
                tags={"Backup": "fan"},
                data_volumes=[DataVolume()] + ([DataVolume(tags={"NoBackup": "true"})] * (n < 2)),
            )
            for n in range(5)
        ),
        key=lambda i: i.instance_id,
    )
    tagged = [v for i in fleet for v in i.data_volume_ids[1:]]
    return fleet, tagged


def test_the_plan_lists_the_volume_tag_exclusions_once_for_every_batch(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, tagged = _fleet_with_excluded(aws)
    _tight(monkeypatch, context)
    calls = _count_calls(monkeypatch)
    handler({**EXCLUDING, "request_id": "r1"}, context)
    assert calls.count("ec2:DescribeVolumes") == 1
    run = _run(aws)
    planned = {iid: volumes for b in _items(aws, run) for iid, volumes in b["tag_excluded"].items()}
    owners = {v: i.instance_id for i in fleet for v in i.volume_ids}
    assert planned == {owners[v]: [v] for v in tagged}
    # tagged after the plan: the batches act on the plan's view and snapshot it
    late = fleet[4].data_volume_ids[0]
    aws.ec2.create_tags(Resources=[late], Tags=[{"Key": "NoBackup", "Value": "true"}])
    calls.clear()
    context.remaining_ms = 300_000
    answer = _execute(aws, context, run)
    assert answer["summary"]["started"] == 5
    assert "ec2:DescribeVolumes" not in calls
    snapped = snapshots_by_volume(aws.ec2)
    assert not set(tagged) & snapped.keys()
    assert late in snapped
    assert len(snapped) == 2 * 5


def test_a_batch_whose_planned_exclusions_would_swell_its_item_lists_its_own(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, _ = _fleet_with_excluded(aws)
    _tight(monkeypatch, context)
    monkeypatch.setattr(fanout, "MAX_PLANNED_EXCLUSIONS", 0)
    handler({**EXCLUDING, "request_id": "r1"}, context)
    tagged = {i.instance_id for i in fleet if len(i.data_volume_ids) == 2}
    for item in _items(aws, _run(aws)):
        # over the cap (here: any exclusion at all), the batch lists its own
        expected = None if tagged & set(item["instance_ids"]) else {}
        assert item["tag_excluded"] == expected


def test_a_failed_plan_listing_leaves_each_batch_to_list_its_own(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tagged = _fleet_with_excluded(aws)
    _tight(monkeypatch, context)
    real = BaseClient._make_api_call

    def deny_volumes(self: BaseClient, operation: str, params: Any) -> Any:
        if operation == "DescribeVolumes":
            raise ClientError(
                {"Error": {"Code": "RequestLimitExceeded", "Message": "x"}}, operation
            )
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", deny_volumes)
    handler({**EXCLUDING, "request_id": "r1"}, context)
    monkeypatch.setattr(BaseClient, "_make_api_call", real)
    run = _run(aws)
    assert [b["tag_excluded"] for b in _items(aws, run)] == [None] * run["batches"]
    calls = _count_calls(monkeypatch)
    context.remaining_ms = 300_000
    answer = _execute(aws, context, run)
    assert answer["summary"]["started"] == 5
    assert calls.count("ec2:DescribeVolumes") == run["batches"]
    assert not set(tagged) & snapshots_by_volume(aws.ec2).keys()


def test_a_retried_aggregator_does_not_publish_the_report_twice(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(aws, 3)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "schedule": SCHEDULE}, context)
    context.remaining_ms = 300_000
    run = _run(aws)
    first = _execute(aws, context, run)
    created = [{"batch": b["index"], "instances": len(b["instance_ids"])} for b in _items(aws, run)]
    calls = _count_calls(monkeypatch)
    # the Map retries an aggregator that published, then failed to answer
    again = handler(
        {"snapset_task": "aggregate", "run": run, "created": created, "retained": []}, context
    )
    assert again == first
    assert len(aws.messages()) == 1
    assert "sns:Publish" not in calls


def test_batches_are_sized_for_a_whole_invocation_not_what_planning_left(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, Any] = {}

    def record(*args: Any, **kwargs: Any) -> None:
        asked.update(kwargs)

    monkeypatch.setattr(handler_module, "hand_off", record)
    now = [0.0]
    deadline = Deadline(at=290.0, clock=lambda: now[0])
    decide = handler_module._hand_off(
        aws.ec2,
        parse_request({"policy": "p", "target_tags": TAGS, "request_id": "r"}),
        handler_module.settings(),
        deadline,
        IdempotencyStore("t", boto3.client("dynamodb", region_name="us-east-1"), context),
    )
    now[0] = 240.0  # discovering 10,000 instances took its time
    decide([], [])
    # each worker is an invocation of its own: it has what this one had when it started
    assert (asked["remaining_seconds"], asked["worker_seconds"]) == (50.0, 290.0)


def test_a_retried_batch_redoes_only_what_did_not_start(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    run = _run(aws)
    task = {"snapset_task": "batch", "run": run, "batch": {"index": 0, "instance_ids": ids}}
    refused = ids[-1]
    real = BaseClient._make_api_call

    def refuse_one(self: BaseClient, operation: str, params: Any) -> Any:
        if (
            operation == "CreateSnapshots"
            and params["InstanceSpecification"]["InstanceId"] == refused
        ):
            raise ClientError(
                {"Error": {"Code": "RequestLimitExceeded", "Message": "x"}}, operation
            )
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", refuse_one)
    context.remaining_ms = 12_000  # 2 s past the margin: no time to wait out the refusal
    with pytest.raises(IncompleteRun, match=f"batch 0: 1 instance.*{refused}"):
        handler(task, context)
    # the batch's results are written before it raises: the report shows the last attempt
    written = json.loads(
        aws.s3.get_object(Bucket=run["bucket"], Key=f"{run['prefix']}create/batch-00000.json")[
            "Body"
        ].read()
    )
    assert [o["status"] for o in written] == ["started"] * 4 + ["failed"]
    monkeypatch.setattr(BaseClient, "_make_api_call", real)
    context.remaining_ms = 300_000
    calls = _count_calls(monkeypatch)
    # the Map retries the batch (its RetryCount in the task): it lists the trigger's sets
    # once and looks again for the one set it did not find; only that instance is snapshotted
    again = handler({**task, "attempt": 1}, context)
    assert again["started"] == 5
    assert again["failed"] == 0
    assert calls.count("ec2:CreateSnapshots") == 1
    assert calls.count("ec2:DescribeSnapshots") == 2
    assert len(snapshots_by_volume(aws.ec2)) == 5


def test_a_batch_the_map_gave_up_on_is_reported_instance_by_instance(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    context.remaining_ms = 300_000
    run = _run(aws)
    items = _items(aws, run)
    lost, silent, *done = items
    long_cause = "x" * 400
    created = [
        {"batch": lost["index"], "error": "Sandbox.Timedout", "cause": long_cause},
        *(handler({"snapset_task": "batch", "run": run, "batch": b}, context) for b in done),
    ]
    answer = handler(
        {"snapset_task": "aggregate", "run": run, "created": created, "retained": []}, context
    )
    assert answer["status"] == "partial"
    [report] = [json.loads(m["Message"]) for m in aws.messages()]
    failed = {i["instance_id"]: i["error"] for i in report["instances"] if i["status"] == "failed"}
    assert set(failed) == set(lost["instance_ids"]) | set(silent["instance_ids"])
    assert {e["code"] for e in failed.values()} == {BATCH_FAILED}
    # the error and its cause, cut to 300 characters; a batch the Map said nothing of
    why = f"Sandbox.Timedout: {long_cause}"[:300]
    for iid in lost["instance_ids"]:
        assert f"({why})" in failed[iid]["message"]
    for iid in silent["instance_ids"]:
        assert "(no result)" in failed[iid]["message"]
    assert report["summary"]["instances"] == 5


def test_retention_runs_per_batch_after_every_batch_started(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"p": {"count": 1}})
    _fleet(aws, 5)
    payload = {"policy": "p", "target_tags": TAGS}
    for n in range(2):  # two completed inline sets per instance, a day apart
        handler({**payload, "request_id": f"old-{n}"}, context)
        COMPLETER.complete_all()
        age_all_snapshots(1)
    before = {
        s
        for snaps in snapshots_by_volume(aws.ec2).values()
        for s in (x["SnapshotId"] for x in snaps)
    }
    _tight(monkeypatch, context)
    handler({**payload, "request_id": "fan"}, context)
    context.remaining_ms = 300_000
    aws.messages()
    answer = _execute(aws, context, _run(aws))
    [report] = [json.loads(m["Message"]) for m in aws.messages()]
    # count 1: this run's set and the newest completed one stay, the oldest goes
    assert answer["summary"]["retention_deleted"] == 5
    deleted = {d for i in report["instances"] for d in i["retention"]["deleted"]}
    after = {
        s
        for snaps in snapshots_by_volume(aws.ec2).values()
        for s in (x["SnapshotId"] for x in snaps)
    }
    assert deleted == before - after
    assert len(after) == 10


def test_an_aggregator_without_its_plan_names_the_object(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    run = _run(aws)
    aws.s3.delete_object(Bucket=run["bucket"], Key=run["items_key"])
    with pytest.raises(LookupError, match=f"s3://{run['bucket']}/{run['items_key']}: .* gone"):
        handler({"snapset_task": "aggregate", "run": run}, context)


def test_a_task_the_function_cannot_parse_names_the_field(aws: Aws, context: LambdaContext) -> None:
    with pytest.raises(InvalidInput, match="run"):
        handler({"snapset_task": "batch", "batch": {"index": 0, "instance_ids": ["i-1"]}}, context)
    assert aws.messages() == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bucket": "someone-elses-bucket"}, "run.bucket"),
        ({"prefix": "reports/p/", "items_key": "reports/p/items.json"}, "run.prefix"),
        ({"missing_key": "reports/x.json"}, "run.missing_key"),
    ],
)
def test_a_task_may_not_point_the_function_elsewhere(
    aws: Aws,
    context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    field: str,
) -> None:
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    forged = {**_run(aws), **change}
    calls = _count_calls(monkeypatch)
    with pytest.raises(InvalidInput, match=field):
        handler(
            {"snapset_task": "batch", "run": forged, "batch": {"index": 0, "instance_ids": ids}},
            context,
        )
    assert [c for c in calls if c.startswith(("ec2:", "s3:"))] == []


def test_a_task_may_not_bring_its_own_retention(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention comes from the stack only: a forged retain task keeping 1 set of a deployed
    policy that keeps 7 deletes nothing."""
    deploy_policies(monkeypatch, {"p": {"count": 7}})
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    run = _run(aws)
    assert run["request"]["policy"]["retention"] == {"count": 7, "max_age_days": None}
    forged = {
        **run,
        "request": {
            **run["request"],
            "policy": {**run["request"]["policy"], "retention": {"count": 1}},
        },
    }
    calls = _count_calls(monkeypatch)
    for task in ("batch", "retain"):
        with pytest.raises(InvalidInput, match="retention of 'p' is not its deployed retention"):
            handler(
                {"snapset_task": task, "run": forged, "batch": {"index": 0, "instance_ids": ids}},
                context,
            )
    assert [c for c in calls if c.startswith("ec2:")] == []


@pytest.mark.parametrize(
    "forged_fields",
    [
        {"copies": [{"region": "ap-south-1"}]},
        {"share_with_accounts": ["444455556666"]},
    ],
    ids=["copies", "shares"],
)
def test_a_task_may_not_bring_its_own_copies_or_shares(
    aws: Aws,
    context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    forged_fields: dict[str, Any],
) -> None:
    """Copies and shares come from the stack only, as retention does: a forged batch task that
    would copy to another region or share with another account makes no EC2 call."""
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    run = _run(aws)
    forged = {
        **run,
        "request": {**run["request"], "policy": {**run["request"]["policy"], **forged_fields}},
    }
    calls = _count_calls(monkeypatch)
    with pytest.raises(InvalidInput, match="copies and shares of 'p' are not its deployed ones"):
        handler(
            {"snapset_task": "batch", "run": forged, "batch": {"index": 0, "instance_ids": ids}},
            context,
        )
    assert [c for c in calls if c.startswith("ec2:")] == []


def test_a_delivery_after_the_execution_closed_reports_it_and_starts_nothing(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(aws, 5)
    _tight(monkeypatch, context)
    payload = {"policy": "p", "target_tags": TAGS, "request_id": "r1"}
    first = handler(payload, context)
    assert (first["duplicate"], first["execution_status"]) == (False, "RUNNING")
    aws.sfn.stop_execution(executionArn=first["execution_arn"])
    again = handler(payload, context)
    assert (again["duplicate"], again["execution_status"]) == (True, "ABORTED")
    assert len(aws.executions()) == 1


def test_a_schedule_hand_off_is_a_first_delivery_and_a_manual_one_is_not(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "schedule": SCHEDULE}, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "m"}, context)
    runs = {
        e["input"]["run"]["request"]["trigger"]["type"]: e["input"]["run"] for e in aws.executions()
    }
    assert runs["schedule"]["first_delivery"] is True
    # the CLI may have used a manual request id: a manual run's batches always look
    assert runs["manual"]["first_delivery"] is False
    # a second delivery of the schedule finds the marker: were it to hand off anew, it would
    # not be a first delivery
    assert len(runs) == 2


def test_a_redriven_batch_looks_for_the_sets_it_may_have_made(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "schedule": SCHEDULE}, context)
    run = _run(aws)
    task = {"snapset_task": "batch", "run": run, "batch": {"index": 0, "instance_ids": ids}}
    calls = _count_calls(monkeypatch)
    handler(task, context)
    assert "ec2:DescribeSnapshots" not in calls  # first attempt of a first delivery
    calls.clear()
    again = handler({**task, "redrive": 1}, context)
    assert calls.count("ec2:DescribeSnapshots") == 1  # one listing finds all five sets
    assert "ec2:CreateSnapshots" not in calls
    assert again["started"] == 5


def test_missing_instances_and_a_failed_retention_batch_are_in_the_report(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_policies(monkeypatch, {"p": {"count": 7}})
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    gone = "i-0123456789abcdef0"
    handler({"policy": "p", "instance_ids": [*ids, gone], "request_id": "r1"}, context)
    run = _run(aws)
    assert "missing" not in run  # kept beside the batches, not in every item's input
    items = _items(aws, run)
    created = [handler({"snapset_task": "batch", "run": run, "batch": b}, context) for b in items]
    retained = [{"batch": b["index"], "error": "Sandbox.Timedout"} for b in items]
    handler(
        {"snapset_task": "aggregate", "run": run, "created": created, "retained": retained},
        context,
    )
    [report] = [json.loads(m["Message"]) for m in aws.messages()]
    by_id = {i["instance_id"]: i for i in report["instances"]}
    assert by_id[gone]["error"]["code"] == "InvalidInstanceID.NotFound"
    assert len(by_id) == 6
    for iid in ids:
        assert by_id[iid]["status"] == "started"
        [error] = by_id[iid]["retention"]["errors"]
        assert error["code"] == BATCH_FAILED
        assert "Sandbox.Timedout" in error["message"]
        assert error["message"].endswith("the next run retries it")
        index = next(b["index"] for b in items if iid in b["instance_ids"])
        assert error["message"].startswith(f"retention of batch {index} failed")


def _retaining_run(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], dict[str, Any]]:
    """Five instances, each with one expired set (count 1), handed off and created as batch 0."""
    deploy_policies(monkeypatch, {"p": {"count": 1}})
    ids = _fleet(aws, 5)
    payload = {"policy": "p", "target_tags": TAGS}
    for n in range(2):
        handler({**payload, "request_id": f"old-{n}"}, context)
        COMPLETER.complete_all()
        age_all_snapshots(1)
    _tight(monkeypatch, context)
    handler({**payload, "request_id": "fan"}, context)
    aws.messages()
    run = _run(aws)
    context.remaining_ms = 300_000
    batch = {"index": 0, "instance_ids": ids}
    handler({"snapset_task": "batch", "run": run, "batch": batch}, context)
    return ids, run


@pytest.mark.parametrize(("attempt", "deleted"), [(0, 1), (1, 0)])
def test_a_retain_worker_paces_deletions_at_its_part_of_the_share(
    aws: Aws,
    context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    attempt: int,
    deleted: int,
) -> None:
    """At 1% of DeleteSnapshot's bucket (a burst of 1, then one every 20 s) and of
    DescribeSnapshotAttribute's (a burst of 1, then one every 10 s) and 2 s of invocation: a
    first attempt of the first wave spends the bursts on one set, a retry starts with empty
    buckets; the rest is left for the next run, counted."""
    ids, run = _retaining_run(aws, context, monkeypatch)
    context.remaining_ms = 12_000  # 2 s past the safety margin
    task = {
        "snapset_task": "retain",
        "run": {**run, "worker_share": 0.01},
        "batch": {"index": 0, "instance_ids": ids},
        "attempt": attempt,
    }
    handler(task, context)
    written = json.loads(
        aws.s3.get_object(Bucket=run["bucket"], Key=f"{run['prefix']}retain/batch-00000.json")[
            "Body"
        ].read()
    )
    retention = [o["retention"] for o in written]
    assert sum(len(r["deleted"]) for r in retention) == deleted
    assert sum(r["remaining"] for r in retention) == 5 - deleted


def test_a_retain_task_before_its_batch_ran_waits_without_an_ec2_call(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fleet(aws, 5)
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    run = _run(aws)
    calls = _count_calls(monkeypatch)
    task = {"snapset_task": "retain", "run": run, "batch": {"index": 3, "instance_ids": ids}}
    with pytest.raises(CreationPending, match="batch 3: no results of its creation yet"):
        handler(task, context)
    assert [c for c in calls if c.startswith("ec2:")] == []


def test_a_retain_task_waits_while_its_batch_has_instances_to_retry(
    aws: Aws, context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fleet(aws, 3)
    deploy_policies(monkeypatch, {"p": {"count": 1}})
    _tight(monkeypatch, context)
    handler({"policy": "p", "target_tags": TAGS, "request_id": "r1"}, context)
    run = _run(aws)
    batch = {"index": 0, "instance_ids": ids}
    throttled = InstanceOutcome.failed(ids[2], "RequestLimitExceeded", "slow down")
    assert throttled.error is not None
    assert throttled.error.retry_on_redelivery
    outcomes = [InstanceOutcome.skipped(i, "x") for i in ids[:2]] + [throttled]
    aws.s3.put_object(
        Bucket=run["bucket"],
        Key=f"{run['prefix']}create/batch-00000.json",
        Body=json.dumps([o.model_dump(mode="json") for o in outcomes]).encode(),
    )
    calls = _count_calls(monkeypatch)
    with pytest.raises(CreationPending, match=f"batch 0: 1 instance.*still to retry: {ids[2]}"):
        handler({"snapset_task": "retain", "run": run, "batch": batch}, context)
    assert [c for c in calls if c.startswith("ec2:")] == []
    # settled (no instance left to retry): retention runs
    outcomes[2] = InstanceOutcome.skipped(ids[2], "x")
    aws.s3.put_object(
        Bucket=run["bucket"],
        Key=f"{run['prefix']}create/batch-00000.json",
        Body=json.dumps([o.model_dump(mode="json") for o in outcomes]).encode(),
    )
    result = handler({"snapset_task": "retain", "run": run, "batch": batch}, context)
    assert result["instances"] == 3
