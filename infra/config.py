"""The `snapset` configuration in cdk.json, validated with the Lambda's own request model.

This module is the one reader of cdk.json: the CDK app gets the context from CDK, the local AWS
(`localaws.synth`), the demo and the `snapset` CLI read the file with `read_cdk_context`, and the
CLI looks a policy up with `policy_by_name`. It imports no CDK.

`PolicyConfig` is `snapset.policy.SnapshotPolicy` plus its triggers, so a policy that synthesizes is
a policy the Lambda accepts. `load_config` turns any validation error into one `ConfigError` whose
lines name the policy and the field, e.g.
`policies[1] "prod-db": exclude_data_volume_ids: at most 40 volume IDs (got 41)`.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

from infra.schedule_times import DstFindings, dst_findings
from snapset.consistency import seconds_needed
from snapset.pacing import DEFAULT_EC2_API_SHARE
from snapset.policy import Distribution, SnapshotPolicy, describe_validation_error
from snapset.settings import DEFAULT_MAX_WORKERS, DEFAULT_SAFETY_MARGIN_MS

CONTEXT_KEY = "snapset"
DEFAULT_MAX_CONCURRENCY = 5
CDK_JSON = "cdk.json"
# `cdk --context snapset.policies=...` sets a flat key; it is read beside context.snapset.policies.
FLAT_POLICIES_KEY = "snapset.policies"
# Keys of a cdk.json policy entry that configure its triggers, not the request model.
TRIGGER_FIELDS = ("schedules", "on_instance_states")

# States an EC2 Instance State-change Notification can trigger a run on. `terminated` is left out:
# a terminated instance has no volumes left to snapshot.
TriggerState = Literal["pending", "running", "stopping", "stopped", "shutting-down"]

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
)  # fmt: skip


class ConfigError(ValueError):
    """The `snapset` context is missing or invalid; the message names every bad field."""


# --- schedule expressions -------------------------------------------------------------------

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((.*)\)$")


def _cron_value(token: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if token.upper() in names:
        return names.index(token.upper()) + low
    if not token.isdigit():
        raise ValueError(f"{token!r} is not a number" + (" or name" if names else ""))
    value = int(token)
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}-{high}")
    return value


def _cron_range(item: str, low: int, high: int, names: tuple[str, ...]) -> None:
    if item == "*":
        return
    bounds = item.split("-")
    if len(bounds) > 2 or not all(bounds):
        raise ValueError(f"{item!r} is not a value or a range")
    for bound in bounds:
        _cron_value(bound, low, high, names)


def _cron_field(
    field: str,
    text: str,
    *,
    low: int,
    high: int,
    names: tuple[str, ...] = (),
    extra: re.Pattern[str] | None = None,
) -> None:
    """One cron field: comma-separated values, ranges, `*`, `x/step`, plus field-specific forms."""
    for item in text.split(","):
        try:
            if extra is not None and extra.fullmatch(item):
                continue
            base, slash, step = item.partition("/")
            if slash and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"step {step!r} must be a positive integer")
            _cron_range(base, low, high, names)
        except ValueError as exc:
            raise ValueError(f"cron {field} field {text!r}: {exc}") from None


_DOM_EXTRA = re.compile(r"\?|L|LW|([1-9]|[12]\d|3[01])W")
_DOW_EXTRA = re.compile(r"\?|L|[1-7]L|(SUN|MON|TUE|WED|THU|FRI|SAT)L|[1-7]#[1-5]", re.IGNORECASE)


def _check_cron(body: str) -> None:
    fields = body.split()
    if len(fields) != 6:
        raise ValueError(
            "cron needs 6 fields: minutes hours day-of-month month day-of-week year "
            f"(got {len(fields)})"
        )
    minutes, hours, dom, month, dow, year = fields
    _cron_field("minutes", minutes, low=0, high=59)
    _cron_field("hours", hours, low=0, high=23)
    _cron_field("day-of-month", dom, low=1, high=31, extra=_DOM_EXTRA)
    _cron_field("month", month, low=1, high=12, names=_MONTHS)
    _cron_field("day-of-week", dow, low=1, high=7, names=_DAYS, extra=_DOW_EXTRA)
    _cron_field("year", year, low=1970, high=2199)
    if (dom == "?") == (dow == "?"):
        raise ValueError(
            "cron: exactly one of day-of-month and day-of-week must be '?' "
            f"(got {dom!r} and {dow!r})"
        )


def _check_expression(expression: str) -> str:
    if match := _RATE.fullmatch(expression):
        value, unit = int(match.group(1)), match.group(2)
        if value == 0:
            raise ValueError("rate: the value must be a positive integer")
        if (value == 1) != (not unit.endswith("s")):
            raise ValueError(
                f"rate: use the singular unit for 1 and the plural otherwise (got {expression!r})"
            )
        return expression
    if match := _CRON.fullmatch(expression):
        _check_cron(match.group(1))
        return expression
    raise ValueError(
        f"expected 'cron(minutes hours day-of-month month day-of-week year)' or "
        f"'rate(value unit)' (got {expression!r})"
    )


def _check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r} (e.g. 'UTC', 'Europe/Paris')") from None
    return name


class ScheduleConfig(BaseModel):
    """One EventBridge Scheduler schedule: a cron or rate expression in an IANA time zone.

    A cron that can fire in the hour skipped when clocks go forward loses that night's run
    (Scheduler skips it): an error unless `allow_dst_skip` says it is meant.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    expression: Annotated[str, StringConstraints(strict=True), AfterValidator(_check_expression)]
    timezone: Annotated[str, StringConstraints(strict=True), AfterValidator(_check_timezone)] = (
        "UTC"
    )
    allow_dst_skip: StrictBool = False

    @model_validator(mode="after")
    def _no_skipped_run(self) -> ScheduleConfig:
        gap = self.dst().gap
        if gap is not None and not self.allow_dst_skip:
            raise ValueError(
                f"{self.expression} in {self.timezone} falls in the hour skipped when clocks go "
                f"forward (next on {gap:%Y-%m-%d} at {gap:%H:%M}, a time that does not exist "
                "there), and EventBridge Scheduler skips that run: move it out of the "
                "daylight-saving change, or set allow_dst_skip: true to accept the lost run"
            )
        return self

    def dst(self) -> DstFindings:
        """Where this schedule meets daylight saving, from today on."""
        return dst_findings(self.expression, self.timezone, datetime.now(UTC).date())

    def dst_warning(self) -> str | None:
        """A warning when the schedule can fire in the repeated hour (once, at either offset)."""
        findings = self.dst()
        if findings.unchecked is not None:
            return (
                f"{self.expression} in {self.timezone}: daylight saving could not be checked "
                f"({findings.unchecked}); make sure it cannot fire in a skipped hour"
            )
        repeated = findings.repeated
        if repeated is None:
            return None
        return (
            f"{self.expression} in {self.timezone} falls in the hour repeated when clocks go "
            f"back (next on {repeated:%Y-%m-%d} at {repeated:%H:%M}): Scheduler runs it once, "
            "and which of the two offsets it uses is not documented"
        )


