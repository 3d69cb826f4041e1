"""Step Functions on the local AWS: moto's ASL interpreter, made to run our state machines.

moto 5.2.5 carries LocalStack's ASL interpreter (`moto/stepfunctions/parser`), off unless
`{"stepfunctions": {"execute_state_machine": true}}` is set. `install()` switches it on in the
server and closes the gaps that matter to a deployed state machine:

* **Lambda tasks reach the caller's `Router`.** The interpreter invokes Lambda through a boto3
  client on the server's own endpoint; moto's `LambdaBackend.invoke` could only run the code in
  Docker. The patched `invoke` queues a Step Functions call as a `LambdaTask` and blocks until a
  result is posted: a `Router` long-polls `GET /_localaws/lambda-tasks`, runs the function in
  its `LambdaRuntime` and posts the result (`POST /_localaws/lambda-tasks/result`). Other
  callers of Invoke get moto's behaviour, unchanged.
* **Its calls are made with the state machine's role.** The interpreter's clients signed with
  `ak`/`sk` (an unknown key once IAM is enforced); they now carry the role's credentials, as
  `states.amazonaws.com` gets them (`iam.assume_role_as_service`; the role's trust policy must
  name that principal), so moto's access control checks the role's grants. A Distributed
  Map's child executions are no requests (the interpreter runs them in-process): with IAM
  enforced, the role must still allow `states:StartExecution`, checked when the Map starts.
* **Waits are scalable.** Retry backoff and `Wait` states sleep `seconds * wait_scale`
  (`POST /_localaws/stepfunctions {"wait_scale": 0}`); every wait is recorded with its unscaled
  length, so tests see the backoff the definition asked for.
* **Execution names**: an unnamed StartExecution gets a UUID (moto names it `None`, so a second
  one clashed with the first), and a name AWS refuses is `InvalidName`.
* **Errors**: the interpreter's own (`InvalidDefinition`, ...) reach the client with their code.
* **Distributed Map**: tolerated failures enforced, `ItemBatcher` (`localaws.stepfunctions_map`).

See README.md (item 12) for what remains of moto's gaps.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from moto.awslambda.models import LambdaBackend
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.core.config import default_user_config
from moto.core.exceptions import AWSError, JsonRESTError
from moto.stepfunctions.exceptions import InvalidName
from moto.stepfunctions.parser import api as parser_api
from moto.stepfunctions.parser import models as parser_models
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.state.wait.wait_function import wait_function
from moto.stepfunctions.parser.asl.utils import boto_client as boto_client_module
from moto.stepfunctions.parser.models import StepFunctionsParserBackend

from localaws import iam, stepfunctions_map

__all__ = [
    "CALLER_HEADER",
    "LIVE_SECONDS",
    "NO_RUNTIME_SECONDS",
    "RESULT_MARGIN_SECONDS",
    "LambdaTask",
    "LambdaTasks",
    "StatesControl",
    "install",
    "validate_execution_name",
]

log = logging.getLogger("localaws.stepfunctions")

_INSTALLED = "_localaws_stepfunctions"
# The header the interpreter's Lambda client adds: its Invoke calls go to the task queue.
CALLER_HEADER = "X-Localaws-Caller"
STATES_PRINCIPAL = "states.amazonaws.com"
# A task no runtime has claimed fails after this long without a poll (no Router attached).
NO_RUNTIME_SECONDS = 5.0
# A runtime that has not polled for this long no longer takes tasks (routers poll every ~1 s).
LIVE_SECONDS = 3.0
# Beyond the function's timeout, how long a claimed task waits for its result: the runtime's
# first-invocation init allowance (10 s) plus its wait for the last log lines (5 s), and slack.
RESULT_MARGIN_SECONDS = 20.0


class LambdaServiceError(JsonRESTError):
    """Lambda's own failure (not the function's): `ServiceException`, HTTP 500."""

    code = 500

    def __init__(self, message: str) -> None:
        super().__init__("ServiceException", message)


@dataclass
class LambdaTask:
    """One Invoke by Step Functions, waiting for a runtime to run it."""

    task_id: str
    function_name: str
    function_arn: str
    payload: str
    timeout_seconds: int
    enqueued: float
    claimed: float | None = None
    result: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "function_name": self.function_name,
            "function_arn": self.function_arn,
            "payload": self.payload,
            "timeout_seconds": self.timeout_seconds,
        }


@dataclass
class _Runtime:
    """A poller of the task queue (a `Router`): since when, and which functions it serves."""

    first_seen: float
    last_seen: float
    functions: frozenset[str] | None  # None: every function

    def serves(self, function_name: str) -> bool:
        return self.functions is None or function_name in self.functions


class LambdaTasks:
    """The queue between the interpreter's Invoke calls and the runtimes that poll for them.

    A task goes to the newest live runtime serving its function (the one that first polled
    last, among those that polled in the last `LIVE_SECONDS`): a test's own `Router` takes
    over from a session-wide one while it lives, and hands back when it closes (`leave`).
    """

    def __init__(self, no_runtime_seconds: float = NO_RUNTIME_SECONDS) -> None:
        self.no_runtime_seconds = no_runtime_seconds
        self._cond = threading.Condition()
        self._pending: deque[LambdaTask] = deque()
        self._claimed: dict[str, LambdaTask] = {}
        self._runtimes: dict[str, _Runtime] = {}
        self.completed = 0

    def _last_served(self, function_name: str) -> float | None:
        seen = [r.last_seen for r in self._runtimes.values() if r.serves(function_name)]
        return max(seen, default=None)

    def _runtime_for(self, function_name: str, now: float) -> str | None:
        live = [
            (runtime.first_seen, runtime_id)
            for runtime_id, runtime in self._runtimes.items()
            if now - runtime.last_seen < LIVE_SECONDS and runtime.serves(function_name)
        ]
        return max(live)[1] if live else None

    def run(self, task: LambdaTask) -> dict[str, Any]:
        """Queue the task and wait for its result (`payload`, `function_error`)."""
        with self._cond:
            self._pending.append(task)
            self._cond.notify_all()
            while True:
                now = time.monotonic()
                if task.result is not None:
                    return task.result
                if task.claimed is None:
                    seen = self._last_served(task.function_name) or task.enqueued
                    waited = now - max(seen, task.enqueued)
                    if waited >= self.no_runtime_seconds:
                        if task in self._pending:
                            self._pending.remove(task)
                        raise LambdaServiceError(
                            f"localaws: no Lambda runtime took the Step Functions task for "
                            f"{task.function_name} in {self.no_runtime_seconds:g} s: Lambda "
                            f"tasks run in a localaws.router.Router attached to this server "
                            f"(create one; it serves them until close())"
                        )
                    self._cond.wait(self.no_runtime_seconds - waited)
                    continue
                deadline = task.claimed + task.timeout_seconds + RESULT_MARGIN_SECONDS
                if now >= deadline:
                    self._claimed.pop(task.task_id, None)
                    raise LambdaServiceError(
                        f"localaws: the runtime that took the Step Functions task for "
                        f"{task.function_name} posted no result in "
                        f"{task.timeout_seconds + RESULT_MARGIN_SECONDS:g} s"
                    )
                self._cond.wait(deadline - now)

    def poll(
        self,
        max_tasks: int,
        wait_seconds: float,
        functions: Collection[str] | None = None,
        runtime_id: str = "",
    ) -> list[dict[str, Any]]:
        """Claim up to `max_tasks` pending tasks this runtime serves (of `functions` only, if
        given), waiting up to `wait_seconds` for one. Every poll (`max_tasks=0` too) keeps the
        runtime live."""
        deadline = time.monotonic() + max(0.0, wait_seconds)
        served = frozenset(functions) if functions is not None else None
        with self._cond:
            while True:
                now = time.monotonic()
                runtime = self._runtimes.get(runtime_id)
                if runtime is None or runtime.functions != served:
                    self._runtimes[runtime_id] = runtime = _Runtime(now, now, served)
                runtime.last_seen = now
                self._cond.notify_all()
                found = (
                    [
                        t
                        for t in self._pending
                        if self._runtime_for(t.function_name, now) == runtime_id
                    ]
                    if max_tasks > 0
                    else []
                )
                if found or now >= deadline or max_tasks <= 0:
                    break
                self._cond.wait(min(deadline - now, 1.0))
            out: list[dict[str, Any]] = []
            for task in found[:max_tasks]:
                self._pending.remove(task)
                task.claimed = time.monotonic()
                self._claimed[task.task_id] = task
                out.append(task.to_dict())
            return out

    def leave(self, runtime_id: str) -> bool:
        """The runtime stops serving (its tasks go to the next live one at once)."""
        with self._cond:
            left = self._runtimes.pop(runtime_id, None) is not None
            self._cond.notify_all()
            return left

    def complete(self, task_id: str, result: Mapping[str, Any]) -> bool:
        """Post a claimed task's result; False if it is unknown (or gave up waiting)."""
        with self._cond:
            task = self._claimed.pop(task_id, None)
            if task is None:
                return False
            task.result = dict(result)
            self.completed += 1
            self._cond.notify_all()
            return True

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "pending": len(self._pending),
                "running": len(self._claimed),
                "completed": self.completed,
                "runtimes": {
                    runtime_id: {
                        "functions": None if r.functions is None else sorted(r.functions),
                        "last_poll_seconds_ago": round(time.monotonic() - r.last_seen, 3),
                    }
                    for runtime_id, r in self._runtimes.items()
                },
            }

    def reset(self) -> None:
        """Fail the pending and running tasks (their executions are gone with moto's reset)."""
        with self._cond:
            for task in [*self._pending, *self._claimed.values()]:
                task.result = {"service_error": "localaws: reset while the task was waiting"}
            self._pending.clear()
            self._claimed.clear()
            self.completed = 0
            self._cond.notify_all()


