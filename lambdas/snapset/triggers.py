"""Parse what the Lambda receives into one `SnapshotRequest`, whatever the trigger.

The shapes here are the contract with the CDK stack, which builds its targets' inputs with
`schedule_input` and `instance_event_input_template`:

1. Schedule (EventBridge Scheduler): the policy itself plus a `schedule` object whose values
   Scheduler fills from its context attributes:
   `{...policy..., "schedule": {"scheduled_time": "<aws.scheduler.scheduled-time>",
     "schedule_arn": "<aws.scheduler.schedule-arn>"}}`.
2. EC2 instance state change (EventBridge rule with an input transformer):
   `{"policy": {...policy...}, "event": <aws.events.event.json>}`.
3. Manual invoke / CLI: the policy itself, with an optional `request_id`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from snapset.errors import InvalidInput
from snapset.policy import (
    POLICY_NAME_PATTERN,
    Distribution,
    InstanceId,
    ManualRequest,
    Retention,
    SnapshotPolicy,
    SnapshotRequest,
    Trigger,
    TriggerType,
    describe_validation_error,
)

STATE_CHANGE_DETAIL_TYPE = "EC2 Instance State-change Notification"
SCHEDULED_TIME_ATTR = "<aws.scheduler.scheduled-time>"
SCHEDULE_ARN_ATTR = "<aws.scheduler.schedule-arn>"
EVENT_JSON_ATTR = "<aws.events.event.json>"

M = TypeVar("M", bound=BaseModel)
_POLICY_NAME = re.compile(POLICY_NAME_PATTERN)

_EXPECTED = (
    "expected a manual payload (a policy: {'policy': NAME, 'instance_ids' or 'target_tags', ...}), "
    "a schedule input (a policy with a 'schedule' object), or an instance-event input "
    "({'policy': {...}, 'event': <EC2 Instance State-change Notification>})"
)


class _ScheduleContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduled_time: datetime
    schedule_arn: Annotated[str, StringConstraints(max_length=2048)] | None = None


class _StateChangeDetail(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    instance_id: InstanceId = Field(alias="instance-id")
    state: Literal["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]


class _StateChangeEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    detail_type: Literal["EC2 Instance State-change Notification"] = Field(alias="detail-type")
    source: Literal["aws.ec2"]
    time: datetime
    detail: _StateChangeDetail


def schedule_input(policy: SnapshotPolicy) -> dict[str, Any]:
    """The input a schedule delivers: the policy plus Scheduler's context attributes."""
    return {
        **policy.model_dump(mode="json", exclude_defaults=True),
        "schedule": {"scheduled_time": SCHEDULED_TIME_ATTR, "schedule_arn": SCHEDULE_ARN_ATTR},
    }


def instance_event_input_template(policy: SnapshotPolicy) -> str:
    """The input transformer template of an instance-event rule: the policy and the event."""
    policy_json = json.dumps(policy.model_dump(mode="json", exclude_defaults=True))
    return f'{{"policy": {policy_json}, "event": {EVENT_JSON_ATTR}}}'


def _policy_name(data: Any) -> str | None:
    name = data.get("policy") if isinstance(data, dict) else None
    return name if isinstance(name, str) and _POLICY_NAME.fullmatch(name) else None


