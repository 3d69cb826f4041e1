#!/usr/bin/env python3
"""EC2 calls per instance of a fanned-out first delivery, by API, at 100, 1,000 and 10,000.

The same fleet as `api_calls.py` (N tagged instances with a root and a data volume each, half
the data volumes tagged NoBackup, a policy with `exclude_data_volume_tags`) in a fresh
in-process moto with the local AWS's tag index and pagination. The scheduled trigger's
invocation plans and hands off (`fanout.hand_off`: a 300 s invocation, EC2's buckets at the
default share), then every batch runs as the state machine would run it (`fanout.run_batch`,
first attempts, the idempotency table), then the aggregator merges the results. Calls are
counted by a botocore `before-call` hook (one per page); pacing is off in the batches (calls are
counted, not throttled). The seconds are moto's.

    .venv/bin/python benchmarks/fan_out_calls.py [--sizes 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

import boto3
from api_calls import COMPLETER, REGION, TABLE, launch_fleet
from moto import mock_aws

from localaws import ec2_images, ec2_pagination, ec2_tag_index
from localaws.ec2_snapshots import install
from snapset import fanout
from snapset.clients import make_clients
from snapset.deadline import Deadline
from snapset.fanout import FanOutRun, FanOutTask, aggregate, hand_off, run_batch
from snapset.idempotency import DDB_CONFIG, Delivery
from snapset.pacing import DEFAULT_EC2_API_SHARE
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.run import Engine, HandedOff, IdempotencyStore, build_engine
from snapset.targets import find_targets

BUCKET = "snapset-bench-runs"
INVOCATION_SECONDS = 290.0  # Lambda's 300 s less the 10 s safety margin


def measure(n: int) -> tuple[Counter[str], int, int, float] | None:
    """(calls by API, batches, sets started, seconds) of one fanned-out first delivery; None
    when the fleet fits one invocation (then it runs inline: `api_calls.py`)."""
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        counts: Counter[str] = Counter()
        session.events.register(
            "before-call", lambda event_name, **_: counts.update([event_name.split(".", 1)[1]])
        )
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        machine = boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name="bench",
            definition=json.dumps({"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/bench",
        )["stateMachineArn"]
        launch_fleet(boto3.client("ec2", region_name=REGION), n)
        policy = SnapshotPolicy.model_validate(
            {
                "policy": "bench",
                "target_tags": {"Backup": ["bench"]},
                "exclude_data_volume_tags": {"NoBackup": ["true"]},
            }
        )
        when = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
        trigger = Trigger(type=TriggerType.SCHEDULE, id="bench@2026-11-27T03:00:00Z", time=when)
        request = SnapshotRequest(policy=policy, trigger=trigger)
        clients = make_clients(session=session)
        s3 = session.client("s3")
        store = IdempotencyStore(TABLE, session.client("dynamodb", config=DDB_CONFIG))
        counts.clear()
        start = time.monotonic()
        found = find_targets(clients.ec2, policy)
        handed = hand_off(
            s3,
            session.client("stepfunctions"),
            clients.ec2,
            state_machine_arn=machine,
            bucket=BUCKET,
            request=request,
            instances=found.instances,
            missing=found.missing,
            remaining_seconds=INVOCATION_SECONDS,
            worker_seconds=INVOCATION_SECONDS,
            share=DEFAULT_EC2_API_SHARE,
            claim=lambda: Delivery.FIRST,
        )
        if not isinstance(handed, HandedOff):
            return None
        [execution] = session.client("stepfunctions").list_executions(stateMachineArn=machine)[
            "executions"
        ]
        described = session.client("stepfunctions").describe_execution(
            executionArn=execution["executionArn"]
        )
        run = FanOutRun.model_validate(json.loads(described["input"])["run"])
        items = json.loads(s3.get_object(Bucket=BUCKET, Key=run.items_key)["Body"].read())
        results = []
        for item in items:
            task = FanOutTask.model_validate({"snapset_task": "batch", "run": run, "batch": item})
            result, _ = run_batch(
                clients, s3, task, deadline=Deadline.after(3600), store=store, max_workers=16
            )
            results.append(result)
        report = aggregate(
            s3, FanOutTask(snapset_task="aggregate", run=run, created=tuple(results))
        )
        return Counter(counts), len(items), report.summary.started, time.monotonic() - start


def unpaced_engine(*args: Any, **kwargs: Any) -> Engine:
    """`build_engine` with pacing off (``ec2_api_share=None``), as `api_calls.py` runs it:
    calls are what is measured here. A worker's share (even 1.0, EC2's whole bucket: burst 100,
    then 5 CreateSnapshots a second) would make the 10,000-instance run take over half an hour
    of waiting for tokens."""
    kwargs["ec2_api_share"] = None
    return build_engine(*args, **kwargs)


def main() -> int:
    setattr(fanout, "build_engine", unpaced_engine)  # noqa: B010 - the name run_batch calls
    ec2_images.install()
    ec2_tag_index.install()
    ec2_pagination.install()
    install(COMPLETER)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
    print(f"{'N':>6} {'batches':>7} {'started':>7} {'EC2/inst':>8} {'secs':>7}  EC2 calls by API")
    for n in args.sizes:
        measured = measure(n)
        if measured is None:
            print(f"{n:>6} fits one invocation: runs inline (benchmarks/api_calls.py)")
            continue
        counts, batches, started, secs = measured
        ec2 = {k: v for k, v in counts.items() if k.startswith("ec2.")}
        by_api = ", ".join(f"{k} {v}" for k, v in sorted(ec2.items()))
        print(
            f"{n:>6} {batches:>7} {started:>7} {sum(ec2.values()) / n:>8.4f} {secs:>7.1f}  {by_api}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