@dataclass
class StatesControl:
    """The server's Step Functions settings: the wait scale and the waits recorded."""

    wait_scale: float = 1.0
    tasks: LambdaTasks = field(default_factory=LambdaTasks)
    waits: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _credentials: dict[str, dict[str, str]] = field(default_factory=dict)

    def record_wait(self, kind: str, seconds: float) -> float:
        """Record a wait the definition asks for; returns how long to really wait."""
        with self._lock:
            self.waits.append({"kind": kind, "seconds": float(seconds)})
            return max(0.0, float(seconds)) * self.wait_scale

    def configure(self, body: Mapping[str, Any]) -> None:
        unknown = set(body) - {"wait_scale", "no_runtime_seconds"}
        if unknown:
            raise ValueError(f"unknown stepfunctions fields: {sorted(unknown)}")
        if "wait_scale" in body:
            scale = float(body["wait_scale"])
            if scale < 0:
                raise ValueError("wait_scale must be >= 0")
            self.wait_scale = scale
        if "no_runtime_seconds" in body:
            seconds = float(body["no_runtime_seconds"])
            if seconds <= 0:
                raise ValueError("no_runtime_seconds must be > 0")
            self.tasks.no_runtime_seconds = seconds

    def state(self, *, drain: bool = False) -> dict[str, Any]:
        with self._lock:
            waits = list(self.waits)
            if drain:
                self.waits.clear()
        return {
            "wait_scale": self.wait_scale,
            "no_runtime_seconds": self.tasks.no_runtime_seconds,
            "waits": waits,
            "lambda_tasks": self.tasks.stats(),
        }

    def role_credentials(self, role_arn: str, region: str) -> dict[str, str]:
        """The state machine role's credentials as Step Functions gets them (kept until reset)."""
        with self._lock:
            if role_arn not in self._credentials:
                self._credentials[role_arn] = iam.assume_role_as_service(
                    role_arn, STATES_PRINCIPAL, "localaws-states", region
                )
            return self._credentials[role_arn]

    def reset(self) -> None:
        with self._lock:
            self.wait_scale = 1.0
            self.waits.clear()
            self._credentials.clear()
        self.tasks.reset()
        self.tasks.no_runtime_seconds = NO_RUNTIME_SECONDS
        _enable_execution()


