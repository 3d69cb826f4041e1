"""The full run report in S3: every instance, whatever the fleet size (the SNS message keeps the
summary and the failures when the whole report is over SNS's limit)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from snapset.report import RunReport, S3Location

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The function's role may write under this prefix only (infra.reports scopes s3:PutObject to it).
REPORT_PREFIX = "reports/"
# S3 keys may hold anything, but trigger ids come from events and payloads: keep keys to
# characters that need no escaping in URLs, consoles or shell commands.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=-]")


def report_key(report: RunReport, request_id: str) -> str:
    """`reports/<policy>/<yyyy>/<mm>/<dd>/<trigger id>/<request id>.json`, by the trigger's UTC
    date: the deliveries of one trigger sit side by side, and a lifecycle rule can expire them."""
    day = report.trigger.time.strftime("%Y/%m/%d")
    trigger_id = _UNSAFE_KEY_CHARS.sub("_", report.trigger.id)[:200] or "_"
    request = _UNSAFE_KEY_CHARS.sub("_", request_id)[:100] or "_"
    return f"{REPORT_PREFIX}{report.policy}/{day}/{trigger_id}/{request}.json"


def archive_report(s3: S3Client, bucket: str, report: RunReport, request_id: str) -> RunReport:
    """Store the full report and return it with `full_report` set to where it is.

    A failed write does not fail the run (its snapshots are made and the SNS report still goes
    out): the returned report carries `full_report_error` instead, naming the bucket and the
    error, so subscribers know the trimmed message is all there is.
    """
    key = report_key(report, request_id)
    body = report.model_dump_json().encode()
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        message = exc.response.get("Error", {}).get("Message", "")
        error = f"s3://{bucket}/{key}: {code}: {message}"[:1000]
        return report.model_copy(update={"full_report_error": error})
    except BotoCoreError as exc:
        error = f"s3://{bucket}/{key}: {type(exc).__name__}: {exc}"[:1000]
        return report.model_copy(update={"full_report_error": error})
    return report.model_copy(update={"full_report": S3Location(bucket=bucket, key=key)})
