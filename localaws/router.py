"""Deliver events, schedules and manual invokes to the deployed function the way AWS would.

    router = Router(aws, deployment)
    router.fire_schedule(policy="nightly-app")     # Scheduler: the deployed target's Input
    router.route_event(event)                      # EventBridge: matching rules' targets
    router.route_emitted_events()                  # the local AWS's completion events
    router.invoke({"policy": ...})                 # `aws lambda invoke`
    inbox = ReportInbox(aws, deployment.topic_arn) # the topic's messages, through SQS

Everything is read from the local AWS, not from the template: the rules and their targets
(`ListRules`, `ListTargetsByRule`), the schedules (`GetSchedule`) and the function's handler,
timeout, memory and environment (`GetFunctionConfiguration`). The function runs in this process
(moto runs Lambda code only in Docker): its environment is set for the duration of the call,
with boto3 pointed at the local AWS through `AWS_ENDPOINT_URL` and dummy credentials.

moto 5.2.5 does not implement EventBridge `TestEventPattern` (the backend raises
NotImplementedError), so patterns are matched here by `event_matches`: EventBridge's
documented matching for exact values, `prefix`, `suffix`, `anything-but`, `numeric`, `exists`,
`equals-ignore-case`, `wildcard` and `$or`. Anything else raises `UnsupportedPattern`.

Invocations are synchronous and never retried here: an invocation that raises is returned as an
`Invocation` with `error` set, and callers redeliver (as Lambda's async retry would).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import ipaddress
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from localaws.deploy import Deployment
from localaws.process import LocalAws
from localaws.topic_queue import drain_notifications, subscribe_queue

__all__ = [
    "Invocation",
    "LambdaContext",
    "Report",
    "ReportInbox",
    "Router",
    "RuleTarget",
    "UnsupportedPattern",
    "apply_target_input",
    "event_matches",
    "instance_state_change_event",
    "reset_execution_environment",
]

EVENT_JSON = "aws.events.event.json"
RULE_ARN = "aws.events.rule-arn"
RULE_NAME = "aws.events.rule-name"
INGESTION_TIME = "aws.events.event.ingestion-time"
SCHEDULER_ATTRIBUTES = (
    "aws.scheduler.scheduled-time",
    "aws.scheduler.schedule-arn",
    "aws.scheduler.execution-id",
    "aws.scheduler.attempt-number",
)


class UnsupportedPattern(ValueError):
    """An event pattern or input path this local EventBridge does not implement."""


# --- event patterns --------------------------------------------------------------------------

_MISSING: Any = object()


def event_matches(pattern: Mapping[str, Any] | None, event: Mapping[str, Any]) -> bool:
    """Whether an EventBridge event pattern matches an event (EventBridge's rules)."""
    if not pattern:
        return True
    return _match_object(pattern, event)


def _match_object(pattern: Mapping[str, Any], value: Any) -> bool:
    for key, rule in pattern.items():
        if key == "$or":
            if not isinstance(rule, list) or not rule:
                raise UnsupportedPattern(f"$or must be a non-empty list, got {rule!r}")
            if not any(_match_object(alternative, value) for alternative in rule):
                return False
            continue
        field_value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
        if isinstance(rule, Mapping):
            # a missing (or non-object) field matches like an empty object: only filters such
            # as `exists: false` can match inside it
            if not _match_object(rule, field_value if isinstance(field_value, Mapping) else {}):
                return False
        elif isinstance(rule, list):
            if not _match_values(rule, field_value):
                return False
        else:
            raise UnsupportedPattern(f"pattern value for {key!r} must be a list or an object")
    return True


def _match_values(filters: Sequence[Any], value: Any) -> bool:
    """A field matches if any filter matches it (or, for an array, any of its elements)."""
    for f in filters:
        if isinstance(f, Mapping):
            if _match_named(f, value):
                return True
        elif value is not _MISSING:
            items = value if isinstance(value, list) else [value]
            if any(_same(f, item) for item in items):
                return True
    return False


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    return bool(expected == actual and type(expected) is type(actual))


def _match_named(f: Mapping[str, Any], value: Any) -> bool:
    if len(f) != 1:
        raise UnsupportedPattern(f"a filter object must have one key, got {dict(f)!r}")
    (name, arg), = f.items()  # fmt: skip
    if name == "exists":
        return (value is not _MISSING) is bool(arg)
    if value is _MISSING:
        return False  # every other filter needs the field to be there
    items = value if isinstance(value, list) else [value]
    return any(_match_named_one(name, arg, item) for item in items)


def _match_named_one(name: str, arg: Any, item: Any) -> bool:
    if name == "prefix":
        if isinstance(arg, Mapping) and "equals-ignore-case" in arg:
            return isinstance(item, str) and item.lower().startswith(
                str(arg["equals-ignore-case"]).lower()
            )
        return isinstance(item, str) and item.startswith(str(arg))
    if name == "suffix":
        if isinstance(arg, Mapping) and "equals-ignore-case" in arg:
            return isinstance(item, str) and item.lower().endswith(
                str(arg["equals-ignore-case"]).lower()
            )
        return isinstance(item, str) and item.endswith(str(arg))
    if name == "equals-ignore-case":
        return isinstance(item, str) and item.lower() == str(arg).lower()
    if name == "anything-but":
        if isinstance(arg, Mapping):
            (inner, inner_arg), = arg.items()  # fmt: skip
            if inner not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
                raise UnsupportedPattern(f"anything-but {{{inner!r}: ...}} is not supported")
            values = inner_arg if isinstance(inner_arg, list) else [inner_arg]
            return not any(_match_named_one(inner, v, item) for v in values)
        values = arg if isinstance(arg, list) else [arg]
        return not any(_same(v, item) for v in values)
    if name == "numeric":
        if isinstance(item, bool) or not isinstance(item, int | float):
            return False
        ops: dict[str, Callable[[float, float], bool]] = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            "=": lambda a, b: a == b,
            ">=": lambda a, b: a >= b,
            ">": lambda a, b: a > b,
        }
        pairs = list(zip(arg[::2], arg[1::2], strict=True))
        return all(ops[op](float(item), float(bound)) for op, bound in pairs)
    if name == "wildcard":
        if not isinstance(item, str):
            return False
        regex = "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", arg))
        return re.fullmatch(regex, item) is not None
    if name == "cidr":
        try:
            return ipaddress.ip_address(item) in ipaddress.ip_network(arg)
        except ValueError:
            return False
    raise UnsupportedPattern(f"filter {name!r} is not supported by the local event router")


