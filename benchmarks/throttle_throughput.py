#!/usr/bin/env python3
"""CreateSnapshots rate Snapset reaches under EC2's bucket, versus the share it allows itself.

A fresh fleet (root volume only) is snapshotted through the deployed stack on the local AWS
(`localaws.deploy` + `localaws.router`) while `ec2:CreateSnapshots` sits behind EC2's published
bucket: 100 tokens, refilling 5 per second, times `--time-scale` (burst sizes stay). The
function runs with `SNAPSET_EC2_API_SHARE` (the stack's `ec2_api_share`) and
`SNAPSET_EC2_RATE_SCALE` set to the same time scale, so it paces itself at share x 5 x scale
calls per second after a burst of share x 100. The trigger is redelivered, as Lambda's async
retry would, until the run reports every instance started.

Printed per share: wall time, deliveries, calls and refusals at the server; the sustained rate
after the pacer's burst over the whole wall time, `(instances - burst) / seconds` (the
invocation's start-up and report included); and the paced rate over the run's later half, from
the bucket's own record of when it let each call through. Both as a fraction of the allowed
rate (share x refill): 1.0 would spend every token the share allows the moment it appears. With
`--neighbour`, another workload calls CreateSnapshots at the rest of the refill meanwhile, and
its refusals are counted: a good citizen leaves it unthrottled.

    .venv/bin/python benchmarks/throttle_throughput.py [--fleet 400] [--shares 0.5 1.0]
        [--time-scale 10] [--neighbour]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))

# moto's ~1300 public AMIs (and their snapshots) slow DescribeSnapshots down 30x; Snapset never
# needs them. Set before the server starts (it inherits the environment).
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from botocore.config import Config
from botocore.exceptions import ClientError

from localaws import FaultRule, LocalAws, Throttle
from localaws.deploy import deploy
from localaws.router import Router
from localaws.synth import synthesize
from snapset.pacing import CREATE_SNAPSHOTS_BUCKET
from snapset.settings import ENV_EC2_API_SHARE, ENV_EC2_RATE_SCALE

BURST = CREATE_SNAPSHOTS_BUCKET.burst
REFILL = CREATE_SNAPSHOTS_BUCKET.refill_per_second


def fresh_router(aws: LocalAws, args: argparse.Namespace, share: float) -> Router:
    """A reset local AWS with the stack deployed again: every run starts from the same state."""
    aws.reset()
    deployment = deploy(aws, synthesize())
    return Router(
        aws,
        deployment,
        remaining_ms=args.remaining_ms,
        env_overrides={
            "SNAPSET_SAFETY_MARGIN_MS": "0",
            ENV_EC2_API_SHARE: str(share),
            ENV_EC2_RATE_SCALE: str(args.time_scale),
        },
    )


class Neighbour(threading.Thread):
    """Another workload of the account: CreateSnapshots at `rate` per second until stopped."""

    def __init__(self, aws: LocalAws, instance_id: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.ec2 = aws.client("ec2", config=Config(retries={"total_max_attempts": 1}))
        self.instance_id = instance_id
        self.interval = 1 / rate
        self.calls = self.refused = 0
        self.stop = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                self.ec2.create_snapshots(InstanceSpecification={"InstanceId": self.instance_id})
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "RequestLimitExceeded":
                    self.refused += 1
            self.calls += 1
            next_at += self.interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def paced_rate(times: list[float], burst: int) -> float:
    """Calls let through per second over the later half of the run (at least twice the burst
    in), from the bucket's own record of when it let them through: the steady rate, without
    the invocation's start-up and report time. The pacer's bucket refills while its burst is
    spent, so the first calls after the burst still come faster than the rate."""
    start = max(2 * burst, len(times) // 2)
    if len(times) <= start + 1:
        return float("nan")
    return (len(times) - 1 - start) / (times[-1] - times[start])


def measure(aws: LocalAws, share: float, args: argparse.Namespace) -> dict[str, Any]:
    router = fresh_router(aws, args, share)
    ec2 = aws.client("ec2")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    ec2.run_instances(
        ImageId="ami-03cf127a",
        MinCount=args.fleet,
        MaxCount=args.fleet,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Bench", "Value": tag}]}],
    )
    refill = REFILL * args.time_scale
    neighbour = None
    if args.neighbour and share < 1.0:
        [other] = ec2.run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1)["Instances"]
        # what the share leaves, less a margin for the timing of two independent clocks
        neighbour = Neighbour(aws, other["InstanceId"], (1 - share) * refill * 0.9)
    bucket = Throttle(capacity=BURST, refill_per_second=refill)
    aws.set_faults(FaultRule("ec2:CreateSnapshots", throttle=bucket))
    payload = {"policy": "bench", "target_tags": {"Bench": [tag]}, "request_id": tag}
    if neighbour is not None:
        neighbour.start()
    started = time.monotonic()
    rounds = 0
    for rounds in range(1, args.max_rounds + 1):  # noqa: B007 - the count is reported
        if router.invoke(payload).ok:
            break
    else:
        raise SystemExit(f"share {share}: not done after {args.max_rounds} deliveries")
    seconds = time.monotonic() - started
    if neighbour is not None:
        neighbour.stop.set()
        neighbour.join()
    stats = aws.faults()["stats"][0]
    if neighbour is not None:
        # the bucket does not tell the two clients apart: no paced rate with a neighbour
        stats["admitted_at"] = []
    aws.clear_faults()
    router.close()
    allowed = share * refill
    burst = min(args.fleet, int(BURST * share))
    paced = paced_rate(sorted(stats["admitted_at"]), burst)
    return {
        "share": share,
        "seconds": seconds,
        "deliveries": rounds,
        "calls": stats["calls"] - (neighbour.calls if neighbour else 0),
        "throttled": stats["throttled"] - (neighbour.refused if neighbour else 0),
        "allowed": allowed,
        "sustained": (args.fleet - burst) / seconds,
        "ratio": (args.fleet - burst) / seconds / allowed,
        "paced": paced,
        "paced_ratio": paced / allowed,
        "neighbour": f"{neighbour.refused}/{neighbour.calls}" if neighbour else "-",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", type=int, default=400)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--remaining-ms", type=int, default=120_000)
    parser.add_argument("--max-rounds", type=int, default=40)
    parser.add_argument("--neighbour", action="store_true")
    args = parser.parse_args(argv)
    synthesize()
    print(
        f"fleet {args.fleet}; CreateSnapshots bucket {BURST} tokens, {REFILL:g}/s x "
        f"{args.time_scale:g} = {REFILL * args.time_scale:g}/s; Lambda time per delivery "
        f"{args.remaining_ms} ms"
    )
    print(f"{'share':>5} {'allowed/s':>9} {'seconds':>8} {'deliveries':>10} {'calls':>6} "
          f"{'refused':>7} {'sustained/s':>11} {'of allowed':>10} {'paced/s':>7} "
          f"{'of allowed':>10} {'neighbour refused':>17}")  # fmt: skip
    with LocalAws(snapshot_delay=None) as aws:
        for share in args.shares:
            m = measure(aws, share, args)
            print(f"{m['share']:>5.2f} {m['allowed']:>9.1f} {m['seconds']:>8.1f} "
                  f"{m['deliveries']:>10.0f} {m['calls']:>6.0f} {m['throttled']:>7.0f} "
                  f"{m['sustained']:>11.2f} {m['ratio']:>10.2f} {m['paced']:>7.2f} "
                  f"{m['paced_ratio']:>10.2f} {m['neighbour']:>17}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
