"""The Lambda's configuration: every variable is read once and a bad one is named."""

from __future__ import annotations

import pytest

from snapset.policy import Retention
from snapset.settings import (
    ENV_DEPLOYED_POLICIES,
    ENV_IDEMPOTENCY_TABLE,
    ENV_TOPIC_ARN,
    ConfigError,
    Settings,
)

BASE = {
    ENV_TOPIC_ARN: "arn:aws:sns:eu-central-1:123456789012:Snapset-Topic",
    ENV_IDEMPOTENCY_TABLE: "Snapset-IdempotencyTable",
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