# --- execution names ----------------------------------------------------------------------

# AWS: 1-80 characters; no white space, brackets `< > { } [ ]`, wildcards `? *`, special
# characters `" # % \ ^ | ~ ` $ & , ; : /`, control characters (U+0000-001F, U+007F-009F).
_BAD_NAME = re.compile(r"[\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]")


def validate_execution_name(name: str) -> None:
    if not 1 <= len(name) <= 80 or _BAD_NAME.search(name):
        raise InvalidName(f"Invalid Name: '{name}'")


# --- the patches --------------------------------------------------------------------------


def _enable_execution() -> None:
    default_user_config.setdefault("stepfunctions", {})["execute_state_machine"] = True


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    return None if value is None else str(value)


def _patch_lambda_invoke(control: StatesControl) -> None:
    def wrap(moto_invoke: Any) -> Any:
        def invoke(  # noqa: PLR0917 - moto's signature
            self: Any,
            function_name: str,
            qualifier: str | None,
            body: Any,
            headers: Any,
            response_headers: Any,
        ) -> str | bytes | None:
            if _header(headers, CALLER_HEADER) != "states":
                answer: str | bytes | None = moto_invoke(
                    self, function_name, qualifier, body, headers, response_headers
                )
                return answer
            fn = self.get_function(function_name, qualifier)  # ResourceNotFound as moto says
            payload = body.decode() if isinstance(body, bytes) else (body or "{}")
            task = LambdaTask(
                task_id=str(uuid.uuid4()),
                function_name=fn.function_name,
                function_arn=fn.function_arn,
                payload=payload,
                timeout_seconds=int(fn.timeout or 3),
                enqueued=time.monotonic(),
            )
            result = control.tasks.run(task)
            if result.get("service_error"):
                raise LambdaServiceError(str(result["service_error"]))
            if result.get("function_error"):
                response_headers["x-amz-function-error"] = str(result["function_error"])
            payload_bytes = str(result.get("payload", "null")).encode("utf-8")
            response_headers["Content-Length"] = str(len(payload_bytes))
            return payload_bytes

        return invoke

    LambdaBackend.invoke = wrap(LambdaBackend.invoke)  # type: ignore[method-assign]
    LambdaSimpleBackend.invoke = wrap(LambdaSimpleBackend.invoke)  # type: ignore[method-assign]


