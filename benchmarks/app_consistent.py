#!/usr/bin/env python3
"""Application-consistent sets at fleet scale: N instances whose pre and post scripts each take
S seconds, run the way the Lambda and the CLI run a policy (`build_engine`, `run_request`).

In-process moto (`mock_aws`) with localaws's Run Command (`localaws.ssm_commands`: every
invocation really takes `S` seconds on the clock, nothing is executed) and its CreateSnapshots.
The run is paced at the default share of EC2's CreateSnapshots bucket, so it meets the same
bound it meets on AWS. Printed: wall time against the serial time (N x 2 x S) and the
CreateSnapshots bucket bound, the peak number of scripts running at once, and how long each
instance stayed frozen (its pre script's end to its post script's end, from the order log).
No timing is asserted.

    .venv/bin/python benchmarks/app_consistent.py [--instances 200] [--script-seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))

os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

import boto3
from moto import mock_aws

from localaws import ssm_commands
from localaws.ec2_snapshots import SnapshotCompleter, install
from localaws.events import EventSink
from localaws.fleet import DEFAULT_IMAGE_ID
from snapset.clients import make_clients
from snapset.consistency import workers_for
from snapset.deadline import Deadline
from snapset.pacing import CREATE_SNAPSHOTS_BUCKET, DEFAULT_EC2_API_SHARE
from snapset.policy import SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.report import RunReport
from snapset.run import build_engine, run_request

REGION = "us-east-1"
DOCUMENT = "snapset-fsfreeze"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ssm" / "snapset-fsfreeze.yaml"


def frozen_seconds(log: list[dict[str, Any]]) -> list[float]:
    """Per instance, from its pre script's end to its post script's end."""
    ends: dict[str, dict[str, float]] = defaultdict(dict)
    for entry in log:
        if entry["event"] == "InvocationEnded":
            ends[entry["instance_id"]][entry["command"]] = entry["at"]
    return [e["post-script"] - e["pre-script"] for e in ends.values() if len(e) == 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--script-seconds", type=float, default=5.0)
    parser.add_argument("--max-workers", type=int, default=8, help="the stack's max_workers")
    args = parser.parse_args()
    n, seconds = args.instances, args.script_seconds
    install(SnapshotCompleter(EventSink(), lambda: (), delay=None))
    ssm_commands.install()
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        ec2, ssm = session.client("ec2"), session.client("ssm")
        ssm.create_document(
            Name=DOCUMENT,
            Content=EXAMPLE.read_text(),
            DocumentType="Command",
            DocumentFormat="YAML",
        )
        ssm_commands.configure({"script_seconds": seconds})
        ec2.run_instances(
            ImageId=DEFAULT_IMAGE_ID,
            MinCount=n,
            MaxCount=n,
            InstanceType="t3.micro",
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Backup", "Value": "db"}]}
            ],
        )
        policy = SnapshotPolicy.model_validate(
            {
                "policy": "db-consistent",
                "target_tags": {"Backup": ["db"]},
                "scripts": {"document": DOCUMENT, "timeout_seconds": 30},
            }
        )
        trigger = Trigger(type=TriggerType.MANUAL, id="bench", time=datetime.now(UTC))
        request = SnapshotRequest(policy=policy, trigger=trigger)
        deadline = Deadline.after(900)
        engine = build_engine(make_clients(session=session), request, deadline, idempotency=None)
        started = time.monotonic()
        report = run_request(
            ec2, request, engine=engine, deadline=deadline, max_workers=args.max_workers
        )
        wall = time.monotonic() - started
        assert isinstance(report, RunReport)
        state = ssm_commands.state()
    summary = report.summary
    share = DEFAULT_EC2_API_SHARE
    bucket_bound = max(
        0.0,
        (n - CREATE_SNAPSHOTS_BUCKET.burst * share)
        / (CREATE_SNAPSHOTS_BUCKET.refill_per_second * share),
    )
    serial = n * 2 * seconds
    frozen = frozen_seconds(state["log"])
    print(f"{n} instances, pre and post scripts of {seconds:g} s each")
    print(f"  threads: {workers_for(policy, args.max_workers)} (max_workers {args.max_workers})")
    print(
        f"  sets: {summary.started} started, {summary.application_consistent} application-"
        f"consistent, {summary.failed} failed, {summary.script_failures} script failures"
    )
    print(f"  wall: {wall:.1f} s; serial (N x 2 x S): {serial:.0f} s ({serial / wall:.1f}x)")
    ratio = f"{wall / bucket_bound:.2f}" if bucket_bound > 0 else "- (within the burst)"
    print(
        f"  CreateSnapshots bucket bound at share {share}: {bucket_bound:.1f} s; "
        f"wall / bound: {ratio}"
    )
    print(f"  peak scripts running at once: {state['peak_in_progress']}")
    if frozen:
        print(
            "  frozen per instance (pre end -> post end): "
            f"median {statistics.median(frozen):.2f} s, max {max(frozen):.2f} s "
            f"(the post script alone takes {seconds:g} s)"
        )
    return 0 if summary.started == n else 1


if __name__ == "__main__":
    sys.exit(main())
