"""The "AWS budget" profile: EC2's published request-throttling buckets, time-scaled.

EC2 throttles per account and region with a token bucket per API (EC2 API reference, "Request
throttling"). `aws_budget(time_scale)` gives the fault rules that put every EC2 API Snapset calls
behind its bucket: the published burst, and the published refill times `time_scale`, so a night
of a large fleet runs in minutes while what runs dry first is what runs dry on AWS.
`function_overrides` gives the deployed function the same scale (its pacer then paces at its
share of the scaled refill) and an invocation time and safety margin divided by it, so a run
meets the scaled buckets with the time a real invocation would have.

    aws.set_faults(*aws_budget(50))
    router = Router(aws, deployment, **function_overrides(50, timeout_seconds=300,
                                                          safety_margin_ms=10_000))
"""

from __future__ import annotations

from typing import Any

from localaws.faults import FaultRule, Throttle

__all__ = ["EC2_BUCKETS", "aws_budget", "function_overrides"]

# (burst, refill per second) as the EC2 API reference publishes them.
_RESOURCE_INTENSIVE = (100, 5.0)
_CREATE_TAGS = (100, 10.0)
_FILTERED_DESCRIBE = (100, 20.0)  # a Describe call with filters, ids or pagination
_UNFILTERED_DESCRIBE = (50, 10.0)
_UNLISTED_MUTATING = (50, 5.0)  # a mutating action the reference lists under no bucket of its own

# Every EC2 API the function calls (tests/infra/test_iam_mapping.py records them).
EC2_BUCKETS: dict[str, tuple[int, float]] = {
    "CreateSnapshots": _RESOURCE_INTENSIVE,
    "DeleteSnapshot": _RESOURCE_INTENSIVE,
    # Authorized with CreateSnapshots' TagSpecifications, never called on its own: listed so a
    # future CreateTags call meets its bucket.
    "CreateTags": _CREATE_TAGS,
    "DescribeInstances": _FILTERED_DESCRIBE,
    "DescribeVolumes": _FILTERED_DESCRIBE,
    "DescribeSnapshots": _FILTERED_DESCRIBE,
    "DescribeImages": _FILTERED_DESCRIBE,
    "DescribeLockedSnapshots": _FILTERED_DESCRIBE,
    "DescribeSnapshotAttribute": _UNFILTERED_DESCRIBE,
    # Copies and shares (policies with `copies` / `share_with_accounts`).
    "CopySnapshot": _UNLISTED_MUTATING,
    "ModifySnapshotAttribute": _UNLISTED_MUTATING,
}


def aws_budget(time_scale: float = 1.0) -> list[FaultRule]:
    """One token-bucket rule per EC2 API in `EC2_BUCKETS`: the published burst, the published
    refill times `time_scale`."""
    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive (got {time_scale})")
    return [
        FaultRule(f"ec2:{api}", throttle=Throttle(burst, refill * time_scale))
        for api, (burst, refill) in EC2_BUCKETS.items()
    ]


def function_overrides(
    time_scale: float, *, timeout_seconds: int, safety_margin_ms: int
) -> dict[str, Any]:
    """`Router` arguments for the same profile: the function's EC2 rate scale (its pacer), and
    its invocation time and the safety margin it keeps back for its report, the deployed ones
    divided by the scale."""
    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive (got {time_scale})")
    return {
        "remaining_ms": int(timeout_seconds * 1000 / time_scale),
        "env_overrides": {
            "SNAPSET_EC2_RATE_SCALE": f"{time_scale:g}",
            "SNAPSET_SAFETY_MARGIN_MS": str(int(safety_margin_ms / time_scale)),
        },
    }
