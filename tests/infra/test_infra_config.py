"""The `snapset` context: defaults, the shipped example, and errors that name policy and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_support import ROOT, example_config

from infra.config import ConfigError, PolicyConfig, SnapsetConfig, load_config
from snapset.policy import SnapshotPolicy
from snapset.settings import DEFAULT_MAX_WORKERS, DEFAULT_SAFETY_MARGIN_MS


def policy(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "policy": "prod-db",
        "target_tags": {"Backup": ["nightly"]},
        "schedules": [{"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Paris"}],
    }
    base.update(overrides)
    return base


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return str(info.value)


def test_shipped_example_is_valid_and_realistic() -> None:
    config = load_config(example_config())
    nightly, on_stop, consistent, dr = config.policies
    assert nightly.schedules[0].timezone not in ("UTC", "Etc/UTC")
    assert nightly.exclude_boot_volume is True
    assert nightly.target_tags
    assert on_stop.on_instance_states == ["stopped"]
    assert not on_stop.schedules
    # the README's example document, with DLM's defaults (a 10 s timeout, no retry)
    assert consistent.scripts is not None
    assert consistent.scripts.document == "snapset-fsfreeze"
    assert (consistent.scripts.timeout_seconds, consistent.scripts.max_retries) == (10, 0)
    assert consistent.target_tags
    # a disaster-recovery copy in another region than the demo's, shared with one account
    assert [c.region for c in dr.copies] == ["us-west-2", "eu-west-1"]
    assert dr.share_with_accounts == ["111122223333"]


def test_defaults_for_every_stack_setting() -> None:
    config = load_config({"policies": [policy()]})
    assert config.notification_emails == []
    assert config.subscriptions == []
    assert config.log_retention_days == 90
    assert config.log_level == "INFO"
    assert config.lambda_memory_mb == 256
    assert config.lambda_timeout_seconds == 300
    # a burst of instance events queues instead of sharing EC2's bucket with hundreds of runs
    assert config.max_concurrency == 5
    assert config.max_workers == DEFAULT_MAX_WORKERS
    assert config.ec2_api_share == 0.5
    assert config.safety_margin_ms == DEFAULT_SAFETY_MARGIN_MS
    assert config.max_event_age_minutes == 60
    assert config.trigger_retry_attempts == 3
    assert config.completion_events is True
    assert config.alarms.period_minutes == 5
    assert config.alarms.failed_instances_threshold == 1
    assert config.powertools_layer_arn is None


def test_schedule_defaults_to_utc_and_accepts_a_bare_expression() -> None:
    config = load_config(
        {"policies": [policy(schedules=["rate(1 day)", {"expression": "rate(6 hours)"}])]}
    )
    assert [(s.expression, s.timezone) for s in config.policies[0].schedules] == [
        ("rate(1 day)", "UTC"),
        ("rate(6 hours)", "UTC"),
    ]


def test_policy_config_is_the_lambda_request_model_plus_triggers() -> None:
    assert issubclass(PolicyConfig, SnapshotPolicy)
    config = load_config({"policies": [policy(on_instance_states=["stopped", "running"])]})
    request_model = config.policies[0].snapshot_policy()
    assert type(request_model) is SnapshotPolicy
    assert "schedules" not in request_model.model_dump()


def test_context_may_be_a_json_string() -> None:
    assert load_config(json.dumps({"policies": [policy()]})).policies[0].name == "prod-db"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "no 'snapset' context"),
        ("{not json", "not valid JSON"),
        ([1], "must be an object"),
        ({}, "policies: Field required"),
        ({"policies": []}, "policies: List should have at least 1 item"),
    ],
)
def test_missing_or_malformed_context(raw: Any, expected: str) -> None:
    assert expected in error_of(raw)


VOLUMES_41 = [f"vol-{i:08x}" for i in range(41)]


@pytest.mark.parametrize(
    ("bad_policy", "expected"),
    [
        (
            {"exclude_data_volume_ids": VOLUMES_41},
            'policies[1] "prod-db": exclude_data_volume_ids: at most 40 volume IDs (got 41)',
        ),
        (
            {"schedules": [], "on_instance_states": []},
            'policies[1] "prod-db": give schedules and/or on_instance_states',
        ),
        (
            {"schedules": [{"expression": "cron(0 2 * * * *)"}]},
            'policies[1] "prod-db": schedules[0].expression: cron: exactly one of day-of-month '
            "and day-of-week must be '?'",
        ),
        (
            {"schedules": [{"expression": "cron(0 24 * * ? *)"}]},
            'policies[1] "prod-db": schedules[0].expression: cron hours field',
        ),
        (
            {"schedules": [{"expression": "cron(0 2 * * ?)"}]},
            "cron needs 6 fields",
        ),
        (
            {"schedules": [{"expression": "cron(0 2 ? * MON-FRX *)"}]},
            'policies[1] "prod-db": schedules[0].expression: cron day-of-week field',
        ),
        (
            {"schedules": [{"expression": "rate(1 hours)"}]},
            'policies[1] "prod-db": schedules[0].expression: rate: use the singular unit',
        ),
        (
            {"schedules": [{"expression": "at(2026-01-01T00:00:00)"}]},
            'policies[1] "prod-db": schedules[0].expression: expected',
        ),
        (
            {
                "schedules": [
                    "rate(5 minutes)",
                    {"expression": "rate(1 day)", "timezone": "Mars/Olympus"},
                ]
            },
            "policies[1] \"prod-db\": schedules[1].timezone: unknown IANA time zone 'Mars/Olympus'",
        ),
        (
            {"on_instance_states": ["terminated"]},
            'policies[1] "prod-db": on_instance_states[0]: Input should be',
        ),
        (
            {"on_instance_states": ["stopped", "stopped"]},
            'policies[1] "prod-db": on_instance_states: duplicate values: stopped',
        ),
        (
            {"target_tags": {}, "instance_ids": []},
            'policies[1] "prod-db": give instance_ids and/or target_tags',
        ),
        (
            {"tags": {"snapset:policy": "x"}},
            "policies[1] \"prod-db\": tags: key 'snapset:policy' uses a reserved prefix",
        ),
        (
            {"description": "{nope}"},
            'policies[1] "prod-db": description: unknown placeholder {nope}',
        ),
        (
            {"outpost_arn": "arn:aws:outposts:eu-west-1:123:outpost/op-1"},
            'policies[1] "prod-db": outpost_arn: String should match pattern',
        ),
        (
            {"dry_run": "yes"},
            'policies[1] "prod-db": dry_run: Input should be a valid boolean',
        ),
        (
            {"frequency": "daily"},
            'policies[1] "prod-db": frequency: Extra inputs are not permitted',
        ),
        (
            {"policy": "prod db!"},
            'policies[1] "prod db!": policy: String should match pattern',
        ),
    ],
)
def test_bad_policy_names_policy_and_field(bad_policy: dict[str, Any], expected: str) -> None:
    raw = {"policies": [policy(policy="web"), policy(**bad_policy)]}
    assert expected in error_of(raw)


def test_every_error_is_reported_at_once() -> None:
    raw = {
        "policies": [
            policy(policy="a", schedules=["rate(0 minutes)"]),
            policy(policy="b", on_instance_states=["halted"]),
        ]
    }
    message = error_of(raw)
    assert 'policies[0] "a": schedules[0].expression' in message
    assert 'policies[1] "b": on_instance_states[0]' in message


def test_policy_names_are_unique_ignoring_case() -> None:
    raw = {"policies": [policy(policy="prod-db"), policy(policy="Prod-DB")]}
    assert "policy names must be unique (ignoring case): 'prod-db' and 'Prod-DB'" in error_of(raw)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"log_retention_days": 42}, "log_retention_days: 42 is not a CloudWatch Logs retention"),
        (
            {"lambda_memory_mb": 64},
            "lambda_memory_mb: Input should be greater than or equal to 128",
        ),
        ({"lambda_timeout_seconds": 901}, "lambda_timeout_seconds: Input should be less than"),
        ({"max_concurrency": 0}, "max_concurrency: Input should be greater than or equal to 1"),
        ({"max_workers": 65}, "max_workers: Input should be less than or equal to 64"),
        ({"ec2_api_share": 0}, "ec2_api_share: Input should be greater than or equal to 0.01"),
        ({"ec2_api_share": 1.5}, "ec2_api_share: Input should be less than or equal to 1"),
        ({"ec2_api_share": "0.5"}, "ec2_api_share: Input should be a valid number"),
        (
            {"lambda_timeout_seconds": 30, "safety_margin_ms": 20_000},
            "safety_margin_ms (20000) must be less than half of lambda_timeout_seconds",
        ),
        ({"notification_emails": ["ops"]}, "notification_emails[0]: String should match pattern"),
        (
            {"subscriptions": [{"protocol": "sqs", "endpoint": "https://example.com/hook"}]},
            "subscriptions[0]: endpoint 'https://example.com/hook' is not a valid sqs endpoint",
        ),
        (
            {"subscriptions": [{"protocol": "sms", "endpoint": "+15555550100"}]},
            "subscriptions[0].protocol: Input should be",
        ),
        ({"alarms": {"errors_threshold": 0}}, "alarms.errors_threshold: Input should be greater"),
        ({"alarms": {"typo": 1}}, "alarms.typo: Extra inputs are not permitted"),
        ({"log_level": "TRACE"}, "log_level: Input should be"),
        ({"powertools_layer_arn": "arn:aws:lambda:eu-west-1:1:layer:x"}, "powertools_layer_arn"),
        ({"unknown": True}, "unknown: Extra inputs are not permitted"),
        (
            {"powertools_layer_version": 38},
            "powertools_layer_version is no longer used: the layer is resolved at deploy time",
        ),
    ],
)
def test_bad_stack_setting_names_the_field(settings: dict[str, Any], expected: str) -> None:
    assert expected in error_of({"policies": [policy()], **settings})


def test_valid_subscriptions() -> None:
    config = load_config(
        {
            "policies": [policy()],
            "notification_emails": ["ops@example.com"],
            "subscriptions": [
                {"protocol": "sqs", "endpoint": "arn:aws:sqs:eu-west-1:123456789012:alerts"},
                {"protocol": "https", "endpoint": "https://hooks.example.com/snapset"},
                {
                    "protocol": "lambda",
                    "endpoint": "arn:aws:lambda:eu-west-1:123456789012:function:notify",
                },
            ],
        }
    )
    assert [s.protocol for s in config.subscriptions] == ["sqs", "https", "lambda"]


def test_config_model_is_frozen() -> None:
    config = load_config({"policies": [policy()]})
    assert isinstance(config, SnapsetConfig)
    with pytest.raises(ValueError, match="frozen"):
        config.log_level = "DEBUG"  # type: ignore[misc]


def test_app_fails_before_synth_with_the_message(tmp_path: Path) -> None:
    # As `cdk synth` runs it: context in CDK_CONTEXT_JSON, output dir in CDK_OUTDIR.
    bad = {"policies": [policy(exclude_data_volume_ids=VOLUMES_41)]}
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({"snapset": bad}),
        "CDK_OUTDIR": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        'policies[0] "prod-db": exclude_data_volume_ids: at most 40 volume IDs (got 41)'
        in proc.stderr
    )
    assert not list(tmp_path.glob("*.template.json"))


def test_scripts_that_cannot_fit_the_invocation_are_refused_naming_their_fields() -> None:
    # 2 pre attempts of 120 s (each with its SSM calls and a cancelled script's delivery
    # window) and their post scripts need far more than half of a 300 s invocation
    slow = {"document": "snapset-fsfreeze", "timeout_seconds": 120, "max_retries": 1}
    message = error_of({"policies": [policy(scripts=slow)]})
    assert "prod-db" in message
    assert "scripts.timeout_seconds (120)" in message
    assert "scripts.max_retries (1)" in message
    assert "lambda_timeout_seconds" in message
    # one 100 s attempt fits a 900 s function: 145 s of pre, two 115 s posts, 25 s of call
    once = {**slow, "timeout_seconds": 100, "max_retries": 0}
    load_config({"policies": [policy(scripts=once)], "lambda_timeout_seconds": 900})
    load_config({"policies": [policy(scripts={"document": "snapset-fsfreeze"})]})


def test_scripts_on_an_instance_state_policy_are_refused() -> None:
    stopped = policy(
        schedules=[], on_instance_states=["stopped"], scripts={"document": "snapset-fsfreeze"}
    )
    message = error_of({"policies": [stopped]})
    assert "prod-db" in message
    assert "on_instance_states" in message
    assert "stopped" in message
