#!/usr/bin/env python3
"""Copies to other regions at fleet scale: EC2 calls per set by API and region, and how many
copy sweeps EBS's concurrent-copy quota (20 per destination region) makes a night's copies
take.

For each fleet size N, the local AWS server (faithful CopySnapshot: pending copies, the
20-copy quota, `ResourceLimitExceeded`) holds N instances with one root volume each, and N
completed sets of a policy copying to two regions, tagged as CreateSnapshots tags them
(`snapset:copies=pending`). The copy sweep (`copies.sweep_copies`, with the claims table the
Lambda uses) runs until every set is reported; between sweeps every copy in flight completes,
as if each sweep found the previous one's copies done. A botocore `before-call` hook counts every
call (one per page). No timing is asserted.

    .venv/bin/python benchmarks/copy_calls.py [--sizes 100 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))

import boto3

from localaws import LocalAws
from localaws.fleet import DEFAULT_IMAGE_ID
from snapset.clients import EC2_CONFIG
from snapset.copies import (
    Copier,
    CopyClaims,
    CopyingPolicy,
    mark_reported,
    sweep_copies,
)
from snapset.idempotency import DDB_CONFIG
from snapset.policy import (
    COPIES_PENDING,
    TAG_COPIES,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    CopyRule,
    Distribution,
    Retention,
)

HOME, REGIONS = "us-east-1", ("us-west-2", "eu-west-1")
TABLE = "snapset-idempotency"
TRIGGER = "bench@2026-12-01T01:00:00Z"


def seed(aws: LocalAws, ec2: Any, n: int) -> None:
    """N instances and their completed, pending-copy sets."""
    for start in range(0, n, 500):
        count = min(500, n - start)
        reservation = ec2.run_instances(
            ImageId=DEFAULT_IMAGE_ID, MinCount=count, MaxCount=count, InstanceType="t3.micro"
        )
        for raw in reservation["Instances"]:
            iid = raw["InstanceId"]
            tags = {TAG_POLICY: "bench", TAG_TRIGGER_ID: TRIGGER, TAG_INSTANCE_ID: iid}
            ec2.create_snapshots(
                InstanceSpecification={"InstanceId": iid},
                TagSpecifications=[
                    {
                        "ResourceType": "snapshot",
                        "Tags": [
                            {"Key": k, "Value": v}
                            for k, v in (tags | {TAG_COPIES: COPIES_PENDING}).items()
                        ],
                    }
                ],
            )
    aws.complete_snapshots()


def measure(aws: LocalAws, n: int) -> None:
    seed(aws, aws.client("ec2"), n)
    aws.client("dynamodb").create_table(
        TableName=f"{TABLE}-{n}",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    key, secret, token = aws.credentials
    session = boto3.Session(
        aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token
    )
    counts: Counter[str] = Counter()
    clients: dict[str, Any] = {}

    def ec2_in(region: str) -> Any:
        if region not in clients:
            client = session.client(
                "ec2", region_name=region, endpoint_url=aws.endpoint_url, config=EC2_CONFIG
            )

            def count(event_name: str, _region: str = region, **_: Any) -> None:
                counts[f"{_region} {event_name.split('.', 1)[1]}"] += 1

            client.meta.events.register("before-call", count)
            clients[region] = client
        return clients[region]

    policy = CopyingPolicy(
        "bench",
        Distribution(copies=[CopyRule(region=r, retention=Retention(count=3)) for r in REGIONS]),
        Retention(count=7),
    )
    dynamodb = session.client(
        "dynamodb", region_name=HOME, endpoint_url=aws.endpoint_url, config=DDB_CONFIG
    )
    sweeps, reported, started = 0, 0, Counter[str]()
    wall = 0.0
    while reported < n:
        sweeps += 1
        copier = Copier(
            home_ec2=ec2_in(HOME),
            ec2_in=ec2_in,
            claims=CopyClaims(dynamodb, f"{TABLE}-{n}"),
            policies={"bench": policy},
            home_region=HOME,
            now=datetime.now(UTC),
        )
        begin = time.monotonic()
        progress = sweep_copies(copier)
        if progress.finished:
            mark_reported(copier.home_ec2, [source for source, _ in progress.finished])
        wall += time.monotonic() - begin
        reported += len(progress.finished)
        started.update(progress.started)
        assert not progress.errors, progress.errors
        if sweeps > 4 * n:
            raise RuntimeError(f"no end after {sweeps} sweeps")
        aws.complete_copies()
    ec2_calls = dict(counts)
    total = sum(ec2_calls.values())
    copies = sum(started.values())
    beyond = total - copies
    print(
        f"{n:>6} {sweeps:>6} {copies:>7} {total / n:>9.3f} {beyond / n:>12.3f} "
        f"{beyond / sweeps:>12.1f} {wall / sweeps:>9.2f}"
    )
    print("        calls: " + ", ".join(f"{k} {v}" for k, v in sorted(ec2_calls.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    print(
        f"{'sets':>6} {'sweeps':>6} {'copies':>7} {'calls/set':>9} "
        f"{'non-copy/set':>12} {'non-copy/swp':>12} {'s/sweep':>9}"
    )
    for n in args.sizes:
        with LocalAws(snapshot_delay=None) as aws:
            aws.set_copies(delay_seconds=None)
            measure(aws, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