def _schedule_shorthand(value: Any) -> Any:
    # "cron(...)" alone means the expression in UTC.
    return {"expression": value} if isinstance(value, str) else value


def _unique_values(values: list[str]) -> list[str]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate values: {', '.join(duplicates)}")
    return values


# --- policies -------------------------------------------------------------------------------


class PolicyConfig(SnapshotPolicy):
    """A snapshot policy (the Lambda's request model) plus the triggers that run it."""

    schedules: Annotated[
        list[Annotated[ScheduleConfig, BeforeValidator(_schedule_shorthand)]],
        Field(max_length=20),
    ] = Field(default_factory=list)
    on_instance_states: Annotated[list[TriggerState], AfterValidator(_unique_values)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _has_trigger(self) -> PolicyConfig:
        if not self.schedules and not self.on_instance_states:
            raise ValueError(
                "give schedules and/or on_instance_states: a policy needs at least one trigger"
            )
        return self

    def snapshot_policy(self) -> SnapshotPolicy:
        """The request model alone, as the Lambda receives it (no trigger fields)."""
        return SnapshotPolicy.model_validate(self.model_dump(exclude=set(TRIGGER_FIELDS)))


# --- stack settings -------------------------------------------------------------------------


_EMAIL = r"^[^@\s]+@[^@\s]+\.[A-Za-z0-9-]{2,}$"
_ENDPOINT_PATTERNS = {
    "email": _EMAIL,
    "email-json": _EMAIL,
    "https": r"^https://\S+$",
    "sqs": r"^arn:aws[a-z-]*:sqs:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,80}(\.fifo)?$",
    "lambda": (
        r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]{1,64}"
        r"(:[A-Za-z0-9$_-]+)?$"
    ),
    "firehose": r"^arn:aws[a-z-]*:firehose:[a-z0-9-]+:\d{12}:deliverystream/[A-Za-z0-9_.-]{1,64}$",
}
SubscriptionProtocol = Literal["email", "email-json", "https", "sqs", "lambda", "firehose"]