def _patch_clients(control: StatesControl) -> None:
    """The interpreter's boto3 clients: the role's credentials, our endpoint, the header."""

    client_lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        role_arn = getattr(state_credentials, "role_arn", None)
        if role_arn:
            creds = control.role_credentials(str(role_arn), region)
        else:  # no role to act as: moto's dummies (an unknown key under enforced IAM)
            creds = {"access_key_id": "ak", "secret_access_key": "sk", "session_token": ""}
        with client_lock:  # boto3's default session is not thread-safe; Map workers run at once
            client = _new_client(service, region, creds)

        def mark(request: Any, **_: Any) -> None:
            request.headers[CALLER_HEADER] = "states"

        client.meta.events.register("before-sign", mark)
        return client

    def _new_client(service: str, region: str, creds: Mapping[str, str]) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            region_name=region,
            endpoint_url=f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '5000')}",
            aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"],
            aws_session_token=creds["session_token"] or None,
            config=Config(
                parameter_validation=False,
                retries={"max_attempts": 0, "total_max_attempts": 1},
                connect_timeout=60,
                read_timeout=99999999,
            ),
        )

    setattr(boto_client_module, "boto_client_for", boto_client_for)  # noqa: B010
    for name, module in list(sys.modules.items()):
        if name.startswith("moto.stepfunctions.parser") and hasattr(module, "boto_client_for"):
            setattr(module, "boto_client_for", boto_client_for)  # noqa: B010


def _patch_waits(control: StatesControl) -> None:
    class _RetrySleep:
        """`time` as the retrier sees it: its backoff sleep, recorded and scaled."""

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            time.sleep(control.record_wait("retry", seconds))

    setattr(retrier_decl, "time", _RetrySleep())  # noqa: B010

    def wait_interval(_self: Any, env: Any, wait_seconds: float) -> None:
        scaled = control.record_wait("wait", wait_seconds)
        deadline = time.monotonic() + scaled
        while env.is_running():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            env.program_state_event.wait(remaining)

    wait_function.WaitFunction._wait_interval = wait_interval  # type: ignore[method-assign,assignment]


def _patch_start_execution() -> None:
    moto_start = StepFunctionsParserBackend.start_execution

    def start_execution(
        self: Any,
        state_machine_arn: str,
        name: str | None = None,
        execution_input: str | None = None,
        trace_header: Any = None,
    ) -> Any:
        if name is None:
            name = str(uuid.uuid4())  # AWS names an unnamed execution with a UUID
        else:
            validate_execution_name(name)
        return moto_start(self, state_machine_arn, name, execution_input, trace_header)  # type: ignore[arg-type]

    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]


