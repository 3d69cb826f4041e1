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
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from snapset.deadline import Deadline
from snapset.errors import PRE_SCRIPT_FAILED, error_code, error_message
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
SEND_FAILED = "SendFailed"
NO_RESULT = "NoResult"
TIMED_OUT = "TimedOut"
# GetCommandInvocation's terminal statuses; Pending, InProgress, Delayed and Cancelling go on.
TERMINAL_STATUSES = frozenset({SUCCESS, "Failed", TIMED_OUT, "Cancelled"})
# Statuses after which the same command is sent again (up to max_retries): the script ran, or
# was meant to, and did not succeed. A refused SendCommand or an unreadable result is not retried.
RETRIED_STATUSES = frozenset({"Failed", TIMED_OUT, "Cancelled"})
ONLINE = "Online"

# SendCommand's delivery timeout (its minimum): a command the agent has not picked up by then
# never runs, so a pre script cannot freeze an instance long after Snapset moved on.
DELIVERY_TIMEOUT_SECONDS = 30
# Waits are mostly sleeping, so a run with scripts waits on this many instances at once.
# SSM publishes no fixed rate for SendCommand or GetCommandInvocation; at one poll per second
# per instance this keeps GetCommandInvocation near 32 calls a second, and botocore's retries
# absorb a throttled call.
SCRIPT_WORKERS = 32
# The pauses before each GetCommandInvocation: short at first, since a pre script that has
# ended leaves the instance frozen until it is noticed, then one a second.
POLL_PAUSES = (0.25, 0.25, 0.5, 0.5)
POLL_SECONDS = 1.0
# DescribeInstanceInformation takes at most 50 results per page: one page per chunk.
INSTANCES_PER_LISTING = 50
# What one CreateSnapshots call between the stages may take (the EC2 client's read timeout).
CREATE_CALL_SECONDS = 20
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
    """Sends a policy's document to one instance at a time and waits for the result.

    `sleep` and `clock` are injectable so tests move time instead of waiting. botocore's
    waiter for GetCommandInvocation counts attempts, not seconds, and cannot be given a clock.
    """

    ssm: SSMClient
    scripts: Scripts
    policy: str
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self, instance_id: str, command: str) -> ScriptResult:
        """Send `command` to the instance and wait for it to end, sending it again after a
        failure, a timeout or a cancellation up to `max_retries` times."""
        result = self._attempt(instance_id, command, 1)
        for attempt in range(2, self.scripts.max_retries + 2):
            if result.status not in RETRIED_STATUSES:
                break
            logger.info("%s: %s %s, attempt %d", instance_id, command, result.status, attempt)
            result = self._attempt(instance_id, command, attempt)
        return result

    def _attempt(self, instance_id: str, command: str, attempt: int) -> ScriptResult:
        try:
            sent = self.ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName=self.scripts.document,
                Parameters={COMMAND_PARAMETER: [command]},
                TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
                Comment=f"Snapset policy {self.policy}: {command}"[:100],
            )
        except (ClientError, BotoCoreError) as exc:
            return ScriptResult(
                command=command,
                status=SEND_FAILED,
                attempts=attempt,
                error=ErrorInfo(
                    code=error_code(exc),
                    message=f"{instance_id}: {command}: SendCommand failed: {error_message(exc)}",
                ),
            )
        command_id = sent["Command"]["CommandId"]
        return self._wait(instance_id, command, command_id, attempt)

    def _wait(self, instance_id: str, command: str, command_id: str, attempt: int) -> ScriptResult:
        timeout = self.scripts.timeout_seconds
        ends = self.clock() + timeout
        last = "Pending"
        for poll in itertools.count():
            pause = POLL_PAUSES[poll] if poll < len(POLL_PAUSES) else POLL_SECONDS
            self.sleep(max(0.0, min(pause, ends - self.clock())))
            try:
                invocation = self.ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=instance_id
                )
            except ClientError as exc:
                # Just after SendCommand the invocation may not be visible yet.
                if error_code(exc) != "InvocationDoesNotExist":
                    return self._unreadable(instance_id, command, command_id, attempt, exc)
            except BotoCoreError as exc:
                return self._unreadable(instance_id, command, command_id, attempt, exc)
            else:
                last = invocation["Status"]
                if last in TERMINAL_STATUSES:
                    return _result(instance_id, command, command_id, attempt, invocation)
            if self.clock() >= ends:
                break
        self._cancel(instance_id, command_id)
        return ScriptResult(
            command=command,
            status=TIMED_OUT,
            attempts=attempt,
            command_id=command_id,
            error=ErrorInfo(
                code=f"Script{TIMED_OUT}",
                message=f"{instance_id}: {command} did not end within {timeout} s "
                f"(last status {last}); the command was cancelled",
            ),
        )

    def _unreadable(
        self, instance_id: str, command: str, command_id: str, attempt: int, exc: Exception
    ) -> ScriptResult:
        self._cancel(instance_id, command_id)
        return ScriptResult(
            command=command,
            status=NO_RESULT,
            attempts=attempt,
            command_id=command_id,
            error=ErrorInfo(
                code=error_code(exc),
                message=f"{instance_id}: {command}: GetCommandInvocation failed: "
                f"{error_message(exc)}; the command was cancelled",
            ),
        )

    def _cancel(self, instance_id: str, command_id: str) -> None:
        # A pre script that ends after Snapset stopped waiting would freeze the instance with
        # nothing left to thaw it.
        try:
            self.ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
        except (ClientError, BotoCoreError):
            logger.warning("cancelling command %s on %s failed", command_id, instance_id)


def _result(
    instance_id: str, command: str, command_id: str, attempt: int, invocation: Mapping[str, object]
) -> ScriptResult:
    status = str(invocation["Status"])
    if status == SUCCESS:
        return ScriptResult(command=command, status=status, attempts=attempt, command_id=command_id)
    details = str(invocation.get("StatusDetails") or status)
    output = _clip(str(invocation.get("StandardErrorContent") or ""))
    message = f"{instance_id}: {command} {details} (exit code {invocation.get('ResponseCode', -1)})"
    return ScriptResult(
        command=command,
        status=status,
        attempts=attempt,
        command_id=command_id,
        error=ErrorInfo(
            code=f"Script{status}", message=f"{message}: {output}" if output else message
        ),
    )


@dataclass
class InstanceScripts:
    """One instance's script stages around its CreateSnapshots calls.

    Every call is bracketed: `before_create` runs the pre stage (or a dry run's `dry-run`),
    `after_create` the post stage, which the caller runs in a `finally` so that it follows
    every pre stage that was sent. A refused call retried later gets its own stages, so an
    instance never stays frozen while its call waits to be retried.
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
        """What one bracketed call can take: every stage timing out on every attempt."""
        return self.scripts.worst_case_seconds(self.dry_run) + CREATE_CALL_SECONDS

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
        if result is None:
            # Sent: from here on the post stage is owed whatever happens.
            self._post_owed = self.scripts.post and not self.dry_run
            result = self.runner.run(self.instance_id, command)
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
        """Run the post stage if one is owed (a pre stage was sent, or the policy has only a
        post stage); its failure is recorded on the instance, never raised."""
        if not self._post_owed:
            return
        self._post_owed = False
        result = self._unmanaged(POST_SCRIPT) if not self.scripts.pre else None
        self.results.append(result or self.runner.run(self.instance_id, POST_SCRIPT))

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
