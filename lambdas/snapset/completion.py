"""Completion reports: when a snapshot set Snapset started really completes or fails.

EC2 emits `EBS Multi-Volume Snapshots Completion Status` for a CreateSnapshots set and
`EBS Snapshot Notification` per snapshot. Sets are recognised as Snapset's by their managed tags;
anything else is ignored with a log line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from snapset.copies import ShareResult, SourceSet
from snapset.errors import InvalidInput
from snapset.notify import publish
from snapset.policy import (
    INSTANCE_ID_PATTERN,
    POLICY_NAME_PATTERN,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    describe_validation_error,
)

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

logger = logging.getLogger(__name__)

MULTI_VOLUME_DETAIL_TYPE = "EBS Multi-Volume Snapshots Completion Status"
SNAPSHOT_DETAIL_TYPE = "EBS Snapshot Notification"
COMPLETION_DETAIL_TYPES = (MULTI_VOLUME_DETAIL_TYPE, SNAPSHOT_DETAIL_TYPE)

_POLICY_NAME = re.compile(POLICY_NAME_PATTERN)
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
ResourceRef = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


def resource_id(ref: str, prefix: str) -> str:
    """The `snap-…`/`vol-…` ID from an ARN or a bare ID.

    AWS's documented examples put the region where the account belongs
    (`arn:aws:ec2::us-east-1:snapshot/snap-…`), so only the part after the last `/` is trusted.
    """
    candidate = ref.rsplit("/", 1)[-1].strip()
    if not candidate.startswith(prefix) or len(candidate) <= len(prefix):
        raise ValueError(f"{ref!r} does not name a {prefix.rstrip('-')}")
    return candidate


class _SetMember(BaseModel):
    model_config = ConfigDict(extra="ignore")

    snapshot_id: ResourceRef
    source: ResourceRef = ""
    status: Annotated[str, StringConstraints(max_length=64)] = ""


class _MultiVolumeDetail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event: Literal["createSnapshots"]
    result: Literal["succeeded", "failed"]
    cause: Annotated[str, StringConstraints(max_length=4096)] = ""
    snapshots: Annotated[list[_SetMember], Field(min_length=1, max_length=500)]


class _SnapshotDetail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event: Literal["createSnapshot"]
    result: Literal["succeeded", "failed"]
    cause: Annotated[str, StringConstraints(max_length=4096)] = ""
    snapshot_id: ResourceRef
    source: ResourceRef = ""


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    detail_type: str = Field(alias="detail-type")
    source: Literal["aws.ec2"]
    time: datetime
    detail: dict[str, Any]


class CompletedSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    snapshot_id: str
    volume_id: str
    status: str


class CompletionEvent(BaseModel):
    """A parsed completion event: which snapshots, and whether the set succeeded."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    time: datetime
    result: Literal["succeeded", "failed"]
    cause: str
    snapshots: tuple[CompletedSnapshot, ...]


def parse_completion_event(payload: dict[str, Any]) -> CompletionEvent:
    """Validate a completion event; raises InvalidInput naming the bad field."""
    try:
        envelope = _Envelope.model_validate(payload)
        if envelope.detail_type == MULTI_VOLUME_DETAIL_TYPE:
            multi = _MultiVolumeDetail.model_validate(envelope.detail)
            members = [(m.snapshot_id, m.source, m.status) for m in multi.snapshots]
            result, cause = multi.result, multi.cause
        else:
            single = _SnapshotDetail.model_validate(envelope.detail)
            status = "completed" if single.result == "succeeded" else "error"
            members = [(single.snapshot_id, single.source, status)]
            result, cause = single.result, single.cause
    except ValidationError as exc:
        raise InvalidInput(
            f"invalid {payload.get('detail-type')} event: {describe_validation_error(exc)}"
        ) from None
    try:
        snapshots = tuple(
            CompletedSnapshot(
                snapshot_id=resource_id(snap, "snap-"),
                volume_id=resource_id(source, "vol-") if source else "",
                status=status,
            )
            for snap, source, status in members
        )
    except ValueError as exc:
        raise InvalidInput(f"invalid {envelope.detail_type} event: detail: {exc}") from None
    return CompletionEvent(
        event_id=envelope.id, time=envelope.time, result=result, cause=cause, snapshots=snapshots
    )


class CompletionReport(BaseModel):
    """The SNS report of a completed or failed set. Field names are the published contract."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["completion"] = "completion"
    policy: str
    instance_id: str
    trigger: dict[str, str]
    result: Literal["succeeded", "failed"]
    cause: str
    snapshots: tuple[CompletedSnapshot, ...]
    # For a policy with `share_with_accounts`: the set's shares (a failed share leaves the set
    # `succeeded`; its error says why, e.g. the AWS managed key).
    shares: ShareResult | None = None


def _is_snapset_set(tags: dict[str, str]) -> bool:
    # Look-alike tags must not reach SNS subjects and attributes (which reject some text).
    return (
        bool(_POLICY_NAME.fullmatch(tags.get(TAG_POLICY, "")))
        and bool(_INSTANCE_ID.fullmatch(tags.get(TAG_INSTANCE_ID, "")))
        and 0 < len(tags.get(TAG_TRIGGER_ID, "")) <= 256
    )


def completion_reports(event: CompletionEvent, sets: Sequence[SourceSet]) -> list[CompletionReport]:
    """Reports for the Snapset sets among the event's snapshots (none for foreign snapshots).

    `sets` are the event's snapshots as DescribeSnapshots finds them by ID, grouped per policy,
    trigger and instance (`copies.describe_sets`: a filter, so a deleted snapshot is simply
    absent); a set whose managed tags are look-alikes is left out.
    """
    by_id = {s.snapshot_id: s for s in event.snapshots}
    reports = []
    for source in sets:
        if not _is_snapset_set(dict(source.snapshots[0].tags)):
            continue
        members = [
            by_id[snap.snapshot_id]
            if by_id[snap.snapshot_id].volume_id
            else by_id[snap.snapshot_id].model_copy(update={"volume_id": snap.volume_id})
            for snap in source.snapshots
            if snap.snapshot_id in by_id
        ]
        if members:
            reports.append(
                CompletionReport(
                    policy=source.policy,
                    instance_id=source.instance_id,
                    trigger={"id": source.trigger_id},
                    result=event.result,
                    cause=event.cause,
                    snapshots=tuple(sorted(members, key=lambda m: m.snapshot_id)),
                )
            )
    if not reports:
        logger.info(
            "completion event ignored: no Snapset snapshots in it",
            extra={"event_id": event.event_id, "snapshots": list(by_id)},
        )
    return reports


def publish_completion(sns: SNSClient, topic_arn: str, report: CompletionReport) -> str:
    """Publish one completion report (see `notify.publish`: a failure raises, so the event is
    retried)."""
    return publish(
        sns,
        topic_arn,
        subject=f"Snapset {report.policy}: set of {report.instance_id} {report.result} "
        f"({len(report.snapshots)} snapshots)",
        message=json.dumps(report.model_dump(mode="json"), separators=(",", ":")),
        attributes={"status": report.result, "policy": report.policy, "kind": report.kind},
    )
