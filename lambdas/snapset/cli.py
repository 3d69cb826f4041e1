"""The `snapset` command line: plan a policy, run a payload like the Lambda does, or run the demo.

`plan` resolves a policy's targets and exclusions with the engine's own functions and asks EC2,
with `DryRun=True`, whether each CreateSnapshots call would be authorized; it creates nothing.
`run` takes the Lambda's code path (`parse_request`, `run_request`, `publish_report`) from a
terminal. `main` returns the exit code instead of exiting, so tests call it directly.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from pydantic import BaseModel, ConfigDict, ValidationError

from snapset import __version__, snapshots
from snapset.clients import Clients, make_clients
from snapset.outcomes import ErrorInfo, InstanceOutcome, InstanceStatus
from snapset.policy import (
    ManualRequest,
    SnapshotPolicy,
    SnapshotRequest,
    Trigger,
    TriggerType,
    describe_validation_error,
)
from snapset.report import ReportStatus, publish_report
from snapset.run import Ignored, run_request
from snapset.settings import DEFAULT_MAX_WORKERS, ENV_MAX_WORKERS, ENV_TOPIC_ARN
from snapset.triggers import InvalidTrigger, parse_request

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

MAX_WORKERS_LIMIT = 64
RETRY_WINDOW_SECONDS = 15 * 60
CONFIG_FILE = "cdk.json"
# cdk.json keeps Snapset's settings under context.snapset (policies at context.snapset.policies);
# a flat context["snapset.policies"] key, as `cdk --context` would set it, is read too.
CONTEXT_KEY = "snapset"
CONTEXT_POLICIES = "snapset.policies"
# Keys of a cdk.json policy entry that configure its triggers, not the request model.
TRIGGER_ONLY_KEYS = ("schedules", "on_instance_states")
DEMO_MODULE = "localaws.demo"
# States in which the engine skips an instance before looking at its volumes.
UNSNAPSHOTTABLE_STATES = frozenset({"terminated", "shutting-down"})

NO_REGION = (
    "no AWS region configured: pass --region, or set AWS_REGION or AWS_DEFAULT_REGION, "
    "or set 'region' in your AWS profile (~/.aws/config)"
)
NO_CREDENTIALS = (
    "no AWS credentials found: pass --profile or set AWS_PROFILE (run `aws sso login` for an "
    "SSO profile), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)

T = TypeVar("T")
R = TypeVar("R")


class CliError(Exception):
    """A problem to report on stderr in one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class Console:
    """The streams of one invocation, read when `main` starts (tests swap sys's streams)."""

    stdin: IO[str]
    stdout: IO[str]
    stderr: IO[str]


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr, advanced from worker threads.

    With a known total it draws a bar; without one (run_request finds its targets itself) it
    counts instances done, failed and in flight.
    """

    def __init__(
        self,
        stream: IO[str],
        label: str,
        total: int | None = None,
        *,
        width: int = 24,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._width = width
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._last_draw = float("-inf")
        self._last_len = 0
        self.done = 0
        self.failed = 0
        self.running = 0

    def set_total(self, total: int) -> None:
        with self._lock:
            self._total = total

    def wrap(self, fn: Callable[[T], R], is_failure: Callable[[R], bool]) -> Callable[[T], R]:
        """`fn`, counting each call as in flight, then done (and failed when `is_failure`)."""

        @functools.wraps(fn)
        def counted(item: T) -> R:
            self._update(running=1)
            try:
                result = fn(item)
            except BaseException:
                self._update(running=-1, done=1, failed=1)
                raise
            self._update(running=-1, done=1, failed=int(is_failure(result)))
            return result

        return counted

    def _update(self, *, running: int = 0, done: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.running += running
            self.done += done
            self.failed += failed
            now = self._clock()
            if now - self._last_draw >= self._min_interval:
                self._last_draw = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar as it stands."""
        elapsed = int((self._clock() if now is None else now) - self._start)
        clock = f"{elapsed // 60}:{elapsed % 60:02d}"
        failed = f", {self.failed} failed" if self.failed else ""
        if self._total:
            filled = min(self._width, self._width * self.done // self._total)
            bar = "#" * filled + "-" * (self._width - filled)
            return f"{self._label} [{bar}] {self.done}/{self._total}{failed} {clock}"
        return f"{self._label}: {self.done} done{failed}, {self.running} running {clock}"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self._stream.write("\r" + text.ljust(self._last_len))
        self._stream.flush()
        self._last_len = len(text)

    def close(self) -> None:
        """Draw the final state and end the line (nothing when nothing was ever drawn)."""
        with self._lock:
            if self._last_draw != float("-inf"):
                self._draw(self._clock())
                self._stream.write("\n")
                self._stream.flush()


def progress_wanted(args: argparse.Namespace, stream: IO[str]) -> bool:
    """Draw a bar only on a terminal, not with --no-progress, nor with -v (logs share stderr)."""
    if args.no_progress or getattr(args, "verbose", 0):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress_bar(
    args: argparse.Namespace, console: Console, label: str, total: int | None = None
) -> Iterator[Progress | None]:
    bar = Progress(console.stderr, label, total) if progress_wanted(args, console.stderr) else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


# --- inputs -----------------------------------------------------------------------------------


def read_json(source: str, stdin: IO[str], what: str) -> Any:
    """Parse a JSON file, or stdin for `-`; errors name the file and the position."""
    name = "stdin" if source == "-" else source
    try:
        text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{what} file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {what} file {source}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} in {name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def policy_from_payload(data: Any, source: str) -> SnapshotPolicy:
    """A policy file holds the request model, or a manual payload (a policy with a request_id)."""
    try:
        manual = ManualRequest.model_validate(data)
    except ValidationError as exc:
        raise CliError(f"invalid policy in {source}: {describe_validation_error(exc)}") from None
    return SnapshotPolicy.model_validate(manual.model_dump(exclude={"request_id"}))


def policy_from_config(name: str, config: str | None) -> SnapshotPolicy:
    """Look a policy up by name in cdk.json's context.snapset.policies, without CDK."""
    path = Path(config) if config else Path.cwd() / CONFIG_FILE
    if not path.is_file():
        if config:
            raise CliError(f"config file not found: {config}")
        raise CliError(
            f"{name!r} is neither a policy file nor a policy name: no {CONFIG_FILE} in "
            f"{Path.cwd()} to look it up in (pass a JSON file, or --config PATH to cdk.json)"
        )
    data = read_json(str(path), sys.stdin, "config")
    context = data.get("context") if isinstance(data, dict) else None
    policies, where = _context_policies(context)
    if policies is None:
        raise CliError(f"{path}: no list of policies at context.{CONTEXT_POLICIES}")
    matches = [
        (i, entry)
        for i, entry in enumerate(policies)
        if isinstance(entry, dict) and entry.get("policy") == name
    ]
    if not matches:
        names = [e["policy"] for e in policies if isinstance(e, dict) and "policy" in e]
        known = ", ".join(map(str, names)) or "none"
        raise CliError(f"no policy named {name!r} in {path} (policies: {known})")
    if len(matches) > 1:
        raise CliError(f"policy {name!r} appears {len(matches)} times in {path}")
    index, entry = matches[0]
    body = {k: v for k, v in entry.items() if k not in TRIGGER_ONLY_KEYS}
    try:
        return SnapshotPolicy.model_validate(body)
    except ValidationError as exc:
        detail = describe_validation_error(exc, f"{where}[{index}].")
        raise CliError(f"invalid policy {name!r} in {path}: {detail}") from None


def _context_policies(context: Any) -> tuple[list[Any] | None, str]:
    if not isinstance(context, dict):
        return None, ""
    nested = context.get(CONTEXT_KEY)
    if isinstance(nested, dict) and isinstance(nested.get("policies"), list):
        return nested["policies"], f"context.{CONTEXT_POLICIES}"
    flat = context.get(CONTEXT_POLICIES)
    if isinstance(flat, list):
        return flat, f"context[{CONTEXT_POLICIES!r}]"
    return None, ""


def load_policy(ref: str, config: str | None, stdin: IO[str]) -> SnapshotPolicy:
    """FILE (an existing file, or `-`) wins over NAME; a missing .json or path is an error."""
    if ref == "-" or Path(ref).is_file():
        return policy_from_payload(read_json(ref, stdin, "policy"), "stdin" if ref == "-" else ref)
    if ref.endswith(".json") or os.sep in ref or "/" in ref:
        raise CliError(f"policy file not found: {ref}")
    return policy_from_config(ref, config)


def max_workers(args: argparse.Namespace) -> int:
    if args.max_workers is not None:
        value: int = args.max_workers
        return value
    raw = os.environ.get(ENV_MAX_WORKERS, "")
    if not raw:
        return DEFAULT_MAX_WORKERS
    try:
        return _worker_count(raw)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"{ENV_MAX_WORKERS}: {exc}") from None


