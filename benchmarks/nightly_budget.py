#!/usr/bin/env python3
"""A nightly run with retention under the AWS budget profile, through the deployed stack.

N instances tagged for the deployed `nightly-app` policy (exclude the boot volume, keep 7
sets), two data volumes each, with eight completed sets of history a day apart: tonight's run
makes one set per instance (N CreateSnapshots) and deletes each instance's oldest set (2N
DeleteSnapshot). Every EC2 API the function calls sits behind EC2's published bucket, refill
times `--time-scale` (`localaws.aws_budget`); the function runs with the same scale (its pacer
spends `ec2_api_share` of each bucket) and the deployed timeout and safety margin divided by
it. The trigger is delivered as Lambda's async invoke would: once, then retried up to twice
while the run reports instances to redo.

Printed: the run's duration against the bucket lower bound at the share (creation, then
retention, which waits for creation), sets started, snapshots deleted and left for the next
night, instances lost (no set after the last delivery) and duplicate sets. A run whose estimate
does not fit the (scaled) invocation is handed to the deployed state machine, which runs on the
local AWS with its retry waits divided by the same scale: then also the execution's status,
its batches and concurrency, and the worker invocations' peak memory.

    .venv/bin/python benchmarks/nightly_budget.py [--fleet 1000] [--time-scale 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from localaws import LocalAws
from localaws.aws_budget import aws_budget, function_overrides
from localaws.deploy import deploy
from localaws.router import Router
from localaws.synth import synthesize
from snapset.pacing import CREATE_SNAPSHOTS_BUCKET, DEFAULT_EC2_API_SHARE, DELETE_SNAPSHOT_BUCKET

POLICY = "nightly-app"
TAGS = {"Backup": "nightly", "Environment": "prod"}
HISTORY_NIGHTS = 8  # keep 7: the oldest set of each instance goes tonight
LAMBDA_DELIVERIES = 3  # an async invoke and Lambda's two retries


def launch(ec2: Any, n: int) -> list[str]:
    """N instances with a root and two data volumes each (created and attached by
    RunInstances' block device mappings, 1,000 instances a call)."""
    ids = []
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        reservation = ec2.run_instances(
            ImageId="ami-03cf127a",
            MinCount=count,
            MaxCount=count,
            InstanceType="t3.micro",
            BlockDeviceMappings=[
                {"DeviceName": device, "Ebs": {"VolumeSize": size}}
                for device, size in (("/dev/sda1", 8), ("/dev/sdf", 10), ("/dev/sdg", 10))
            ],
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in TAGS.items()],
                }
            ],
        )
        ids += [raw["InstanceId"] for raw in reservation["Instances"]]
    return ids


def history(aws: LocalAws, ids: list[str], tonight: datetime) -> None:
    """Eight completed sets per instance, as eight earlier nights of the policy made them
    (written by the local AWS's control API: through CreateSnapshots a week of 10,000
    instances' history takes longer than the night it prepares)."""
    for night in range(HISTORY_NIGHTS, 0, -1):
        when = tonight - timedelta(days=night)
        trigger = f"{POLICY}@{when:%Y-%m-%dT%H:%M:%SZ}"
        for start in range(0, len(ids), 2000):
            aws.seed_snapshot_sets(
                [
                    {
                        "instance_id": iid,
                        "tags": {
                            "snapset:policy": POLICY,
                            "snapset:trigger-id": trigger,
                            "snapset:instance-id": iid,
                        },
                        "start_time": when,
                    }
                    for iid in ids[start : start + 2000]
                ],
                exclude_boot_volume=True,
            )


def sets_by_instance(ec2: Any, trigger: str) -> Counter[str]:
    """Snapshots of tonight's trigger per instance."""
    found: Counter[str] = Counter()
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": "tag:snapset:trigger-id", "Values": [trigger]}]
    )
    for page in pages:
        for snap in page["Snapshots"]:
            tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
            found[tags["snapset:instance-id"]] += 1
    return found


