"""`LocalAws`: run the local AWS server in its own process, for tests, the demo and benchmarks.

    with LocalAws() as aws:
        ec2 = aws.client("ec2")
        ...

The server runs as ``sys.executable -m localaws.server`` in its own session (process group).
It is stopped (SIGTERM to the group, then SIGKILL after a timeout) on ``__exit__`` whatever
ended the ``with`` block (an exception, a failed assertion, Ctrl-C), by an ``atexit`` guard if
``stop()`` was never reached, and by the server itself if this process dies (it watches its
parent pid).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
from botocore.config import Config

from localaws.faults import FaultConfig, FaultRule, rules_from

__all__ = ["LocalAws", "LocalAwsError"]

ADMIN_USER = "localaws-admin"
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class LocalAwsError(RuntimeError):
    pass


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalAws:
    def __init__(
        self,
        *,
        region: str = "us-east-1",
        snapshot_delay: float | None = 0.5,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        verbose: bool = False,
        enforce_iam: bool = False,
    ) -> None:
        self.region = region
        self.snapshot_delay = snapshot_delay
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.verbose = verbose
        self.enforce_iam = enforce_iam
        # (access key id, secret, session token) of `client()`: moto's dummies, or the admin
        # user made when IAM is enforced
        self.credentials: tuple[str, str, str | None] = ("testing", "testing", None)
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise LocalAwsError("LocalAws is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        if self._proc is not None:
            raise LocalAwsError("already started")
        deadline = time.monotonic() + self.startup_timeout
        last_error = "not started"
        for _ in range(3):  # a free port can be taken between probing and binding: retry
            try:
                self._spawn(_free_port(), deadline)
                if self.enforce_iam:
                    self._enforce_iam()
                return self
            except LocalAwsError as exc:
                last_error = str(exc)
                self.stop()
                if time.monotonic() >= deadline:
                    break
            except BaseException:  # Ctrl-C while waiting for the server: leave nothing behind
                self.stop()
                raise
        raise LocalAwsError(f"local AWS server did not start: {last_error}")

    def _spawn(self, port: int, deadline: float) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="localaws-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        delay = -1.0 if self.snapshot_delay is None else self.snapshot_delay
        cmd = [
            sys.executable,
            "-m",
            "localaws.server",
            "--port",
            str(port),
            "--snapshot-delay",
            str(delay),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.verbose:
            cmd.append("--verbose")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p
        )
        self.port = port
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: Ctrl-C in a terminal doesn't hit it
        )
        atexit.register(self.stop)
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalAwsError(
                    f"server exited with {self._proc.returncode}: {self._log_tail()}"
                )
            with contextlib.suppress(OSError, LocalAwsError):
                if self._control("GET", "health", timeout=1.0).get("status") == "ok":
                    return
            time.sleep(0.05)
        raise LocalAwsError(f"server not healthy in {self.startup_timeout}s: {self._log_tail()}")

    def _log_tail(self, limit: int = 2000) -> str:
        if not self.log_path:
            return ""
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")[-limit:]
        return ""

    def stop(self) -> None:
        """Terminate the server's process group, then kill it after ``stop_timeout``."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=self.stop_timeout)
            # anything the server may have left in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
            self.log_path = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- AWS clients -------------------------------------------------------------------------

    def client(self, service: str, *, max_attempts: int = 3, **kwargs: Any) -> Any:
        """A boto3 client pointed at the server (dummy credentials, standard retry mode).

        ``max_attempts`` counts every attempt, the first included: 1 means no retries.
        """
        config = Config(retries={"mode": "standard", "total_max_attempts": max_attempts})
        key, secret, token = self.credentials
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            region_name=kwargs.pop("region_name", self.region),
            aws_access_key_id=kwargs.pop("aws_access_key_id", key),
            aws_secret_access_key=kwargs.pop("aws_secret_access_key", secret),
            aws_session_token=kwargs.pop("aws_session_token", token),
            config=kwargs.pop("config", config),
            **kwargs,
        )

    # --- IAM ---------------------------------------------------------------------------------

    def _set_moto_auth(self, unauthenticated_calls: float) -> None:
        """moto's `/moto-api/reset-auth`: access control on after this many calls (inf: off)."""
        request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=str(unauthenticated_calls).encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would hide it from moto
        )
        with urllib.request.urlopen(request, timeout=10.0) as response:  # noqa: S310
            response.read()

    def _enforce_iam(self) -> None:
        """An administrator user for `client()`, made with access control off; then on."""
        self._set_moto_auth(float("inf"))
        self.credentials = ("testing", "testing", None)
        iam = self.client("iam")
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(
            UserName=ADMIN_USER,
            PolicyName="administrator",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        self.credentials = (key["AccessKeyId"], key["SecretAccessKey"], None)
        self._set_moto_auth(0)

    def assume_role(
        self, role_arn: str, *, session_name: str, service: str = "lambda.amazonaws.com"
    ) -> dict[str, str]:
        """Credentials of a role, as `service` gets them (its trust policy must allow it):
        `access_key_id`, `secret_access_key`, `session_token`."""
        payload = {
            "role_arn": role_arn,
            "service": service,
            "session_name": session_name,
            "region": self.region,
        }
        credentials: dict[str, str] = self._control("POST", "assume-role", payload)
        return credentials

    # --- control API -------------------------------------------------------------------------

    def _control(
        self, method: str, route: str, payload: Any = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
            f"{self.endpoint_url}/{route}"
            if route.startswith("moto-api")
            else f"{self.endpoint_url}/_localaws/{route}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise LocalAwsError(f"{method} {route}: {exc.code} {exc.read()!r}") from exc
        result: dict[str, Any] = json.loads(raw) if raw.strip().startswith(b"{") else {}
        return result

    def health(self) -> dict[str, Any]:
        return self._control("GET", "health")

    def set_faults(
        self,
        *rules: FaultRule | Mapping[str, Any],
        seed: int | None = None,
        snapshot_error_volumes: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Replace the fault configuration (no arguments: no faults)."""
        config = FaultConfig(rules_from(rules), seed, tuple(snapshot_error_volumes))
        return self._control("POST", "faults", config.to_dict())

    def clear_faults(self) -> None:
        self._control("DELETE", "faults")

    def faults(self) -> dict[str, Any]:
        """Current fault configuration plus per-rule counters (calls, throttled, errors)."""
        return self._control("GET", "faults")

    def events(self, *, drain: bool = False) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._control(
            "GET", "events?drain=1" if drain else "events"
        )["events"]
        return events

    def drain_events(self) -> list[dict[str, Any]]:
        return self.events(drain=True)

    def complete_snapshots(self) -> list[str]:
        """Complete every pending CreateSnapshots snapshot now; returns their ids."""
        completed: list[str] = self._control("POST", "complete")["completed"]
        return completed

    def set_snapshot_delay(self, seconds: float | None) -> None:
        """Delay for snapshots created from now on; None: only on `complete_snapshots`."""
        self._control("POST", "config", {"snapshot_delay_seconds": seconds})

    # --- snapshot copies -----------------------------------------------------------------------

    def set_copies(self, **settings: Any) -> dict[str, Any]:
        """Change the snapshot-copy emulation (`POST /_localaws/copies`): `delay_seconds` (None:
        copies stay pending until `complete_copies`; for copies started afterwards),
        `concurrent_limit` (pending copies per destination region and account, default 20),
        `fail_sources` (source snapshot ids whose copies end in `error`, or `{id: cause}`;
        replaces the previous ones). Returns `copies_state()`."""
        return self._control("POST", "copies", settings)

    def copies_state(self) -> dict[str, Any]:
        """The copy settings, the `pending` copies and the `done` ones (with `result` and
        `cause`), oldest first."""
        return self._control("GET", "copies")

    def complete_copies(self) -> list[str]:
        """Complete every pending snapshot copy now (emitting their events); their ids."""
        completed: list[str] = self._control("POST", "copies/complete")["completed"]
        return completed

    def clock(self) -> dict[str, Any]:
        """The server's clock: `frozen`, `offset_seconds`, `now`."""
        return self._control("GET", "clock")

    def freeze_clock(self) -> dict[str, Any]:
        """Stop the server's clock (token buckets, completion delays, lock expiry) until it is
        advanced; `reset()` makes it real again."""
        return self._control("POST", "clock", {"freeze": True})

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the server's clock forward; snapshots due by then complete now."""
        return self._control("POST", "clock", {"advance_seconds": seconds})

    def reset_clock(self) -> dict[str, Any]:
        """Real time again, without offset."""
        return self._control("POST", "clock", {"real": True})

    def set_snapshot_start_times(self, snapshot_ids: list[str], start_time: datetime) -> None:
        """Backdate snapshots (retention history); see `ec2_snapshots.set_start_times`."""
        self._control(
            "POST",
            "snapshot-start-times",
            {"snapshot_ids": snapshot_ids, "start_time": start_time.isoformat()},
        )

    def seed_snapshot_sets(
        self,
        sets: Sequence[Mapping[str, Any]],
        *,
        exclude_boot_volume: bool = False,
        account_id: str = "123456789012",
    ) -> list[str]:
        """Completed sets written straight into EC2 (fleet-scale retention history); each
        `{"instance_id", "tags", "start_time"}`; see `ec2_snapshots.seed_sets`. Their ids."""
        body = {
            "account_id": account_id,
            "region": self.region,
            "exclude_boot_volume": exclude_boot_volume,
            "sets": [{**s, "start_time": _iso(s["start_time"])} for s in sets],
        }
        made: list[str] = self._control("POST", "snapshot-sets", body)["snapshot_ids"]
        return made

    def put_public_parameter(self, name: str, value: str, account_id: str) -> None:
        """Publish an AWS public SSM parameter (`/aws/...`), which PutParameter refuses."""
        self._control(
            "POST",
            "public-parameters",
            {"account_id": account_id, "region": self.region, "name": name, "value": value},
        )

    # --- SSM Run Command ---------------------------------------------------------------------

    def set_ssm(self, **settings: Any) -> dict[str, Any]:
        """Change SSM Run Command's emulation (`POST /_localaws/ssm`): `script_seconds`,
        `start_seconds`, `invisible_seconds`, `cancel_seconds`, and `instances`
        (`{"i-...": {"managed": False} | {"ping_status": "ConnectionLost"} |
        {"results": {"pre-script": [{"status": "Failed", "stderr": "..."}]}}}`, merged per
        instance; `None` drops an instance's settings). Returns `ssm_state()`."""
        return self._control("POST", "ssm", settings)

    def ssm_state(self, *, drain: bool = False) -> dict[str, Any]:
        """SSM settings, injections not yet consumed, the order log (`drain` forgets it),
        `peak_in_progress` and `in_progress`."""
        return self._control("GET", "ssm?drain=1" if drain else "ssm")

    def ssm_log(self, *, drain: bool = False) -> list[dict[str, Any]]:
        """The order log of SendCommand, CancelCommand, CreateSnapshots and invocation ends."""
        entries: list[dict[str, Any]] = self.ssm_state(drain=drain)["log"]
        return entries

    # --- Step Functions ----------------------------------------------------------------------

    def set_states_wait_scale(self, scale: float) -> dict[str, Any]:
        """Step Functions' retry backoff and `Wait` states sleep `seconds * scale` (0: not at
        all; `reset()` makes it 1 again). Every wait is still recorded (`states_waits`)."""
        return self._control("POST", "stepfunctions", {"wait_scale": scale})

    def set_states_no_runtime_timeout(self, seconds: float) -> dict[str, Any]:
        """How long a Step Functions Lambda task waits for a runtime (a `Router`) to poll
        before it fails (default 5 s; `reset()` restores it)."""
        return self._control("POST", "stepfunctions", {"no_runtime_seconds": seconds})

    def states_waits(self, *, drain: bool = False) -> list[dict[str, Any]]:
        """The waits Step Functions asked for, unscaled, in order: `kind` (`retry`, `wait`) and
        `seconds`; `drain` forgets them."""
        waits: list[dict[str, Any]] = self._control(
            "GET", "stepfunctions?drain=1" if drain else "stepfunctions"
        )["waits"]
        return waits

    def poll_lambda_tasks(
        self,
        max_tasks: int,
        wait_seconds: float,
        functions: Sequence[str] | None = None,
        *,
        runtime: str = "",
    ) -> list[dict[str, Any]]:
        """Claim Step Functions' pending Lambda tasks (what a `Router` does) as the runtime
        `runtime` (the newest live one serving a function gets its tasks), of `functions` only
        if given: `task_id`, `function_name`, `function_arn`, `payload` (the JSON text),
        `timeout_seconds`."""
        query = urllib.parse.urlencode(
            [("max", max_tasks), ("wait", wait_seconds), ("runtime", runtime)]
            + [("function", name) for name in functions or ()]
        )
        tasks: list[dict[str, Any]] = self._control(
            "GET", f"lambda-tasks?{query}", timeout=wait_seconds + 10.0
        )["tasks"]
        return tasks

    def leave_lambda_tasks(self, runtime: str) -> bool:
        """The runtime stops taking Step Functions' tasks (the next live one takes them)."""
        return bool(self._control("POST", "lambda-tasks/leave", {"runtime": runtime})["left"])

    def complete_lambda_task(
        self,
        task_id: str,
        *,
        payload: str = "null",
        function_error: str | None = None,
        service_error: str | None = None,
    ) -> bool:
        """Post a claimed task's result: the function's response `payload` (JSON text) and
        Lambda's `FunctionError` (`Unhandled`) if it failed, or a `service_error` (Lambda's
        `ServiceException`). False if the task is unknown or gave up waiting."""
        body = {
            "task_id": task_id,
            "payload": payload,
            "function_error": function_error,
            "service_error": service_error,
        }
        return bool(self._control("POST", "lambda-tasks/result", body)["accepted"])

    def wait_for_execution(
        self, execution_arn: str, timeout: float = 30.0, *, poll_seconds: float = 0.05
    ) -> dict[str, Any]:
        """DescribeExecution's answer once the execution is no longer RUNNING."""
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            described: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{execution_arn} still RUNNING after {timeout:g} s")
            time.sleep(poll_seconds)

    def reset(self) -> None:
        """moto's ``/moto-api/reset``: every backend, plus faults, events, pending snapshots and
        copies, the snapshot delay and copy settings, the clock and the Step Functions wait
        scale (with IAM enforced: a new administrator user)."""
        if self.enforce_iam:
            self._set_moto_auth(float("inf"))
        self._control("POST", "moto-api/reset")
        if self.enforce_iam:
            self._enforce_iam()
