"""Application-consistent sets: a policy's pre and post scripts, run through SSM Run Command
around each instance's CreateSnapshots call (`policy.Scripts`).

Per instance (`InstanceScripts`): the pre stage sends the policy's document with
`command=pre-script` to that one instance and waits for its invocation to end within
`timeout_seconds`, sending it again up to `max_retries` times. CreateSnapshots follows at once,
tagged with the consistency achieved (the set's point in time is the call, so nothing waits for
the snapshots to complete). The post stage (`post-script`) runs once the pre stage was sent,
whatever happened in between, so an instance is never left frozen. A dry run sends `dry-run`
once instead of the stages.

Which instances SSM manages is listed once per run (`list_ping_statuses`: one
DescribeInstanceInformation call per 50 instances), never per instance. The scripts' waits run in
parallel across instances (`workers_for`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from snapset.deadline import Deadline
from snapset.errors import (
    PRE_SCRIPT_FAILED,
    UNEXPECTED_ERROR,
    error_code,
    error_message,
    http_status,
)
from snapset.outcomes import Consistency, ErrorInfo, ScriptResult
from snapset.policy import OnScriptFailure, Scripts, SnapshotPolicy

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

logger = logging.getLogger(__name__)

# The `command` parameter values of DLM's document convention.
COMMAND_PARAMETER = "command"
PRE_SCRIPT = "pre-script"
POST_SCRIPT = "post-script"
DRY_RUN_SCRIPT = "dry-run"

SUCCESS = "Success"
# Snapset's own stage statuses, for a stage SSM never ran or never answered for.
NOT_MANAGED = "NotManaged"
# SendCommand refused the call (a 4xx that made no command), or failed in a way that leaves it
# unknown (a server error, a lost connection), or the result could not be read.
NOT_SENT = "NotSent"
SEND_FAILED = "SendFailed"
NO_RESULT = "NoResult"
TIMED_OUT = "TimedOut"
# ListCommandInvocations' terminal statuses; Pending, InProgress, Delayed and Cancelling go on.
TERMINAL_STATUSES = frozenset({SUCCESS, "Failed", TIMED_OUT, "Cancelled"})
# After these a stage is sent again: the script ran, or was meant to, and did not succeed. A
# post script is sent again after anything but a refusal: a thaw that may not have run is worse
# than a second one, which DLM-style documents tolerate.
RETRIED_STATUSES = frozenset({"Failed", TIMED_OUT, "Cancelled"})
POST_RETRIED_STATUSES = RETRIED_STATUSES | {SEND_FAILED, NO_RESULT}
# A pre script could still be delivered after it was cancelled or its send failed; these are
# the statuses from which it cannot.
ONLINE = "Online"
THROTTLED = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})

# SendCommand's delivery timeout for a pre script (its minimum): one the agent has not picked up
# by then never runs, so a freeze cannot land long after Snapset moved on. A post script gets
# ten minutes: a late thaw is harmless, a thaw that never runs is not.
DELIVERY_TIMEOUT_SECONDS = 30
POST_DELIVERY_TIMEOUT_SECONDS = 600
# Waits are mostly sleeping, so a run with scripts waits on this many instances at once.
# SSM publishes no fixed rate for SendCommand or ListCommandInvocations; at one poll per
# second per instance this keeps polling near 32 calls a second, and a throttled poll is polled
# again.
SCRIPT_WORKERS = 32
# The pauses before each poll: short at first, since a pre script that has ended leaves the
# instance frozen until it is noticed, then one a second.
POLL_PAUSES = (0.25, 0.25, 0.5, 0.5)
POLL_SECONDS = 1.0
# DescribeInstanceInformation takes at most 50 results per page: one page per chunk.
INSTANCES_PER_LISTING = 50
# Time allowed per attempt for its SendCommand and CancelCommand calls (the SSM client's
# timeouts), and for CreateSnapshots (the EC2 client's connect and read timeouts).
SSM_CALLS_SECONDS = 15
CREATE_CALL_SECONDS = 25
MAX_OUTPUT_IN_ERROR = 300


def workers_for(policy: SnapshotPolicy, max_workers: int) -> int:
    """How many instances a run works on at once: more when their scripts' waits dominate."""
    return max(max_workers, SCRIPT_WORKERS) if policy.scripts is not None else max_workers


