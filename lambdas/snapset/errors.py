"""Snapset's error vocabulary: one reader of boto errors, and every code Snapset itself reports.

Codes in reports are AWS's own (`RequestLimitExceeded`, `InvalidInstanceID.NotFound`, ...) passed
through unchanged, or one of Snapset's below. `InvalidInput` is what the parsers raise for input
that cannot become a request or an event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from snapset.policy import Trigger, TriggerType

# --- Snapset's own codes -----------------------------------------------------------------------

ROOT_VOLUME_EXCLUDED = "RootVolumeInDataExclusions"
TOO_MANY_EXCLUSIONS = "TooManyExcludedVolumes"
UNEXPECTED_ERROR = "UnexpectedError"
TIMEOUT = "Timeout"
CREATE_UNCONFIRMED = "CreateSnapshotsUnconfirmed"
IDEMPOTENCY_STORE_ERROR = "IdempotencyStoreError"
IN_PROGRESS = "InProgress"
INVALID_INPUT = "InvalidInput"
# A policy's pre script did not succeed and its on_script_failure is `skip`: no set was taken.
PRE_SCRIPT_FAILED = "PreScriptFailed"

# --- AWS codes Snapset acts on -----------------------------------------------------------------

INSTANCE_NOT_FOUND = "InvalidInstanceID.NotFound"
DRY_RUN_OPERATION = "DryRunOperation"
# CreateSnapshots refused the call, so nothing was created: safe to call again after a pause.
# botocore's retry modes retry throttling a few times; these outlast them or are EBS's own limits.
REFUSED_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "SnapshotCreationPerVolumeRateExceeded",
        "ConcurrentSnapshotLimitExceeded",
    }
)
# Server-side failures after which a write may or may not have happened.
SERVER_ERROR_CODES = frozenset(
    {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"}
)
# Failures that a later delivery of the same trigger can fix: the invocation fails after
# reporting them, so Lambda's async retry (and idempotency) redoes just those instances.
RETRY_ON_REDELIVERY_CODES = frozenset(
    {
        TIMEOUT,
        IDEMPOTENCY_STORE_ERROR,
        IN_PROGRESS,
        CREATE_UNCONFIRMED,
        # Target discovery throttled or failing past botocore's retries.
        "RequestLimitExceeded",
        *SERVER_ERROR_CODES,
    }
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a `ClientError`, else the exception's class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "Unknown")
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    """The AWS error message of a `ClientError`, else the exception's text."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message") or exc)
    return str(exc)


def http_status(exc: BaseException) -> int:
    """The HTTP status of a `ClientError`'s response (0 when there is none)."""
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return 0


def describe_error(exc: BaseException) -> str:
    """`Code: message`, for one-line diagnostics."""
    return f"{error_code(exc)}: {error_message(exc)}"


class InvalidInput(ValueError):
    """The Lambda's input is not a valid trigger or event. Carries what could be identified.

    `policy` and `trigger` are set when the input names them, so a failure report can still be
    sent to the policy's subscribers.
    """

    def __init__(
        self,
        message: str,
        policy: str | None = None,
        trigger: Trigger | None = None,
        trigger_type: TriggerType | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.policy = policy
        self.trigger = trigger
        self.trigger_type = trigger.type if trigger else trigger_type
