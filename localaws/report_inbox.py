"""The topic's messages, read through an SQS queue subscribed to it (raw delivery off).

inbox = ReportInbox(aws, deployment.topic_arn)
reports = inbox.drain()                        # every notification so far, parsed
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from localaws.event_patterns import as_payload
from localaws.process import LocalAws
from localaws.topic_queue import drain_notifications, subscribe_queue

__all__ = ["Report", "ReportInbox"]


@dataclass(frozen=True)
class Report:
    """One SNS notification: the envelope's subject and attributes, the message parsed."""

    subject: str
    message: Any
    attributes: dict[str, str]
    message_id: str
    topic_arn: str

    @property
    def kind(self) -> str | None:
        value = self.attributes.get("kind")
        if value is None and isinstance(self.message, dict):
            value = self.message.get("kind")
        return value

    @property
    def status(self) -> str | None:
        value = self.attributes.get("status")
        if value is None and isinstance(self.message, dict):
            value = self.message.get("status") or self.message.get("result")
        return value


class ReportInbox:
    """An SQS queue subscribed to the topic (raw delivery off): read its notifications."""

    def __init__(self, aws: LocalAws, topic_arn: str, queue_name: str | None = None) -> None:
        self.aws = aws
        self.topic_arn = topic_arn
        self._sqs = aws.client("sqs")
        name = queue_name or f"snapset-reports-{uuid.uuid4().hex[:8]}"
        self.queue_url, self.subscription_arn = subscribe_queue(
            aws.client("sns"), self._sqs, topic_arn, name
        )

    @staticmethod
    def parse(envelope: dict[str, Any]) -> Report:
        if envelope.get("Type") != "Notification":
            raise ValueError(f"not an SNS notification envelope: {str(envelope)[:200]}")
        attributes = {
            k: str(v.get("Value")) for k, v in (envelope.get("MessageAttributes") or {}).items()
        }
        return Report(
            subject=envelope.get("Subject") or "",
            message=as_payload(envelope["Message"]),
            attributes=attributes,
            message_id=envelope["MessageId"],
            topic_arn=envelope["TopicArn"],
        )

    def drain(self) -> list[Report]:
        """Every notification delivered so far (then forgotten), in arrival order."""
        return [self.parse(e) for e in drain_notifications(self._sqs, self.queue_url)]
