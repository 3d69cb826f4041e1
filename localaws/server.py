"""The local AWS server: moto's WSGI app + faithful CreateSnapshots + faults + control API.

Run: ``python -m localaws.server --port N`` (binds 127.0.0.1).  See README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from localaws import (
    ec2_copies,
    ec2_images,
    ec2_pagination,
    ec2_snapshots,
    ec2_tag_index,
    iam,
    ssm_commands,
    ssm_public,
    stepfunctions,
)
from localaws import events as event_patches
from localaws.clock import CLOCK
from localaws.ec2_copies import CopyEmulator
from localaws.ec2_snapshots import SnapshotCompleter
from localaws.events import EventSink
from localaws.faults import FaultConfig, FaultInjector, error_response, throttling_error

log = logging.getLogger("localaws.server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
StartResponse = Callable[..., Any]

CONTROL_PREFIX = "/_localaws/"
_CREDENTIAL = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass
class ServerState:
    default_delay: float | None = 0.5
    faults: FaultInjector = field(default_factory=lambda: FaultInjector(CLOCK.monotonic))
    events: EventSink = field(default_factory=EventSink)
    states: stepfunctions.StatesControl = field(default_factory=stepfunctions.StatesControl)
    completer: SnapshotCompleter = field(init=False)
    copies: CopyEmulator = field(init=False)

    def __post_init__(self) -> None:
        self.completer = SnapshotCompleter(
            self.events,
            error_volumes=lambda: self.faults.config.snapshot_error_volumes,
            delay=self.default_delay,
            clock=CLOCK,
        )
        # Copies complete after the snapshot delay too, so a manual server is manual for both.
        self.copies = CopyEmulator(self.events, default_delay=self.default_delay, clock=CLOCK)

    def reset(self) -> None:
        CLOCK.reset()
        self.completer.reset()
        self.completer.delay = self.default_delay
        self.copies.reset()
        self.faults.reset()
        self.events.reset()
        self.states.reset()
        ssm_commands.reset()  # after the clock's reset: the log's times count from it


@dataclass
class AwsRequest:
    service: str
    region: str | None
    action: str | None
    protocol: str  # ec2 | query | json | rest-json | rest-xml


def _form_body(environ: dict[str, Any]) -> dict[str, list[str]]:
    """Parse (and put back) a form-encoded request body."""
    if not str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return {}
    if length <= 0:
        return {}
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return parse_qs(body.decode("utf-8", "replace"))


def identify(environ: dict[str, Any]) -> AwsRequest:
    """Service/region from the SigV4 credential scope; action from ``X-Amz-Target`` (JSON
    protocols) or the ``Action`` parameter (query protocols).  REST calls have no action."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    scope = environ.get("HTTP_AUTHORIZATION", "") or " ".join(
        f"Credential={c}" for c in query.get("X-Amz-Credential", [])
    )
    match = _CREDENTIAL.search(scope)
    service, region = (match.group(2).lower(), match.group(1)) if match else ("unknown", None)

    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return AwsRequest(service, region, target.rsplit(".", 1)[-1], "json")
    action = (query.get("Action") or _form_body(environ).get("Action") or [None])[0]
    if action:
        return AwsRequest(service, region, action, "ec2" if service == "ec2" else "query")
    return AwsRequest(service, region, None, "rest-xml" if service == "s3" else "rest-json")


