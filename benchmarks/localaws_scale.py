#!/usr/bin/env python3
"""Tag-filtered DescribeInstances and DescribeSnapshots at fleet scale: the local AWS's indexed
tag lookup (`localaws.ec2_tag_index`) versus moto 5.2.5's own (a scan of every tag per lookup).

In-process moto (``mock_aws``, no server, so the figures are moto's work plus boto3's), with
`localaws.ec2_pagination` installed as the server has it. For each fleet size: N instances
(reservations of 50), each with 2 data volumes besides its root volume, and SETS snapshot sets
per instance (one snapshot per data volume), tagged as Snapset tags them. The fleet is built on
moto's backend directly (RunInstances through the API renders every instance it launches and
would take longer than the measurements). Then, timed:

* DescribeInstances, ``tag:backup-policy = p7`` (2% of the fleet), through boto3's paginator
  with PageSize 1000, as Snapset's target lookup;
* DescribeSnapshots, ``OwnerIds=self``, ``tag:snapset:policy`` + ``tag:snapset:instance-id``
  of one instance (its SETS x 2 snapshots), as Snapset's lookup of an instance's sets.

"indexed" is the best of --repeat runs with the patch. "moto" is moto's own lookup, measured
once (and its answer compared with the index's) when its estimated time is within
--moto-budget seconds; above that it is only estimated, and marked "est.": the indexed time
plus, per tag lookup moto's own path makes (counted through moto's filters, which ask every
candidate resource, with each lookup answered by the index), the measured difference between
one moto lookup and one indexed lookup (moto's lookup scans every tag, so it grows with the
fleet). Where both
are measured the estimate is printed too, as a check of the estimator. No timing is asserted.
The fleet is built with moto's own backend calls; while building, moto's `get_instance` and
`describe_volumes(volume_ids=...)` (linear scans, quadratic over a build) are replaced by
lookups by id, which are removed before anything is timed.

    .venv/bin/python benchmarks/localaws_scale.py [--sizes 1000 10000] [--sets 2] [--repeat 3]
        [--moto-budget 120]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Before moto is imported: no ~1300 public AMIs and their snapshots in every fresh backend.
os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

import boto3
from moto import mock_aws
from moto.ec2.models import ec2_backends
from moto.ec2.models.core import TaggedEC2Resource

from localaws import ec2_pagination, ec2_tag_index
from localaws.fleet import MOTO_ACCOUNT

REGION = "us-east-1"
AZ = "us-east-1a"
IMAGE = "ami-12c6146b"  # one of moto's images that exists without the default AMIs
POLICIES = 50  # instances are spread over p0..p49; the query asks for p7
RESERVATION = 50  # instances per RunInstances
SAMPLE_LOOKUPS = 50
T = TypeVar("T")


@dataclass
class Fleet:
    client: Any
    backend: Any
    instance_ids: list[str]
    snapshots: int
    build_s: float


@contextmanager
def quick_lookups(backend: Any) -> Iterator[None]:
    """While building: moto's `get_instance` and `describe_volumes(volume_ids=[id])` scan every
    instance/volume (quadratic for a fleet built one by one); these find the same objects by id.
    Removed before anything is timed."""
    moto_get_instance = backend.get_instance
    moto_describe_volumes = backend.describe_volumes

    def get_instance(instance_id: str) -> Any:
        for reservation in reversed(backend.reservations.values()):  # newest first
            for instance in reservation.instances:
                if instance.id == instance_id:
                    return instance
        return moto_get_instance(instance_id)

    def describe_volumes(volume_ids: list[str] | None = None, filters: Any = None) -> Any:
        if volume_ids and not filters and all(v in backend.volumes for v in volume_ids):
            return [backend.volumes[v] for v in volume_ids]
        return moto_describe_volumes(volume_ids=volume_ids, filters=filters)

    backend.get_instance = get_instance
    backend.describe_volumes = describe_volumes
    try:
        yield
    finally:
        del backend.get_instance, backend.describe_volumes


def build_fleet(instances: int, sets: int) -> Fleet:
    """N instances with 2 tagged data volumes each and `sets` tagged snapshot sets each."""
    started = time.perf_counter()
    client = boto3.client("ec2", region_name=REGION)
    backend = ec2_backends[MOTO_ACCOUNT][REGION]
    with quick_lookups(backend):
        fleet = _build(client, backend, instances, sets)
    fleet.build_s = time.perf_counter() - started
    return fleet


def _build(client: Any, backend: Any, instances: int, sets: int) -> Fleet:
    instance_ids: list[str] = []
    snapshots = 0
    while len(instance_ids) < instances:
        count = min(RESERVATION, instances - len(instance_ids))
        reservation = backend.run_instances(
            IMAGE,
            count,
            None,
            [],
            instance_type="t3.micro",
            is_instance_type_default=False,
            placement=AZ,
            region_name=REGION,
            tags={},
        )
        for instance in reservation.instances:
            index = len(instance_ids)
            instance_ids.append(instance.id)
            backend.create_tags(
                [instance.id],
                {"backup-policy": f"p{index % POLICIES}", "Name": f"host-{index}", "env": "prod"},
            )
            for device in ("/dev/sdf", "/dev/sdg"):
                volume = backend.create_volume(size=10, zone_name=AZ)
                backend.create_tags([volume.id], {"Name": f"host-{index}{device}", "role": "data"})
                backend.attach_volume(volume.id, instance.id, device)
                for set_index in range(sets):
                    snapshot = backend.create_snapshot(volume.id, f"set {set_index}")
                    backend.create_tags(
                        [snapshot.id],
                        {
                            "snapset:policy": f"p{index % POLICIES}",
                            "snapset:instance-id": instance.id,
                            "snapset:trigger-id": f"trigger-{set_index}",
                            "Name": f"host-{index}{device}",
                        },
                    )
                    snapshots += 1
    return Fleet(client, backend, instance_ids, snapshots, 0.0)


def describe_instances(fleet: Fleet) -> list[str]:
    paginator = fleet.client.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[{"Name": "tag:backup-policy", "Values": ["p7"]}],
        PaginationConfig={"PageSize": 1000},
    )
    return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]


def describe_snapshots(fleet: Fleet) -> list[str]:
    instance_id = fleet.instance_ids[7]  # a p7 instance
    paginator = fleet.client.get_paginator("describe_snapshots")
    pages = paginator.paginate(
        OwnerIds=["self"],
        Filters=[
            {"Name": "tag:snapset:policy", "Values": ["p7"]},
            {"Name": "tag:snapset:instance-id", "Values": [instance_id]},
        ],
        PaginationConfig={"PageSize": 1000},
    )
    return [s["SnapshotId"] for page in pages for s in page["Snapshots"]]


QUERIES: list[tuple[str, Callable[[Fleet], list[str]]]] = [
    ("DescribeInstances tag:backup-policy", describe_instances),
    ("DescribeSnapshots tag:snapset:*", describe_snapshots),
]


def timed(call: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def count_lookups(call: Callable[[], list[str]]) -> int:
    """How many tag lookups (get_tags) one call makes on moto's own path (its filters, which
    ask every candidate resource; the index's DescribeSnapshots asks far fewer), each answered
    by the index so that counting is fast."""
    calls = 0

    def counting(self: Any) -> list[dict[str, str]]:
        nonlocal calls
        calls += 1
        return ec2_tag_index.get_tags(self)

    ec2_tag_index.uninstall()
    setattr(TaggedEC2Resource, "get_tags", counting)  # noqa: B010
    try:
        call()
    finally:
        ec2_tag_index.install()
    return calls


def lookup_costs(fleet: Fleet) -> tuple[float, float]:
    """Seconds per tag lookup: moto's scan, the index (a sample of the fleet's resources)."""
    step = max(1, len(fleet.backend.snapshots) // SAMPLE_LOOKUPS)
    sample = list(fleet.backend.snapshots.values())[::step][:SAMPLE_LOOKUPS]
    scan, _ = timed(lambda: [t for r in sample for t in ec2_tag_index.moto_get_tags(r)])
    index_s = min(
        timed(lambda: [t for r in sample for t in ec2_tag_index.get_tags(r)])[0] for _ in range(5)
    )
    return scan / len(sample), index_s / len(sample)


def run_size(instances: int, sets: int, repeat: int, moto_budget: float) -> None:
    with mock_aws():
        ec2_tag_index.install()
        fleet = build_fleet(instances, sets)
        resources = len(fleet.backend.tags)
        print(
            f"\n{instances} instances, {2 * instances} data volumes (+{instances} root), "
            f"{fleet.snapshots} snapshots; {resources} tagged resources, "
            f"{sum(len(t) for t in fleet.backend.tags.values())} tags; built in "
            f"{fleet.build_s:.1f} s"
        )
        scan_cost, index_cost = lookup_costs(fleet)
        print(f"  one tag lookup: moto {scan_cost * 1e3:.2f} ms, indexed {index_cost * 1e6:.1f} us")
        for name, query in QUERIES:
            runs = [timed(partial(query, fleet)) for _ in range(repeat)]
            indexed_s = min(s for s, _ in runs)
            found = runs[0][1]
            lookups = count_lookups(partial(query, fleet))
            estimate = indexed_s + lookups * (scan_cost - index_cost)
            line = (
                f"  {name:<38} {len(found):>5} found, {lookups:>6} lookups: "
                f"indexed {indexed_s:8.3f} s (median {statistics.median(s for s, _ in runs):.3f})"
            )
            if estimate <= moto_budget:
                ec2_tag_index.uninstall()
                try:
                    moto_s, moto_found = timed(partial(query, fleet))
                finally:
                    ec2_tag_index.install()
                same = "same answer" if moto_found == found else "DIFFERENT ANSWER"
                line += (
                    f" | moto {moto_s:8.3f} s ({same}; est. {estimate:.3f} s)"
                    f" | x{moto_s / indexed_s:,.0f}"
                )
            else:
                line += f" | moto est. {estimate:8.3f} s | x{estimate / indexed_s:,.0f} (est.)"
            print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sets", type=int, default=2, help="snapshot sets per instance")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--moto-budget",
        type=float,
        default=120.0,
        help="measure moto's own lookup when its estimated time is at most this many seconds "
        "per call; estimate it above (default 120)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ec2_pagination.install()
    print(f"moto's tag lookup vs the index; {args.sets} snapshot sets per instance")
    for size in args.sizes:
        run_size(size, args.sets, args.repeat, args.moto_budget)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    ec2_tag_index.install()


if __name__ == "__main__":
    main()
