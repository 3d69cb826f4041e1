"""SSM Run Command made faithful enough for application-consistent snapshots (patches, not a fork).

moto 5.2.5 answers every ``SendCommand`` invocation ``Success`` at once, runs nothing, checks
neither the document nor the instances, and has no ``CancelCommand``, no
``DescribeInstanceInformation`` and no ``ListCommandInvocations``. After `install()`:

* **Managed instances**: every EC2 instance of the account/region (moto's EC2 backend) is a
  managed node, ``Online`` while ``running``, ``ConnectionLost`` otherwise, not listed once
  terminated; per instance, tests can take it out of SSM (``managed: false``) or force its ping
  status. ``DescribeInstanceInformation`` lists them (``Filters``, the legacy
  ``InstanceInformationFilterList``, ``MaxResults`` 5-50, ``NextToken``; ordered by instance id).
* **SendCommand with InstanceIds** is validated as AWS does (``ValidationException``,
  ``InvalidDocument``, ``InvalidDocumentVersion``, ``InvalidParameters``, ``InvalidInstanceId``)
  and each invocation lives on the server clock (`localaws.clock.CLOCK`): ``Pending``, then
  ``InProgress`` after ``start_seconds``, then a terminal status after ``script_seconds``, or
  what a test queued for that instance and ``command`` value (``Success``, ``Failed``,
  ``TimedOut``, ``Hang``). A ``Hang`` runs until ``CancelCommand`` or the document step's
  execution timeout.
* **GetCommandInvocation** answers from that timeline with AWS's fields; optionally
  ``InvocationDoesNotExist`` for ``invisible_seconds`` after the send. One step per invocation
  is modelled (the first ``aws:runShellScript``, else the first); a document with several steps
  needs ``PluginName`` (``InvalidPluginName`` without it, as AWS), and naming one of its other
  steps is a ``ValidationException`` (not modelled).
* **ListCommandInvocations** lists one entry per (command, instance) from the same timeline,
  once visible: newest request first, then by instance id; ``CommandId``, ``InstanceId``,
  ``Filters`` (``Status``, ``DocumentName``, ``InvokedAfter``, ``InvokedBefore``; AND-ed),
  ``MaxResults`` 1-50 (default 50), ``NextToken``. ``Details`` adds the modelled step as the
  one ``CommandPlugin``, its ``Output`` stdout then stderr as amazon-ssm-agent combines and
  cuts them (2500 characters). moto's own commands (``Targets``) are listed as moto answers
  them (``Success``).
* **CancelCommand** cancels pending and running invocations (``Cancelling`` for
  ``cancel_seconds``, then ``Cancelled``).
* **An order log**: every SendCommand, CancelCommand and CreateSnapshots call (through
  `localaws.ec2_snapshots`' observer hook) and every invocation's end, with a sequence number
  and the server clock's time, plus the peak number of invocations running at once.

SendCommand with ``Targets`` (no ``InstanceIds``) is moto's, unchanged. Nothing is executed.

`install()` is idempotent and works in-process (``mock_aws``) as in the server; `configure`,
`state`, `log` and `reset` read and change the state in-process (the server's control endpoint
``/_localaws/ssm`` calls them). moto's reset (``BackendDict.reset``: ``/moto-api/reset``, a
``mock_aws`` start) resets it too.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.core.base_backend import BackendDict
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm.exceptions import SSMException
from moto.ssm.models import Command
from moto.ssm.responses import SimpleSystemManagerResponse

from localaws import ec2_snapshots
from localaws.clock import CLOCK, Clock

__all__ = [
    "AWS_OWNED_DOCUMENTS",
    "STATE",
    "SsmCommands",
    "configure",
    "install",
    "installed",
    "log",
    "reset",
    "state",
    "uninstall",
]

# SendCommand's limits (SSM API reference): InstanceIds 0-50 items, TimeoutSeconds 30-2592000,
# Comment up to 100 characters.
MAX_INSTANCE_IDS = 50
MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 30, 2592000
DEFAULT_TIMEOUT_SECONDS = 3600
MAX_COMMENT = 100
# DescribeInstanceInformation: MaxResults 5-50; each filter takes 1-100 values.
MIN_RESULTS, MAX_RESULTS, DEFAULT_RESULTS = 5, 50, 10
MAX_FILTER_VALUES = 100
# The agent's execution timeout when a step names none, and its hard cap (172800 s, 48 hours,
# amazon-ssm-agent's pluginutil).
DEFAULT_EXECUTION_TIMEOUT = 3600
MAX_EXECUTION_TIMEOUT = 172800
# amazon-ssm-agent on Linux reports this exit code for a plugin it stopped (timeout or cancel):
# 128 + SIGKILL (appconfig.CommandStoppedPreemptivelyExitCode).
STOPPED_EXIT_CODE = 137
NOT_RUN_CODE = -1
# GetCommandInvocation returns the first 24,000 characters of stdout and 8,000 of stderr.
MAX_STDOUT, MAX_STDERR = 24000, 8000
# ListCommandInvocations: MaxResults 1-50 (default 50), CommandId 36 characters, Filters 1-5
# items, each value 1-128 characters (the SSM API model).
LIST_MIN_RESULTS, LIST_MAX_RESULTS, LIST_DEFAULT_RESULTS = 1, 50, 50
COMMAND_ID_LENGTH = 36
MAX_COMMAND_FILTERS, MAX_COMMAND_FILTER_VALUE = 5, 128
COMMAND_FILTER_KEYS = ("InvokedAfter", "InvokedBefore", "Status", "ExecutionStage", "DocumentName")
# The Status filter's values for ListCommandInvocations (CommandFilter in the API reference).
INVOCATION_STATUS_FILTERS = (
    "Pending",
    "InProgress",
    "Delayed",
    "Success",
    "Cancelled",
    "Failed",
    "TimedOut",
    "AccessDenied",
    "DeliveryTimedOut",
    "ExecutionTimedOut",
    "Undeliverable",
    "InvalidPlatform",
    "Terminated",
)
# A plugin's Output in ListCommandInvocations: amazon-ssm-agent's combined stdout and stderr,
# at most 2500 characters (iohandler.MaximumPluginOutputSize and TruncateOutput).
MAX_PLUGIN_OUTPUT = 2500
ERROR_TITLE = "\n----------ERROR-------\n"
TRUNCATED_OUTPUT = "\n---Output truncated---"
TRUNCATED_ERROR = "\n---Error truncated----"
# moto's own invocations (SendCommand with Targets) end 5 minutes after the request.
MOTO_ELAPSED = timedelta(minutes=5)

AGENT_VERSION = "3.3.1142.0"
PING_STATUSES = ("Online", "ConnectionLost", "Inactive")
PLATFORM_TYPES = ("Windows", "Linux", "MacOS")
RESOURCE_TYPES = ("EC2Instance", "ManagedInstance")
SOURCE_TYPES = ("AWS::EC2::Instance", "AWS::IoT::Thing", "AWS::SSM::ManagedInstance")
RESULT_STATUSES = ("Success", "Failed", "TimedOut", "Hang")
ANY_COMMAND = "*"
INSTANCE_ID_PATTERN = r"(^i-(\w{8}|\w{17})$)|(^mi-\w{17}$)"
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
_INSTALLED = "_localaws_ssm_commands"

# AWS-owned documents SendCommand accepts without a CreateDocument, with AWS's published
# parameters (their validation applies) and runtime configuration (plugin name, timeout).
AWS_OWNED_DOCUMENTS: dict[str, dict[str, Any]] = {
    "AWS-RunShellScript": {
        "schemaVersion": "1.2",
        "description": "Run a shell script or specify the commands to run.",
        "parameters": {
            "commands": {
                "type": "StringList",
                "description": "(Required) Specify a shell script or a command to run.",
                "minItems": 1,
                "displayType": "textarea",
            },
            "workingDirectory": {
                "type": "String",
                "default": "",
                "description": "(Optional) The path to the working directory on your instance.",
                "maxChars": 4096,
            },
            "executionTimeout": {
                "type": "String",
                "default": "3600",
                "description": "(Optional) The time in seconds for a command to complete before "
                "it is considered to have failed. Default is 3600 (1 hour). Maximum is 172800 "
                "(48 hours).",
                "allowedPattern": "([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|"
                "(172[0-7][0-9]{2})|(172800)",
            },
        },
        "runtimeConfig": {
            "aws:runShellScript": {
                "properties": [
                    {
                        "id": "0.aws:runShellScript",
                        "runCommand": "{{ commands }}",
                        "workingDirectory": "{{ workingDirectory }}",
                        "timeoutSeconds": "{{ executionTimeout }}",
                    }
                ]
            }
        },
    }
}


def _error(code: str, message: str) -> SSMException:
    return SSMException(code, message)


def _validation(value: Any, member: str, constraint: str) -> SSMException:
    # The wording of AWS's request validation (its "1 validation error detected" messages).
    return _error(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
        f"constraint: {constraint}",
    )


def _iso(moment: datetime) -> str:
    """GetCommandInvocation's timestamps: ISO 8601, UTC, milliseconds (`...03.419Z`)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _duration(seconds: float) -> str:
    """ExecutionElapsedTime as AWS writes it (Java's Duration: `PT0.091S`, `PT1M5S`)."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs or ms or text == "PT":
        text += str(secs) + (f".{ms:03d}".rstrip("0") if ms else "") + "S"
    return text


def _agent_output(stdout: str, stderr: str, capacity: int = MAX_PLUGIN_OUTPUT) -> str:
    """A plugin's Output as amazon-ssm-agent reports it (iohandler's TruncateOutput): stdout,
    then stderr under an error title, cut to `capacity` with its truncation markers. The agent
    counts bytes, this counts characters (the same for ASCII)."""
    title = ERROR_TITLE if stderr else ""
    space = capacity - len(title)
    out, err = len(stdout), len(stderr)
    if out + err < space:
        return stdout + title + stderr
    if out > space // 2 and err > space // 2:
        size = space - len(TRUNCATED_ERROR) - len(TRUNCATED_OUTPUT)
        return (
            stdout[: size // 2] + TRUNCATED_OUTPUT + title + stderr[: size // 2] + TRUNCATED_ERROR
        )
    if out < space // 2:
        size = space - len(TRUNCATED_ERROR)
        return stdout + title + stderr[: max(0, size - out)] + TRUNCATED_ERROR
    size = space - len(TRUNCATED_OUTPUT)
    return stdout[: max(0, size - err)] + TRUNCATED_OUTPUT + title + stderr


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (_aware(moment) - _EPOCH) // timedelta(microseconds=1)


# --- configuration ---------------------------------------------------------------------------


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class ResultEntry:
    """One queued outcome of one SendCommand for an (instance, command value)."""

    status: str
    seconds: float | None = None
    stdout: str = ""
    stderr: str = ""
    response_code: int | None = None
    start_seconds: float | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> ResultEntry:
        if not isinstance(raw, Mapping):
            raise ValueError(f"a result must be an object, not {raw!r}")
        unknown = set(raw) - {
            "status",
            "seconds",
            "stdout",
            "stderr",
            "response_code",
            "start_seconds",
        }
        if unknown:
            raise ValueError(f"unknown result fields: {sorted(unknown)}")
        status = raw.get("status")
        if status not in RESULT_STATUSES:
            raise ValueError(f"result status must be one of {RESULT_STATUSES}, not {status!r}")
        code = raw.get("response_code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise ValueError(f"response_code must be an integer, not {code!r}")
        if status == "Success" and code not in (None, 0):
            raise ValueError("a Success ends with response_code 0 (a script's exit code)")
        if status == "Failed" and code == 0:
            raise ValueError("a Failed result needs a non-zero response_code")
        for name in ("stdout", "stderr"):
            if not isinstance(raw.get(name, ""), str):
                raise ValueError(f"{name} must be a string")
        return cls(
            status=status,
            seconds=None if raw.get("seconds") is None else _seconds(raw["seconds"], "seconds"),
            stdout=str(raw.get("stdout", "")),
            stderr=str(raw.get("stderr", "")),
            response_code=code,
            start_seconds=None
            if raw.get("start_seconds") is None
            else _seconds(raw["start_seconds"], "start_seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "stdout": self.stdout, "stderr": self.stderr}
        for name in ("seconds", "response_code", "start_seconds"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass
class InstanceInjection:
    """What a test changed about one instance's SSM agent."""

    managed: bool = True
    ping_status: str | None = None  # None: from the instance's state
    results: dict[str, deque[ResultEntry]] = field(default_factory=dict)

    def merge(self, raw: Any) -> None:
        if not isinstance(raw, Mapping):
            raise ValueError(f"an instance's settings must be an object, not {raw!r}")
        unknown = set(raw) - {"managed", "ping_status", "results"}
        if unknown:
            raise ValueError(f"unknown instance fields: {sorted(unknown)}")
        if "managed" in raw:
            if not isinstance(raw["managed"], bool):
                raise ValueError("managed must be true or false")
            self.managed = raw["managed"]
        if "ping_status" in raw:
            ping = raw["ping_status"]
            if ping is not None and ping not in PING_STATUSES:
                raise ValueError(f"ping_status must be one of {PING_STATUSES} or null")
            self.ping_status = ping
        results = raw.get("results", {})
        if not isinstance(results, Mapping):
            raise ValueError("results must map command values to lists of results")
        parsed = {}
        for command, entries in results.items():
            if entries is not None and not isinstance(entries, list):
                raise ValueError(f"results[{command!r}] must be a list")
            parsed[str(command)] = deque(ResultEntry.from_dict(e) for e in entries or [])
        self.results.update(parsed)  # each command value's queue is replaced, others kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "managed": self.managed,
            "ping_status": self.ping_status,
            "results": {k: [e.to_dict() for e in q] for k, q in self.results.items() if q},
        }


