"""The snapshot policy: the one request model every trigger is parsed into.

A policy says which instances to snapshot and how. The same model validates the policies in
`cdk.json` at synth time (infra imports it), the schedule and rule inputs, manual
`aws lambda invoke` payloads and the CLI's payload files, so a mistake reads the same everywhere.
"""

from __future__ import annotations

import functools
import string
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

import botocore.session
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

MANAGED_TAG_PREFIX = "snapset:"
TAG_POLICY = "snapset:policy"
TAG_TRIGGER_ID = "snapset:trigger-id"
TAG_INSTANCE_ID = "snapset:instance-id"
# The consistency a set achieved: `application` when its pre script succeeded, else `crash`.
TAG_CONSISTENCY = "snapset:consistency"
# On a set of a policy with `copies`: `pending` until every copy of the set has completed or
# failed in its destination and the copy report is out, then `done` (`none` for a failed set).
TAG_COPIES = "snapset:copies"
COPIES_PENDING = "pending"
# Some of its copies were started (the copy sweep looks in the destinations for these sets,
# and for as many pending ones as the destinations have room for).
COPIES_COPYING = "copying"
# Either: the set's copies are not all made and reported yet, so retention keeps it.
COPIES_IN_FLIGHT = frozenset({COPIES_PENDING, COPIES_COPYING})
COPIES_DONE = "done"
COPIES_NONE = "none"
# The copies CopySnapshot refused for good, `<region>=<code>` entries joined by `;`.
TAG_COPY_ERRORS = "snapset:copy-errors"
MANAGED_TAG_KEYS = (
    TAG_POLICY,
    TAG_TRIGGER_ID,
    TAG_INSTANCE_ID,
    TAG_CONSISTENCY,
    TAG_COPIES,
    TAG_COPY_ERRORS,
)
# A copy in a destination region carries its source's identity under its own keys, so that
# nothing in that region (a Snapset deployed there, its retention, its existing-set look-up)
# takes a copy for a set it made itself.
TAG_COPY_POLICY = "snapset:copy-policy"
TAG_COPY_TRIGGER_ID = "snapset:copy-trigger-id"
TAG_COPY_INSTANCE_ID = "snapset:copy-instance-id"
TAG_COPY_OF = "snapset:copy-of"
TAG_COPY_SOURCE_REGION = "snapset:copy-source-region"
COPY_TAG_KEYS = (
    TAG_COPY_POLICY,
    TAG_COPY_TRIGGER_ID,
    TAG_COPY_INSTANCE_ID,
    TAG_COPY_OF,
    TAG_COPY_SOURCE_REGION,
    TAG_CONSISTENCY,
)

MAX_TAGS_PER_RESOURCE = 50
MAX_USER_TAGS = MAX_TAGS_PER_RESOURCE - len(MANAGED_TAG_KEYS)
MAX_TAG_KEY_LEN = 127
MAX_TAG_VALUE_LEN = 256
MAX_DESCRIPTION_LEN = 255
MAX_EXCLUDED_DATA_VOLUMES = 40
MAX_INSTANCE_IDS = 1000
# EC2 accepts at most 200 filter values in one Describe call; volume-tag exclusions share the
# call with the attachment filter.
MAX_TARGET_TAG_VALUES = 200
MAX_EXCLUDE_TAG_VALUES = 199
# AWS Data Lifecycle Manager's limits: copies to at most 3 regions, shares with 20 accounts.
MAX_COPY_REGIONS = 3
MAX_SHARE_ACCOUNTS = 20

PLACEHOLDERS = ("instance_id", "policy", "trigger", "timestamp")
# Longest value each placeholder can take, so a template is checked once, before any instance runs.
_PLACEHOLDER_MAX_LEN = {
    "instance_id": len("i-") + 17,
    "trigger": len("instance_event"),
    "timestamp": len("2026-11-27T03:15:00Z"),
}

# AWS issues 8 or 17 lowercase hex digits; AWS's own documentation examples (and our event
# fixtures) use other lowercase letters, so the shape is checked, not the alphabet.
INSTANCE_ID_PATTERN = r"^i-[0-9a-z]{8,17}$"
InstanceId = Annotated[str, StringConstraints(pattern=INSTANCE_ID_PATTERN, strict=True)]
VolumeId = Annotated[str, StringConstraints(pattern=r"^vol-[0-9a-z]{8,17}$", strict=True)]
POLICY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,39}$"
PolicyName = Annotated[str, StringConstraints(pattern=POLICY_NAME_PATTERN, strict=True)]