@dataclass(frozen=True)
class PingListingFailed:
    """The run's DescribeInstanceInformation failed: every instance's stages fail with it."""

    code: str
    message: str


# Each listed instance's SSM PingStatus (`Online`, `ConnectionLost`, `Inactive`); an instance
# SSM does not manage is absent.
PingStatuses = Mapping[str, str]


def list_ping_statuses(ssm: SSMClient, instance_ids: Sequence[str]) -> dict[str, str]:
    """The SSM ping status of each of these instances that SSM manages: one paginated
    DescribeInstanceInformation per 50 instances. Errors are raised."""
    found: dict[str, str] = {}
    paginator = ssm.get_paginator("describe_instance_information")
    for start in range(0, len(instance_ids), INSTANCES_PER_LISTING):
        chunk = list(instance_ids[start : start + INSTANCES_PER_LISTING])
        pages = paginator.paginate(
            Filters=[{"Key": "InstanceIds", "Values": chunk}],
            PaginationConfig={"PageSize": INSTANCES_PER_LISTING},
        )
        for page in pages:
            for info in page.get("InstanceInformationList", []):
                found[info["InstanceId"]] = info.get("PingStatus", "")
    return found


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_OUTPUT_IN_ERROR else text[: MAX_OUTPUT_IN_ERROR - 3] + "..."


@dataclass(frozen=True)
class ScriptRunner:
    """Sends a policy's document to one instance at a time and follows the invocation with
    ListCommandInvocations, which answers for the whole invocation whatever the document's
    steps (GetCommandInvocation needs a step's name once a document has several).

    `sleep` and `clock` are injectable so tests move time instead of waiting. botocore's
    waiters count attempts, not seconds, and cannot be given a clock.
    """

    ssm: SSMClient
    scripts: Scripts
    policy: str
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self, instance_id: str, command: str, attempt: int = 1) -> ScriptResult:
        """Send `command` once and wait for it to end within `timeout_seconds`.

        A pre script (or a dry run's) still running then is cancelled, and followed until it
        cannot run any more (`settle`), so that no freeze lands after its post script. A post
        script is never cancelled: a thaw is left to finish."""
        post = command == POST_SCRIPT
        try:
            sent = self.ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName=self.scripts.document,
                Parameters={COMMAND_PARAMETER: [command]},
                TimeoutSeconds=POST_DELIVERY_TIMEOUT_SECONDS if post else DELIVERY_TIMEOUT_SECONDS,
                Comment=f"Snapset policy {self.policy}: {command}"[:100],
            )
        except (ClientError, BotoCoreError) as exc:
            # A 4xx answer made no command; a server error or a lost connection may have.
            refused = isinstance(exc, ClientError) and 400 <= http_status(exc) < 500
            return ScriptResult(
                command=command,
                status=NOT_SENT if refused and error_code(exc) not in THROTTLED else SEND_FAILED,
                attempts=attempt,
                error=ErrorInfo(
                    code=error_code(exc),
                    message=f"{instance_id}: {command}: SendCommand failed: {error_message(exc)}",
                ),
            )
        command_id = sent["Command"]["CommandId"]
        ends = self.clock() + self.scripts.timeout_seconds
        outcome = self._follow(instance_id, command_id, ends)
        if isinstance(outcome, dict):
            return _result(instance_id, command, command_id, attempt, outcome)
        if post:
            return self._not_ended(
                instance_id, command, command_id, attempt, last=outcome, then="left to end"
            )
        self._cancel(instance_id, command_id)
        settled = self._follow(instance_id, command_id, self.clock() + DELIVERY_TIMEOUT_SECONDS)
        if isinstance(settled, dict) and settled.get("Status") == SUCCESS:
            # It ended after all (cancelling is not guaranteed): the instance is prepared.
            return _result(instance_id, command, command_id, attempt, settled)
        return self._not_ended(
            instance_id, command, command_id, attempt, last=outcome, then="cancelled"
        )

    def _follow(
        self, instance_id: str, command_id: str, ends: float
    ) -> dict[str, Any] | str | Exception:
        """The invocation once it reached a terminal status before `ends`; else its last status
        (or the error that stopped the polling)."""
        last: str | Exception = "Pending"
        polls = itertools.count()
        while True:
            poll = next(polls)
            pause = POLL_PAUSES[poll] if poll < len(POLL_PAUSES) else POLL_SECONDS
            self.sleep(max(0.0, min(pause, ends - self.clock())))
            try:
                answer = self.ssm.list_command_invocations(
                    CommandId=command_id, InstanceId=instance_id, Details=True
                )
            except ClientError as exc:
                if error_code(exc) not in THROTTLED:
                    return exc
                last = exc  # throttled past botocore's retries: poll again
            except BotoCoreError as exc:
                return exc
            else:
                # Just after SendCommand the invocation may not be listed yet.
                for invocation in answer.get("CommandInvocations", []):
                    last = str(invocation.get("Status", "Pending"))
                    if last in TERMINAL_STATUSES:
                        return dict(invocation)
            if self.clock() >= ends:
                return last

    def _not_ended(
        self,
        instance_id: str,
        command: str,
        command_id: str,
        attempt: int,
        *,
        last: str | Exception,
        then: str,
    ) -> ScriptResult:
        if isinstance(last, Exception):
            return ScriptResult(
                command=command,
                status=NO_RESULT,
                attempts=attempt,
                command_id=command_id,
                error=ErrorInfo(
                    code=error_code(last),
                    message=f"{instance_id}: {command}: ListCommandInvocations failed: "
                    f"{error_message(last)}; the command was {then}",
                ),
            )
        return ScriptResult(
            command=command,
            status=TIMED_OUT,
            attempts=attempt,
            command_id=command_id,
            error=ErrorInfo(
                code=f"Script{TIMED_OUT}",
                message=f"{instance_id}: {command} did not end within "
                f"{self.scripts.timeout_seconds} s (last status {last}); the command was {then}",
            ),
        )

    def _cancel(self, instance_id: str, command_id: str) -> None:
        try:
            self.ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
        except (ClientError, BotoCoreError):
            logger.warning("cancelling command %s on %s failed", command_id, instance_id)


