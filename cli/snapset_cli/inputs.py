"""What the CLI reads: payload and policy files, cdk.json, its options, the AWS configuration."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from pydantic import ValidationError

from infra.config import (
    CDK_JSON,
    FLAT_POLICIES_KEY,
    ConfigError,
    context_policies,
    policy_by_name,
    read_cdk_context,
)
from snapset.clients import Clients, make_clients
from snapset.policy import ManualRequest, SnapshotPolicy, describe_validation_error
from snapset.settings import DEFAULT_MAX_WORKERS, ENV_MAX_WORKERS, ENV_TOPIC_ARN

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

MAX_WORKERS_LIMIT = 64

NO_REGION = (
    "no AWS region configured: pass --region, or set AWS_REGION or AWS_DEFAULT_REGION, "
    "or set 'region' in your AWS profile (~/.aws/config)"
)
NO_CREDENTIALS = (
    "no AWS credentials found: pass --profile or set AWS_PROFILE (run `aws sso login` for an "
    "SSO profile), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


class CliError(Exception):
    """A problem to report on stderr in one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


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
    except RecursionError:
        raise CliError(f"{what} in {name} is nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
        raise CliError(f"{what} in {name} cannot be read: {exc}") from None


def policy_from_payload(data: Any, source: str) -> SnapshotPolicy:
    """A policy file holds the request model, or a manual payload (a policy with a request_id)."""
    try:
        manual = ManualRequest.model_validate(data)
    except ValidationError as exc:
        raise CliError(f"invalid policy in {source}: {describe_validation_error(exc)}") from None
    return SnapshotPolicy.model_validate(manual.model_dump(exclude={"request_id"}))


def policy_from_config(name: str, config: str | None) -> SnapshotPolicy:
    """Look a policy up by name in cdk.json (./cdk.json, or `config`), without CDK."""
    path = Path(config) if config else Path.cwd() / CDK_JSON
    if not path.is_file():
        if config:
            raise CliError(f"config file not found: {config}")
        raise CliError(
            f"{name!r} is neither a policy file nor a policy name: no {CDK_JSON} in "
            f"{Path.cwd()} to look it up in (pass a JSON file, or --config PATH to cdk.json)"
        )
    try:
        return policy_by_name(read_cdk_context(path), name, str(path))
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _context(config: str | None) -> tuple[dict[str, Any], str]:
    path = Path(config) if config else Path.cwd() / CDK_JSON
    if not path.is_file():
        raise CliError(f"config file not found: {path}")
    try:
        return read_cdk_context(path), str(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def is_policy_file(ref: str) -> bool:
    """Whether `plan --policy REF` reads a file (or stdin) rather than looking a NAME up."""
    return ref == "-" or Path(ref).is_file()


def policy_entry(name: str, config: str | None) -> Mapping[str, Any]:
    """The raw cdk.json entry of a policy `policy_from_config` found: its triggers too."""
    context, _ = _context(config)
    found = context_policies(context)
    entries = found[0] if found else []
    return next(e for e in entries if isinstance(e, Mapping) and e.get("policy") == name)


def all_policies(config: str | None) -> list[tuple[SnapshotPolicy, Mapping[str, Any]]]:
    """Every policy of cdk.json (./cdk.json, or `config`), each with its raw entry; any invalid
    policy is an error naming it."""
    context, source = _context(config)
    found = context_policies(context)
    if found is None:
        raise CliError(f"{source}: no list of policies at context.{FLAT_POLICIES_KEY}")
    policies = []
    for index, entry in enumerate(found[0]):
        name = entry.get("policy") if isinstance(entry, Mapping) else None
        if not isinstance(name, str):
            raise CliError(f"{source}: policy {index} has no 'policy' name")
        try:
            policies.append((policy_by_name(context, name, source), entry))
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    if not policies:
        raise CliError(f"{source}: the list of policies is empty")
    return policies


def load_policy(ref: str, config: str | None, stdin: IO[str]) -> SnapshotPolicy:
    """FILE (an existing file, or `-`) wins over NAME; a missing .json or path is an error."""
    if is_policy_file(ref):
        return policy_from_payload(read_json(ref, stdin, "policy"), "stdin" if ref == "-" else ref)
    if ref.endswith(".json") or os.sep in ref or "/" in ref:
        raise CliError(f"policy file not found: {ref}")
    return policy_from_config(ref, config)


def count_between(raw: str, high: int) -> int:
    """An integer from 1 to `high`, for argparse types."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {raw!r})") from None
    if not 1 <= value <= high:
        raise argparse.ArgumentTypeError(f"must be between 1 and {high} (got {value})")
    return value


def worker_count(raw: str) -> int:
    """An argparse type: 1 to MAX_WORKERS_LIMIT."""
    return count_between(raw, MAX_WORKERS_LIMIT)


def max_workers(args: argparse.Namespace) -> int:
    """--max-workers, else SNAPSET_MAX_WORKERS, else the Lambda's default."""
    if args.max_workers is not None:
        value: int = args.max_workers
        return value
    raw = os.environ.get(ENV_MAX_WORKERS, "")
    if not raw:
        return DEFAULT_MAX_WORKERS
    try:
        return worker_count(raw)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"{ENV_MAX_WORKERS}: {exc}") from None


def topic_arn(args: argparse.Namespace) -> str | None:
    """--topic-arn, else SNAPSET_TOPIC_ARN; None publishes nothing."""
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