def _utf8(value: str) -> str:
    # JSON can carry lone surrogates ("\ud800"), which are not text and which AWS rejects.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (found a lone surrogate)") from None
    return value


Text = Annotated[str, StringConstraints(strict=True), AfterValidator(_utf8)]
TagKey = Annotated[Text, StringConstraints(min_length=1, max_length=MAX_TAG_KEY_LEN)]
TagValue = Annotated[Text, StringConstraints(max_length=MAX_TAG_VALUE_LEN)]
OutpostArn = Annotated[
    str,
    StringConstraints(
        pattern=r"^arn:aws[a-z-]*:outposts:[a-z0-9-]+:\d{12}:outpost/op-[0-9a-f]{17}$",
        strict=True,
    ),
]
RequestId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", strict=True)
]


class TriggerType(StrEnum):
    """What started a run; also the value of the `{trigger}` placeholder."""

    SCHEDULE = "schedule"
    INSTANCE_EVENT = "instance_event"
    MANUAL = "manual"


def _unique(values: list[str]) -> list[str]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate values: {', '.join(duplicates)}")
    return values


def _tag_filter(tags: dict[str, list[str]]) -> dict[str, list[str]]:
    for key, values in tags.items():
        if not values:
            raise ValueError(f"tag {key!r}: give at least one value (use '*' for any value)")
    return tags


TagFilter = Annotated[
    dict[TagKey, Annotated[list[TagValue], Field(max_length=200)]],
    Field(max_length=50),
    AfterValidator(_tag_filter),
]


def template_fields(template: str) -> list[str]:
    """Return the placeholder names used in a tag value or description template.

    Raises ValueError for malformed braces, unknown placeholders, or format specs and attribute
    access, which could otherwise grow a value past its limit or read object internals.
    """
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"malformed placeholder ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}}; allowed: "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            )
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format spec or conversion")
        fields.append(name)
    return fields


def expand_template(template: str, values: dict[str, str]) -> str:
    """Fill a validated template's placeholders."""
    return template.format_map(values)


def _worst_case_length(template: str, policy: str) -> int:
    longest = {**_PLACEHOLDER_MAX_LEN, "policy": len(policy)}
    return len(expand_template(template, {k: "x" * n for k, n in longest.items()}))


def _known_region(region: str) -> str:
    if region not in aws_regions():
        raise ValueError(f"{region!r} is not an AWS region botocore knows")
    return region


@functools.cache
def aws_regions() -> frozenset[str]:
    """Every region of the commercial, China and GovCloud partitions in botocore's data."""
    session = botocore.session.get_session()
    return frozenset(
        region
        for partition in ("aws", "aws-cn", "aws-us-gov")
        for region in session.get_available_regions("ec2", partition_name=partition)
    )


Region = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", strict=True),
    AfterValidator(_known_region),
]
KmsKeyArn = Annotated[
    str,
    StringConstraints(
        # A key ARN, not an alias: IAM grants KMS permissions on keys.
        pattern=r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/(mrk-)?[0-9a-f-]{32,36}$",
        strict=True,
    ),
]
AccountId = Annotated[str, StringConstraints(pattern=r"^\d{12}$", strict=True)]


