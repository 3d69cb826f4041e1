"""EventBridge events emitted by the local AWS (EC2 snapshot completion events)."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from moto.events.models import events_backends
from moto.events.utils import EventTemplateParser

log = logging.getLogger("localaws.events")


def iso_seconds(when: datetime) -> str:
    """Envelope ``time``: ``2026-11-27T03:20:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_millis(when: datetime) -> str:
    """EBS detail ``startTime``/``endTime``: ``2026-11-27T03:15:01.000Z``."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def install() -> None:
    """moto delivers events to rule targets without the envelope's ``account`` field (its
    default input template omits it); real EventBridge delivers the whole envelope."""
    template = EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE
    if '"account"' not in template:
        EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE = template.replace(
            '"version": "0", ', '"version": "0", "account": "<account>", ', 1
        )


class EventSink:
    """Keeps every emitted event (readable/drainable through the control API) and also
    PutEvents it onto moto's default event bus, so that rules and their targets see it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []

    def emit(
        self,
        *,
        account: str,
        region: str,
        detail_type: str,
        resources: list[str],
        detail: dict[str, Any],
        when: datetime,
        source: str = "aws.ec2",
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": source,
            "account": account,
            "time": iso_seconds(when),
            "region": region,
            "resources": list(resources),
            "detail": detail,
        }
        with self._lock:
            self._events.append(event)
        self._put_on_default_bus(event, when)
        return event

    @staticmethod
    def _put_on_default_bus(event: dict[str, Any], when: datetime) -> None:
        try:
            backend = events_backends[event["account"]][event["region"]]
            backend.put_events(
                [
                    {
                        "Source": event["source"],
                        "DetailType": event["detail-type"],
                        "Detail": json.dumps(event["detail"]),
                        "Resources": event["resources"],
                        # moto wants a unix timestamp here (it renders it to ISO itself)
                        "Time": when.timestamp(),
                    }
                ]
            )
        except Exception:  # a broken rule target must not break snapshot completion
            log.exception("PutEvents onto moto's default event bus failed")

    def read(self, *, drain: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            events = list(self._events)
            if drain:
                self._events.clear()
        return events

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
