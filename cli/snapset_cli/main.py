"""`snapset plan`, `snapset run` and `snapset demo`; `main` returns the exit code, so tests call it.

`plan` resolves a policy's targets and exclusions with the engine's own functions and asks EC2,
with `DryRun=True`, whether each CreateSnapshots call would be authorized; it creates nothing.
`run` takes the Lambda's code path (`parse_request`, `build_engine`, `run_request`,
`publish_report`) from a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from infra.config import CDK_JSON, FLAT_POLICIES_KEY
from infra.schedule_times import MAX_FIRE_TIMES
from snapset import __version__
from snapset.clients import Clients
from snapset.deadline import Deadline
from snapset.errors import InvalidInput, describe_error
from snapset.outcomes import InstanceStatus
from snapset.pacing import DEFAULT_EC2_API_SHARE
from snapset.plan import Plan, make_plan, with_retention_preview
from snapset.policy import SnapshotPolicy
from snapset.report import ReportStatus, publish_report
from snapset.run import HandedOff, Ignored, build_engine, run_request
from snapset.settings import DEFAULT_MAX_WORKERS, ENV_MAX_WORKERS, ENV_TOPIC_ARN
from snapset.snapshots import SnapshotFn
from snapset.triggers import parse_request
from snapset_cli.inputs import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_WORKERS_LIMIT,
    NO_CREDENTIALS,
    NO_REGION,
    CliError,
    all_policies,
    build_clients,
    count_between,
    is_policy_file,
    load_policy,
    max_workers,
    policy_entry,
    read_json,
    topic_arn,
    worker_count,
)
from snapset_cli.overview import (
    ScheduleView,
    coverage,
    instance_states,
    list_instances,
    next_run,
    schedule_views,
    volume_sizes,
)
from snapset_cli.progress import progress_bar
from snapset_cli.render import (
    Out,
    render_coverage,
    render_plan,
    render_retention,
    render_schedules,
)

logger = logging.getLogger(__name__)

# Transient EC2 errors are retried with backoff as in the Lambda, within Lambda's longest
# invocation; an instance that cannot start by then is reported as failed (Timeout).
RETRY_WINDOW_SECONDS = 15 * 60
DEMO_MODULE = "snapset_cli.demo"


@dataclass(frozen=True)
class Console:
    """The streams of one invocation, read when `main` starts (tests swap sys's streams)."""

    stdin: IO[str]
    stdout: IO[str]
    stderr: IO[str]


# --- plan -------------------------------------------------------------------------------------


def _planned(
    args: argparse.Namespace,
    console: Console,
    clients: Clients,
    policy: SnapshotPolicy,
    at: datetime,
) -> Plan:
    """One policy's plan with its retention preview; a failed discovery is exit 1."""
    workers = max_workers(args)
    with progress_bar(args, console.stderr, f"planning {policy.name}") as bar:
        plan = make_plan(
            clients.ec2,
            policy,
            workers=workers,
            ssm=clients.ssm if policy.scripts is not None else None,
            on_targets=bar.set_total if bar else None,
            on_planned=(lambda e: bar.advance(failed=e.status is InstanceStatus.FAILED))
            if bar
            else None,
        )
    if plan.error is not None:
        if plan.error.code == NoCredentialsError.__name__:
            raise CliError(NO_CREDENTIALS)
        message = plan.error.message.removeprefix("finding target instances: ")
        raise CliError(f"finding target instances: {plan.error.code}: {message}", EXIT_FAILED)
    return with_retention_preview(clients.ec2, policy, plan, at, workers=workers)


@dataclass(frozen=True)
class PolicyView:
    """A policy's plan and its triggers, as `plan` prints them."""

    plan: Plan
    schedules: list[ScheduleView]
    states: list[str]

    def to_json(self) -> dict[str, Any]:
        dumped = self.plan.model_dump(mode="json", exclude={"error"})
        dumped["schedules"] = [v.to_json() for v in self.schedules]
        dumped["on_instance_states"] = self.states
        return dumped

    def write(self, console: Console) -> None:
        console.stdout.write(render_plan(self.plan) + "\n")
        out = Out(console.stdout)
        render_schedules(out, self.plan.policy, self.schedules, self.states)
        render_retention(out, self.plan)


def _policy_view(
    args: argparse.Namespace,
    console: Console,
    clients: Clients,
    policy: SnapshotPolicy,
    entry: Mapping[str, Any] | None,
) -> PolicyView:
    views = schedule_views(entry, args.at, args.next)
    plan = _planned(args, console, clients, policy, next_run(views, args.at))
    return PolicyView(plan, views, instance_states(entry))


def _write_json(console: Console, data: Any) -> None:
    console.stdout.write(json.dumps(data, indent=2) + "\n")


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    if not args.all and args.policy is None:
        raise CliError("the following arguments are required: --policy FILE|NAME, or --all")
    args.at = args.at or datetime.now(UTC)
    if args.all:
        return _plan_all(args, console)
    policy = load_policy(args.policy, args.config, console.stdin)
    entry = None if is_policy_file(args.policy) else policy_entry(args.policy, args.config)
    clients = build_clients(args)
    view = _policy_view(args, console, clients, policy, entry)
    if args.json:
        _write_json(console, view.to_json())
    else:
        view.write(console)
    return EXIT_OK


def _plan_all(args: argparse.Namespace, console: Console) -> int:
    policies = all_policies(args.config)
    clients = build_clients(args)
    views = [_policy_view(args, console, clients, p, entry) for p, entry in policies]
    try:
        instances = list_instances(clients.ec2)
        sizes = volume_sizes(clients.ec2)
    except (ClientError, BotoCoreError) as exc:
        raise CliError(
            f"listing instances and volumes: {describe_error(exc)}", EXIT_FAILED
        ) from None
    cov = coverage([v.plan for v in views], instances, sizes)
    region = clients.ec2.meta.region_name
    if args.json:
        _write_json(
            console,
            {
                "kind": "plan-all",
                "region": region,
                "as_of": args.at.isoformat(),
                "plans": [v.to_json() for v in views],
                "coverage": cov.to_json(),
            },
        )
        return EXIT_OK
    for view in views:
        view.write(console)
        console.stdout.write("\n")
    render_coverage(Out(console.stdout), region, cov)
    return EXIT_OK


def plan_time(raw: str) -> datetime:
    """An argparse type: an ISO 8601 time, UTC unless it names an offset."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time, e.g. 2027-03-28T01:00Z (got {raw!r})"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def fire_count(raw: str) -> int:
    """An argparse type: 1 to MAX_FIRE_TIMES."""
    return count_between(raw, MAX_FIRE_TIMES)


# --- run --------------------------------------------------------------------------------------

_SUCCESS = (ReportStatus.SUCCEEDED, ReportStatus.DRY_RUN)


def _share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not 0.01 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0.01 and 1 (got {raw})")
    return value


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    payload = read_json(args.payload, console.stdin, "payload")
    try:
        request = parse_request(payload)
    except InvalidInput as exc:
        raise CliError(exc.message) from None
    topic = topic_arn(args)
    clients = build_clients(args)
    workers = max_workers(args)
    deadline = Deadline.after(RETRY_WINDOW_SECONDS)
    label = f"snapshotting {request.policy.name}"
    with progress_bar(args, console.stderr, label) as bar:

        def counted(fn: SnapshotFn) -> SnapshotFn:
            if bar is None:
                return fn
            return bar.wrap(fn, lambda o: o.status is InstanceStatus.FAILED)

        engine = build_engine(
            clients,
            request,
            deadline,
            idempotency=None,
            wrap=counted,
            ec2_api_share=args.ec2_share,
        )
        result = run_request(
            clients.ec2, request, engine=engine, deadline=deadline, max_workers=workers
        )
    # The CLI runs every plan inline (it passes no hand_off): it is never handed off.
    assert not isinstance(result, HandedOff)
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
            raise CliError(f"publishing the report to {topic}: {describe_error(exc)}", 1) from None
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
  snapset plan --all                every policy of cdk.json, and what none of them covers
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
context.{FLAT_POLICIES_KEY} (./cdk.json, or --config PATH); an existing file wins over a
name. Exit 0 whenever a plan is printed, also when instances would fail.

Beside the table, plan shows when the policy runs (the next N fire times of each of its cdk.json
schedules, in the schedule's time zone and in UTC, with daylight-saving days, skipped and
repeated hours flagged) and, for a policy with retention, what a run at its next fire time (or
--at, or now) would delete and keep of each instance's sets and why. It only reads: DryRun
CreateSnapshots, DescribeSnapshots, DescribeLockedSnapshots, DescribeImages,
DescribeSnapshotAttribute.

--all plans every policy of cdk.json and adds the account's coverage in the region: instances no
policy targets, instances several policies snapshot, and per policy the instances, volumes and
provisioned GiB a run snapshots (DescribeInstances and DescribeVolumes, one paginated call each).
--json prints the same data as JSON.
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
        type=worker_count,
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
    which = plan.add_mutually_exclusive_group()
    which.add_argument("--policy", metavar="FILE|NAME", help="policy file, `-`, or name")
    which.add_argument(
        "--all",
        action="store_true",
        help=f"every policy of {CDK_JSON}, and the account's coverage",
    )
    plan.add_argument(
        "--config",
        metavar="PATH",
        help=f"the {CDK_JSON} to look NAME up in, or to read with --all (default: ./)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--next",
        type=fire_count,
        default=5,
        metavar="N",
        help=f"fire times shown per schedule, 1-{MAX_FIRE_TIMES} (default: 5)",
    )
    plan.add_argument(
        "--at",
        type=plan_time,
        metavar="TIME",
        help="plan as of this ISO 8601 time, UTC unless it says (default: now)",
    )
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
    run.add_argument(
        "--ec2-share",
        type=_share,
        default=DEFAULT_EC2_API_SHARE,
        metavar="FRACTION",
        help="share of EC2's CreateSnapshots and DeleteSnapshot buckets the run may spend, "
        f"0.01 to 1 (default {DEFAULT_EC2_API_SHARE}, as the deployed function)",
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
