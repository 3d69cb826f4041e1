"""Deliver events, schedules and manual invokes to the deployed function the way AWS would.

    router = Router(aws, deployment)
    router.fire_schedule(policy="nightly-app")     # Scheduler: the deployed target's Input
    router.route_event(event)                      # EventBridge: matching rules' targets
    router.route_emitted_events()                  # the local AWS's completion events
    router.invoke({"policy": ...})                 # `aws lambda invoke`
    # and, from creation to close(), Step Functions' Lambda tasks (a daemon thread)

Everything is read from the local AWS, not from the template: the rules and their targets
(`ListRules`, `ListTargetsByRule`), the schedules (`GetSchedule`) and the function's handler,
timeout, memory and environment (`GetFunctionConfiguration`). Rules are matched and their
targets' input built by `localaws.event_patterns`. The function runs as Lambda runs it, from its
deployed code (the zip CloudFormation gave the local Lambda, read back from the asset bucket and
checked against the function's `CodeSha256`) in execution environments of
`localaws.lambda_runtime`. The topic's messages are read by `localaws.report_inbox`.

Step Functions' Lambda tasks (moto's ASL interpreter, in the server) are queued by the server;
a router serves them from its creation until `close()`: a daemon thread long-polls them
(`LocalAws.poll_lambda_tasks`) and runs each in the same runtime as the other deliveries, on a
pool of `state_task_workers` threads (so a Map's concurrent items run concurrently), with
`source="states"`, then posts the function's response or error back. Of several routers
serving a function, the newest takes its tasks until it closes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from localaws.deploy import Deployment
from localaws.event_patterns import (
    UnsupportedPattern,
    apply_target_input,
    as_payload,
    event_matches,
)
from localaws.lambda_layer import layer_directories
from localaws.lambda_runtime import (
    FunctionConfiguration,
    Invocation,
    LambdaRuntime,
    LogSink,
    runtime_environment,
)
from localaws.process import LocalAws

log = logging.getLogger("localaws.router")

__all__ = [
    "Router",
    "RuleTarget",
    "instance_state_change_event",
]


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
    (e.g. a smaller `SNAPSET_SAFETY_MARGIN_MS` for fast tests). The function's stdout and
    stderr (its Powertools logs and EMF metrics) are kept in `lambda_logs` and echoed to
    `log_stream`. `worker_setup` files run in each new execution environment (test harnesses;
    see `localaws.lambda_bootstrap`). Step Functions' Lambda tasks are run on up to
    `state_task_workers` threads at once (`serve_state_tasks=False`: not served by this router).
    """

    aws: LocalAws
    deployment: Deployment
    remaining_ms: int | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)
    log_stream: TextIO | None = None
    keep_log_lines: int = 20_000
    worker_setup: tuple[Path, ...] = ()
    invocations: list[Invocation] = field(default_factory=list)
    state_task_workers: int = 4
    serve_state_tasks: bool = True

    def __post_init__(self) -> None:
        self._sink = LogSink(self.keep_log_lines, self.log_stream)
        self._runtime = LambdaRuntime(layer_directories(), self._sink, self.worker_setup)
        self._code_root = Path(tempfile.mkdtemp(prefix="localaws-code-"))
        self._code_dirs: dict[str, Path] = {}
        self._functions: dict[str, FunctionConfiguration] = {}
        self._credentials: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._events = self.aws.client("events")
        self._scheduler = self.aws.client("scheduler")
        self._lambda = self.aws.client("lambda")
        self._stop = threading.Event()
        self._slot_freed = threading.Event()
        self._free_slots = self.state_task_workers
        self._pool: ThreadPoolExecutor | None = None
        self._runtime_id = f"router-{uuid.uuid4()}"
        self._poller: threading.Thread | None = None
        if self.serve_state_tasks:
            self._pool = ThreadPoolExecutor(
                max_workers=self.state_task_workers, thread_name_prefix="localaws-states-task"
            )
            # registered before returning: the tasks queued from now on are this router's
            self.aws.poll_lambda_tasks(0, 0.0, self.served_functions(), runtime=self._runtime_id)
            self._poller = threading.Thread(
                target=self._serve_state_tasks, name="localaws-states-poller", daemon=True
            )
            self._poller.start()

    def close(self) -> None:
        """Stop serving Step Functions (the running tasks finish), end the function's execution
        environments and remove their code (call when done)."""
        self._stop.set()
        self._slot_freed.set()
        if self._poller is not None:
            self._poller.join()
            with contextlib.suppress(Exception):  # the server may be gone already
                self.aws.leave_lambda_tasks(self._runtime_id)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._runtime.close()
        shutil.rmtree(self._code_root, ignore_errors=True)

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
            if isinstance(as_payload(s["Target"].get("Input", "")), dict)
            and as_payload(s["Target"]["Input"]).get("policy") == policy
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
        return self._invoke(function, as_payload(text), f"schedule {schedule['Name']}")

    # --- Lambda ---------------------------------------------------------------------------

    def invoke(self, payload: Any, function_name: str | None = None) -> Invocation:
        """A direct invoke (`aws lambda invoke`, the CLI's `snapset run`)."""
        function = function_name or self.deployment.function_name
        return self._invoke(function, payload, "invoke")

    def function_environment(self, function_name: str | None = None) -> dict[str, str]:
        """The deployed function's environment variables, read from the local Lambda."""
        return dict(self._function(function_name or self.deployment.function_name).env)

    def _function(self, name: str) -> FunctionConfiguration:
        with self._lock:
            if name not in self._functions:
                config = self._lambda.get_function_configuration(FunctionName=name)
                self._functions[name] = FunctionConfiguration(
                    name=config["FunctionName"],
                    arn=config["FunctionArn"],
                    handler=config["Handler"],
                    timeout=int(config["Timeout"]),
                    memory=int(config["MemorySize"]),
                    env=dict(config.get("Environment", {}).get("Variables", {})),
                    role=config["Role"],
                    code_sha256=config.get("CodeSha256", ""),
                )
            return self._functions[name]

    def function_code(self, function_name: str | None = None) -> Path:
        """The directory holding the deployed function's code, unzipped (once per router)."""
        function = self._function(function_name or self.deployment.function_name)
        with self._lock:
            if function.name not in self._code_dirs:
                self._code_dirs[function.name] = self._fetch_code(function)
            return self._code_dirs[function.name]

    def _fetch_code(self, function: FunctionConfiguration) -> Path:
        # moto's GetFunction gives no URL it serves; the template says where Lambda got the zip.
        [logical_id] = [
            logical_id
            for logical_id in self.deployment.logical_ids("AWS::Lambda::Function")
            if self.deployment.physical_id(logical_id) == function.name
        ]
        assert self.deployment.resolver is not None
        code = self.deployment.resolver.resolve(
            self.deployment.template["Resources"][logical_id]["Properties"]["Code"]
        )
        data = (
            self.aws.client("s3")
            .get_object(Bucket=code["S3Bucket"], Key=code["S3Key"])["Body"]
            .read()
        )
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        if function.code_sha256 and digest != function.code_sha256:
            raise LookupError(
                f"{function.name}: s3://{code['S3Bucket']}/{code['S3Key']} is not the deployed "
                f"code (CodeSha256 {function.code_sha256}, the object's {digest})"
            )
        target = self._code_root / function.name
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(target)
        return target

    def function_role(self, function_name: str | None = None) -> str:
        """The deployed function's execution role ARN."""
        return self._function(function_name or self.deployment.function_name).role

    def function_credentials(self, function_name: str | None = None) -> dict[str, str]:
        """The execution role's credentials the function runs with, as Lambda gets them
        (kept for the router's life, as a warm environment keeps them)."""
        function = self._function(function_name or self.deployment.function_name)
        with self._lock:
            if function.name not in self._credentials:
                self._credentials[function.name] = self.aws.assume_role(
                    function.role, session_name=function.name
                )
            return self._credentials[function.name]

    # --- Step Functions --------------------------------------------------------------------

    def _serve_state_tasks(self) -> None:
        """Claim Step Functions' Lambda tasks while a thread is free; heartbeat otherwise (the
        server fails a task nobody polls for, see `localaws.stepfunctions`)."""
        assert self._pool is not None
        while not self._stop.is_set():
            with self._lock:
                free = self._free_slots
            try:
                tasks = self.aws.poll_lambda_tasks(
                    free, 1.0 if free else 0.0, self.served_functions(), runtime=self._runtime_id
                )
            except Exception:
                self._stop.wait(0.5)
                continue
            if not free:
                self._slot_freed.wait(1.0)
                self._slot_freed.clear()
            for task in tasks:
                with self._lock:
                    self._free_slots -= 1
                self._pool.submit(self._run_state_task, task)

    def served_functions(self) -> list[str]:
        """The functions whose Step Functions tasks this router takes: its deployment's."""
        ids = self.deployment.physical_ids
        return [
            ids[logical_id]
            for logical_id in self.deployment.logical_ids("AWS::Lambda::Function")
            if logical_id in ids
        ]

    def _run_state_task(self, task: dict[str, Any]) -> None:
        try:
            self.aws.complete_lambda_task(task["task_id"], **self._state_task_result(task))
        except Exception:  # the server is gone: nobody waits for the result
            log.warning("could not post the result of Step Functions task %s", task["task_id"])
        finally:
            with self._lock:
                self._free_slots += 1
            self._slot_freed.set()

    def _state_task_result(self, task: dict[str, Any]) -> dict[str, Any]:
        """The Invoke response Lambda gives Step Functions: the function's result, or its
        error with `FunctionError: Unhandled`; a failure to run it at all is a service error."""
        try:
            invocation = self._invoke(task["function_name"], json.loads(task["payload"]), "states")
        except Exception as exc:
            return {"service_error": f"localaws router: {type(exc).__name__}: {exc}"}
        error = invocation.error
        if error is None:
            return {"payload": json.dumps(invocation.result)}
        body = {
            "errorMessage": error.message,
            "errorType": error.error_type,
            "requestId": invocation.request_id,
            "stackTrace": list(error.stack_trace),
        }
        return {"payload": json.dumps(body), "function_error": "Unhandled"}

    def _invoke(self, function_name: str, payload: Any, source: str) -> Invocation:
        function = self._function(function_name)
        remaining_ms = (
            self.remaining_ms if self.remaining_ms is not None else function.timeout * 1000
        )
        env = runtime_environment(
            function,
            region=self.aws.region,
            endpoint_url=self.aws.endpoint_url,
            overrides=self.env_overrides,
            credentials=self.function_credentials(function_name),
        )
        invocation = self._runtime.invoke(
            function,
            self.function_code(function.name),
            payload,
            source=source,
            env=env,
            remaining_ms=remaining_ms,
        )
        with self._lock:
            self.invocations.append(invocation)
        return invocation


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
