"""Encrypted dead-letter queues, each watched by an alarm (see `infra.alarms`)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import nag
from infra.logical_ids import keep_logical_id


def dead_letter_queue(owner: Construct, construct_id: str, what: str) -> sqs.Queue:
    """An SQS-encrypted, SSL-only queue keeping messages 14 days; the queue (it may hold messages)
    and its policy keep their logical ids."""
    queue = sqs.Queue(
        owner,
        construct_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )
    keep_logical_id(owner, queue, construct_id)
    # The SSL-only statement made the queue's policy; later statements (rule targets) join it.
    keep_logical_id(owner, queue.node.find_child("Policy"), construct_id, "Policy")
    nag.acknowledge(
        queue,
        "AwsSolutions-SQS3",
        f"This queue is itself a dead-letter queue (it holds {what}); it is watched by an "
        "alarm on ApproximateNumberOfMessagesVisible instead of having its own DLQ.",
    )
    return queue