def _worker_count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {raw!r})") from None
    if not 1 <= value <= MAX_WORKERS_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_WORKERS_LIMIT} (got {value})")
    return value


def topic_arn(args: argparse.Namespace) -> str | None:
    arn: str | None = args.topic_arn or os.environ.get(ENV_TOPIC_ARN, "").strip() or None
    if arn is not None and (not arn.startswith("arn:") or ":sns:" not in arn):
        source = "--topic-arn" if args.topic_arn else ENV_TOPIC_ARN
        raise CliError(f"{source} must be an SNS topic ARN (got {arn!r})")
    return arn


def build_clients(args: argparse.Namespace) -> Clients:
    """Clients from the standard AWS configuration; a missing region or credentials is exit 2.

    `--profile` beats AWS_PROFILE, `--region` beats AWS_REGION beats botocore's own chain
    (AWS_DEFAULT_REGION, the profile); `--endpoint-url` beats AWS_ENDPOINT_URL, which botocore
    reads itself.
    """
    try:
        session = boto3.Session(profile_name=args.profile)
        region = args.region or os.environ.get("AWS_REGION") or None
        clients = make_clients(region, args.endpoint_url, session)
        credentials = session.get_credentials()
    except NoRegionError:
        raise CliError(NO_REGION) from None
    except ProfileNotFound as exc:
        raise CliError(f"{exc} (check --profile / AWS_PROFILE and ~/.aws/config)") from None
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise CliError(f"{NO_CREDENTIALS} ({exc})") from None
    except BotoCoreError as exc:
        raise CliError(f"AWS configuration: {exc}") from None
    except ValueError as exc:  # botocore rejects a malformed --endpoint-url this way
        raise CliError(f"AWS configuration: {exc}") from None
    if credentials is None:
        raise CliError(NO_CREDENTIALS)
    return clients