def _json(start_response: StartResponse, status: int, payload: Any) -> list[bytes]:
    body = json.dumps(payload, default=str).encode("utf-8")
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    start_response(
        f"{status} {reason.get(status, 'Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class LocalAwsApp:
    """WSGI middleware around moto's app."""

    def __init__(self, moto_app: WSGIApp, state: ServerState) -> None:
        self.moto_app = moto_app
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, start_response, path[len(CONTROL_PREFIX) :])
        if path.startswith("/moto-api"):
            if path.rstrip("/") == "/moto-api/reset":
                self.state.reset()  # our state too, so that tests start from scratch
            return self.moto_app(environ, start_response)

        self.state.completer.complete_due()  # lazy completion, in addition to the timer
        self.state.copies.complete_due()  # (before CopySnapshot counts the pending copies)
        request = identify(environ)
        decision = self.state.faults.decide(request.service, request.action)
        if decision.latency_s > 0:
            time.sleep(decision.latency_s)
        if decision.throttled:
            code, status, message = throttling_error(request.service, request.protocol)
            return self._error(start_response, request, code, status, message)
        if decision.error is not None:
            err = decision.error
            return self._error(start_response, request, err.code, err.status, err.message)
        return self.moto_app(environ, start_response)

    @staticmethod
    def _error(
        start_response: StartResponse, request: AwsRequest, code: str, status: int, message: str
    ) -> list[bytes]:
        status, headers, body = error_response(
            request.protocol,
            request.service,
            code=code,
            status=status,
            message=message,
            request_id=str(uuid.uuid4()),
        )
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {code}", headers)
        return [body]

    def _control(
        self, environ: dict[str, Any], start_response: StartResponse, route: str
    ) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            body = self._read_json(environ)
            status, payload = self._route(method, route.strip("/"), query, body)
        except (ValueError, TypeError, KeyError) as exc:
            status, payload = 400, {"error": str(exc)}
        return _json(start_response, status, payload)

    @staticmethod
    def _read_json(environ: dict[str, Any]) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        return json.loads(raw) if raw.strip() else None

    def _route(
        self, method: str, route: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        state = self.state
        if route == "health" and method == "GET":
            return 200, {"status": "ok", "pid": os.getpid()}
        if route == "faults":
            if method == "POST":
                state.faults.configure(FaultConfig.from_dict(body or {}))
            elif method == "DELETE":
                state.faults.reset()
            elif method != "GET":
                return 405, {"error": f"{method} not allowed"}
            return 200, {**state.faults.config.to_dict(), "stats": state.faults.stats()}
        if route == "events" and method == "GET":
            drain = query.get("drain", ["0"])[0].lower() in ("1", "true", "yes")
            return 200, {"events": state.events.read(drain=drain)}
        if route == "complete" and method == "POST":
            return 200, {"completed": state.completer.complete_all()}
        if route == "config":
            if method == "POST":
                body = body or {}
                if "snapshot_delay_seconds" in body:
                    delay = body["snapshot_delay_seconds"]
                    state.completer.delay = None if delay is None else float(delay)
            elif method != "GET":
                return 405, {"error": f"{method} not allowed"}
            return 200, {
                "snapshot_delay_seconds": state.completer.delay,
                "pending_snapshots": state.completer.pending_count(),
            }
        if route == "public-parameters" and method == "POST":
            body = body or {}
            ssm_public.put_public_parameter(
                body["account_id"], body["region"], body["name"], body["value"]
            )
            return 200, {"name": body["name"]}
        if route == "assume-role" and method == "POST":
            body = body or {}
            return 200, iam.assume_role_as_service(
                str(body["role_arn"]),
                str(body.get("service", "lambda.amazonaws.com")),
                str(body.get("session_name", "localaws")),
                str(body.get("region", "us-east-1")),
            )
        if route == "clock":
            if method == "POST":
                self._set_clock(body or {})
            elif method != "GET":
                return 405, {"error": f"{method} not allowed"}
            return 200, CLOCK.state()
        if route == "lambda-tasks" and method == "GET":
            max_tasks = int(query.get("max", ["1"])[0])
            wait = min(20.0, float(query.get("wait", ["0"])[0]))
            names = query.get("function")  # repeated: only these functions' tasks
            runtime = query.get("runtime", [""])[0]
            return 200, {"tasks": state.states.tasks.poll(max_tasks, wait, names, runtime)}
        if route == "lambda-tasks/leave" and method == "POST":
            return 200, {"left": state.states.tasks.leave(str((body or {})["runtime"]))}
        if route == "lambda-tasks/result" and method == "POST":
            body = body or {}
            return 200, {"accepted": state.states.tasks.complete(str(body["task_id"]), body)}
        if route == "stepfunctions":
            if method == "POST":
                state.states.configure(body or {})
            elif method != "GET":
                return 405, {"error": f"{method} not allowed"}
            drain = query.get("drain", ["0"])[0].lower() in ("1", "true", "yes")
            return 200, state.states.state(drain=drain)
        if route == "ssm":
            if method == "POST":
                ssm_commands.configure(body or {})
            elif method != "GET":
                return 405, {"error": f"{method} not allowed"}
            drain = query.get("drain", ["0"])[0].lower() in ("1", "true", "yes")
            return 200, ssm_commands.state(drain=drain)
        if route == "reset" and method == "POST":
            state.reset()
            return 200, {"reset": True}
        return self._history(method, route, body)  # or copies, or 404

    def _history(self, method: str, route: str, body: Any) -> tuple[int, Any]:
        """`/_localaws/snapshot-start-times` and `/_localaws/snapshot-sets` (retention
        history), then the copies' routes."""
        if route == "snapshot-start-times" and method == "POST":
            body = body or {}
            changed = ec2_snapshots.set_start_times(
                body["snapshot_ids"], datetime.fromisoformat(body["start_time"])
            )
            return 200, {"changed": changed}
        if route == "snapshot-sets" and method == "POST":
            body = body or {}
            made = ec2_snapshots.seed_sets(
                str(body.get("account_id", "123456789012")),
                str(body.get("region", "us-east-1")),
                list(body["sets"]),
                exclude_boot_volume=bool(body.get("exclude_boot_volume", False)),
            )
            return 200, {"snapshot_ids": made}
        return self._copies(method, route, body)

    def _copies(self, method: str, route: str, body: Any) -> tuple[int, Any]:
        """`/_localaws/copies` and `/_localaws/copies/complete` (kept out of `_route`, which
        is long enough); any other route is a 404."""
        copies = self.state.copies
        if route == "copies/complete" and method == "POST":
            return 200, {"completed": copies.complete_all()}
        if route != "copies":
            return 404, {"error": f"no control endpoint {method} {CONTROL_PREFIX}{route}"}
        if method == "POST":
            copies.configure(body or {})
        elif method != "GET":
            return 405, {"error": f"{method} not allowed"}
        return 200, copies.state()

    def _set_clock(self, body: dict[str, Any]) -> None:
        unknown = set(body) - {"freeze", "advance_seconds", "real"}
        if unknown:
            raise ValueError(f"unknown clock fields: {sorted(unknown)}")
        if body.get("real"):
            CLOCK.reset()
        if body.get("freeze"):
            CLOCK.freeze()
        if "advance_seconds" in body:
            CLOCK.advance(float(body["advance_seconds"]))
            self.state.completer.complete_due()  # what is due now completes now
            self.state.copies.complete_due()


def build_app(state: ServerState) -> LocalAwsApp:
    """Import moto, install the patches and wrap moto's WSGI app."""
    ec2_snapshots.install(state.completer)
    ec2_copies.install(state.copies)
    ec2_images.install()
    ec2_tag_index.install()
    ec2_pagination.install()
    event_patches.install()
    iam.install()
    ssm_commands.install()
    stepfunctions.install(state.states)
    return LocalAwsApp(DomainDispatcherApplication(create_backend_app), state)


def _watch_parent(parent_pid: int, stop: Callable[[], None]) -> None:
    """Shut down when the process that started us is gone (even if it was SIGKILLed)."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    log.warning("parent process %d is gone; shutting down", parent_pid)
    stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localaws.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    parser.add_argument(
        "--snapshot-delay",
        type=float,
        default=0.5,
        help="seconds until CreateSnapshots snapshots (and CopySnapshot copies) complete; "
        "negative: only on POST /_localaws/complete (/_localaws/copies/complete)",
    )
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it dies")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)

    if args.port:
        os.environ["MOTO_PORT"] = str(args.port)  # moto builds e.g. SQS queue URLs with it
    state = ServerState(default_delay=None if args.snapshot_delay < 0 else args.snapshot_delay)
    app = build_app(state)
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    port = server.server_address[1]
    os.environ["MOTO_PORT"] = str(port)

    def stop(*_: Any) -> None:
        # shutdown() waits for serve_forever() to return: never call it on that thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()

    state.completer.start()
    state.copies.start()
    print(f"localaws listening on http://{args.host}:{port} (pid {os.getpid()})", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        state.completer.stop()
        state.copies.stop()
        server.server_close()
        log.info("stopped")
        logging.shutdown()
        sys.stdout.flush()
    # Nothing left to flush; skip the slow interpreter teardown of moto's loaded backends.
    os._exit(0)


if __name__ == "__main__":
    main()
