"""The one SNS publisher: every report (run, completion) goes out through `publish`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

# SNS rejects a subject over 100 characters.
MAX_SUBJECT_LEN = 100


def publish(
    sns: SNSClient, topic_arn: str, *, subject: str, message: str, attributes: Mapping[str, str]
) -> str:
    """Publish one message with string attributes (for subscription filter policies).

    Returns the message id. A failed publish raises, so the invocation fails and Lambda's retry
    and dead-letter path keep the trigger.
    """
    response = sns.publish(
        TopicArn=topic_arn,
        Subject=subject[:MAX_SUBJECT_LEN],
        Message=message,
        MessageAttributes={
            name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
        },
    )
    return response["MessageId"]
