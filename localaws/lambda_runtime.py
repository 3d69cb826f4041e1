"""The Lambda runtime, emulated: the deployed code runs in its own execution environments.

    function = FunctionConfiguration(name, arn, handler, timeout, memory, env)
    env = runtime_environment(function, region=..., endpoint_url=..., overrides={...})
    runtime = LambdaRuntime(layers=layer_directories(), sink=LogSink(keep=1000, echo=None))
    invocation = runtime.invoke(function, code_dir, payload, source="invoke", env=env,
                                remaining_ms=30_000)

moto runs Lambda code only in Docker. Here each execution environment is a worker process
(`localaws/lambda_bootstrap.py`) that sees what Lambda gives the function and nothing else: the
function's code unzipped from the deployed asset (`code_dir`), the layers (`lambda_layer`'s
stand-ins for the Powertools layer and the runtime's boto3), the deployed environment (boto3
pointed at the local AWS through `AWS_ENDPOINT_URL`, the role's credentials, the Lambda runtime
variables), a Lambda context with the remaining time and request id. No site-packages, no
repository on `sys.path`: a module the asset leaves out fails here as it would in Lambda.

Like Lambda, an environment stays warm for the next invocation with the same configuration
(the handler's cached settings and session, `cold_start` false), concurrent invocations get
their own environments, an environment that exceeds the function's timeout or memory is killed
and its invocation fails. The function's stdout and stderr go to a `LogSink`.

Invocations are synchronous and never retried here: an invocation that raises is returned as an
`Invocation` whose `error` is a `FunctionError` (Lambda's errorType, errorMessage, stackTrace),
and callers redeliver (as Lambda's async retry would).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "FunctionConfiguration",
    "FunctionError",
    "Invocation",
    "LambdaRuntime",
    "LogSink",
    "runtime_environment",
]

BOOTSTRAP = Path(__file__).with_name("lambda_bootstrap.py")
# How long a new environment may take to answer beyond the function's timeout: its init (the
# imports) is not part of the timeout in Lambda either, up to 10 s.
INIT_SECONDS = 10.0
# How long an invocation's return waits for its last log lines (its END line) to be read.
LOG_WAIT_SECONDS = 5.0
END_PREFIX = "END RequestId: "


class FunctionError(Exception):
    """An invocation's unhandled error, as Lambda returns it (FunctionError: Unhandled)."""

    def __init__(self, error_type: str, message: str, stack_trace: Sequence[str] = ()) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.stack_trace = tuple(stack_trace)


@dataclass
class Invocation:
    """One delivery to the function: where from, the payload, and its result or error.

    `max_rss_mb` is the execution environment's peak memory so far (Lambda's "Max Memory
    Used"); `cold` says the environment was new.
    """

    source: str
    function_name: str
    payload: Any
    result: Any = None
    error: FunctionError | None = None
    seconds: float = 0.0
    request_id: str = ""
    max_rss_mb: float = 0.0
    cold: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class LogSink:
    """The function's log lines (its stdout and stderr): kept, optionally echoed."""

    def __init__(self, keep: int, echo: TextIO | None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.echo = echo
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            if self.echo is not None:
                self.echo.write(line + "\n")


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
    code_sha256: str = ""


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
        "AWS_EXECUTION_ENV": "AWS_Lambda_python",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        # Active tracing has no X-Ray daemon locally (see the deploy substitutions)
        "POWERTOOLS_TRACE_DISABLED": "true",
        **(overrides or {}),
    }