def _aws_error(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Unknown')}: {err.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


# --- plan -------------------------------------------------------------------------------------


class PlanEntry(BaseModel):
    """What `plan` found for one instance.

    `excluded_volume_ids` are the data volumes CreateSnapshots would be told to exclude (as in
    the run report); `excluded_boot_volume_id` is the root volume left out by exclude_boot_volume.
    """

    model_config = ConfigDict(frozen=True)

    instance_id: str
    state: str
    status: InstanceStatus
    volume_ids: tuple[str, ...] = ()
    snapshot_volume_ids: tuple[str, ...] = ()
    excluded_volume_ids: tuple[str, ...] = ()
    excluded_boot_volume_id: str | None = None
    reason: str | None = None
    error: ErrorInfo | None = None


class PlanSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    instances: int
    dry_run_ok: int
    skipped: int
    failed: int
    volumes: int


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str = "plan"
    policy: str
    region: str
    summary: PlanSummary
    instances: tuple[PlanEntry, ...]


def dry_run_request(policy: SnapshotPolicy, now: datetime) -> SnapshotRequest:
    dry = SnapshotPolicy.model_validate({**policy.model_dump(), "dry_run": True})
    return SnapshotRequest(
        policy=dry,
        trigger=Trigger(type=TriggerType.MANUAL, id=f"plan-{uuid.uuid4()}", time=now),
    )


def plan_one(ec2: EC2Client, request: SnapshotRequest, instance: snapshots.Instance) -> PlanEntry:
    """Plan one instance as the engine does, then ask CreateSnapshots with DryRun=True."""
    iid = instance.instance_id
    boot = None
    if request.policy.exclude_boot_volume and instance.state not in UNSNAPSHOTTABLE_STATES:
        boot = next((v.volume_id for v in instance.volumes if v.is_root), None)
    base = PlanEntry(
        instance_id=iid,
        state=instance.state,
        status=InstanceStatus.FAILED,
        volume_ids=tuple(v.volume_id for v in instance.volumes),
        excluded_boot_volume_id=boot,
    )
    try:
        planned = snapshots.plan_instance(ec2, request.policy, instance)
        if isinstance(planned, InstanceOutcome):
            return _with_outcome(base, planned)
        outcome = snapshots.create_snapshot_set(ec2, request, iid, planned)
    except (ClientError, BotoCoreError) as exc:
        return base.model_copy(
            update={"error": ErrorInfo(code=_code(exc), message=f"{iid}: {_message(exc)}")}
        )
    except Exception as exc:
        logger.exception("unexpected error planning %s", iid)
        return base.model_copy(
            update={"error": ErrorInfo(code=snapshots.UNEXPECTED_ERROR, message=f"{exc!r}")}
        )
    if outcome.status is InstanceStatus.STARTED:
        # Only an endpoint that ignores DryRun gets here; say so loudly rather than hide it.
        made = ", ".join(s.snapshot_id for s in outcome.snapshots)
        logger.warning("%s: the endpoint ignored DryRun=True and created snapshots: %s", iid, made)
    return _with_outcome(base, outcome).model_copy(
        update={"snapshot_volume_ids": planned.snapshot_volume_ids}
    )


def _code(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__


def _message(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", exc))
    return str(exc)


def _with_outcome(entry: PlanEntry, outcome: InstanceOutcome) -> PlanEntry:
    return entry.model_copy(
        update={
            "status": outcome.status,
            "excluded_volume_ids": outcome.excluded_volume_ids,
            "reason": outcome.reason,
            "error": outcome.error,
        }
    )


PlanFn = Callable[[snapshots.Instance], PlanEntry]


def _plan_failed(entry: PlanEntry) -> bool:
    return entry.status is InstanceStatus.FAILED


def make_plan(
    ec2: EC2Client,
    policy: SnapshotPolicy,
    *,
    workers: int,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> Plan:
    """Resolve targets with `find_targets`, plan each with `plan_instance` and a dry run."""
    request = dry_run_request(policy, now or datetime.now(UTC))
    try:
        targets = snapshots.find_targets(ec2, policy)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, NoCredentialsError):
            raise CliError(NO_CREDENTIALS) from None
        raise CliError(f"finding target instances: {_aws_error(exc)}", EXIT_FAILED) from None
    missing = [
        PlanEntry(
            instance_id=o.instance_id,
            state="not-found",
            status=o.status,
            error=o.error,
        )
        for o in targets.missing
    ]
    fn: PlanFn = functools.partial(plan_one, ec2, request)
    if progress is not None:
        progress.set_total(len(targets.instances))
        fn = progress.wrap(fn, _plan_failed)
    entries: list[PlanEntry] = []
    if targets.instances:
        with ThreadPoolExecutor(max_workers=min(workers, len(targets.instances))) as pool:
            entries = list(pool.map(fn, targets.instances))
    ordered = tuple(sorted(missing + entries, key=lambda e: e.instance_id))
    return Plan(
        policy=policy.name,
        region=ec2.meta.region_name,
        summary=PlanSummary(
            instances=len(ordered),
            dry_run_ok=sum(e.status is InstanceStatus.DRY_RUN_OK for e in ordered),
            skipped=sum(e.status is InstanceStatus.SKIPPED for e in ordered),
            failed=sum(e.status is InstanceStatus.FAILED for e in ordered),
            volumes=sum(
                len(e.snapshot_volume_ids) for e in ordered if e.status is InstanceStatus.DRY_RUN_OK
            ),
        ),
        instances=ordered,
    )


def _why(entry: PlanEntry) -> str:
    if entry.error is not None:
        message = entry.error.message.removeprefix(f"{entry.instance_id}: ")
        return f"{entry.error.code}: {message}"
    if entry.status is InstanceStatus.DRY_RUN_OK:
        return ""
    return entry.reason or ""


def render_plan(plan: Plan) -> str:
    """The plan as a table: instance, state, result, volumes to snapshot and excluded, why."""
    lines = [
        f"Plan for policy {plan.policy!r} in {plan.region} "
        "(CreateSnapshots called with DryRun=True: nothing is created)",
        "",
    ]
    if not plan.instances:
        return "\n".join([*lines, "No instance matches the policy's instance_ids or target_tags."])
    header = ("INSTANCE", "STATE", "RESULT", "SNAPSHOT", "EXCLUDED", "REASON")
    rows = [header]
    for e in plan.instances:
        excluded = list(e.excluded_volume_ids)
        if e.excluded_boot_volume_id:
            excluded.insert(0, f"{e.excluded_boot_volume_id}(boot)")
        rows.append(
            (
                e.instance_id,
                e.state,
                e.status.value,
                ",".join(e.snapshot_volume_ids) or "-",
                ",".join(excluded) or "-",
                _why(e),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    s = plan.summary
    lines += [
        "",
        f"{s.instances} instance(s): {s.dry_run_ok} would snapshot ({s.volumes} volume(s)), "
        f"{s.skipped} skipped, {s.failed} would fail.",
    ]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    policy = load_policy(args.policy, args.config, console.stdin)
    clients = build_clients(args)
    workers = max_workers(args)
    with progress_bar(args, console, f"planning {policy.name}") as bar:
        plan = make_plan(clients.ec2, policy, workers=workers, progress=bar)
    if args.json:
        console.stdout.write(json.dumps(plan.model_dump(mode="json"), indent=2) + "\n")
    else:
        console.stdout.write(render_plan(plan) + "\n")
    return EXIT_OK


# --- run --------------------------------------------------------------------------------------

_SUCCESS = (ReportStatus.SUCCEEDED, ReportStatus.DRY_RUN)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    payload = read_json(args.payload, console.stdin, "payload")
    try:
        request = parse_request(payload)
    except InvalidTrigger as exc:
        raise CliError(exc.message) from None
    topic = topic_arn(args)
    clients = build_clients(args)
    workers = max_workers(args)
    # Transient EC2 errors are retried with backoff as in the Lambda, within Lambda's longest
    # invocation; an instance that cannot start by then is reported as failed (Timeout).
    budget = snapshots.RetryBudget(deadline=time.monotonic() + RETRY_WINDOW_SECONDS)
    snapshot_fn = functools.partial(
        snapshots.snapshot_instance,
        clients.ec2,
        request,
        budget=budget,
        create_ec2=clients.ec2_create,
    )
    label = f"snapshotting {request.policy.name}"
    with progress_bar(args, console, label) as bar:
        fn: snapshots.SnapshotFn = snapshot_fn
        if bar is not None:
            fn = bar.wrap(snapshot_fn, lambda o: o.status is InstanceStatus.FAILED)
        result = run_request(clients.ec2, request, max_workers=workers, snapshot_fn=fn)
    if isinstance(result, Ignored):
        ignored = {"status": "ignored", "instance_id": result.instance_id, "reason": result.reason}
        console.stdout.write(json.dumps(ignored, indent=2) + "\n")
        return EXIT_OK
    if result.error is not None and result.error.code == NoCredentialsError.__name__:
        raise CliError(NO_CREDENTIALS)
    console.stdout.write(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    console.stdout.flush()
    if topic is not None:
        try:
            message_id = publish_report(clients.sns, topic, result)
        except (ClientError, BotoCoreError) as exc:
            raise CliError(f"publishing the report to {topic}: {_aws_error(exc)}", 1) from None
        logger.info("report published to %s (message id %s)", topic, message_id)
    return EXIT_OK if result.status in _SUCCESS else EXIT_FAILED


# --- demo -------------------------------------------------------------------------------------


def cmd_demo(passthrough: list[str]) -> int:
    try:
        module = importlib.import_module(DEMO_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name in ("localaws", DEMO_MODULE):
            raise CliError(
                f"the local demo is not available: {DEMO_MODULE} cannot be imported (it ships "
                "with the source tree: run from a checkout installed with `pip install -e .`)"
            ) from None
        raise CliError(
            f"the local demo needs {exc.name!r}, which is not installed: install the development "
            "dependencies (`make install`, or `pip install -r requirements-dev.txt`)"
        ) from None
    demo_main: Callable[[list[str] | None], int] | None = getattr(module, "main", None)
    if not callable(demo_main):
        raise CliError(f"{DEMO_MODULE} has no main(argv) function")
    try:
        return _exit_code(demo_main(passthrough))
    except SystemExit as exc:  # an argparse inside the demo; main() itself never exits
        return _exit_code(exc.code)


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    return EXIT_FAILED


# --- parser and main --------------------------------------------------------------------------

DESCRIPTION = """\
Crash-consistent multi-volume EBS snapshots with EC2 CreateSnapshots.

  snapset plan --policy FILE|NAME   what a policy would snapshot (DryRun only, creates nothing)
  snapset run --payload FILE|-      run a payload as the Lambda would, print the report JSON
  snapset demo [ARGS...]            run the local demo (ARGS go to the demo)
"""

EPILOG = """\
AWS configuration is the standard one: --profile or AWS_PROFILE, --region or AWS_REGION /
AWS_DEFAULT_REGION, credentials from the environment, profile or role; --endpoint-url or
AWS_ENDPOINT_URL for a local AWS.

exit codes: 0 ok (run: succeeded or dry_run, or an ignored instance event); 1 the run was partial
or failed, or an AWS call the command needs failed; 2 invalid input or configuration.
"""

RUN_EPILOG = """\
PAYLOAD is what the Lambda receives: a manual payload (a policy, with an optional request_id so
a repeated run makes no second snapshot set), a schedule input or an instance-event input.
The report JSON goes to stdout; it is published to SNS when --topic-arn or SNAPSET_TOPIC_ARN is
set. Exit 0 when the status is succeeded or dry_run (or the event is ignored), 1 when partial or
failed, 2 when the payload is invalid (the message names the field).
"""

PLAN_EPILOG = f"""\
FILE is a JSON policy (or manual payload); `-` reads stdin. NAME is looked up in cdk.json's
context.{CONTEXT_POLICIES} (./cdk.json, or --config PATH); an existing file wins over a
name. Exit 0 whenever a plan is printed, also when instances would fail.
"""


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    aws = common.add_argument_group("AWS options")
    aws.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    aws.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION)")
    aws.add_argument(
        "--endpoint-url", metavar="URL", help="AWS endpoint, e.g. a local AWS (AWS_ENDPOINT_URL)"
    )
    out = common.add_argument_group("output and concurrency")
    out.add_argument(
        "--max-workers",
        type=_worker_count,
        metavar="N",
        help=f"instances snapshotted in parallel, 1-{MAX_WORKERS_LIMIT} "
        f"(default: {ENV_MAX_WORKERS} or {DEFAULT_MAX_WORKERS})",
    )
    out.add_argument("--no-progress", action="store_true", help="never draw the progress bar")
    out.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="debug logs on stderr (-vv: botocore's too)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapset",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snapset {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="debug logs on stderr (-vv: botocore's too)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_options()

    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="show what a policy would snapshot; calls CreateSnapshots with DryRun only",
        description="Resolve a policy's instances and volume exclusions as the engine does, and\n"
        "check with DryRun=True that each CreateSnapshots call would be authorized.",
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument(
        "--policy", required=True, metavar="FILE|NAME", help="policy file, `-`, or name"
    )
    plan.add_argument(
        "--config", metavar="PATH", help=f"the {CONFIG_FILE} to look NAME up in (default: ./)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=cmd_plan)

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run a payload through the Lambda's code path and print the report",
        description="Parse a payload as the Lambda does, snapshot, print the report JSON and\n"
        "publish it to SNS.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--payload", required=True, metavar="FILE|-", help="payload JSON; - = stdin")
    run.add_argument(
        "--topic-arn", metavar="ARN", help=f"SNS topic for the report (default: {ENV_TOPIC_ARN})"
    )
    run.set_defaults(handler=cmd_run)

    commands.add_parser(
        "demo",
        add_help=False,
        help="run the local demo (arguments after `demo` are passed to it)",
    )
    return parser


def split_demo(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Everything after the `demo` subcommand goes to the demo untouched (`--` is dropped)."""
    for i, arg in enumerate(argv):
        if arg == "demo":
            rest = argv[i + 1 :]
            return argv[: i + 1], rest[1:] if rest[:1] == ["--"] else rest
        if not arg.startswith("-"):
            break
    return argv, None


class _BriefFormatter(logging.Formatter):
    """Without -v: one line per record, tracebacks left out."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = logging.makeLogRecord(record.__dict__)
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.msg} (-v shows the traceback)"
        return super().format(record)


@contextmanager
def logging_to(stream: IO[str], verbosity: int) -> Iterator[None]:
    """Quiet by default (warnings, one line each); -v: snapset's debug logs; -vv: everyone's."""
    root = logging.getLogger()
    ours = [logging.getLogger("snapset"), logging.getLogger("localaws")]
    saved = (root.level, [lg.level for lg in ours])
    handler = logging.StreamHandler(stream)
    if verbosity:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s")
        )
        root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
        for lg in ours:
            lg.setLevel(logging.DEBUG)
    else:
        handler.setFormatter(_BriefFormatter("snapset: %(levelname)s: %(message)s"))
        root.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for lg, level in zip(ours, saved[1], strict=True):
            lg.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    console = Console(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)
    args_list = list(sys.argv[1:] if argv is None else argv)
    head, passthrough = split_demo(args_list)
    parser = build_parser()
    try:
        args = parser.parse_args(head)
    except SystemExit as exc:  # --help, --version, usage errors
        return _exit_code(exc.code)
    if args.command is None:
        parser.print_help(console.stderr)
        return EXIT_USAGE
    with logging_to(console.stderr, getattr(args, "verbose", 0)):
        try:
            if args.command == "demo":
                return cmd_demo(passthrough or [])
            code: int = args.handler(args, console)
            return code
        except CliError as exc:
            console.stderr.write(f"snapset {args.command}: error: {exc.message}\n")
            return exc.exit_code
        except NoRegionError:
            console.stderr.write(f"snapset {args.command}: error: {NO_REGION}\n")
            return EXIT_USAGE
        except (NoCredentialsError, PartialCredentialsError):
            console.stderr.write(f"snapset {args.command}: error: {NO_CREDENTIALS}\n")
            return EXIT_USAGE
        except KeyboardInterrupt:
            console.stderr.write(f"snapset {args.command}: interrupted\n")
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
