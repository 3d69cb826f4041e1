"""The Lambda's configuration: every variable is read once and a bad one is named."""

from __future__ import annotations

import pytest

from snapset.policy import Retention
from snapset.settings import (
    ENV_DEPLOYED_POLICIES,
    ENV_IDEMPOTENCY_TABLE,
    ENV_REPORT_BUCKET,
    ENV_TOPIC_ARN,
    ConfigError,
    Settings,
)

BASE = {
    ENV_TOPIC_ARN: "arn:aws:sns:eu-central-1:123456789012:Snapset-Topic",
    ENV_IDEMPOTENCY_TABLE: "Snapset-IdempotencyTable",
    ENV_REPORT_BUCKET: "snapset-reports-0a1b2c3d",
    ENV_DEPLOYED_POLICIES: '{"nightly": {"count": 7}, "on-stop": null}',
}


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
