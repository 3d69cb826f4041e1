"""Read an SNS topic's notifications through a subscribed SQS queue (raw delivery off).

The demo's and end-to-end tests' `ReportInbox`, the unit tests and the CLI tests all read the
reports this way; with moto in-process or the local AWS's server alike.
"""

from __future__ import annotations

import json
from typing import Any


def subscribe_queue(sns: Any, sqs: Any, topic_arn: str, queue_name: str) -> tuple[str, str]:
    """Create a queue, subscribe it to the topic; return (queue URL, subscription ARN)."""
    queue_url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    subscription_arn: str = sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "false"},
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    return queue_url, subscription_arn


def drain_notifications(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every SNS envelope delivered to the queue so far (then deleted), in arrival order."""
    out: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return out
        for message in batch:
            out.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