@dataclass
class Settings:
    script_seconds: float = 0.2
    start_seconds: float = 0.05
    invisible_seconds: float = 0.0
    cancel_seconds: float = 0.0


_SETTINGS = ("script_seconds", "start_seconds", "invisible_seconds", "cancel_seconds")


# --- invocations -----------------------------------------------------------------------------


@dataclass
class Invocation:
    """One instance's part of a command, as a timeline on the server clock (monotonic seconds):
    requested, started (None: never, the delivery timed out), its natural end and outcome,
    and a cancellation that may cut it short."""

    order: int
    account_id: str
    region: str
    command_id: str
    instance_id: str
    document: str
    document_version: str
    comment: str
    plugin: str
    command: str | None
    requested: float
    requested_wall: datetime
    visible_at: float
    start: float | None
    natural_end: float
    natural: tuple[str, str, int]  # Status, StatusDetails, ResponseCode
    stdout: str
    stderr: str
    cancel_at: float | None = None
    cancelled_end: float | None = None
    logged: bool = False
    steps: tuple[str, ...] = ()  # every step (plugin) name of the document, in its order

    def end(self) -> float:
        return self.natural_end if self.cancelled_end is None else self.cancelled_end

    def started_at(self) -> float | None:
        if self.start is None or (self.cancel_at is not None and self.cancel_at < self.start):
            return None
        return self.start

    def final(self) -> tuple[str, str, int]:
        if self.cancelled_end is None:
            return self.natural
        code = NOT_RUN_CODE if self.started_at() is None else STOPPED_EXIT_CODE
        return "Cancelled", "Cancelled", code

    def phase(self, now: float) -> tuple[str, str]:
        if now >= self.end():
            status, details, _ = self.final()
            return status, details
        if self.cancel_at is not None:
            return "Cancelling", "Cancelling"
        started = self.started_at()
        if started is not None and now >= started:
            return "InProgress", "InProgress"
        return "Pending", "Pending"

    def terminal(self, now: float) -> bool:
        return now >= self.end()

    def cancel(self, now: float, cancel_seconds: float) -> bool:
        """Cancel if still pending or running; whether it was."""
        if self.cancel_at is not None or self.terminal(now):
            return False
        self.cancel_at = now
        pending = self.start is None or now < self.start
        self.cancelled_end = now if pending else now + cancel_seconds
        return True

    def wall(self, moment: float) -> datetime:
        return self.requested_wall + timedelta(seconds=moment - self.requested)

    def running_since(self, now: float) -> float | None:
        """When it started running, if it had by `now`."""
        started = self.started_at()
        return started if started is not None and now >= started else None

    def response(self, now: float) -> dict[str, Any]:
        """GetCommandInvocation's answer at `now`."""
        status, details = self.phase(now)
        ended = self.terminal(now)
        running_since = self.running_since(now)
        ran = running_since is not None
        return {
            "CommandId": self.command_id,
            "InstanceId": self.instance_id,
            "Comment": self.comment,
            "DocumentName": self.document,
            "DocumentVersion": self.document_version,
            "PluginName": self.plugin,
            "ResponseCode": self.final()[2] if ended else NOT_RUN_CODE,
            "ExecutionStartDateTime": ""
            if running_since is None
            else _iso(self.wall(running_since)),
            "ExecutionElapsedTime": ""
            if running_since is None
            else _duration(min(now, self.end()) - running_since),
            "ExecutionEndDateTime": _iso(self.wall(self.end())) if ended and ran else "",
            "Status": status,
            "StatusDetails": details,
            "StandardOutputContent": self.stdout[:MAX_STDOUT] if ended and ran else "",
            "StandardOutputUrl": "",
            "StandardErrorContent": self.stderr[:MAX_STDERR] if ended and ran else "",
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": _cloudwatch_off(),
        }

    def listed(self, now: float, command: Any) -> dict[str, Any]:
        """ListCommandInvocations' entry at `now`, with its one plugin (the step modelled)."""
        status, details = self.phase(now)
        ended = self.terminal(now)
        running_since = self.running_since(now)
        ran = running_since is not None
        # A plugin has no Cancelling status (CommandPluginStatus): it runs until it stops.
        step_status, step_details = (
            ("InProgress", "InProgress") if status == "Cancelling" else (status, details)
        )
        plugin = _plugin_row(
            command,
            name=self.plugin,
            status=step_status,
            details=step_details,
            code=self.final()[2] if ended else NOT_RUN_CODE,
            started=None if running_since is None else self.wall(running_since),
            finished=self.wall(self.end()) if ended and ran else None,
            output=_agent_output(self.stdout, self.stderr) if ended and ran else "",
        )
        return _listed_row(
            command,
            instance_id=self.instance_id,
            document=self.document,
            version=self.document_version,
            requested=self.requested_wall,
            status=status,
            details=details,
            plugin=plugin,
        )