Email = Annotated[str, StringConstraints(strict=True, max_length=254, pattern=_EMAIL)]
IamRoleArn = Annotated[
    str, StringConstraints(strict=True, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
]


class SubscriptionConfig(BaseModel):
    """An existing endpoint to subscribe to the report topic (it must allow SNS to deliver)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: SubscriptionProtocol
    endpoint: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=2048)]
    # Needed only for firehose subscriptions: a role SNS assumes to write to the stream.
    subscription_role_arn: IamRoleArn | None = None
    raw_message_delivery: StrictBool = False

    @model_validator(mode="after")
    def _check(self) -> SubscriptionConfig:
        if not re.fullmatch(_ENDPOINT_PATTERNS[self.protocol], self.endpoint):
            raise ValueError(f"endpoint {self.endpoint!r} is not a valid {self.protocol} endpoint")
        if (self.protocol == "firehose") != (self.subscription_role_arn is not None):
            raise ValueError("subscription_role_arn is required for firehose and only for it")
        if self.raw_message_delivery and self.protocol in ("email", "email-json"):
            raise ValueError("raw_message_delivery does not apply to email subscriptions")
        return self


class AlarmConfig(BaseModel):
    """CloudWatch alarm thresholds; each alarm fires when its sum over one period reaches it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period_minutes: Annotated[int, Field(strict=True, ge=1, le=1440)] = 5
    errors_threshold: Annotated[int, Field(strict=True, ge=1)] = 1
    throttles_threshold: Annotated[int, Field(strict=True, ge=1)] = 1
    failed_instances_threshold: Annotated[int, Field(strict=True, ge=1)] = 1
    dlq_messages_threshold: Annotated[int, Field(strict=True, ge=1)] = 1


def _check_retention(days: int) -> int:
    if days not in LOG_RETENTION_DAYS:
        raise ValueError(
            f"{days} is not a CloudWatch Logs retention period; use one of "
            + ", ".join(str(d) for d in LOG_RETENTION_DAYS)
        )
    return days


class SnapsetConfig(BaseModel):
    """Everything `cdk.json` -> context `snapset` holds: stack settings and the policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: Annotated[list[PolicyConfig], Field(min_length=1, max_length=100)]
    notification_emails: Annotated[list[Email], AfterValidator(_unique_values)] = Field(
        default_factory=list
    )
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    log_retention_days: Annotated[int, Field(strict=True), AfterValidator(_check_retention)] = 90
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Days each run's full report is kept in the report bucket (an S3 lifecycle expiration).
    report_retention_days: Annotated[int, Field(strict=True, ge=1, le=3653)] = 400
    lambda_memory_mb: Annotated[int, Field(strict=True, ge=128, le=10240)] = 256
    lambda_timeout_seconds: Annotated[int, Field(strict=True, ge=30, le=900)] = 300
    # Reserved concurrency for the function: a burst of instance events (a fleet stopped at once)
    # then queues in Lambda's async queue instead of running hundreds of invocations that share
    # EC2's CreateSnapshots bucket (5 per s refill) and throttle each other and the account.
    # Throttled async events are retried by Lambda for up to max_event_age_minutes; none is lost.
    # None leaves the function on the account's unreserved pool.
    max_concurrency: Annotated[int, Field(strict=True, ge=1, le=1000)] | None = (
        DEFAULT_MAX_CONCURRENCY
    )
    max_workers: Annotated[int, Field(strict=True, ge=1, le=64)] = DEFAULT_MAX_WORKERS
    # The share of EC2's CreateSnapshots and DeleteSnapshot buckets (100 tokens, 5 per s) one
    # run may spend: the rest stays for the account's other workloads.
    ec2_api_share: Annotated[float, Field(strict=True, ge=0.01, le=1.0)] = DEFAULT_EC2_API_SHARE
    safety_margin_ms: Annotated[int, Field(strict=True, ge=0, le=600_000)] = (
        DEFAULT_SAFETY_MARGIN_MS
    )
    # Retries and maximum event age for async invocations, schedules and rule targets.
    max_event_age_minutes: Annotated[int, Field(strict=True, ge=1, le=360)] = 60
    trigger_retry_attempts: Annotated[int, Field(strict=True, ge=0, le=185)] = 3
    completion_events: StrictBool = True
    alarms: AlarmConfig = AlarmConfig()
    # Replaced by the public SSM parameter of the pinned Powertools release (see infra.function):
    # a layer version number nobody checked against the pin is what it used to be.
    powertools_layer_version: Any = Field(
        default=None,
        description="removed: the layer comes from the pinned release's SSM parameter",
    )
    # A full layer version ARN overrides the public Powertools layer (other partitions, mirrors).
    powertools_layer_arn: (
        Annotated[
            str,
            StringConstraints(
                strict=True, pattern=r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[\w-]+:\d+$"
            ),
        ]
        | None
    ) = None

    def deployed_policies(self) -> str:
        """The function's SNAPSET_DEPLOYED_POLICIES: each policy's name and its retention."""
        return json.dumps(
            {
                p.name: p.retention.model_dump(exclude_none=True) if p.retention else None
                for p in self.policies
            },
            separators=(",", ":"),
        )

    def schedule_warnings(self) -> list[str]:
        """One line per schedule that can fire in a repeated hour, naming its policy."""
        return [
            f'policy "{p.name}": schedules[{n}]: {warning}'
            for p in self.policies
            for n, schedule in enumerate(p.schedules)
            if (warning := schedule.dst_warning()) is not None
        ]

    def script_documents(self) -> list[str]:
        """The SSM documents the policies' scripts run: the only ones the function may send."""
        return sorted({p.scripts.document for p in self.policies if p.scripts is not None})

    def retaining_policies(self) -> list[str]:
        """Names of the policies with retention: the only ones whose snapshots may be deleted."""
        return [p.name for p in self.policies if p.retention is not None]

    def deployed_copies(self) -> str:
        """The function's SNAPSET_DEPLOYED_COPIES: each policy with copies or shares and its
        `Distribution` (`{}` when none has either)."""
        return json.dumps(
            {
                p.name: distribution.model_dump(mode="json", exclude_none=True)
                for p in self.policies
                if (distribution := Distribution.of(p))
            },
            separators=(",", ":"),
        )

    def copying_policies(self) -> list[str]:
        """Names of the policies with copies: the only ones whose sets are copied and re-tagged."""
        return [p.name for p in self.policies if p.copies]

    def copy_regions(self) -> dict[str, list[str]]:
        """Each destination region (sorted) and the policies that copy into it."""
        regions: dict[str, list[str]] = {}
        for p in self.policies:
            for rule in p.copies:
                regions.setdefault(rule.region, []).append(p.name)
        return dict(sorted(regions.items()))

    def copy_retaining_regions(self) -> dict[str, list[str]]:
        """Each destination region and the policies whose copies have a retention there (their
        own, else the policy's): the only copies destination retention may delete."""
        regions: dict[str, list[str]] = {}
        for p in self.policies:
            for rule in p.copies:
                if p.copy_retention(rule) is not None:
                    regions.setdefault(rule.region, []).append(p.name)
        return dict(sorted(regions.items()))

    def copy_keys(self) -> list[str]:
        """The destination KMS keys the copies name (sorted, each once)."""
        return sorted({r.kms_key_arn for p in self.policies for r in p.copies if r.kms_key_arn})

    def shares(self) -> list[tuple[list[str], list[str]]]:
        """(policies, accounts) for each distinct set of accounts policies share with: each
        policy's sets may be shared with its own accounts only."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for p in self.policies:
            if p.share_with_accounts:
                groups.setdefault(tuple(sorted(p.share_with_accounts)), []).append(p.name)
        return [(names, list(accounts)) for accounts, names in groups.items()]

    def check_copy_regions(self, home_region: str) -> None:
        """Refuse a copy into the stack's own region (`home_region`), naming the field.

        Only a stack whose region is known at synth (CDK_DEFAULT_REGION, an explicit env) can be
        checked here; an env-agnostic stack learns its region at deploy time, and the Lambda
        refuses such a copy at run time.
        """
        errors = [
            f'policies[{i}] "{p.name}": copies[{n}].region: {home_region} is the region the '
            "stack is deployed to, and a copy must go to another region"
            for i, p in enumerate(self.policies)
            for n, rule in enumerate(p.copies)
            if rule.region == home_region
        ]
        if errors:
            raise ConfigError(f"invalid '{CONTEXT_KEY}' configuration:\n" + "\n".join(errors))

    @model_validator(mode="after")
    def _check(self) -> SnapsetConfig:
        seen: dict[str, str] = {}
        for policy in self.policies:
            other = seen.setdefault(policy.name.lower(), policy.name)
            if other is not policy.name:
                raise ValueError(
                    f"policies: policy names must be unique (ignoring case): {other!r} and "
                    f"{policy.name!r}"
                )
        if "powertools_layer_version" in self.model_fields_set:
            raise ValueError(
                "powertools_layer_version is no longer used: the layer is resolved at deploy "
                "time from Powertools' SSM parameter for the release in lambdas/requirements.txt; "
                "set powertools_layer_arn to pin another layer"
            )
        if self.safety_margin_ms >= self.lambda_timeout_seconds * 1000 // 2:
            raise ValueError(
                f"safety_margin_ms ({self.safety_margin_ms}) must be less than half of "
                f"lambda_timeout_seconds ({self.lambda_timeout_seconds} s)"
            )
        for policy in self.policies:
            self._check_scripts(policy)
        return self

    def _check_scripts(self, policy: PolicyConfig) -> None:
        scripts = policy.scripts
        if scripts is None:
            return
        if policy.on_instance_states:
            raise ValueError(
                f"policy {policy.name!r}: scripts need the SSM agent running, and an instance "
                f"that is {' or '.join(policy.on_instance_states)} cannot run them: remove "
                "on_instance_states or scripts"
            )
        # An instance starts its scripts only with time for all of them before the deadline:
        # the worst case must leave at least half of the invocation to start instances in.
        needed = seconds_needed(scripts, policy.dry_run)
        usable = self.lambda_timeout_seconds - self.safety_margin_ms / 1000
        if needed > usable / 2:
            raise ValueError(
                f"policy {policy.name!r}: scripts.timeout_seconds ({scripts.timeout_seconds}) "
                f"and scripts.max_retries ({scripts.max_retries}) can take {needed} s per "
                f"instance (every attempt timing out), more than half of the {usable:.0f} s an "
                "invocation has (lambda_timeout_seconds less safety_margin_ms): lower them or "
                "raise lambda_timeout_seconds"
            )


# --- loading --------------------------------------------------------------------------------


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _policy_label(raw: Any, index: int) -> str:
    name = None
    if isinstance(raw, Mapping) and isinstance(raw.get("policies"), list):
        items = raw["policies"]
        if index < len(items) and isinstance(items[index], Mapping):
            name = items[index].get("policy")
    return f'policies[{index}] "{name}"' if isinstance(name, str) else f"policies[{index}]"


def describe_config_error(exc: ValidationError, raw: Any) -> str:
    """One line per error: `policies[1] "prod-db": field: message` or `field: message`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if len(loc) >= 2 and loc[0] == "policies" and isinstance(loc[1], int):
            # Drop the union/validator tags pydantic adds (e.g. 'function-after[...]').
            rest = tuple(p for p in loc[2:] if not (isinstance(p, str) and "[" in p))
            where = _policy_label(raw, loc[1])
            lines.append(f"{where}: {_location(rest)}: {msg}" if rest else f"{where}: {msg}")
        else:
            where = _location(tuple(p for p in loc if not (isinstance(p, str) and "[" in p)))
            lines.append(f"{where}: {msg}" if where else msg)
    return "\n".join(lines)


def load_config(raw: Any) -> SnapsetConfig:
    """Validate the `snapset` context value (a dict, or a JSON string from `-c snapset=...`)."""
    if raw is None:
        raise ConfigError(
            f"no '{CONTEXT_KEY}' context: add it to cdk.json (see README, Configuration)"
        )
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"context '{CONTEXT_KEY}' is not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"context '{CONTEXT_KEY}' must be an object, got {type(raw).__name__}")
    try:
        return SnapsetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid '{CONTEXT_KEY}' configuration:\n{describe_config_error(exc, raw)}"
        ) from None


