"""The Lambda's configuration, read once from its environment.

The variable names are the contract with the CDK stack (infra/ sets them; tests on both sides pin
them), so they live here as constants and infra imports them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import TypeAdapter, ValidationError

from snapset.pacing import DEFAULT_EC2_API_SHARE
from snapset.policy import Distribution, PolicyName, Retention, describe_validation_error

# Powertools reads POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE; the stack sets them to
# these, and its alarms select the metrics by the same values.
SERVICE_NAME = "snapset"
METRICS_NAMESPACE = "Snapset"

ENV_TOPIC_ARN = "SNAPSET_TOPIC_ARN"
ENV_MAX_WORKERS = "SNAPSET_MAX_WORKERS"
ENV_IDEMPOTENCY_TABLE = "SNAPSET_IDEMPOTENCY_TABLE"
# The bucket that keeps every run's full report (the SNS message may be trimmed to fit).
ENV_REPORT_BUCKET = "SNAPSET_REPORT_BUCKET"
ENV_SAFETY_MARGIN_MS = "SNAPSET_SAFETY_MARGIN_MS"
# The fan-out state machine a run too big for one invocation is handed to.
ENV_STATE_MACHINE_ARN = "SNAPSET_STATE_MACHINE_ARN"
# The deployed policies and their retention, `{"name": {"count": 7} | null, ...}`: retention is
# taken from here only, never from a payload.
ENV_DEPLOYED_POLICIES = "SNAPSET_DEPLOYED_POLICIES"
# The deployed policies' copies and shares, `{"name": {"copies": [...], "share_with_accounts":
# [...]}, ...}` for the policies that have either; like retention, never from a payload.
ENV_DEPLOYED_COPIES = "SNAPSET_DEPLOYED_COPIES"

# The share of each EC2 token bucket Snapset may spend (CreateSnapshots, DeleteSnapshot), and a
# factor on EC2's published refill rates: 1 on AWS; the local AWS's time-scaled budget profile
# sets it to its own factor.
ENV_EC2_API_SHARE = "SNAPSET_EC2_API_SHARE"
ENV_EC2_RATE_SCALE = "SNAPSET_EC2_RATE_SCALE"
# How many invocations of the function a fan-out's Maps may run at once: its reserved
# concurrency less one for the triggers; unset when the function has none reserved.
ENV_FAN_OUT_CONCURRENCY = "SNAPSET_FAN_OUT_CONCURRENCY"

DeployedPolicies = Mapping[str, Retention | None]
_DEPLOYED = TypeAdapter(dict[PolicyName, Retention | None])
DeployedCopies = Mapping[str, Distribution]
_DEPLOYED_COPIES = TypeAdapter(dict[PolicyName, Distribution])

# S3's bucket naming rules (general purpose buckets): 3-63 characters, lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_STATE_MACHINE_ARN = re.compile(
    r"arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]{1,80}"
)

DEFAULT_MAX_WORKERS = 8
DEFAULT_SAFETY_MARGIN_MS = 10_000


class ConfigError(RuntimeError):
    """A required environment variable is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """What the handler needs from its environment."""

    topic_arn: str
    idempotency_table: str
    report_bucket: str
    state_machine_arn: str
    deployed_policies: DeployedPolicies = field(default_factory=dict)
    max_workers: int = DEFAULT_MAX_WORKERS
    safety_margin_ms: int = DEFAULT_SAFETY_MARGIN_MS
    ec2_api_share: float = DEFAULT_EC2_API_SHARE
    ec2_rate_scale: float = 1.0
    deployed_copies: DeployedCopies = field(default_factory=dict)
    # The function's own region: the source of its copies (Lambda sets AWS_REGION).
    region: str = ""
    fan_out_concurrency: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; the error names the variable."""
        env = os.environ if env is None else env
        topic_arn = env.get(ENV_TOPIC_ARN, "").strip()
        if not topic_arn.startswith("arn:") or ":sns:" not in topic_arn:
            raise ConfigError(f"{ENV_TOPIC_ARN} must be an SNS topic ARN (got {topic_arn!r})")
        table = env.get(ENV_IDEMPOTENCY_TABLE, "").strip()
        if not table:
            # Without it nothing guards against a second set on a redelivery: refuse to run.
            raise ConfigError(f"{ENV_IDEMPOTENCY_TABLE} must name the idempotency DynamoDB table")
        bucket = env.get(ENV_REPORT_BUCKET, "").strip()
        if not _BUCKET_NAME.fullmatch(bucket):
            # Without it a large fleet's report would exist only trimmed: refuse to run.
            raise ConfigError(
                f"{ENV_REPORT_BUCKET} must name the S3 bucket for full run reports (got {bucket!r})"
            )
        machine = env.get(ENV_STATE_MACHINE_ARN, "").strip()
        if not _STATE_MACHINE_ARN.fullmatch(machine):
            # Without it a fleet too big for one invocation could only run out of time.
            raise ConfigError(
                f"{ENV_STATE_MACHINE_ARN} must be the fan-out state machine's ARN (got {machine!r})"
            )
        deployed = _deployed_policies(env)
        region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()
        return cls(
            topic_arn=topic_arn,
            idempotency_table=table,
            report_bucket=bucket,
            state_machine_arn=machine,
            deployed_policies=deployed,
            deployed_copies=_deployed_copies(env, deployed, region),
            region=region,
            max_workers=_int(env, ENV_MAX_WORKERS, DEFAULT_MAX_WORKERS, 1, 64),
            safety_margin_ms=_int(env, ENV_SAFETY_MARGIN_MS, DEFAULT_SAFETY_MARGIN_MS, 0, 600_000),
            ec2_api_share=_float(env, ENV_EC2_API_SHARE, DEFAULT_EC2_API_SHARE, 0.01, 1.0),
            ec2_rate_scale=_float(env, ENV_EC2_RATE_SCALE, 1.0, 1.0, 1000.0),
            fan_out_concurrency=(
                _int(env, ENV_FAN_OUT_CONCURRENCY, 0, 1, 1000)
                if env.get(ENV_FAN_OUT_CONCURRENCY)
                else None
            ),
        )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer (got {raw!r})") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high} (got {value})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {raw!r})") from None
    if not low <= value <= high:  # NaN fails this too
        raise ConfigError(f"{name} must be between {low} and {high} (got {raw})")
    return value


def _deployed_policies(env: Mapping[str, str]) -> DeployedPolicies:
    raw = env.get(ENV_DEPLOYED_POLICIES)
    if raw is None:
        # Without it the function cannot tell whose retention a payload may use: refuse to run.
        raise ConfigError(
            f"{ENV_DEPLOYED_POLICIES} must map each deployed policy to its retention (JSON)"
        )
    try:
        return _DEPLOYED.validate_python(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ENV_DEPLOYED_POLICIES} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        detail = describe_validation_error(exc)
        raise ConfigError(f"{ENV_DEPLOYED_POLICIES}: {detail}") from None


def _deployed_copies(
    env: Mapping[str, str], deployed: DeployedPolicies, region: str
) -> DeployedCopies:
    raw = env.get(ENV_DEPLOYED_COPIES)
    if raw is None:
        # Without it a policy's copies and shares would silently not happen: refuse to run.
        raise ConfigError(
            f"{ENV_DEPLOYED_COPIES} must map each deployed policy with copies or shares to "
            "them (JSON, {} for none)"
        )
    try:
        copies = _DEPLOYED_COPIES.validate_python(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ENV_DEPLOYED_COPIES} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{ENV_DEPLOYED_COPIES}: {describe_validation_error(exc)}") from None
    for name, distribution in copies.items():
        if name not in deployed:
            raise ConfigError(f"{ENV_DEPLOYED_COPIES}: {name!r} is not in {ENV_DEPLOYED_POLICIES}")
        if distribution.copies and not region:
            raise ConfigError(
                f"AWS_REGION must name the function's region: {name!r} copies its sets from it"
            )
        for n, rule in enumerate(distribution.copies):
            if rule.region == region:
                raise ConfigError(
                    f"{ENV_DEPLOYED_COPIES}: {name}.copies.{n}.region: {region} is the "
                    "function's own region; a copy must go to another region"
                )
    return copies
