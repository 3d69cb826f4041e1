"""The Lambda runtime, emulated in this process: a function's handler runs with its deployed
configuration, its environment and a Lambda context.

    function = FunctionConfiguration(name, arn, handler, timeout, memory, env)
    env = runtime_environment(function, region=..., endpoint_url=..., overrides={...})
    invocation = invoke_handler(function, payload, source="invoke", env=env,
                                sink=LogSink(keep=1000, echo=None), remaining_ms=30_000)

moto runs Lambda code only in Docker; here the handler is imported and called in this process.
Its environment (the deployed variables, boto3 pointed at the local AWS through
`AWS_ENDPOINT_URL`, dummy credentials, the Lambda runtime variables) is set for the duration of
the call and restored after, and its stdout goes to a `LogSink`.

Invocations are synchronous and never retried here: an invocation that raises is returned as an
`Invocation` with `error` set, and callers redeliver (as Lambda's async retry would).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "FunctionConfiguration",
    "Invocation",
    "LambdaContext",
    "LogSink",
    "invoke_handler",
    "load_handler",
    "reset_execution_environment",
    "runtime_environment",
]


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


class LogSink:
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
        self.sink: LogSink | None = None

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
        self, env: Mapping[str, str], sink: LogSink, clear: Callable[[], None]
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


@dataclass
class FunctionConfiguration:
    """What the runtime needs of a deployed function (`GetFunctionConfiguration`)."""

    name: str
    arn: str
    handler: str
    timeout: int
    memory: int
    env: dict[str, str]
    role: str = ""  # the execution role's ARN


def runtime_environment(
    function: FunctionConfiguration,
    *,
    region: str,
    endpoint_url: str,
    overrides: Mapping[str, str] | None = None,
    credentials: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The function's environment in Lambda: its variables, the runtime's, the local AWS's.

    `credentials` (`access_key_id`, `secret_access_key`, `session_token`) are the execution
    role's, as Lambda passes them; without them, moto's dummies.
    """
    creds = credentials or {
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "session_token": "testing",
    }
    return {
        **function.env,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": creds["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
        "AWS_SESSION_TOKEN": creds["session_token"],
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
        **(overrides or {}),
    }


def load_handler(handler: str) -> tuple[Callable[[Any, Any], Any], Any]:
    module_name, _, attribute = handler.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attribute), module


def invoke_handler(
    function: FunctionConfiguration,
    payload: Any,
    *,
    source: str,
    env: Mapping[str, str],
    sink: LogSink,
    remaining_ms: int,
) -> Invocation:
    """Run the function's handler once, in `env`, its stdout to `sink`; a failure is returned."""
    payload = json.loads(json.dumps(payload))  # Lambda delivers JSON, nothing else
    invocation = Invocation(source, function.name, payload, request_id=str(uuid.uuid4()))
    module_name = function.handler.rpartition(".")[0]

    def clear() -> None:
        _clear_caches(module_name)

    started = time.monotonic()
    with _SCOPE.enter(env, sink, clear):
        # first import inside the scope: Powertools reads its settings and stream at import
        handler, _ = load_handler(function.handler)
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
    return invocation