def deliver(
    aws: LocalAws, router: Router, tonight: datetime, scale: float
) -> tuple[list[Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Deliver the schedule as Lambda's async invoke would (retried while it raises); when
    it hands off, wait for the execution: its DescribeExecution and its run input."""
    outcomes = []
    for attempt in range(1, LAMBDA_DELIVERIES + 1):
        invocation = router.fire_schedule(policy=POLICY, scheduled_time=tonight, attempt=attempt)
        outcomes.append(invocation)
        if invocation.ok:
            break
    answer = outcomes[-1].result if outcomes[-1].ok else None
    if not (isinstance(answer, dict) and answer.get("status") == "handed_off"):
        return outcomes, None, None
    aws.set_states_wait_scale(1 / scale)
    execution = aws.wait_for_execution(answer["execution_arn"], timeout=4 * 3600)
    run_input: dict[str, Any] = json.loads(execution["input"])["run"]
    return outcomes, execution, run_input


def print_fan_out(
    execution: dict[str, Any] | None,
    run_input: dict[str, Any] | None,
    workers: list[Any],
    n: int,
) -> None:
    """How the run was handed off (or that it was not)."""
    if execution is None or run_input is None:
        print("ran inline in the trigger's invocation")
        return
    failed = sum(1 for i in workers if not i.ok)
    print(
        f"handed off: execution {execution['status']}, {run_input['batches']} batches of up "
        f"to {-(-n // run_input['batches'])}, MaxConcurrency {run_input['max_concurrency']}, "
        f"worker share {run_input['worker_share']:g}; {len(workers)} task invocations "
        f"({failed} failed and retried), peak RSS of a worker "
        f"{max(i.max_rss_mb for i in workers):.0f} MB"
    )


def print_calls(stats: dict[str, Any], n: int) -> None:
    """EC2's calls by API (every API the function calls sits behind a bucket, so each is
    counted) and the ones the buckets refused."""
    calls = {api.split(":", 1)[1]: s["calls"] for api, s in stats.items() if s["calls"]}
    print(f"EC2 calls by API: {calls}; per instance {sum(calls.values()) / n:.3f}")
    refused = {api.split(":", 1)[1]: s["throttled"] for api, s in stats.items() if s["throttled"]}
    print(f"refused by EC2's buckets: {refused or 'none'}")


def print_failed_deliveries(outcomes: list[Any]) -> None:
    """Why a delivery of the trigger failed (Lambda's async invoke then retries it)."""
    for n, invocation in enumerate(outcomes, 1):
        if invocation.error is not None:
            print(f"delivery {n} failed: {str(invocation.error)[:300]}")


def print_phases(stats: dict[str, Any]) -> None:
    """When each phase's calls were let through EC2's bucket, from the run's first EC2 call
    (the plan's DescribeInstances), and the rate they reached."""
    started_at = min(min(s["admitted_at"]) for s in stats.values() if s["admitted_at"])
    spans = []
    for api in ("CreateSnapshots", "DeleteSnapshot"):
        admitted = stats.get(f"ec2:{api}", {}).get("admitted_at") or []
        if len(admitted) < 2:
            continue
        first, last = admitted[0] - started_at, admitted[-1] - started_at
        rate = (len(admitted) - 1) / max(last - first, 1e-9)
        spans.append(
            f"{api} {len(admitted)} calls from {first:.1f} s to {last:.1f} s ({rate:.1f}/s)"
        )
    print("phases: " + "; ".join(spans))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=20.0)
    args = parser.parse_args(argv)
    n, scale, share = args.fleet, args.time_scale, DEFAULT_EC2_API_SHARE
    synth = synthesize()
    tonight = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
    trigger = f"{POLICY}@{tonight:%Y-%m-%dT%H:%M:%SZ}"
    with LocalAws(snapshot_delay=None) as aws:
        deployment = deploy(aws, synth)
        ec2 = aws.client("ec2")
        setup = time.monotonic()
        ids = launch(ec2, n)
        history(aws, ids, tonight)
        print(f"fleet {n}: {HISTORY_NIGHTS} nights of history in {time.monotonic() - setup:.0f} s")
        config = aws.client("lambda").get_function_configuration(
            FunctionName=deployment.function_name
        )
        timeout = int(config["Timeout"])
        margin = int(config["Environment"]["Variables"]["SNAPSET_SAFETY_MARGIN_MS"])
        overrides = function_overrides(scale, timeout_seconds=timeout, safety_margin_ms=margin)
        router = Router(aws, deployment, **overrides)
        aws.set_faults(*aws_budget(scale))
        started = time.monotonic()
        outcomes, execution, run_input = deliver(aws, router, tonight, scale)
        seconds = time.monotonic() - started
        workers = [i for i in router.invocations if i.source == "states"]
        stats = {s["api"]: s for s in aws.faults()["stats"]}
        aws.clear_faults()
        router.close()
        made = sets_by_instance(ec2, trigger)
        oldest = tonight - timedelta(days=HISTORY_NIGHTS)
        left = sets_by_instance(ec2, f"{POLICY}@{oldest:%Y-%m-%dT%H:%M:%SZ}")
        older_kept = sum(
            sets_by_instance(
                ec2, f"{POLICY}@{tonight - timedelta(days=d):%Y-%m-%dT%H:%M:%SZ}"
            ).total()
            for d in range(1, HISTORY_NIGHTS)
        )
    create_rate = CREATE_SNAPSHOTS_BUCKET.refill_per_second * share * scale
    delete_rate = DELETE_SNAPSHOT_BUCKET.refill_per_second * share * scale
    create_burst = int(CREATE_SNAPSHOTS_BUCKET.burst * share)
    delete_burst = int(DELETE_SNAPSHOT_BUCKET.burst * share)
    create_bound = max(0, n - create_burst) / create_rate
    delete_bound = max(0, 2 * n - delete_burst) / delete_rate
    bound, slowest = create_bound + delete_bound, max(create_bound, delete_bound)
    lost = n - len(made)
    duplicates = sum(1 for count in made.values() if count > 2)
    print(
        f"time scale {scale:g}, share {share}, invocation {timeout / scale:.1f} s "
        f"(deployed {timeout} s / {scale:g}), deliveries {len(outcomes)} of {LAMBDA_DELIVERIES}"
    )
    print(
        f"duration {seconds:.1f} s; bucket lower bound {bound:.1f} s "
        f"(CreateSnapshots {create_rate:g}/s after {create_burst}, then DeleteSnapshot "
        f"{delete_rate:g}/s after {delete_burst}); ratio {seconds / bound:.2f}"
    )
    print(
        f"sets started {len(made)}, snapshots deleted {2 * n - left.total()} of {2 * n} "
        f"(sets left for the next night {len(left)}), newer sets wrongly deleted "
        f"{2 * n * (HISTORY_NIGHTS - 1) - older_kept}, instances lost {lost}, "
        f"duplicate sets {duplicates}"
    )
    print(
        f"slowest bucket alone (the issue's bound, phases overlapped): {slowest:.1f} s; ratio "
        f"{seconds / slowest:.2f}"
    )
    print_phases(stats)
    print_failed_deliveries(outcomes)
    print_fan_out(execution, run_input, workers, n)
    print_calls(stats, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
