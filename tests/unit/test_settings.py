"""The Lambda's configuration: every variable is read once and a bad one is named."""

from __future__ import annotations

import re

import pytest

from snapset.policy import Retention
from snapset.settings import (
    ENV_DEPLOYED_COPIES,
    ENV_DEPLOYED_POLICIES,
    ENV_EC2_API_SHARE,
    ENV_EC2_RATE_SCALE,
    ENV_FAN_OUT_CONCURRENCY,
    ENV_IDEMPOTENCY_TABLE,
    ENV_REPORT_BUCKET,
    ENV_STATE_MACHINE_ARN,
    ENV_TOPIC_ARN,
    ConfigError,
    Settings,
)

BASE = {
    ENV_TOPIC_ARN: "arn:aws:sns:eu-central-1:123456789012:Snapset-Topic",
    ENV_IDEMPOTENCY_TABLE: "Snapset-IdempotencyTable",
    ENV_REPORT_BUCKET: "snapset-reports-0a1b2c3d",
    ENV_DEPLOYED_POLICIES: '{"nightly": {"count": 7}, "on-stop": null}',
    ENV_STATE_MACHINE_ARN: "arn:aws:states:eu-central-1:123456789012:stateMachine:Snapset-FanOut",
    ENV_DEPLOYED_COPIES: "{}",
    "AWS_REGION": "eu-central-1",
}


@pytest.mark.parametrize(
    "arn",
    [
        None,
        "",
        "arn:aws:states:eu-central-1:123456789012:execution:Snapset-FanOut:x",
        "arn:aws:lambda:eu-central-1:123456789012:function:Snapset-FanOut",
        "Snapset-FanOut",
    ],
)
def test_the_state_machine_is_required_and_named(arn: str | None) -> None:
    env = {k: v for k, v in BASE.items() if k != ENV_STATE_MACHINE_ARN}
    if arn is not None:
        env[ENV_STATE_MACHINE_ARN] = arn
    with pytest.raises(ConfigError, match=f"^{ENV_STATE_MACHINE_ARN} must be the fan-out"):
        Settings.from_env(env)


def test_the_state_machine_arn_is_read() -> None:
    assert Settings.from_env(BASE).state_machine_arn == BASE[ENV_STATE_MACHINE_ARN]


def test_deployed_policies_and_their_retention() -> None:
    settings = Settings.from_env(BASE)
    assert settings.deployed_policies == {"nightly": Retention(count=7), "on-stop": None}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, f"{ENV_DEPLOYED_POLICIES} must map each deployed policy to its retention"),
        ("{", f"{ENV_DEPLOYED_POLICIES} is not valid JSON"),
        ('["nightly"]', f"{ENV_DEPLOYED_POLICIES}: Input should be a valid dictionary"),
        ('{"nightly": {"count": 0}}', f"{ENV_DEPLOYED_POLICIES}: nightly.count:"),
        ('{"bad name!": null}', f"{ENV_DEPLOYED_POLICIES}: bad name!.[key]:"),
    ],
)
def test_a_bad_deployed_policies_variable_is_named(raw: str | None, message: str) -> None:
    env = {k: v for k, v in BASE.items() if k != ENV_DEPLOYED_POLICIES}
    if raw is not None:
        env[ENV_DEPLOYED_POLICIES] = raw
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "bucket", [None, "", "  ", "ab", "Snapset-Reports", "-reports", "reports-", "a" * 64, "s3://x"]
)
def test_the_report_bucket_is_required_and_named(bucket: str | None) -> None:
    env = {k: v for k, v in BASE.items() if k != ENV_REPORT_BUCKET}
    if bucket is not None:
        env[ENV_REPORT_BUCKET] = bucket
    with pytest.raises(ConfigError, match=f"^{ENV_REPORT_BUCKET} must name the S3 bucket"):
        Settings.from_env(env)


