#!/usr/bin/env python3
"""EC2 calls per instance a run makes, by API: a trigger's first delivery, a redelivery, and a
later night whose retention deletes every instance's oldest set.

For each fleet size N, a fresh in-process moto (`mock_aws`, with the local AWS's pagination and
tag index) holds N tagged instances with a root and a data volume each; `run_request` runs a
tag-targeted policy with `exclude_data_volume_tags` and no retention, with the idempotency
table the Lambda uses, through the engine the handler and the CLI build (`build_engine`). A
botocore `before-call` hook counts every call (one per page). The redelivery follows a lost
record for every instance (as after a crash between CreateSnapshots and saving it), so it has
to find every set and make none. Then a second night (another
trigger, no retention) and a third with `retention: {count: 1}`, which deletes each instance's
first-night set: D snapshots. Pacing is off (`ec2_api_share=None`): calls are counted, not
throttled. No timing is asserted; the seconds are moto's.

    .venv/bin/python benchmarks/api_calls.py [--sizes 100 1000] [--workers 16]
"""

from __future__ import annotations

import argparse
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

# moto's ~1300 public AMIs (and their snapshots) slow DescribeSnapshots down; Snapset never
# needs them. (mock_aws supplies fake credentials itself.)
os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

import boto3
from moto import mock_aws

from localaws import ec2_images, ec2_pagination, ec2_tag_index
from localaws.ec2_snapshots import SnapshotCompleter, install
from localaws.events import EventSink
from localaws.fleet import DEFAULT_IMAGE_ID
from snapset.clients import make_clients
from snapset.deadline import Deadline
from snapset.idempotency import DDB_CONFIG, KEY_PREFIX
from snapset.policy import Retention, SnapshotPolicy, SnapshotRequest, Trigger, TriggerType
from snapset.report import RunReport
from snapset.run import IdempotencyStore, build_engine, run_request

TABLE = "snapset-idempotency"
REGION = "us-east-1"


def launch_fleet(ec2: Any, n: int) -> None:
    """N instances tagged Backup=bench, each with one data volume (half of them NoBackup)."""
    reservation = ec2.run_instances(
        ImageId=DEFAULT_IMAGE_ID,
        MinCount=n,
        MaxCount=n,
        InstanceType="t3.micro",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Backup", "Value": "bench"}]}
        ],
    )
    for index, raw in enumerate(reservation["Instances"]):
        tags = [{"Key": "NoBackup", "Value": "true"}] if index % 2 else []
        volume = ec2.create_volume(
            Size=10,
            AvailabilityZone=raw["Placement"]["AvailabilityZone"],
            TagSpecifications=[{"ResourceType": "volume", "Tags": tags}] if tags else [],
        )
        ec2.attach_volume(
            VolumeId=volume["VolumeId"], InstanceId=raw["InstanceId"], Device="/dev/sdf"
        )


def forget_records(ddb: Any) -> None:
    """Delete every instance's record, keeping the trigger's run marker (written first)."""
    paginator = ddb.get_paginator("scan")
    for page in paginator.paginate(TableName=TABLE):
        for item in page["Items"]:
            if item["id"]["S"].startswith(f"{KEY_PREFIX}#"):
                ddb.delete_item(TableName=TABLE, Key={"id": item["id"]})


def _night(policy: SnapshotPolicy, day: int, retention: Any) -> SnapshotRequest:
    """The schedule's trigger of a later night (sets a day apart), with this retention."""
    when = datetime(2026, 11, 26 + day, 3, 0, tzinfo=UTC)
    trigger = Trigger(type=TriggerType.SCHEDULE, id=f"bench@{when:%Y-%m-%dT%H:%M:%SZ}", time=when)
    if retention is not None:
        policy = policy.model_copy(update={"retention": Retention.model_validate(retention)})
    return SnapshotRequest(policy=policy, trigger=trigger)


def measure(n: int, workers: int) -> list[tuple[str, float, RunReport, Counter[str]]]:
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        counts: Counter[str] = Counter()
        # Registered before any client exists: clients copy the session's handlers.
        session.events.register(
            "before-call", lambda event_name, **_: counts.update([event_name.split(".", 1)[1]])
        )
        setup_ec2 = boto3.client("ec2", region_name=REGION)
        setup_ddb = boto3.client("dynamodb", region_name=REGION)
        setup_ddb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        launch_fleet(setup_ec2, n)
        policy = SnapshotPolicy.model_validate(
            {
                "policy": "bench",
                "target_tags": {"Backup": ["bench"]},
                "exclude_data_volume_tags": {"NoBackup": ["true"]},
            }
        )
        # A schedule's trigger: a manual run always looks for earlier sets (the CLI keeps no
        # marker), a scheduled first delivery does not.
        when = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
        trigger = Trigger(type=TriggerType.SCHEDULE, id="bench@2026-11-27T03:00:00Z", time=when)
        request = SnapshotRequest(policy=policy, trigger=trigger)
        store = IdempotencyStore(TABLE, session.client("dynamodb", config=DDB_CONFIG))
        results = []
        nights = {
            "first delivery": request,
            "redelivery": request,
            "2nd night": _night(policy, 2, None),
            "3rd, retention": _night(policy, 3, {"count": 1}),
        }
        for label, request in nights.items():
            if label == "redelivery":
                forget_records(setup_ddb)
            COMPLETER.complete_all()  # a night apart: the earlier sets have completed
            counts.clear()
            clients = make_clients(session=session)
            deadline = Deadline.after(3600)
            engine = build_engine(clients, request, deadline, idempotency=store, ec2_api_share=None)
            start = time.monotonic()
            report = run_request(
                clients.ec2, request, engine=engine, deadline=deadline, max_workers=workers
            )
            assert isinstance(report, RunReport)
            results.append((label, time.monotonic() - start, report, Counter(counts)))
        return results


# The local AWS's faithful CreateSnapshots (exclusions honoured, sets pending until completed).
COMPLETER = SnapshotCompleter(EventSink(), lambda: (), delay=None)


def main() -> int:
    # Snapshot locks and AMI block-device filters, which retention's protection checks ask.
    ec2_images.install()
    # As the server and the tests have moto: MaxResults and NextToken honoured, so a call is
    # counted per page as on AWS, and tag lookups by resource id, not a scan of every tag.
    ec2_tag_index.install()
    ec2_pagination.install()
    install(COMPLETER)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    # No Lambda context here, so in-progress records have no expiry: not worth a warning each.
    warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
    print(
        f"{'N':>6} {'delivery':<15} {'started':>7} {'deleted':>7} {'EC2/inst':>8} "
        f"{'beyond N+D':>10} {'secs':>7}  calls by API"
    )
    for n in args.sizes:
        for label, secs, report, counts in measure(n, args.workers):
            ec2 = sum(v for k, v in counts.items() if k.startswith("ec2."))
            deleted = report.summary.retention_deleted
            # what the run costs besides one CreateSnapshots per set and one DeleteSnapshot
            # per expired snapshot
            beyond = ec2 - counts["ec2.CreateSnapshots"] - counts["ec2.DeleteSnapshot"]
            by_api = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(
                f"{n:>6} {label:<15} {report.summary.started:>7} {deleted:>7} {ec2 / n:>8.3f} "
                f"{beyond / n:>10.3f} {secs:>7.1f}  {by_api}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