class Retention(BaseModel):
    """How many snapshot sets of a policy to keep per instance (sets are kept or deleted whole)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: Annotated[int, Field(ge=1, le=1000, strict=True)] | None = None
    max_age_days: Annotated[int, Field(ge=1, le=36500, strict=True)] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> Retention:
        if self.count is None and self.max_age_days is None:
            raise ValueError("retention needs count and/or max_age_days")
        return self


# AWS Data Lifecycle Manager's `Script.ExecutionHandler` pattern: a document name, an ARN (a
# document shared with you), or one of DLM's reserved handler names.
EXECUTION_HANDLER_PATTERN = r"^([a-zA-Z0-9_\-.]{3,128}|[a-zA-Z0-9_\-.:/]{3,200}|[A-Z0-9_]+)$"
DocumentName = Annotated[
    str, StringConstraints(pattern=EXECUTION_HANDLER_PATTERN, max_length=200, strict=True)
]
VSS_HANDLER = "AWS_VSS_BACKUP"


class ScriptStage(StrEnum):
    """When a script runs: before CreateSnapshots (`pre`) or after it (`post`)."""

    PRE = "pre"
    POST = "post"


class OnScriptFailure(StrEnum):
    """What a failed pre script leaves: a crash-consistent set anyway, or no set."""

    CRASH_CONSISTENT = "crash_consistent"
    SKIP = "skip"


class Scripts(BaseModel):
    """Pre and post scripts run through SSM Run Command around CreateSnapshots, as AWS Data
    Lifecycle Manager runs them: an SSM command document whose `command` parameter takes
    `pre-script`, `post-script` and `dry-run`, so documents written for DLM work unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    document: DocumentName
    stages: Annotated[
        list[ScriptStage], Field(min_length=1, max_length=2), AfterValidator(_unique)
    ] = [ScriptStage.PRE, ScriptStage.POST]
    timeout_seconds: Annotated[int, Field(ge=10, le=120, strict=True)] = 10
    max_retries: Annotated[int, Field(ge=0, le=3, strict=True)] = 0
    on_script_failure: OnScriptFailure = OnScriptFailure.CRASH_CONSISTENT

    @model_validator(mode="after")
    def _check(self) -> Scripts:
        if self.document == VSS_HANDLER:
            raise ValueError(
                f"document: {VSS_HANDLER} (Windows VSS, where the SSM document creates the "
                "snapshots itself) is not supported; name a command document that takes "
                "pre-script and post-script"
            )
        if ScriptStage.PRE not in self.stages and "on_script_failure" in self.model_fields_set:
            raise ValueError(
                "on_script_failure: applies to a failed pre script, and stages has no 'pre'"
            )
        return self

    @property
    def pre(self) -> bool:
        return ScriptStage.PRE in self.stages

    @property
    def post(self) -> bool:
        return ScriptStage.POST in self.stages