def _fix_parser_errors() -> None:
    """The interpreter's errors (`InvalidDefinition`, ...) name their code in `code`, which
    moto's `AWSError` never reads (its `TYPE`): they reached the client with an empty code."""
    for value in vars(parser_api).values():
        if (
            isinstance(value, type)
            and issubclass(value, AWSError)
            and value.TYPE is None
            and isinstance(vars(value).get("code"), str)
        ):
            value.TYPE = vars(value)["code"]
            value.STATUS = int(vars(value).get("status_code", 400))


def _child_start_refusal(control: StatesControl, env: Any) -> str | None:
    """Why the role may not start a Distributed Map's child executions (AWS's Distributed Map
    starts them with `states:StartExecution` on the state machine; the interpreter runs them
    in-process, without a request to check)."""
    if not iam.enforced():
        return None
    details = env.aws_execution_details
    credentials = control.role_credentials(details.role_arn, details.region)
    if iam.session_permits(credentials, details.account, "states:StartExecution"):
        return None
    machine = env.states.context_object.context_object_data["StateMachine"]["Id"]
    role = str(details.role_arn).rsplit("/", 1)[-1]
    return (
        f"User: arn:aws:sts::{details.account}:assumed-role/{role}/localaws-states is not "
        f"authorized to perform: states:StartExecution on resource: {machine}"
    )


def _patch_cloudformation() -> None:
    """moto's CloudFormation creates `AWS::StepFunctions::StateMachine` in its plain backend,
    which the API no longer serves once execution is on (it answers from the interpreter's
    backend): a deployed state machine would exist for the stack and not for StartExecution.
    Create it where the API looks, with its logging and tracing configuration."""
    from moto.stepfunctions import models as plain_models  # noqa: PLC0415
    from moto.stepfunctions.responses import get_backend  # noqa: PLC0415
    from moto.utilities.tagging_service import TaggingService  # noqa: PLC0415

    def create(
        cls: Any,  # noqa: ARG001
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,  # noqa: ARG001
    ) -> Any:
        props = cloudformation_json["Properties"]
        return get_backend(account_id, region_name).create_state_machine(
            props.get("StateMachineName", resource_name),
            props.get("DefinitionString", ""),
            props.get("RoleArn", ""),
            tags=TaggingService.convert_dict_to_tags_input(
                {t["Key"]: t["Value"] for t in props.get("Tags", [])}
            ),
            loggingConfiguration=_lower_keys(props.get("LoggingConfiguration")),
            tracingConfiguration=_lower_keys(props.get("TracingConfiguration")),
            sm_type=props.get("StateMachineType"),
        )

    plain_models.StateMachine.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment,arg-type]


def _patch_redrive_count() -> None:
    """AWS's context object has `Execution.RedriveCount` (0 until an execution is redriven);
    moto's has not, so a definition that reads `$$.Execution.RedriveCount` failed. moto
    cannot redrive, so it is always 0 here."""
    from moto.stepfunctions.parser.backend import execution_worker  # noqa: PLC0415

    worker = execution_worker.ExecutionWorker
    original = worker._get_evaluation_environment

    def environment(self: Any) -> Any:
        env = original(self)
        env.states.context_object.context_object_data["Execution"].setdefault("RedriveCount", 0)  # type: ignore[typeddict-item]
        return env

    worker._get_evaluation_environment = environment  # type: ignore[method-assign]


def _lower_keys(value: Any) -> Any:
    """CloudFormation's `Level`, `Enabled`, ... as the API's `level`, `enabled`, ..."""
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def install(control: StatesControl) -> None:
    """Execution on, and the patches above (idempotent)."""
    _enable_execution()
    if getattr(parser_models, _INSTALLED, False):
        return
    _patch_lambda_invoke(control)
    _patch_clients(control)
    _patch_waits(control)
    _patch_start_execution()
    _fix_parser_errors()
    _patch_cloudformation()
    _patch_redrive_count()
    stepfunctions_map.install(lambda env: _child_start_refusal(control, env))
    setattr(parser_models, _INSTALLED, True)
