#!/usr/bin/env python3
"""Instances per second Snapset achieves against a throttled CreateSnapshots, versus the limit.

For each refill rate R, a fresh fleet (root volume only) is snapshotted through the deployed
stack on the local AWS (`localaws.deploy` + `localaws.router`) while `ec2:CreateSnapshots` sits
behind a token bucket (capacity R, refilling R tokens/s). The trigger is redelivered, as
Lambda's async retry would, until the run reports every instance started. The figure is
instances started per second of wall time (deliveries included) divided by R: 1.0 would use
every token the moment it appears. Nothing is shortened: botocore's retries and backoff and the
handler's retry budget run in real time (the Lambda context reports `--remaining-ms`, the safety
margin is 0).

    .venv/bin/python benchmarks/throttle_throughput.py [--fleet 200] [--rates 5 10 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))

# moto's ~1300 public AMIs (and their snapshots) slow DescribeSnapshots down 30x; Snapset never
# needs them. Set before the server starts (it inherits the environment).
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from localaws import FaultRule, LocalAws, Throttle
from localaws.deploy import deploy
from localaws.router import Router
from localaws.synth import synthesize


def fresh_router(aws: LocalAws, remaining_ms: int) -> Router:
    """A reset local AWS with the stack deployed again: every run starts from the same state
    (moto's filters are linear in the instances and snapshots it holds)."""
    aws.reset()
    deployment = deploy(aws, synthesize())
    return Router(
        aws, deployment, remaining_ms=remaining_ms, env_overrides={"SNAPSET_SAFETY_MARGIN_MS": "0"}
    )


def measure(aws: LocalAws, fleet: int, rate: float, args: argparse.Namespace) -> dict[str, float]:
    router = fresh_router(aws, args.remaining_ms)
    max_rounds = args.max_rounds
    ec2 = aws.client("ec2")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    ec2.run_instances(
        ImageId="ami-03cf127a",
        MinCount=fleet,
        MaxCount=fleet,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Bench", "Value": tag}]}],
    )
    aws.set_faults(
        FaultRule("ec2:CreateSnapshots", throttle=Throttle(capacity=rate, refill_per_second=rate))
    )
    payload = {"policy": "bench", "target_tags": {"Bench": [tag]}, "request_id": tag}
    started = time.monotonic()
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the count is reported
        if router.invoke(payload).ok:
            break
    else:
        raise SystemExit(f"R={rate}: not done after {max_rounds} deliveries")
    seconds = time.monotonic() - started
    stats = aws.faults()["stats"][0]
    aws.clear_faults()
    router.close()
    per_second = fleet / seconds
    return {
        "rate": rate,
        "seconds": seconds,
        "deliveries": rounds,
        "calls": stats["calls"],
        "throttled": stats["throttled"],
        "per_second": per_second,
        "ratio": per_second / rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", type=int, default=200)
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--remaining-ms", type=int, default=10_000)
    parser.add_argument("--max-rounds", type=int, default=40)
    args = parser.parse_args(argv)
    synthesize()
    with LocalAws(snapshot_delay=None) as aws:
        baseline = measure(aws, args.fleet, 1e9, args)
        print(
            f"fleet {args.fleet}, Lambda time per delivery {args.remaining_ms} ms; "
            f"unthrottled: {baseline['per_second']:.1f} instances/s "
            f"({baseline['deliveries']:.0f} delivery)"
        )
        print(f"{'R (calls/s)':>11} {'seconds':>8} {'deliveries':>10} {'calls':>6} "
              f"{'throttled':>9} {'inst/s':>7} {'inst/s / R':>10}")  # fmt: skip
        for rate in args.rates:
            m = measure(aws, args.fleet, rate, args)
            print(f"{m['rate']:>11.0f} {m['seconds']:>8.1f} {m['deliveries']:>10.0f} "
                  f"{m['calls']:>6.0f} {m['throttled']:>9.0f} {m['per_second']:>7.2f} "
                  f"{m['ratio']:>10.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