def _result(
    instance_id: str, command: str, command_id: str, attempt: int, invocation: Mapping[str, Any]
) -> ScriptResult:
    status = str(invocation["Status"])
    if status == SUCCESS:
        return ScriptResult(command=command, status=status, attempts=attempt, command_id=command_id)
    details = str(invocation.get("StatusDetails") or status)
    plugins = invocation.get("CommandPlugins") or []
    failed = next((p for p in plugins if p.get("Status") != SUCCESS), plugins[0] if plugins else {})
    output = _clip(str(failed.get("Output") or ""))
    message = f"{instance_id}: {command} {details} (exit code {failed.get('ResponseCode', -1)})"
    return ScriptResult(
        command=command,
        status=status,
        attempts=attempt,
        command_id=command_id,
        error=ErrorInfo(
            code=f"Script{status}", message=f"{message}: {output}" if output else message
        ),
    )


# Each failed CreateSnapshots call between scripts freezes and thaws the instance once more:
# a few, not the engine's fifty.
MAX_BRACKETED_CALLS = 3


@dataclass
class InstanceScripts:
    """One instance's script stages around its CreateSnapshots calls.

    Every call is bracketed: `before_create` runs the pre stage (or a dry run's `dry-run`),
    `after_create` the post stage, which the caller runs in a `finally` so that it follows
    every pre stage that may have run. A pre script that fails is followed by its post script
    before it is sent again, as DLM retries the whole creation. A refused call retried later
    gets its own stages, so an instance never stays frozen while its call waits.
    """

    runner: ScriptRunner
    instance_id: str
    dry_run: bool
    # This instance's SSM ping status from the run's listing (None: not managed), or the
    # listing's failure.
    ping: str | PingListingFailed | None
    results: list[ScriptResult] = field(default_factory=list)
    consistency: Consistency = Consistency.CRASH
    _post_owed: bool = False

    @property
    def scripts(self) -> Scripts:
        return self.runner.scripts

    def seconds_needed(self) -> int:
        """What one bracketed call can take: every stage timing out on every attempt, with
        its SSM calls, a cancelled pre script followed until it cannot run, and the call."""
        return seconds_needed(self.scripts, self.dry_run)

    def fits(self, deadline: Deadline) -> bool:
        """Whether a bracketed call can end (post stage included) before `deadline`."""
        return deadline.remaining() >= self.seconds_needed()

    def before_create(self) -> ErrorInfo | None:
        """Run the pre stage; the instance's error when it failed and the policy skips."""
        self.consistency = Consistency.CRASH
        if not self.dry_run and not self.scripts.pre:
            self._post_owed = self.scripts.post
            return None
        command = DRY_RUN_SCRIPT if self.dry_run else PRE_SCRIPT
        result = self._unmanaged(command)
        for attempt in range(1, self.scripts.max_retries + 2):
            if result is not None:
                break
            result = self.runner.run(self.instance_id, command, attempt)
            # Unless SendCommand refused it, the script may run: its post script is owed.
            self._post_owed = (self.scripts.post and not self.dry_run) and result.status != NOT_SENT
            if result.status in RETRIED_STATUSES and attempt <= self.scripts.max_retries:
                self.results.append(result)
                self.after_create()
                result = None
        assert result is not None
        self.results.append(result)
        if result.succeeded:
            self.consistency = Consistency.APPLICATION
            return None
        if self.scripts.on_script_failure is OnScriptFailure.SKIP:
            why = result.error.message if result.error else f"{command} {result.status}"
            return ErrorInfo(
                code=PRE_SCRIPT_FAILED,
                message=f"{why}; on_script_failure is skip, so no set was taken",
            )
        return None

    def after_create(self) -> None:
        """Run the post stage if one is owed (a pre stage may have run, or the policy has only
        a post stage); its failure is recorded on the instance, never raised."""
        if not self._post_owed:
            return
        self._post_owed = False
        self._thaw()

    def thaw_for_redelivery(self) -> None:
        """An earlier delivery of the trigger made this instance's set and may have ended
        between its scripts (a timeout, a crash): send the post script again."""
        if self.scripts.post and not self.dry_run:
            self._thaw()

    def _thaw(self) -> None:
        result = self._unmanaged(POST_SCRIPT) if not self.scripts.pre else None
        if result is None:
            for attempt in range(1, max(self.scripts.max_retries, 1) + 2):
                try:
                    result = self.runner.run(self.instance_id, POST_SCRIPT, attempt)
                except Exception as exc:  # a bug must not hide the call's own outcome
                    logger.exception("post script on %s", self.instance_id)
                    result = ScriptResult(
                        command=POST_SCRIPT,
                        status=NO_RESULT,
                        attempts=attempt,
                        error=ErrorInfo(code=UNEXPECTED_ERROR, message=f"{exc!r}"),
                    )
                if result.status not in POST_RETRIED_STATUSES:
                    break
        assert result is not None
        self.results.append(result)

    def _unmanaged(self, command: str) -> ScriptResult | None:
        ping = self.ping
        if ping == ONLINE:
            return None
        if isinstance(ping, PingListingFailed):
            code, why = ping.code, ping.message
        elif ping is None:
            code = "InstanceNotManaged"
            why = (
                "it is not managed by SSM (not in DescribeInstanceInformation: no SSM agent, or "
                "no instance profile that lets it register)"
            )
        else:
            code, why = "InstanceNotManaged", f"it is not online in SSM (PingStatus {ping})"
        return ScriptResult(
            command=command,
            status=NOT_MANAGED,
            error=ErrorInfo(code=code, message=f"{self.instance_id}: {command} not sent, {why}"),
        )


def seconds_needed(scripts: Scripts, dry_run: bool) -> int:
    """The longest one instance's bracketed CreateSnapshots call can take: each pre attempt
    timing out, cancelled and followed until it cannot run, with a post script after each
    failed one; the call; each post attempt timing out. A dry run sends `dry-run` instead."""
    attempt = scripts.timeout_seconds + SSM_CALLS_SECONDS
    pre_attempts = scripts.max_retries + 1
    post_attempts = max(scripts.max_retries, 1) + 1
    pre = pre_attempts * (attempt + DELIVERY_TIMEOUT_SECONDS) if dry_run or scripts.pre else 0
    if dry_run:
        return pre + CREATE_CALL_SECONDS
    post = post_attempts * attempt if scripts.post else 0
    thaws_between = scripts.max_retries * post if scripts.pre else 0
    return pre + thaws_between + CREATE_CALL_SECONDS + post