@pytest.mark.parametrize("bucket", ["abc", "snapset-reports-0a1b2c3d", "a" * 63, "my.reports"])
def test_a_valid_report_bucket_is_read(bucket: str) -> None:
    assert Settings.from_env({**BASE, ENV_REPORT_BUCKET: bucket}).report_bucket == bucket


def test_the_ec2_share_and_rate_scale_default_to_half_and_one() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.ec2_api_share, settings.ec2_rate_scale) == (0.5, 1.0)
    settings = Settings.from_env({**BASE, ENV_EC2_API_SHARE: "0.2", ENV_EC2_RATE_SCALE: "20"})
    assert (settings.ec2_api_share, settings.ec2_rate_scale) == (0.2, 20.0)


def test_the_fan_out_concurrency_is_unlimited_unless_set() -> None:
    assert Settings.from_env(BASE).fan_out_concurrency is None
    assert Settings.from_env({**BASE, ENV_FAN_OUT_CONCURRENCY: "4"}).fan_out_concurrency == 4


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (ENV_EC2_API_SHARE, "half", "must be a number (got 'half')"),
        (ENV_EC2_API_SHARE, "0", "must be between 0.01 and 1.0 (got 0)"),
        (ENV_EC2_API_SHARE, "1.01", "must be between 0.01 and 1.0 (got 1.01)"),
        (ENV_EC2_API_SHARE, "nan", "must be between 0.01 and 1.0 (got nan)"),
        (ENV_EC2_RATE_SCALE, "0.5", "must be between 1.0 and 1000.0 (got 0.5)"),
        (ENV_FAN_OUT_CONCURRENCY, "0", "must be between 1 and 1000 (got 0)"),
        (ENV_FAN_OUT_CONCURRENCY, "four", "must be an integer (got 'four')"),
    ],
)
def test_a_bad_share_or_rate_scale_is_named(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, name: raw})
    assert str(info.value) == f"{name} {message}"


def test_deployed_copies_and_the_home_region_are_read() -> None:
    env = BASE | {
        ENV_DEPLOYED_COPIES: '{"nightly": {"copies": [{"region": "eu-west-1"}], '
        '"share_with_accounts": ["111122223333"]}}'
    }
    settings = Settings.from_env(env)
    assert settings.region == "eu-central-1"
    nightly = settings.deployed_copies["nightly"]
    assert [c.region for c in nightly.copies] == ["eu-west-1"]
    assert nightly.share_with_accounts == ["111122223333"]


@pytest.mark.parametrize(
    ("raw", "region", "message"),
    [
        (None, "eu-central-1", f"{ENV_DEPLOYED_COPIES} must map each deployed policy"),
        ("{", "eu-central-1", f"{ENV_DEPLOYED_COPIES} is not valid JSON"),
        (
            '{"nightly": {"copies": [{"region": "eu-central-1"}]}}',
            "eu-central-1",
            f"{ENV_DEPLOYED_COPIES}: nightly.copies.0.region: eu-central-1 is the function's own",
        ),
        (
            '{"nightly": {"copies": [{"region": "eu-west-1"}]}}',
            "",
            "AWS_REGION must name the function's region",
        ),
        (
            '{"weekly": {"share_with_accounts": ["111122223333"]}}',
            "eu-central-1",
            f"{ENV_DEPLOYED_COPIES}: 'weekly' is not in {ENV_DEPLOYED_POLICIES}",
        ),
        (
            '{"nightly": {"share_with_accounts": ["12345"]}}',
            "eu-central-1",
            f"{ENV_DEPLOYED_COPIES}: nightly.share_with_accounts.0:",
        ),
    ],
)
def test_a_bad_deployed_copies_variable_is_named(
    raw: str | None, region: str, message: str
) -> None:
    env = {k: v for k, v in BASE.items() if k not in (ENV_DEPLOYED_COPIES, "AWS_REGION")}
    env["AWS_REGION"] = region
    if raw is not None:
        env[ENV_DEPLOYED_COPIES] = raw
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)