def _cloudwatch_off() -> dict[str, Any]:
    return {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False}


def _plugin_row(
    command: Any,
    *,
    name: str,
    status: str,
    details: str,
    code: int,
    started: datetime | None,
    finished: datetime | None,
    output: str,
) -> dict[str, Any]:
    """A CommandPlugin: the S3 fields are the command's (the region AWS's default), the URLs ""
    (nothing is written to S3); the times only once set."""
    plugin: dict[str, Any] = {
        "Name": name,
        "Status": status,
        "StatusDetails": details,
        "ResponseCode": code,
    }
    if started is not None:
        plugin["ResponseStartDateTime"] = started
    if finished is not None:
        plugin["ResponseFinishDateTime"] = finished
    plugin.update(
        {
            "Output": output,
            "StandardOutputUrl": "",
            "StandardErrorUrl": "",
            "OutputS3Region": command.output_s3_region or command.backend_region,
            "OutputS3BucketName": command.output_s3_bucket_name or "",
            "OutputS3KeyPrefix": command.output_s3_key_prefix or "",
        }
    )
    return plugin


def _notification_config(command: Any) -> dict[str, Any]:
    """The NotificationConfig SendCommand was given; AWS's empty one if none (moto's default
    is made up)."""
    sent = getattr(command, "localaws_notification_config", None)
    sent = sent if isinstance(sent, Mapping) else {}
    return {
        "NotificationArn": str(sent.get("NotificationArn") or ""),
        "NotificationEvents": [str(e) for e in sent.get("NotificationEvents") or []],
        "NotificationType": str(sent.get("NotificationType") or ""),
    }


def _listed_row(
    command: Any,
    *,
    instance_id: str,
    document: str,
    version: str,
    requested: datetime,
    status: str,
    details: str,
    plugin: dict[str, Any],
) -> dict[str, Any]:
    """A CommandInvocation of ListCommandInvocations (CommandPlugins holds the plugin; the
    handler empties it without Details)."""
    return {
        "CommandId": command.command_id,
        "InstanceId": instance_id,
        "InstanceName": "",
        "Comment": command.comment or "",
        "DocumentName": document,
        "DocumentVersion": version,
        "RequestedDateTime": _aware(requested),
        "Status": status,
        "StatusDetails": details,
        "TraceOutput": "",
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "CommandPlugins": [plugin],
        "ServiceRole": command.service_role_arn or "",
        "NotificationConfig": _notification_config(command),
        "CloudWatchOutputConfig": _cloudwatch_off(),
    }


def _moto_listed(command: Any, invocation: Mapping[str, Any]) -> dict[str, Any]:
    """ListCommandInvocations' entry for one of moto's own invocations (SendCommand with
    Targets): what moto's GetCommandInvocation answers, Success at once, its made-up 5 minutes."""
    requested = _aware(command.requested_date_time)
    plugin = _plugin_row(
        command,
        name=str(invocation.get("PluginName") or "aws:runShellScript"),
        status="Success",
        details="Success",
        code=0,
        started=requested,
        finished=requested + MOTO_ELAPSED,
        output="",
    )
    return _listed_row(
        command,
        instance_id=str(invocation["InstanceId"]),
        document=str(command.document_name or ""),
        version="$DEFAULT",
        requested=requested,
        status="Success",
        details="Success",
        plugin=plugin,
    )


# --- documents -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedDocument:
    name: str
    version: str
    content: dict[str, Any]


def _resolve_document(
    backend: Any, account_id: str, region: str, name: str, version: str | None
) -> ResolvedDocument:
    short = name
    if name.startswith("arn:"):
        # arn:PARTITION:ssm:REGION:ACCOUNT:document/NAME; another account's must be shared,
        # which localaws does not model.
        parts = name.split(":", 5)
        if len(parts) != 6 or parts[3] != region or parts[4] != account_id:
            raise _error("InvalidDocument", f"Document {name} does not exist in your account")
        short = parts[5].split("/", 1)[-1]
    documents = backend._documents.get(short)
    if documents is None:
        if short in AWS_OWNED_DOCUMENTS:
            if version not in (None, "$DEFAULT", "$LATEST", "1"):
                raise _error("InvalidDocumentVersion", f"Document {short} has no version {version}")
            return ResolvedDocument(short, version or "$DEFAULT", AWS_OWNED_DOCUMENTS[short])
        raise _error("InvalidDocument", f"Document {short} does not exist in your account")
    document = documents.find(None if version in (None, "$DEFAULT") else version, strict=False)
    if document is None:
        raise _error("InvalidDocumentVersion", f"Document {short} has no version {version}")
    if (document.document_type or "Command") != "Command":
        raise _error(
            "InvalidDocument",
            f"Document {short} is of type {document.document_type}; SendCommand runs "
            "Command documents",
        )
    if document.status != "Active":
        raise _error("InvalidDocument", f"Document {short} is {document.status}, not Active")
    content = document.content_json if isinstance(document.content_json, dict) else {}
    return ResolvedDocument(short, version or "$DEFAULT", content)