class _Worker:
    """One execution environment: a bootstrap process and the threads reading its pipes."""

    def __init__(
        self,
        code_dir: Path,
        layers: Sequence[Path],
        env: Mapping[str, str],
        setup: Sequence[Path],
        sink: LogSink,
    ) -> None:
        command = [sys.executable, "-I", "-S", str(BOOTSTRAP), "--task-root", str(code_dir)]
        for layer in layers:
            command += ["--layer", str(layer)]
        for path in setup:
            command += ["--setup", str(path)]
        self.process = subprocess.Popen(  # noqa: S603  # our bootstrap, our arguments
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),  # the function's environment alone, not this process's
            text=True,
            encoding="utf-8",
            start_new_session=True,  # so that kill() ends whatever the function started too
        )
        self.answers: queue.Queue[str | None] = queue.Queue()
        self.last_lines: collections.deque[str] = collections.deque(maxlen=40)
        self.started = False
        self._sink = sink
        self._ended: dict[str, threading.Event] = {}
        self._ended_lock = threading.Lock()
        threading.Thread(target=self._read_answers, daemon=True).start()
        self._log_reader = threading.Thread(target=self._read_logs, daemon=True)
        self._log_reader.start()

    def _read_answers(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.answers.put(line)
        self.answers.put(None)  # the environment is gone

    def _read_logs(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.rstrip("\n")
            self.last_lines.append(line)
            self._sink.write_line(line)
            if line.startswith(END_PREFIX):
                with self._ended_lock:
                    ended = self._ended.pop(line.removeprefix(END_PREFIX).strip(), None)
                if ended is not None:
                    ended.set()

    def drain_logs(self) -> None:
        """Wait (briefly) until the log reader has read what the exited process wrote."""
        self._log_reader.join(timeout=LOG_WAIT_SECONDS)

    def call(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any] | str:
        """The answer to one invocation, or why there is none ("timeout", "exited"); when it
        returns an answer, the invocation's log lines are in the sink."""
        assert self.process.stdin is not None
        ended = threading.Event()
        with self._ended_lock:
            self._ended[str(request["request_id"])] = ended
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return "exited"
        try:
            line = self.answers.get(timeout=timeout + (0.0 if self.started else INIT_SECONDS))
        except queue.Empty:
            return "timeout"
        self.started = True
        if line is None:
            return "exited"
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            return "exited"  # not our bootstrap's answer: the environment is not usable
        ended.wait(timeout=LOG_WAIT_SECONDS)
        return answer

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


_WorkerKey = tuple[str, str, tuple[tuple[str, str], ...], tuple[str, ...]]


@dataclass
class LambdaRuntime:
    """Execution environments for deployed functions, kept warm between invocations.

    `layers` are the directories put on `sys.path` after the function's code (see
    `lambda_layer.layer_directories`); `setup` files run in each new environment after its
    handler is imported (test harnesses only; see `lambda_bootstrap`).
    """

    layers: Sequence[Path]
    sink: LogSink
    setup: Sequence[Path] = ()
    _idle: dict[_WorkerKey, list[_Worker]] = field(default_factory=dict)
    _all: list[_Worker] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def invoke(
        self,
        function: FunctionConfiguration,
        code_dir: Path,
        payload: Any,
        *,
        source: str,
        env: Mapping[str, str],
        remaining_ms: int,
    ) -> Invocation:
        """Run the function's handler once in a warm (or new) environment; a failure is
        returned. The context reports `remaining_ms`; the environment is killed at the
        function's own timeout, as Lambda kills it."""
        payload = json.loads(json.dumps(payload))  # Lambda delivers JSON, nothing else
        invocation = Invocation(source, function.name, payload, request_id=str(uuid.uuid4()))
        key: _WorkerKey = (
            function.name,
            str(code_dir),
            tuple(sorted(env.items())),
            tuple(str(p) for p in self.setup),
        )
        worker = self._acquire(key, code_dir, env)
        request = {
            "request_id": invocation.request_id,
            "payload": payload,
            "remaining_ms": remaining_ms,
            "function_name": function.name,
            "function_arn": function.arn,
            "memory": function.memory,
        }
        started = time.monotonic()
        answer = worker.call(request, timeout=float(function.timeout))
        invocation.seconds = time.monotonic() - started
        keep = isinstance(answer, dict)
        if answer == "timeout":
            invocation.error = FunctionError(
                "Sandbox.Timedout", f"Task timed out after {function.timeout:.2f} seconds"
            )
        elif answer == "exited":
            code = worker.process.wait()
            worker.drain_logs()
            tail = "\n".join(worker.last_lines)
            invocation.error = FunctionError(
                "Runtime.ExitError", f"Runtime exited with error: exit status {code}\n{tail}"
            )
        elif isinstance(answer, dict):
            invocation.cold = bool(answer.get("cold"))
            # Lambda runs a failed init again on the next invocation, in a new environment.
            keep = not answer.get("init_error")
            invocation.max_rss_mb = int(answer.get("max_rss_kb", 0)) / 1024
            if invocation.max_rss_mb > function.memory:
                keep = False
                invocation.error = FunctionError(
                    "Runtime.OutOfMemory",
                    f"Runtime exited: {invocation.max_rss_mb:.0f} MB used, the function has "
                    f"{function.memory} MB",
                )
            elif "error" in answer:
                error = answer["error"]
                invocation.error = FunctionError(
                    str(error.get("errorType", "")),
                    str(error.get("errorMessage", "")),
                    error.get("stackTrace", ()),
                )
            else:
                invocation.result = answer.get("result")
        self._release(key, worker, keep)
        return invocation

    def _acquire(self, key: _WorkerKey, code_dir: Path, env: Mapping[str, str]) -> _Worker:
        dead = []
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                warm = idle.pop()
                if warm.process.poll() is None:
                    return warm
                self._all.remove(warm)  # it died idle: Lambda would start a new one
                dead.append(warm)
        for gone in dead:
            gone.kill()
        worker = _Worker(code_dir, self.layers, env, self.setup, self.sink)
        with self._lock:
            self._all.append(worker)
        return worker

    def _release(self, key: _WorkerKey, worker: _Worker, keep: bool) -> None:
        with self._lock:
            closed = worker not in self._all  # close() ran meanwhile and killed it
            if keep and not closed and worker.process.poll() is None:
                self._idle.setdefault(key, []).append(worker)
                return
            if not closed:
                self._all.remove(worker)
        worker.kill()

    def close(self) -> None:
        """End every execution environment (the next invocation starts cold)."""
        with self._lock:
            workers, self._all, self._idle = self._all, [], {}
        for worker in workers:
            worker.kill()