# --- reading cdk.json -----------------------------------------------------------------------


def read_cdk_context(path: Path) -> dict[str, Any]:
    """The `context` object of a cdk.json file ({} when it has none); errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config in {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    context = data.get("context", {}) if isinstance(data, dict) else None
    if not isinstance(context, dict):
        raise ConfigError(f"{path}: 'context' must be an object")
    return context


def context_policies(context: Mapping[str, Any]) -> tuple[list[Any], str] | None:
    """The raw policy entries and where they stand (`context.snapset.policies`, or the flat
    `context['snapset.policies']`), or None when there is no list of policies."""
    nested = context.get(CONTEXT_KEY)
    if isinstance(nested, Mapping) and isinstance(nested.get("policies"), list):
        return nested["policies"], f"context.{FLAT_POLICIES_KEY}"
    flat = context.get(FLAT_POLICIES_KEY)
    if isinstance(flat, list):
        return flat, f"context[{FLAT_POLICIES_KEY!r}]"
    return None


def policy_by_name(context: Mapping[str, Any], name: str, source: str) -> SnapshotPolicy:
    """One policy of a cdk.json context as the Lambda's request model (its triggers dropped).

    Only that entry is validated, so a named policy can be planned while another is still being
    written. `source` names the file in errors.
    """
    found = context_policies(context)
    if found is None:
        raise ConfigError(f"{source}: no list of policies at context.{FLAT_POLICIES_KEY}")
    policies, where = found
    matches = [
        (i, entry)
        for i, entry in enumerate(policies)
        if isinstance(entry, Mapping) and entry.get("policy") == name
    ]
    if not matches:
        names = [e["policy"] for e in policies if isinstance(e, Mapping) and "policy" in e]
        known = ", ".join(map(str, names)) or "none"
        raise ConfigError(f"no policy named {name!r} in {source} (policies: {known})")
    if len(matches) > 1:
        raise ConfigError(f"policy {name!r} appears {len(matches)} times in {source}")
    index, entry = matches[0]
    body = {k: v for k, v in entry.items() if k not in TRIGGER_FIELDS}
    try:
        return SnapshotPolicy.model_validate(body)
    except ValidationError as exc:
        detail = describe_validation_error(exc, f"{where}[{index}].")
        raise ConfigError(f"invalid policy {name!r} in {source}: {detail}") from None