def _declared(content: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    params = content.get("parameters") or {}
    return {str(k): dict(v or {}) for k, v in params.items()} if isinstance(params, dict) else {}


def _invalid_parameters(detail: str) -> SSMException:
    return _error(
        "InvalidParameters",
        "You must specify values for all required parameters in the SSM document. You can only "
        f"supply values to parameters defined in the SSM document. ({detail})",
    )


def _check_parameters(content: Mapping[str, Any], sent: Mapping[str, Any]) -> dict[str, list[str]]:
    """Validate `sent` against the document's declarations; the values with defaults filled in."""
    declared = _declared(content)
    unknown = sorted(set(sent) - set(declared))
    if unknown:
        raise _invalid_parameters(f"not declared: {', '.join(unknown)}")
    values: dict[str, list[str]] = {}
    for name, spec in declared.items():
        if name not in sent:
            if "default" not in spec:
                raise _invalid_parameters(f"required parameter missing: {name}")
            default = spec["default"]
            values[name] = (
                [str(v) for v in default] if isinstance(default, list) else [str(default)]
            )
            continue
        raw = sent[name]
        given = [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
        kind = spec.get("type", "String")
        if kind == "String" and len(given) != 1:
            raise _invalid_parameters(f"{name} is a String and takes one value, not {len(given)}")
        if kind == "StringList":
            if len(given) < int(spec.get("minItems", 0)):
                raise _invalid_parameters(f"{name} needs at least {spec['minItems']} items")
            if "maxItems" in spec and len(given) > int(spec["maxItems"]):
                raise _invalid_parameters(f"{name} takes at most {spec['maxItems']} items")
        allowed = spec.get("allowedValues")
        pattern = spec.get("allowedPattern")
        for value in given:
            if isinstance(allowed, list) and value not in [str(a) for a in allowed]:
                raise _invalid_parameters(
                    f"{name}={value!r} is not one of the allowed values {allowed}"
                )
            # Java's Pattern.matches semantics: the whole value (AWS-RunShellScript's
            # executionTimeout pattern is an unanchored alternation).
            if isinstance(pattern, str) and re.fullmatch(pattern, value) is None:
                raise _invalid_parameters(f"{name}={value!r} does not match {pattern}")
            if "maxChars" in spec and len(value) > int(spec["maxChars"]):
                raise _invalid_parameters(f"{name} is longer than {spec['maxChars']} characters")
        values[name] = given
    return values


def _substitute(raw: Any, values: Mapping[str, list[str]]) -> Any:
    if not isinstance(raw, str):
        return raw
    return _PLACEHOLDER.sub(lambda m: (values.get(m.group(1)) or [m.group(0)])[0], raw)


def _plugin_and_timeout(
    content: Mapping[str, Any], values: Mapping[str, list[str]]
) -> tuple[str, int]:
    """The step an invocation reports (the first aws:runShellScript, else the first) and its
    execution timeout in seconds."""
    raw: Any = None
    if str(content.get("schemaVersion", "")) == "1.2":
        runtime = content.get("runtimeConfig") or {}
        plugin = next(iter(runtime), "aws:runShellScript")
        props = (runtime.get(plugin) or {}).get("properties")
        first = props[0] if isinstance(props, list) and props else props
        raw = first.get("timeoutSeconds") if isinstance(first, dict) else None
    else:
        steps = [s for s in content.get("mainSteps") or [] if isinstance(s, dict)]
        shell = [s for s in steps if s.get("action") == "aws:runShellScript"]
        step = (shell or steps or [{}])[0]
        plugin = str(step.get("name") or step.get("action") or "aws:runShellScript")
        inputs = step.get("inputs") or {}
        raw = inputs.get("timeoutSeconds", step.get("timeoutSeconds"))
    try:
        seconds = int(str(_substitute(raw, values)).strip()) if raw is not None else 0
    except ValueError:
        seconds = 0
    if seconds <= 0:
        seconds = DEFAULT_EXECUTION_TIMEOUT
    return plugin, min(seconds, MAX_EXECUTION_TIMEOUT)


def _step_names(content: Mapping[str, Any]) -> tuple[str, ...]:
    """The document's step (plugin) names in order: schema 1.2's runtimeConfig plugins, 2.x's
    mainSteps names."""
    if str(content.get("schemaVersion", "")) == "1.2":
        runtime = content.get("runtimeConfig") or {}
        return tuple(str(name) for name in runtime) if isinstance(runtime, dict) else ()
    steps = [s for s in content.get("mainSteps") or [] if isinstance(s, dict)]
    return tuple(str(s.get("name") or s.get("action") or "") for s in steps)


# --- the state -------------------------------------------------------------------------------


def _launch_time(instance: Any) -> datetime:
    value = getattr(instance, "launch_time", None)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return CLOCK.now()
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SsmCommands:
    """Settings, per-instance injections, invocations and the order log (one per process)."""

    def __init__(self, clock: Clock = CLOCK) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Defaults, no injections, no invocations, an empty log."""
        with self._lock:
            self.settings = Settings()
            self.injections: dict[str, InstanceInjection] = {}
            self._log: list[dict[str, Any]] = []
            self._seq = itertools.count(1)
            self._order = itertools.count()
            self._invocations: list[Invocation] = []
            self._unlogged: list[Invocation] = []
            self._last_online: dict[str, datetime] = {}
            self._epoch = self.clock.monotonic()
            self._epoch_wall = self.clock.now()

    # configuration
    def configure(self, body: Mapping[str, Any]) -> None:
        """Apply a control-API body (settings; per-instance injections merged)."""
        if not isinstance(body, Mapping):
            raise ValueError("the body must be an object")
        unknown = set(body) - {*_SETTINGS, "instances"}
        if unknown:
            raise ValueError(f"unknown ssm fields: {sorted(unknown)}")
        instances = body.get("instances", {})
        if not isinstance(instances, Mapping):
            raise ValueError("instances must map instance ids to settings")
        with self._lock:
            settings = Settings(**vars(self.settings))
            for name in _SETTINGS:
                if name in body:
                    setattr(settings, name, _seconds(body[name], name))
            injections = {k: self._copy(v) for k, v in self.injections.items()}
            for instance_id, raw in instances.items():
                if raw is None:
                    injections.pop(str(instance_id), None)
                    continue
                injections.setdefault(str(instance_id), InstanceInjection()).merge(raw)
            # nothing is applied unless the whole body is valid
            self.settings, self.injections = settings, injections

    @staticmethod
    def _copy(injection: InstanceInjection) -> InstanceInjection:
        return InstanceInjection(
            injection.managed,
            injection.ping_status,
            {k: deque(q) for k, q in injection.results.items()},
        )

    def state(self, *, drain: bool = False) -> dict[str, Any]:
        """Settings, injections (results not yet consumed), the log, peak and current number
        of invocations running (InProgress or Cancelling)."""
        with self._lock:
            now = self.clock.monotonic()
            self._settle(now)
            peak, running = self._concurrency(now)
            return {
                **vars(self.settings),
                "instances": {k: v.to_dict() for k, v in sorted(self.injections.items())},
                "log": self.log(drain=drain),
                "peak_in_progress": peak,
                "in_progress": running,
            }

    def log(self, *, drain: bool = False) -> list[dict[str, Any]]:
        """The order log (oldest first); `drain` forgets it."""
        with self._lock:
            self._settle(self.clock.monotonic())
            entries = [dict(e) for e in self._log]
            if drain:
                self._log.clear()
            return entries

    # the log
    def _append(self, event: str, at: float, **fields: Any) -> None:
        wall = self._epoch_wall + timedelta(seconds=at - self._epoch)
        self._log.append(
            {
                "seq": next(self._seq),
                "event": event,
                "at": round(at - self._epoch, 6),
                "time": _iso(wall),
                **fields,
            }
        )

    def _settle(self, now: float) -> None:
        """Log the ends of invocations that ended by `now`, in the order they ended, so that
        the log's order is the clock's even though ends are noticed lazily."""
        due = [inv for inv in self._unlogged if inv.terminal(now)]
        if not due:
            return
        for inv in sorted(due, key=lambda i: (i.end(), i.order)):
            inv.logged = True
            status, details, code = inv.final()
            started = inv.started_at()
            self._append(
                "InvocationEnded",
                inv.end(),
                account_id=inv.account_id,
                region=inv.region,
                instance_id=inv.instance_id,
                command_id=inv.command_id,
                command=inv.command,
                document=inv.document,
                status=status,
                status_details=details,
                response_code=code,
                started_at=None if started is None else round(started - self._epoch, 6),
            )
        self._unlogged = [inv for inv in self._unlogged if not inv.logged]

    def _concurrency(self, now: float) -> tuple[int, int]:
        events: list[tuple[float, int]] = []
        for inv in self._invocations:
            started = inv.started_at()
            if started is None or started > now:
                continue
            events.append((started, 1))
            if inv.end() <= now:
                events.append((inv.end(), -1))
        running = peak = 0
        for _, delta in sorted(events):  # at equal times ends (-1) sort before starts
            running += delta
            peak = max(peak, running)
        return peak, running

    # managed instances
    def ping_status(self, instance: Any) -> str | None:
        """The instance's PingStatus; None if SSM does not list it."""
        injection = self.injections.get(instance.id)
        if instance.state == "terminated" or (injection is not None and not injection.managed):
            return None
        if injection is not None and injection.ping_status is not None:
            ping = injection.ping_status
        else:
            ping = "Online" if instance.state == "running" else "ConnectionLost"
        if ping == "Online":
            self._last_online[instance.id] = self.clock.now()
        return ping

    def instance_information(self, instance: Any, ping: str) -> dict[str, Any]:
        row: dict[str, Any] = {
            "InstanceId": instance.id,
            "PingStatus": ping,
            "LastPingDateTime": self._last_online.get(instance.id) or _launch_time(instance),
            "AgentVersion": AGENT_VERSION,
            "IsLatestVersion": True,
            "PlatformType": "Linux",
            "PlatformName": "Amazon Linux",
            "PlatformVersion": "2023",
            "ResourceType": "EC2Instance",
            "SourceId": instance.id,
            "SourceType": "AWS::EC2::Instance",
        }
        if instance.private_ip:
            row["IPAddress"] = instance.private_ip
        if instance.private_dns_name:
            row["ComputerName"] = instance.private_dns_name
        return row

    def managed_instances(self, account_id: str, region: str) -> list[tuple[Any, str]]:
        """(instance, PingStatus) of every instance SSM lists, by instance id."""
        backend = ec2_backends[account_id][region]
        with self._lock:
            listed = [(i, self.ping_status(i)) for i in backend.all_instances()]
        return sorted(((i, p) for i, p in listed if p is not None), key=lambda ip: ip[0].id)

    # commands
    def _next_result(self, instance_id: str, command: str | None) -> ResultEntry | None:
        injection = self.injections.get(instance_id)
        if injection is None:
            return None
        keys = ([command] if command is not None else []) + [ANY_COMMAND]
        for key in keys:
            queue = injection.results.get(key)
            if queue:
                return queue.popleft()
        return None

    def record_send(
        self,
        *,
        account_id: str,
        region: str,
        instance_ids: Iterable[str],
        command: str | None,
        document: str,
        outcome: str,
    ) -> None:
        with self._lock:
            now = self.clock.monotonic()
            self._settle(now)
            for instance_id in instance_ids:
                self._append(
                    "SendCommand",
                    now,
                    account_id=account_id,
                    region=region,
                    instance_id=instance_id,
                    command=command,
                    command_id=None,
                    document=document,
                    outcome=outcome,
                )

    def start_invocations(
        self,
        command: Any,
        instance_ids: list[str],
        document: ResolvedDocument,
        values: Mapping[str, list[str]],
        timeout_seconds: int,
    ) -> None:
        """Give a moto Command its invocations (their timelines fixed now) and log the send."""
        plugin, execution_timeout = _plugin_and_timeout(document.content, values)
        steps = _step_names(document.content) or (plugin,)
        command_value = values["command"][0] if values.get("command") else None
        with self._lock:
            now, wall = self.clock.monotonic(), self.clock.now()
            self._settle(now)
            command.requested_date_time = wall
            command.expires_after = wall + timedelta(seconds=timeout_seconds)
            invocations: dict[str, Invocation] = {}
            for instance_id in instance_ids:
                entry = self._next_result(instance_id, command_value)
                inv = self._invocation(
                    command=command,
                    instance_id=instance_id,
                    document=document,
                    plugin=plugin,
                    steps=steps,
                    command_value=command_value,
                    now=now,
                    wall=wall,
                    entry=entry,
                    timeouts=(timeout_seconds, execution_timeout),
                )
                invocations[instance_id] = inv
                self._invocations.append(inv)
                self._unlogged.append(inv)
            command.localaws_invocations = invocations
            command.localaws_document_version = document.version
            for instance_id in instance_ids:
                self._append(
                    "SendCommand",
                    now,
                    account_id=command.account_id,
                    region=command.backend_region,
                    instance_id=instance_id,
                    command=command_value,
                    command_id=command.command_id,
                    document=document.name,
                    outcome="ok",
                )

    def _invocation(
        self,
        *,
        command: Any,
        instance_id: str,
        document: ResolvedDocument,
        plugin: str,
        steps: tuple[str, ...],
        command_value: str | None,
        now: float,
        wall: datetime,
        entry: ResultEntry | None,
        timeouts: tuple[int, int],
    ) -> Invocation:
        timeout_seconds, execution_timeout = timeouts  # delivery, execution
        settings = self.settings
        status = entry.status if entry else "Success"
        seconds = (
            settings.script_seconds if entry is None or entry.seconds is None else entry.seconds
        )
        delay = (
            settings.start_seconds
            if entry is None or entry.start_seconds is None
            else entry.start_seconds
        )
        given_code = entry.response_code if entry else None
        start: float | None = now + delay
        if delay >= timeout_seconds:
            # "If this time is reached and the command hasn't already started running, it
            # won't run."
            start, natural_end = None, now + timeout_seconds
            natural = ("TimedOut", "Delivery Timed Out", NOT_RUN_CODE)
        elif status == "Hang" or seconds > execution_timeout:
            natural_end = now + delay + execution_timeout
            code = given_code if status in ("Hang", "TimedOut") and given_code is not None else None
            natural = (
                "TimedOut",
                "Execution Timed Out",
                STOPPED_EXIT_CODE if code is None else code,
            )
        else:
            natural_end = now + delay + seconds
            if status == "Success":
                natural = ("Success", "Success", 0)
            elif status == "Failed":
                natural = ("Failed", "Failed", 1 if given_code is None else given_code)
            else:
                code = STOPPED_EXIT_CODE if given_code is None else given_code
                natural = ("TimedOut", "Execution Timed Out", code)
        return Invocation(
            order=next(self._order),
            account_id=command.account_id,
            region=command.backend_region,
            command_id=command.command_id,
            instance_id=instance_id,
            document=document.name,
            document_version=document.version,
            comment=command.comment or "",
            plugin=plugin,
            command=command_value,
            requested=now,
            requested_wall=wall,
            visible_at=now + settings.invisible_seconds,
            start=start,
            natural_end=natural_end,
            natural=natural,
            stdout=entry.stdout if entry else "",
            stderr=entry.stderr if entry else "",
            steps=steps,
        )

    def invocation(
        self, invocations: Mapping[str, Invocation], instance_id: str, plugin: str | None
    ) -> dict[str, Any]:
        """GetCommandInvocation's answer for one of a command's invocations."""
        inv = invocations.get(instance_id)
        now = self.clock.monotonic()
        if inv is None or now < inv.visible_at:
            raise _error("InvocationDoesNotExist", "")
        if plugin is None and len(inv.steps) > 1:
            # "If the document contains more than one step, you must specify the name of the
            # step" (the API reference).
            raise _error(
                "InvalidPluginName",
                f"The document {inv.document} has {len(inv.steps)} steps "
                f"({', '.join(inv.steps)}): give PluginName",
            )
        if plugin is not None and plugin != inv.plugin:
            if plugin in inv.steps:
                raise _error(
                    "ValidationException",
                    f"localaws models only the step {inv.plugin} of the document {inv.document}; "
                    f"its step {plugin} is not modelled",
                )
            raise _error("InvalidPluginName", f"The plugin name {plugin} is not valid")
        with self._lock:
            return inv.response(now)

    def list_invocations(
        self, backend: Any, command_id: str | None, instance_id: str | None
    ) -> list[tuple[tuple[int, int, str], dict[str, Any]]]:
        """ListCommandInvocations' entries (with their plugins) and their places in its order:
        newest request first (a later send first at the same clock time), then by instance id.
        An invocation is listed once visible (`invisible_seconds`), as GetCommandInvocation
        answers it; moto's own commands (Targets) as moto answers them."""
        commands = list(backend._commands)
        if command_id is not None:
            chosen = backend.get_command_by_id(command_id)  # InvalidCommandId
            indexed = [(i, c) for i, c in enumerate(commands) if c is chosen]
        else:
            indexed = list(enumerate(commands))
        out = []
        with self._lock:
            now = self.clock.monotonic()
            for index, command in indexed:
                localaws: Mapping[str, Invocation] | None = getattr(
                    command, "localaws_invocations", None
                )
                if localaws is not None:
                    rows = [
                        inv.listed(now, command)
                        for inv in localaws.values()
                        if now >= inv.visible_at
                    ]
                else:
                    rows = [_moto_listed(command, inv) for inv in command.invocations]
                for row in rows:
                    if instance_id is not None and row["InstanceId"] != instance_id:
                        continue
                    out.append(
                        ((-_micros(row["RequestedDateTime"]), -index, row["InstanceId"]), row)
                    )
        return sorted(out, key=lambda keyed: keyed[0])

    def cancel(self, command: Any, instance_ids: list[str]) -> None:
        """CancelCommand on a moto Command with localaws invocations (or moto's own)."""
        invocations: dict[str, Invocation] = getattr(command, "localaws_invocations", None) or {}
        targets = instance_ids or list(invocations) or list(command.instance_ids)
        with self._lock:
            now = self.clock.monotonic()
            self._settle(now)
            missing = [i for i in targets if i not in command.instance_ids]
            if missing:
                self._log_cancel(command, targets, "InvalidInstanceId", now)
                raise _error(
                    "InvalidInstanceId",
                    f"Instances [[{', '.join(missing)}]] are not part of command "
                    f"{command.command_id}",
                )
            for instance_id in targets:
                inv = invocations.get(instance_id)
                cancelled = inv.cancel(now, self.settings.cancel_seconds) if inv else False
                self._append(
                    "CancelCommand",
                    now,
                    account_id=command.account_id,
                    region=command.backend_region,
                    instance_id=instance_id,
                    command_id=command.command_id,
                    command=inv.command if inv else None,
                    outcome="ok",
                    cancelled=cancelled,
                )
            self._settle(now)  # a pending invocation is Cancelled at once

    def _log_cancel(self, command: Any, targets: list[str], outcome: str, now: float) -> None:
        for instance_id in targets:
            self._append(
                "CancelCommand",
                now,
                account_id=command.account_id,
                region=command.backend_region,
                instance_id=instance_id,
                command_id=command.command_id,
                command=None,
                outcome=outcome,
                cancelled=False,
            )

    def record_cancel_error(
        self, account_id: str, region: str, command_id: str, instance_ids: list[str], code: str
    ) -> None:
        with self._lock:
            now = self.clock.monotonic()
            self._settle(now)
            targets: list[str | None] = list(instance_ids) or [None]
            for instance_id in targets:
                self._append(
                    "CancelCommand",
                    now,
                    account_id=account_id,
                    region=region,
                    instance_id=instance_id,
                    command_id=command_id,
                    command=None,
                    outcome=code,
                    cancelled=False,
                )

    def record_create_snapshots(
        self, account_id: str, region: str, instance_id: str, outcome: str, snapshot_ids: list[str]
    ) -> None:
        """The observer `localaws.ec2_snapshots` calls for every CreateSnapshots it answers."""
        with self._lock:
            now = self.clock.monotonic()
            self._settle(now)
            self._append(
                "CreateSnapshots",
                now,
                account_id=account_id,
                region=region,
                instance_id=instance_id,
                outcome=outcome,
                snapshot_ids=list(snapshot_ids),
            )

    def summary(self, invocations: Mapping[str, Invocation]) -> dict[str, Any]:
        """A command's Status and counts from its invocations (ListCommands, SendCommand)."""
        now = self.clock.monotonic()
        with self._lock:
            phases = [inv.phase(now) for inv in invocations.values()]
        statuses = [s for s, _ in phases]
        terminal = [
            p for p, inv in zip(phases, invocations.values(), strict=True) if inv.terminal(now)
        ]
        if len(phases) == 1:
            status, details = phases[0]
        elif "Cancelling" in statuses:
            status = details = "Cancelling"
        elif all(s == "Pending" for s in statuses):
            status = details = "Pending"
        elif len(terminal) < len(phases):
            status = details = "InProgress"
        elif all(s == "Success" for s in statuses):
            status = details = "Success"
        else:
            status = next(s for s in ("Failed", "TimedOut", "Cancelled") if s in statuses)
            details = status
        return {
            "Status": status,
            "StatusDetails": details,
            "TargetCount": len(phases),
            "CompletedCount": len(terminal),
            "ErrorCount": sum(
                1 for s, d in terminal if s == "Failed" or d == "Execution Timed Out"
            ),
            "DeliveryTimedOutCount": sum(1 for _, d in terminal if d == "Delivery Timed Out"),
        }


STATE = SsmCommands()


# --- the handlers ----------------------------------------------------------------------------


def _check_send(self: Any, instance_ids: list[str]) -> None:
    if len(instance_ids) > MAX_INSTANCE_IDS:
        raise _validation(
            f"[{', '.join(instance_ids)}]",
            "instanceIds",
            f"Member must have length less than or equal to {MAX_INSTANCE_IDS}",
        )
    for instance_id in instance_ids:
        if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
            raise _validation(
                instance_id,
                "instanceIds",
                f"Member must satisfy regular expression pattern: {INSTANCE_ID_PATTERN}",
            )
    timeout = self._get_param("TimeoutSeconds")
    if timeout is not None:
        if int(timeout) < MIN_TIMEOUT_SECONDS:
            raise _validation(
                timeout,
                "timeoutSeconds",
                f"Member must have value greater than or equal to {MIN_TIMEOUT_SECONDS}",
            )
        if int(timeout) > MAX_TIMEOUT_SECONDS:
            raise _validation(
                timeout,
                "timeoutSeconds",
                f"Member must have value less than or equal to {MAX_TIMEOUT_SECONDS}",
            )
    comment = self._get_param("Comment") or ""
    if len(comment) > MAX_COMMENT:
        raise _validation(
            comment, "comment", f"Member must have length less than or equal to {MAX_COMMENT}"
        )
    if self._get_param("Targets"):
        raise _error(
            "ValidationException",
            "localaws: give InstanceIds or Targets, not both (SendCommand with Targets alone "
            "is moto's)",
        )


def _check_instances(account_id: str, region: str, instance_ids: list[str]) -> None:
    backend = ec2_backends[account_id][region]
    wanted = set(instance_ids)
    found = {i.id: i for i in backend.all_instances() if i.id in wanted}
    bad = []
    with STATE._lock:
        for instance_id in instance_ids:
            instance = found.get(instance_id)
            if instance is None or STATE.ping_status(instance) != "Online":
                bad.append(instance_id)
    if bad:
        raise _error(
            "InvalidInstanceId",
            f"Instances [[{', '.join(bad)}]] not in a valid state for account {account_id}",
        )


def _make_send_command(moto_send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def send_command(self: Any) -> Any:
        raw_ids = self._get_param("InstanceIds") or []
        if not raw_ids:
            return moto_send(self)  # Targets: moto's, unchanged
        instance_ids = list(dict.fromkeys(str(i) for i in raw_ids))
        account_id, region = self.current_account, self.region
        name = str(self._get_param("DocumentName") or "")
        parameters = self._get_param("Parameters") or {}
        sent_command = parameters.get("command") if isinstance(parameters, dict) else None
        command_value = (
            str(sent_command[0]) if isinstance(sent_command, list) and sent_command else None
        )
        try:
            _check_send(self, instance_ids)
            document = _resolve_document(
                self.ssm_backend, account_id, region, name, self._get_param("DocumentVersion")
            )
            values = _check_parameters(document.content, parameters)
            _check_instances(account_id, region, instance_ids)
        except SSMException as exc:
            STATE.record_send(
                account_id=account_id,
                region=region,
                instance_ids=instance_ids,
                command=command_value,
                document=name,
                outcome=exc.code,
            )
            raise
        timeout = int(self._get_param("TimeoutSeconds") or DEFAULT_TIMEOUT_SECONDS)
        command = self.ssm_backend.send_command(
            comment=self._get_param("Comment", ""),
            document_name=document.name,
            timeout_seconds=timeout,
            instance_ids=list(instance_ids),
            max_concurrency=self._get_param("MaxConcurrency", "50"),
            max_errors=self._get_param("MaxErrors", "0"),
            notification_config=self._get_param("NotificationConfig"),
            output_s3_bucket_name=self._get_param("OutputS3BucketName", ""),
            output_s3_key_prefix=self._get_param("OutputS3KeyPrefix", ""),
            output_s3_region=self._get_param("OutputS3Region", ""),
            parameters=parameters,
            service_role_arn=self._get_param("ServiceRoleArn", ""),
            targets=[],
        )
        command.instance_ids = instance_ids  # moto's set() lost the order
        command.localaws_notification_config = self._get_param("NotificationConfig")
        STATE.start_invocations(command, instance_ids, document, values, timeout)
        return ActionResult({"Command": command.response_object()})

    return send_command


def _make_get_command_invocation(moto_get: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def get_command_invocation(self: Any) -> Any:
        command = self.ssm_backend.get_command_by_id(self._get_param("CommandId"))
        invocations = getattr(command, "localaws_invocations", None)
        if invocations is None:
            return moto_get(self)
        return ActionResult(
            STATE.invocation(
                invocations, str(self._get_param("InstanceId")), self._get_param("PluginName")
            )
        )

    return get_command_invocation


def cancel_command(self: Any) -> ActionResult:
    """CancelCommand (moto has none): pending and running invocations are cancelled."""
    command_id = str(self._get_param("CommandId") or "")
    instance_ids = [str(i) for i in self._get_param("InstanceIds") or []]
    try:
        command = self.ssm_backend.get_command_by_id(command_id)
    except SSMException as exc:
        STATE.record_cancel_error(
            self.current_account, self.region, command_id, instance_ids, exc.code
        )
        raise
    STATE.cancel(command, instance_ids)
    return ActionResult({})


def _filter_values(values: Any, member: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise _validation(values, member, "Member must have length greater than or equal to 1")
    if len(values) > MAX_FILTER_VALUES:
        raise _validation(
            f"[{', '.join(map(str, values))}]",
            member,
            f"Member must have length less than or equal to {MAX_FILTER_VALUES}",
        )
    return [str(v) for v in values]


def _enum_values(key: str, values: list[str], allowed: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise _error(
            "InvalidInstanceInformationFilterValue",
            f"The filter value {bad[0]} is not valid for {key}; valid values: {', '.join(allowed)}",
        )


@dataclass(frozen=True)
class Node:
    """A listed instance as the filters see it: its row and its EC2 tags."""

    row: dict[str, Any]
    tags: dict[str, str]


Predicate = Callable[[Node], bool]


def _field_in(name: str, wanted: set[str]) -> Predicate:
    return lambda node: node.row.get(name) in wanted


_FIELD_FILTERS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    # filter key: (row field, the values AWS accepts, None: any)
    "InstanceIds": ("InstanceId", None),
    "PingStatus": ("PingStatus", PING_STATUSES),
    "PlatformTypes": ("PlatformType", PLATFORM_TYPES),
    "ResourceType": ("ResourceType", RESOURCE_TYPES),
    "AgentVersion": ("AgentVersion", None),
    "SourceIds": ("SourceId", None),
    "SourceTypes": ("SourceType", SOURCE_TYPES),
    "ActivationIds": ("ActivationId", None),  # only hybrid (activated) nodes have one
}


def _predicate(key: str, values: list[str]) -> Predicate:
    wanted = set(values)
    if key in _FIELD_FILTERS:
        name, allowed = _FIELD_FILTERS[key]
        if allowed is not None:
            _enum_values(key, values, allowed)
        return _field_in(name, wanted)
    if key == "tag-key":
        return lambda node: bool(wanted & set(node.tags))
    if key.startswith("tag:"):
        tag = key[len("tag:") :]
        return lambda node: node.tags.get(tag) in wanted
    if key in ("IamRole", "AssociationStatus"):
        raise _error("ValidationException", f"localaws does not implement the {key} filter")
    raise _error("InvalidFilterKey", f"The filter key {key} is not valid")


_LEGACY_KEYS = (
    "InstanceIds",
    "AgentVersion",
    "PingStatus",
    "PlatformTypes",
    "ActivationIds",
    "IamRole",
    "ResourceType",
    "AssociationStatus",
)


def _predicates(filters: Any, legacy: Any) -> list[Predicate]:
    if filters and legacy:
        raise _error(
            "ValidationException",
            "InstanceInformationFilterList and Filters cannot be used together",
        )
    out = []
    for index, item in enumerate(filters or [], start=1):
        key = str(item.get("Key") or "")
        values = _filter_values(item.get("Values"), f"filters.{index}.member.values")
        out.append(_predicate(key, values))
    for index, item in enumerate(legacy or [], start=1):
        key = str(item.get("key") or "")
        if key not in _LEGACY_KEYS:
            raise _validation(
                key,
                f"instanceInformationFilterList.{index}.member.key",
                f"Member must satisfy enum value set: [{', '.join(_LEGACY_KEYS)}]",
            )
        values = _filter_values(
            item.get("valueSet"), f"instanceInformationFilterList.{index}.member.valueSet"
        )
        out.append(_predicate(key, values))
    return out


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()


def _after(token: str) -> str:
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _error("InvalidNextToken", "The specified token isn't valid.") from exc
    if not isinstance(after, str):
        raise _error("InvalidNextToken", "The specified token isn't valid.")
    return after


def _max_results(raw: Any, low: int, high: int, default: int) -> int:
    if raw is None:
        return default
    limit = int(raw)
    if limit < low:
        raise _validation(
            raw, "maxResults", f"Member must have value greater than or equal to {low}"
        )
    if limit > high:
        raise _validation(raw, "maxResults", f"Member must have value less than or equal to {high}")
    return limit


def describe_instance_information(self: Any) -> ActionResult:
    """DescribeInstanceInformation (moto has none): the account/region's managed EC2 instances."""
    limit = _max_results(self._get_param("MaxResults"), MIN_RESULTS, MAX_RESULTS, DEFAULT_RESULTS)
    predicates = _predicates(
        self._get_param("Filters"), self._get_param("InstanceInformationFilterList")
    )
    token = self._get_param("NextToken")
    after = _after(str(token)) if token else None
    rows = []
    for instance, ping in STATE.managed_instances(self.current_account, self.region):
        if after is not None and instance.id <= after:
            continue
        row = STATE.instance_information(instance, ping)
        node = Node(row, {t["key"]: t["value"] for t in instance.get_tags()} if predicates else {})
        if all(p(node) for p in predicates):
            rows.append(row)
    result: dict[str, Any] = {"InstanceInformationList": rows[:limit]}
    if len(rows) > limit:
        result["NextToken"] = _token(rows[limit - 1]["InstanceId"])
    return ActionResult(result)


# --- ListCommandInvocations -------------------------------------------------------------------

Row = dict[str, Any]
RowPredicate = Callable[[Row], bool]


def _timestamp_filter(key: str, value: str) -> datetime:
    try:
        return _aware(datetime.fromisoformat(value))
    except ValueError as exc:
        raise _error(
            "InvalidFilterKey",
            f"The filter {key} takes a timestamp (such as 2024-07-07T00:00:00Z), not {value}",
        ) from exc


def _status_filter(value: str) -> RowPredicate:
    if value not in INVOCATION_STATUS_FILTERS:
        raise _error(
            "InvalidFilterKey",
            f"The filter value {value} is not valid for Status; valid values: "
            f"{', '.join(INVOCATION_STATUS_FILTERS)}",
        )
    if value == "DeliveryTimedOut":
        return lambda row: bool(row["StatusDetails"] == "Delivery Timed Out")
    if value == "ExecutionTimedOut":
        return lambda row: bool(row["StatusDetails"] == "Execution Timed Out")
    return lambda row: bool(row["Status"] == value)  # TimedOut: both kinds of timeout


def _command_filters(filters: Any) -> list[RowPredicate]:
    """ListCommandInvocations' Filters (CommandFilter: `key`, `value`), AND-ed."""
    if filters is None:
        return []
    if not isinstance(filters, list) or not filters:
        raise _validation(filters, "filters", "Member must have length greater than or equal to 1")
    if len(filters) > MAX_COMMAND_FILTERS:
        raise _validation(
            filters,
            "filters",
            f"Member must have length less than or equal to {MAX_COMMAND_FILTERS}",
        )
    checked = []
    for index, raw in enumerate(filters, start=1):
        item = raw if isinstance(raw, Mapping) else {}
        key, value = item.get("key"), item.get("value")
        member = f"filters.{index}.member"
        if key is None:
            raise _validation(None, f"{member}.key", "Member must not be null")
        if key not in COMMAND_FILTER_KEYS:
            raise _validation(
                key,
                f"{member}.key",
                f"Member must satisfy enum value set: [{', '.join(COMMAND_FILTER_KEYS)}]",
            )
        if value is None:
            raise _validation(None, f"{member}.value", "Member must not be null")
        value = str(value)
        if not value:
            raise _validation(
                value, f"{member}.value", "Member must have length greater than or equal to 1"
            )
        if len(value) > MAX_COMMAND_FILTER_VALUE:
            raise _validation(
                value,
                f"{member}.value",
                f"Member must have length less than or equal to {MAX_COMMAND_FILTER_VALUE}",
            )
        checked.append((str(key), value))
    out: list[RowPredicate] = []
    for key, value in checked:
        if key == "ExecutionStage":
            raise _error(
                "InvalidFilterKey",
                "The ExecutionStage filter can't be used with ListCommandInvocations, only with "
                "ListCommands",
            )
        if key == "Status":
            out.append(_status_filter(value))
        elif key == "DocumentName":
            out.append(_document_filter(value))
        else:
            out.append(_time_filter(key, _timestamp_filter(key, value)))
    return out


def _document_filter(name: str) -> RowPredicate:
    return lambda row: bool(row["DocumentName"] == name)


def _time_filter(key: str, at: datetime) -> RowPredicate:
    # "occurring July 7, 2021, and later" / "from before July 7, 2021"
    if key == "InvokedAfter":
        return lambda row: bool(row["RequestedDateTime"] >= at)
    return lambda row: bool(row["RequestedDateTime"] < at)


ListKey = tuple[int, int, str]


def _list_token(key: ListKey) -> str:
    return base64.urlsafe_b64encode(json.dumps({"invocation": list(key)}).encode()).decode()


def _list_after(token: str) -> ListKey:
    try:
        micros, index, instance_id = json.loads(base64.urlsafe_b64decode(token.encode()))[
            "invocation"
        ]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _error("InvalidNextToken", "The specified token isn't valid.") from exc
    if not (isinstance(micros, int) and isinstance(index, int) and isinstance(instance_id, str)):
        raise _error("InvalidNextToken", "The specified token isn't valid.")
    return micros, index, instance_id


def list_command_invocations(self: Any) -> ActionResult:
    """ListCommandInvocations (moto has none): one entry per (command, instance) from the
    timeline GetCommandInvocation answers from, newest first; `Details` adds its plugin."""
    command_id = self._get_param("CommandId")
    if command_id is not None:
        command_id = str(command_id)
        if len(command_id) < COMMAND_ID_LENGTH:
            raise _validation(
                command_id,
                "commandId",
                f"Member must have length greater than or equal to {COMMAND_ID_LENGTH}",
            )
        if len(command_id) > COMMAND_ID_LENGTH:
            raise _validation(
                command_id,
                "commandId",
                f"Member must have length less than or equal to {COMMAND_ID_LENGTH}",
            )
    instance_id = self._get_param("InstanceId")
    if instance_id is not None:
        instance_id = str(instance_id)
        if not _INSTANCE_ID.match(instance_id):
            raise _validation(
                instance_id,
                "instanceId",
                f"Member must satisfy regular expression pattern: {INSTANCE_ID_PATTERN}",
            )
    limit = _max_results(
        self._get_param("MaxResults"), LIST_MIN_RESULTS, LIST_MAX_RESULTS, LIST_DEFAULT_RESULTS
    )
    predicates = _command_filters(self._get_param("Filters"))
    details = bool(self._get_param("Details"))
    token = self._get_param("NextToken")
    after = _list_after(str(token)) if token else None
    rows = [
        (key, row)
        for key, row in STATE.list_invocations(self.ssm_backend, command_id, instance_id)
        if (after is None or key > after) and all(p(row) for p in predicates)
    ]
    page = [row for _, row in rows[:limit]]
    if not details:
        for row in page:
            row["CommandPlugins"] = []
    result: dict[str, Any] = {"CommandInvocations": page}
    if len(rows) > limit:
        result["NextToken"] = _list_token(rows[limit - 1][0])
    return ActionResult(result)


def _make_response_object(moto_response: Callable[[Any], dict[str, Any]]) -> Callable[[Any], Any]:
    def response_object(self: Any) -> dict[str, Any]:
        out = moto_response(self)
        invocations = getattr(self, "localaws_invocations", None)
        if invocations:
            out.update(STATE.summary(invocations))
            out["DocumentVersion"] = getattr(self, "localaws_document_version", "$DEFAULT")
        return out

    return response_object


def _on_create_snapshots(
    account_id: str, region: str, instance_id: str, outcome: str, snapshot_ids: list[str]
) -> None:
    STATE.record_create_snapshots(account_id, region, instance_id, outcome, snapshot_ids)


# (class, attribute) -> moto's own value (None: moto has none), kept by install() for uninstall()
_ORIGINALS: dict[tuple[type, str], Any] = {}


def install() -> None:
    """Patch moto's SSM (idempotent; in-process or in the server)."""
    ec2_snapshots.add_create_snapshots_observer(_on_create_snapshots)
    if installed():
        return
    responses = SimpleSystemManagerResponse
    wrapped: list[tuple[type, str, Callable[[Any], Any]]] = [
        (responses, "send_command", _make_send_command),
        (responses, "get_command_invocation", _make_get_command_invocation),
        (Command, "response_object", _make_response_object),
    ]
    added: list[tuple[type, str, Any]] = [
        (responses, "cancel_command", cancel_command),  # moto has none
        (responses, "describe_instance_information", describe_instance_information),
        (responses, "list_command_invocations", list_command_invocations),
    ]
    moto_reset = BackendDict.reset.__func__  # type: ignore[attr-defined]

    def reset_backends(cls: Any) -> None:
        moto_reset(cls)
        STATE.reset()  # moto's reset forgets the commands: their invocations and log go too

    added.append((BackendDict, "reset", classmethod(reset_backends)))
    for cls, name, wrap in wrapped:
        _ORIGINALS[(cls, name)] = cls.__dict__[name]
        setattr(cls, name, wrap(getattr(cls, name)))
    for cls, name, value in added:
        _ORIGINALS[(cls, name)] = cls.__dict__.get(name)
        setattr(cls, name, value)
    setattr(responses, _INSTALLED, True)


def installed() -> bool:
    """Whether `install()` patched moto (and `uninstall()` has not put it back)."""
    return bool(getattr(SimpleSystemManagerResponse, _INSTALLED, False))


def uninstall() -> None:
    """Put moto's SSM back (for in-process tests that must leave moto as they found it)."""
    ec2_snapshots.remove_create_snapshots_observer(_on_create_snapshots)
    if not installed():
        return
    for (cls, name), original in _ORIGINALS.items():
        if original is None:
            delattr(cls, name)
        else:
            setattr(cls, name, original)
    _ORIGINALS.clear()
    setattr(SimpleSystemManagerResponse, _INSTALLED, False)


# --- in-process access -----------------------------------------------------------------------


def configure(body: Mapping[str, Any]) -> dict[str, Any]:
    """Apply settings and per-instance injections (the control API's POST body); the state."""
    STATE.configure(body)
    return STATE.state()


def state(*, drain: bool = False) -> dict[str, Any]:
    """Settings, injections left, the log (`drain` forgets it), `peak_in_progress`,
    `in_progress`."""
    return STATE.state(drain=drain)


def log(*, drain: bool = False) -> list[dict[str, Any]]:
    """The order log, oldest first (`drain` forgets it)."""
    return STATE.log(drain=drain)


def reset() -> None:
    """Defaults, no injections, no invocations, an empty log."""
    STATE.reset()