class CopyRule(BaseModel):
    """A copy of every completed set in another region, with its own retention there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: Region
    # The destination region's key. Without it, AWS encrypts a copy of an encrypted snapshot
    # with the destination's default EBS key; a source under a customer key needs one.
    kms_key_arn: KmsKeyArn | None = None
    # The copies' retention in the destination; without it the policy's own applies.
    retention: Retention | None = None
    copy_tags: StrictBool = True

    @model_validator(mode="after")
    def _check(self) -> CopyRule:
        if self.kms_key_arn is not None and self.kms_key_arn.split(":")[3] != self.region:
            raise ValueError(
                f"kms_key_arn: a KMS key is regional and {self.kms_key_arn!r} is not in "
                f"{self.region}; name a key in the destination region"
            )
        return self


class SnapshotPolicy(BaseModel):
    """Which instances to snapshot and with which CreateSnapshots options.

    Targets are the union of `instance_ids` and the instances matching `target_tags` (every key must
    match one of its values, as EC2 tag filters do).
    """

    # The payload and cdk.json field is `policy`; in code it is the policy's `name`.
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    name: PolicyName = Field(alias="policy")
    instance_ids: Annotated[
        list[InstanceId], Field(max_length=MAX_INSTANCE_IDS), AfterValidator(_unique)
    ] = []
    target_tags: TagFilter = {}
    exclude_boot_volume: StrictBool = False
    exclude_data_volume_ids: Annotated[list[VolumeId], AfterValidator(_unique)] = []
    exclude_data_volume_tags: TagFilter = {}
    copy_tags_from_source: Literal["volume"] | None = "volume"
    tags: dict[TagKey, TagValue] = {}
    description: Text | None = None
    outpost_arn: OutpostArn | None = None
    dry_run: StrictBool = False
    retention: Retention | None = None
    scripts: Scripts | None = None
    copies: Annotated[list[CopyRule], Field(max_length=MAX_COPY_REGIONS)] = []
    share_with_accounts: Annotated[
        list[AccountId], Field(max_length=MAX_SHARE_ACCOUNTS), AfterValidator(_unique)
    ] = []

    @model_validator(mode="after")
    def _check(self) -> SnapshotPolicy:
        regions = [c.region for c in self.copies]
        if duplicates := sorted({r for r in regions if regions.count(r) > 1}):
            raise ValueError(f"copies: one copy per region (repeated: {', '.join(duplicates)})")
        if not self.instance_ids and not self.target_tags:
            raise ValueError("give instance_ids and/or target_tags: a policy needs targets")
        for name, tags, limit in (
            ("target_tags", self.target_tags, MAX_TARGET_TAG_VALUES),
            ("exclude_data_volume_tags", self.exclude_data_volume_tags, MAX_EXCLUDE_TAG_VALUES),
        ):
            if (n := sum(len(v) for v in tags.values())) > limit:
                raise ValueError(
                    f"{name}: at most {limit} tag values in all (EC2's filter limit) (got {n})"
                )
        if len(self.exclude_data_volume_ids) > MAX_EXCLUDED_DATA_VOLUMES:
            raise ValueError(
                f"exclude_data_volume_ids: at most {MAX_EXCLUDED_DATA_VOLUMES} volume IDs "
                f"(got {len(self.exclude_data_volume_ids)})"
            )
        if len(self.tags) > MAX_USER_TAGS:
            raise ValueError(
                f"tags: at most {MAX_USER_TAGS} tags ({MAX_TAGS_PER_RESOURCE} per snapshot, "
                f"{len(MANAGED_TAG_KEYS)} are Snapset's own) (got {len(self.tags)})"
            )
        for key, value in self.tags.items():
            if key.lower().startswith("aws:") or key.startswith(MANAGED_TAG_PREFIX):
                raise ValueError(
                    f"tags: key {key!r} uses a reserved prefix ('aws:' and '{MANAGED_TAG_PREFIX}' "
                    "are reserved)"
                )
            try:
                template_fields(value)
            except ValueError as exc:
                raise ValueError(f"tags[{key!r}]: {exc}") from None
            if (n := _worst_case_length(value, self.name)) > MAX_TAG_VALUE_LEN:
                raise ValueError(
                    f"tags[{key!r}]: value can reach {n} characters once placeholders are "
                    f"filled (at most {MAX_TAG_VALUE_LEN})"
                )
        if self.description is not None:
            try:
                template_fields(self.description)
            except ValueError as exc:
                raise ValueError(f"description: {exc}") from None
            if (n := _worst_case_length(self.description, self.name)) > MAX_DESCRIPTION_LEN:
                raise ValueError(
                    f"description: can reach {n} characters once placeholders are filled "
                    f"(at most {MAX_DESCRIPTION_LEN})"
                )
        return self

    def copy_retention(self, rule: CopyRule) -> Retention | None:
        """The retention of a copy rule's copies: its own, else the policy's."""
        return rule.retention if rule.retention is not None else self.retention


class Distribution(BaseModel):
    """What a deployed policy does with a completed set besides keeping it: copies in other
    regions and shares with other accounts. Like retention, taken from the stack only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    copies: Annotated[list[CopyRule], Field(max_length=MAX_COPY_REGIONS)] = []
    share_with_accounts: Annotated[
        list[AccountId], Field(max_length=MAX_SHARE_ACCOUNTS), AfterValidator(_unique)
    ] = []

    @classmethod
    def of(cls, policy: SnapshotPolicy) -> Distribution:
        return cls(copies=policy.copies, share_with_accounts=policy.share_with_accounts)

    def __bool__(self) -> bool:
        return bool(self.copies or self.share_with_accounts)


class ManualRequest(SnapshotPolicy):
    """The payload of a manual `aws lambda invoke` or `snapset run`: a policy plus an optional id.

    Re-sending the same `request_id` never makes a second snapshot set.
    """

    request_id: RequestId | None = None


class Trigger(BaseModel):
    """What started a run: its type, an id unique per delivery-independent trigger, and its time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: TriggerType
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    time: datetime

    @property
    def timestamp(self) -> str:
        """Trigger time in UTC ISO-8601 with a Z suffix (the `{timestamp}` placeholder)."""
        return self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SnapshotRequest(BaseModel):
    """One run: a policy, the trigger that started it and, for an instance event, its instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: SnapshotPolicy
    trigger: Trigger
    event_instance_id: InstanceId | None = None
    # A manual run whose trigger id is the caller's `request_id`: another client (the CLI, an
    # earlier invoke) may already have made sets under it. Without one, the id is made for
    # this request (a fresh id, or the Lambda request id its retries share), so its first
    # delivery needs no look-up.
    caller_request_id: bool = False


MAX_ERRORS_SHOWN = 10


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Render a pydantic error as `field.path: message; ...`, naming the bad fields.

    Huge inputs can fail in thousands of places; the first few are named and the rest counted.
    """
    parts = []
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_ERRORS_SHOWN]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        parts.append(f"{where}: {msg}" if where else msg)
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more errors")
    return "; ".join(parts)