# --- target input ----------------------------------------------------------------------------

_PATH_TOKEN = re.compile(r"\.([A-Za-z0-9_\-$@]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def json_path(document: Any, path: str) -> Any:
    """EventBridge's JSONPath subset: `$`, `$.a.b`, `$.a[0]`, `$['a-b']`. Missing: None."""
    if not path.startswith("$"):
        raise UnsupportedPattern(f"input path must start with $: {path!r}")
    position, value = 1, document
    while position < len(path):
        match = _PATH_TOKEN.match(path, position)
        if match is None:
            raise UnsupportedPattern(f"input path {path!r} is not supported")
        name, index, quoted, dquoted = match.groups()
        key: Any = int(index) if index is not None else (name or quoted or dquoted)
        if isinstance(key, int):
            value = value[key] if isinstance(value, list) and key < len(value) else None
        else:
            value = value.get(key) if isinstance(value, Mapping) else None
        position = match.end()
    return value


def _fill_template(template: str, values: Mapping[str, Any]) -> str:
    """Replace `<name>` placeholders: inside a JSON string the value's text, outside its JSON.

    Scanning tracks JSON string literals so that a placeholder in quotes gets the bare text
    (escaped for the string) and one outside gets a JSON value, as EventBridge does.
    """
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(template):
        c = template[i]
        if c == "<":
            end = template.find(">", i + 1)
            name = template[i + 1 : end] if end > 0 else ""
            if end > 0 and name in values:
                value = values[name]
                if in_string:
                    text = value if isinstance(value, str) else json.dumps(value)
                    out.append("" if value is None else json.dumps(text)[1:-1])
                else:
                    out.append(json.dumps(value))
                i = end + 1
                continue
            if end > 0 and name.startswith("aws.") and re.fullmatch(r"[\w.\-]+", name):
                raise UnsupportedPattern(f"input template variable <{name}> is not supported")
        elif c == '"' and _escaped_backslash(template, i):
            in_string = not in_string
        out.append(c)
        i += 1
    return "".join(out)


def _escaped_backslash(text: str, quote: int) -> bool:
    """Whether the backslashes before a quote are themselves escaped (an even number)."""
    count, j = 0, quote - 1
    while j >= 0 and text[j] == "\\":
        count, j = count + 1, j - 1
    return count % 2 == 0


def _as_payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a non-JSON template or Input is delivered as text


def apply_target_input(
    target: Mapping[str, Any], event: Mapping[str, Any], rule_arn: str, rule_name: str
) -> Any:
    """What EventBridge sends a target: `Input`, `InputPath` or `InputTransformer`, else the
    event itself."""
    if "Input" in target and target["Input"] is not None:
        return _as_payload(target["Input"])
    if target.get("InputPath"):
        return json_path(event, target["InputPath"])
    transformer = target.get("InputTransformer")
    if transformer:
        values: dict[str, Any] = {
            name: json_path(event, path)
            for name, path in (transformer.get("InputPathsMap") or {}).items()
        }
        values[EVENT_JSON] = dict(event)
        values[RULE_ARN] = rule_arn
        values[RULE_NAME] = rule_name
        values[INGESTION_TIME] = event.get("time")
        return _as_payload(_fill_template(transformer["InputTemplate"], values))
    return dict(event)


def instance_state_change_event(
    instance_id: str,
    state: str,
    *,
    account: str,
    region: str,
    when: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An `EC2 Instance State-change Notification` as EventBridge delivers it (AWS's documented
    shape; moto does not emit it)."""
    when = when or datetime.now(UTC)
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": account,
        "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": state},
    }


# --- invoking the function in-process --------------------------------------------------------


@dataclass
class LambdaContext:
    """The Lambda context object: the attributes the handler and Powertools read."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline: float  # time.monotonic() at which the invocation times out
    identity: Any = None
    client_context: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    """One delivery to the function: where from, the payload, and its result or error."""

    source: str
    function_name: str
    payload: Any
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    request_id: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _LogSink:
    """The function's log lines (its stdout during invocations): kept, optionally echoed."""

    def __init__(self, keep: int, echo: TextIO | None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.echo = echo
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            *complete, self._partial = (self._partial + text).split("\n")
            self.lines.extend(complete)
            if self.echo is not None:
                self.echo.write(text)


class _StdoutSwitch(io.TextIOBase):
    """Stands in for sys.stdout during invocations.

    Powertools binds its log handler to the sys.stdout of the moment the handler module is
    imported, which is this object when the router imports it: during an invocation the lines
    go to the router's sink, outside one to whatever sys.stdout then is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sink: _LogSink | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        sink = self.sink
        if sink is not None:
            sink.write(text)
        else:
            out = sys.stdout if sys.stdout is not self else sys.__stdout__
            if out is not None:
                out.write(text)
        return len(text)

    def flush(self) -> None:
        pass


_ENV_PREFIXES = ("AWS_", "POWERTOOLS_", "SNAPSET_", "_HANDLER", "LAMBDA_")


class _InvocationScope:
    """Process-wide environment and stdout of in-process invocations.

    os.environ and sys.stdout are global, so concurrent invocations (threads) share one scope:
    the first sets them, the last restores them; an invocation needing a different environment
    waits until the scope is free.

    Like Lambda, invocations with the same configuration reuse a warm execution environment:
    the handler module's `functools.cache`d `settings()`/`session()` are cleared only when the
    environment differs from the previous invocation's (a cold start), and by
    `reset_execution_environment()`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._env: dict[str, str] | None = None
        self._warm_env: dict[str, str] | None = None
        self._saved_env: dict[str, str] = {}
        self._saved_stdout: Any = None
        self.stdout = _StdoutSwitch()

    @contextlib.contextmanager
    def enter(
        self, env: Mapping[str, str], sink: _LogSink, clear: Callable[[], None]
    ) -> Iterator[None]:
        wanted = dict(env)
        with self._cond:
            while self._active and (self._env != wanted or self.stdout.sink is not sink):
                self._cond.wait()
            if not self._active:
                self._saved_env = {
                    k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)
                }
                for key in self._saved_env:
                    del os.environ[key]
                os.environ.update(wanted)
                self._env = wanted
                self._saved_stdout = sys.stdout
                sys.stdout = self.stdout
                self.stdout.sink = sink
                if self._warm_env != wanted:
                    clear()  # cold start
                    self._warm_env = wanted
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    for key in [k for k in os.environ if k.startswith(_ENV_PREFIXES)]:
                        del os.environ[key]
                    os.environ.update(self._saved_env)
                    sys.stdout = self._saved_stdout
                    self.stdout.sink = None
                    self._env = None
                    self._cond.notify_all()

    def forget_warm_environment(self) -> None:
        with self._cond:
            self._warm_env = None


_SCOPE = _InvocationScope()


def reset_execution_environment(module_name: str = "snapset.handler") -> None:
    """Clear the handler module's per-environment caches (the next invocation starts cold)."""
    _clear_caches(module_name)
    _SCOPE.forget_warm_environment()


def _clear_caches(module_name: str) -> None:
    module = sys.modules.get(module_name)
    for cached in ("settings", "session"):
        cache_clear = getattr(getattr(module, cached, None), "cache_clear", None)
        if callable(cache_clear):
            cache_clear()


@dataclass(frozen=True)
class RuleTarget:
    rule_name: str
    rule_arn: str
    event_bus: str
    pattern: dict[str, Any] | None
    target: dict[str, Any]

    @property
    def target_id(self) -> str:
        return str(self.target["Id"])

    @property
    def arn(self) -> str:
        return str(self.target["Arn"])


@dataclass
class _Function:
    name: str
    arn: str
    handler: str
    timeout: int
    memory: int
    env: dict[str, str]


def _function_name(arn: str) -> str | None:
    parts = arn.split(":")
    if len(parts) >= 7 and parts[2] == "lambda" and parts[5] == "function":
        return parts[6]
    return None


@dataclass
class Router:
    """Routes deliveries to the deployed function, in-process, with its deployed configuration.

    `remaining_ms` overrides the time the Lambda context reports at the start of an invocation
    (default: the deployed timeout); `env_overrides` are added to the deployed environment
    (e.g. a smaller `SNAPSET_SAFETY_MARGIN_MS` for fast tests). The function's stdout (its
    Powertools logs and EMF metrics) is kept in `lambda_logs` and echoed to `log_stream`.
    """

    aws: LocalAws
    deployment: Deployment
    remaining_ms: int | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)
    log_stream: TextIO | None = None
    keep_log_lines: int = 20_000
    invocations: list[Invocation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sink = _LogSink(self.keep_log_lines, self.log_stream)
        self._functions: dict[str, _Function] = {}
        self._lock = threading.Lock()
        self._events = self.aws.client("events")
        self._scheduler = self.aws.client("scheduler")
        self._lambda = self.aws.client("lambda")

    def close(self) -> None:
        """Clear the handler's cached settings and session (call when done with the stack)."""
        reset_execution_environment()

    @property
    def lambda_logs(self) -> list[str]:
        return list(self._sink.lines)

    # --- EventBridge ----------------------------------------------------------------------

    def rules(self, event_bus: str = "default") -> list[RuleTarget]:
        """The enabled rules of a bus, one entry per target, as deployed."""
        out = []
        for page in self._events.get_paginator("list_rules").paginate(EventBusName=event_bus):
            for rule in page["Rules"]:
                if rule.get("State") != "ENABLED" or "EventPattern" not in rule:
                    continue
                pattern = json.loads(rule["EventPattern"])
                targets = self._events.list_targets_by_rule(
                    Rule=rule["Name"], EventBusName=event_bus
                )["Targets"]
                out += [
                    RuleTarget(rule["Name"], rule["Arn"], event_bus, pattern, t) for t in targets
                ]
        return out

    def matching_targets(
        self, event: Mapping[str, Any], event_bus: str = "default"
    ) -> list[RuleTarget]:
        return [t for t in self.rules(event_bus) if event_matches(t.pattern, event)]

    def route_event(self, event: Mapping[str, Any], event_bus: str = "default") -> list[Invocation]:
        """Deliver an event to every matching rule's targets (Lambda targets only)."""
        out = []
        for rule_target in self.matching_targets(event, event_bus):
            function = _function_name(rule_target.arn)
            if function is None:
                raise UnsupportedPattern(
                    f"rule {rule_target.rule_name} target {rule_target.target_id} is "
                    f"{rule_target.arn}; the router delivers to Lambda functions only"
                )
            payload = apply_target_input(
                rule_target.target, event, rule_target.rule_arn, rule_target.rule_name
            )
            source = f"rule {rule_target.rule_name} target {rule_target.target_id}"
            out.append(self._invoke(function, payload, source))
        return out

    def route_emitted_events(self) -> list[Invocation]:
        """Drain the events the local AWS emitted (snapshot completion) and route them."""
        out = []
        for event in self.aws.drain_events():
            out += self.route_event(event)
        return out

    # --- Scheduler ------------------------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        """Every deployed schedule (`GetSchedule` output)."""
        out = []
        for page in self._scheduler.get_paginator("list_schedules").paginate():
            for summary in page["Schedules"]:
                out.append(
                    self._scheduler.get_schedule(
                        Name=summary["Name"], GroupName=summary.get("GroupName", "default")
                    )
                )
        return out

    def schedule_for(self, policy: str) -> dict[str, Any]:
        """The one deployed schedule whose input names this policy."""
        found = [
            s
            for s in self.schedules()
            if isinstance(_as_payload(s["Target"].get("Input", "")), dict)
            and _as_payload(s["Target"]["Input"]).get("policy") == policy
        ]
        if len(found) != 1:
            raise LookupError(f"{len(found)} schedules deliver policy {policy!r}")
        return found[0]

    def fire_schedule(
        self,
        name: str | None = None,
        *,
        policy: str | None = None,
        scheduled_time: datetime | None = None,
        attempt: int = 1,
        group: str = "default",
    ) -> Invocation:
        """Deliver a schedule's input, with Scheduler's context attributes filled in."""
        if name is not None:
            schedule = self._scheduler.get_schedule(Name=name, GroupName=group)
        elif policy is not None:
            schedule = self.schedule_for(policy)
        else:
            raise ValueError("give a schedule name or a policy")
        if schedule.get("State") != "ENABLED":
            raise ValueError(f"schedule {schedule['Name']} is {schedule.get('State')}")
        target = schedule["Target"]
        function = _function_name(target["Arn"])
        if function is None:
            raise UnsupportedPattern(f"schedule target {target['Arn']} is not a Lambda function")
        when = (scheduled_time or datetime.now(UTC)).astimezone(UTC)
        attributes = {
            "aws.scheduler.scheduled-time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "aws.scheduler.schedule-arn": schedule["Arn"],
            "aws.scheduler.execution-id": str(uuid.uuid4()),
            "aws.scheduler.attempt-number": str(attempt),
        }
        text = target.get("Input", "{}")
        for attribute, value in attributes.items():  # plain text substitution, as Scheduler
            text = text.replace(f"<{attribute}>", value)
        return self._invoke(function, _as_payload(text), f"schedule {schedule['Name']}")

    # --- Lambda ---------------------------------------------------------------------------

    def invoke(self, payload: Any, function_name: str | None = None) -> Invocation:
        """A direct invoke (`aws lambda invoke`, the CLI's `snapset run`)."""
        function = function_name or self.deployment.function_name
        return self._invoke(function, payload, "invoke")

    def function_environment(self, function_name: str | None = None) -> dict[str, str]:
        """The deployed function's environment variables, read from the local Lambda."""
        return dict(self._function(function_name or self.deployment.function_name).env)

    def _function(self, name: str) -> _Function:
        with self._lock:
            if name not in self._functions:
                config = self._lambda.get_function_configuration(FunctionName=name)
                self._functions[name] = _Function(
                    name=config["FunctionName"],
                    arn=config["FunctionArn"],
                    handler=config["Handler"],
                    timeout=int(config["Timeout"]),
                    memory=int(config["MemorySize"]),
                    env=dict(config.get("Environment", {}).get("Variables", {})),
                )
            return self._functions[name]

    def _runtime_env(self, function: _Function) -> dict[str, str]:
        region = self.aws.region
        return {
            **function.env,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_ENDPOINT_URL": self.aws.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            # never read a developer's own AWS configuration
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory),
            "_HANDLER": function.handler,
            # Active tracing has no X-Ray daemon locally (see the deploy substitutions)
            "POWERTOOLS_TRACE_DISABLED": "true",
            **self.env_overrides,
        }

    def _load_handler(self, handler: str) -> tuple[Callable[[Any, Any], Any], Any]:
        module_name, _, attribute = handler.rpartition(".")
        module = importlib.import_module(module_name)
        return getattr(module, attribute), module

    def _invoke(self, function_name: str, payload: Any, source: str) -> Invocation:
        function = self._function(function_name)
        payload = json.loads(json.dumps(payload))  # Lambda delivers JSON, nothing else
        invocation = Invocation(source, function.name, payload, request_id=str(uuid.uuid4()))
        module_name = function.handler.rpartition(".")[0]

        def clear() -> None:
            _clear_caches(module_name)

        started = time.monotonic()
        remaining_ms = (
            self.remaining_ms if self.remaining_ms is not None else function.timeout * 1000
        )
        with _SCOPE.enter(self._runtime_env(function), self._sink, clear):
            # first import inside the scope: Powertools reads its settings and stream at import
            handler, _ = self._load_handler(function.handler)
            context = LambdaContext(
                function_name=function.name,
                function_version="$LATEST",
                invoked_function_arn=function.arn,
                memory_limit_in_mb=function.memory,
                aws_request_id=invocation.request_id,
                log_group_name=f"/aws/lambda/{function.name}",
                log_stream_name=f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}",
                deadline=time.monotonic() + remaining_ms / 1000,
            )
            try:
                invocation.result = handler(payload, context)
            except Exception as exc:  # a failed invocation is a result, as for Lambda
                invocation.error = exc
        invocation.seconds = time.monotonic() - started
        with self._lock:
            self.invocations.append(invocation)
        return invocation


# --- the topic's messages ---------------------------------------------------------------------


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
            message=_as_payload(envelope["Message"]),
            attributes=attributes,
            message_id=envelope["MessageId"],
            topic_arn=envelope["TopicArn"],
        )

    def drain(self) -> list[Report]:
        """Every notification delivered so far (then forgotten), in arrival order."""
        return [self.parse(e) for e in drain_notifications(self._sqs, self.queue_url)]