def _validate(model: type[M], data: Any, prefix: str, on_error: Callable[[str], InvalidInput]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise on_error(describe_validation_error(exc, prefix)) from None


def parse_schedule(payload: dict[str, Any]) -> SnapshotRequest:
    """A schedule input: trigger id is the policy plus the scheduled time (same on redelivery)."""
    body = dict(payload)
    context_raw = body.pop("schedule")
    name = _policy_name(body)
    context = _validate(
        _ScheduleContext,
        context_raw,
        "schedule.",
        lambda m: InvalidInput(
            f"invalid schedule input: {m}", policy=name, trigger_type=TriggerType.SCHEDULE
        ),
    )
    scheduled = context.scheduled_time.astimezone(UTC)
    trigger = Trigger(
        type=TriggerType.SCHEDULE,
        id=f"{name}@{scheduled.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        time=scheduled,
    )
    policy = _validate(
        SnapshotPolicy,
        body,
        "",
        lambda m: InvalidInput(f"invalid policy in schedule input: {m}", name, trigger),
    )
    return SnapshotRequest(policy=policy, trigger=trigger)


def parse_instance_event(payload: dict[str, Any]) -> SnapshotRequest:
    """An instance-event input: trigger id is the EventBridge event id (same on redelivery)."""
    extra = sorted(set(payload) - {"policy", "event"})
    name = _policy_name(payload.get("policy"))
    if extra:
        raise InvalidInput(
            f"invalid instance-event input: unexpected keys {extra}; expected 'policy' and 'event'",
            policy=name,
            trigger_type=TriggerType.INSTANCE_EVENT,
        )
    event = _validate(
        _StateChangeEvent,
        payload["event"],
        "event.",
        lambda m: InvalidInput(
            f"invalid instance-event input: {m}",
            policy=name,
            trigger_type=TriggerType.INSTANCE_EVENT,
        ),
    )
    trigger = Trigger(type=TriggerType.INSTANCE_EVENT, id=event.id, time=event.time)
    policy = _validate(
        SnapshotPolicy,
        payload["policy"],
        "policy.",
        lambda m: InvalidInput(f"invalid policy in instance-event input: {m}", name, trigger),
    )
    return SnapshotRequest(
        policy=policy, trigger=trigger, event_instance_id=event.detail.instance_id
    )


def parse_manual(
    payload: dict[str, Any], now: datetime, default_request_id: str | None = None
) -> SnapshotRequest:
    """A manual payload: trigger id is the caller's `request_id`, else `default_request_id`
    (the handler passes Lambda's request id, which Lambda keeps across async retries), else a
    new one."""
    name = _policy_name(payload)
    raw_id = payload.get("request_id")
    manual = _validate(
        ManualRequest,
        payload,
        "",
        lambda m: InvalidInput(
            f"invalid manual payload: {m}",
            name,
            Trigger(type=TriggerType.MANUAL, id=raw_id, time=now)
            if isinstance(raw_id, str) and 0 < len(raw_id) <= 128
            else None,
            TriggerType.MANUAL,
        ),
    )
    trigger = Trigger(
        type=TriggerType.MANUAL,
        id=manual.request_id or default_request_id or f"manual-{uuid.uuid4()}",
        time=now,
    )
    policy = SnapshotPolicy.model_validate(
        manual.model_dump(exclude={"request_id"}, exclude_unset=True)
    )
    return SnapshotRequest(
        policy=policy, trigger=trigger, caller_request_id=manual.request_id is not None
    )


def parse_request(
    payload: Any, now: datetime | None = None, default_request_id: str | None = None
) -> SnapshotRequest:
    """Turn any Snapset trigger's input into a `SnapshotRequest`, or raise `InvalidInput`.

    `default_request_id` is the trigger id of a manual payload that brings no `request_id`.
    """
    now = now or datetime.now(UTC)
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"input must be a JSON object, got {type(payload).__name__}; {_EXPECTED}"
        )
    if "detail-type" in payload and "source" in payload:
        detail_type = payload.get("detail-type")
        if detail_type == STATE_CHANGE_DETAIL_TYPE:
            raise InvalidInput(
                "an EC2 instance state-change event arrived without its policy: the rule's "
                "input transformer must send {'policy': {...}, 'event': <aws.events.event.json>}"
            )
        raise InvalidInput(f"unsupported event detail-type {detail_type!r}; {_EXPECTED}")
    if "event" in payload and isinstance(payload.get("policy"), dict):
        return parse_instance_event(payload)
    if "schedule" in payload:
        return parse_schedule(payload)
    return parse_manual(payload, now, default_request_id)


def with_deployed_retention(
    request: SnapshotRequest, deployed: Mapping[str, Retention | None]
) -> SnapshotRequest:
    """The request with its deployed policy's retention: retention comes from the stack only.

    `deployed` maps each deployed policy's name to its retention. A manual payload may not carry
    `retention` for a deployed policy (it runs with the deployed one); a schedule or rule input
    must carry the deployed one unchanged; a policy that is not deployed deletes nothing, so a
    `retention` in its payload is an error too. `lambda:InvokeFunction` alone therefore never
    decides what is deleted. Raises `InvalidInput` naming the field.
    """
    policy = request.policy
    given = "retention" in policy.model_fields_set
    if policy.name not in deployed:
        if given and policy.retention is not None:
            known = ", ".join(sorted(deployed)) or "none"
            raise InvalidInput(
                f"retention: only a deployed policy deletes snapshots, and {policy.name!r} is "
                f"not one (deployed: {known}); remove the field",
                policy=policy.name,
                trigger=request.trigger,
            )
        return request
    owned = deployed[policy.name]
    manual = request.trigger.type is TriggerType.MANUAL
    if given and (manual or policy.retention != owned):
        raise InvalidInput(
            f"retention: policy {policy.name!r} is deployed and runs with its deployed "
            f"retention ({_retention_text(owned)}); a payload may not set it, remove the field",
            policy=policy.name,
            trigger=request.trigger,
        )
    return request.model_copy(update={"policy": policy.model_copy(update={"retention": owned})})


def with_deployed_copies(
    request: SnapshotRequest, deployed: Mapping[str, Distribution]
) -> SnapshotRequest:
    """The request with its deployed policy's copies and shares, which come from the stack only
    (as retention does): a manual payload may not set `copies` or `share_with_accounts`, a
    schedule or rule input must carry the deployed ones unchanged, and a policy that is not
    deployed with them may not have them. So `lambda:InvokeFunction` alone never decides
    where sets are copied or who may read them. Raises `InvalidInput` naming the field."""
    policy = request.policy
    owned = deployed.get(policy.name, Distribution())
    manual = request.trigger.type is TriggerType.MANUAL
    for name in ("copies", "share_with_accounts"):
        given = name in policy.model_fields_set
        if given and (manual or getattr(policy, name) != getattr(owned, name)):
            raise InvalidInput(
                f"{name}: policy {policy.name!r} runs with the copies and shares the stack "
                f"deployed ({json.dumps(owned.model_dump(mode='json', exclude_none=True))}); a "
                "payload may not set them, remove the field",
                policy=policy.name,
                trigger=request.trigger,
            )
    update = {"copies": owned.copies, "share_with_accounts": owned.share_with_accounts}
    return request.model_copy(update={"policy": policy.model_copy(update=update)})


def _retention_text(retention: Retention | None) -> str:
    if retention is None:
        return "none"
    return json.dumps(retention.model_dump(exclude_none=True))
