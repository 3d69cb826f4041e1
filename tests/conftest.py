"""Shared test setup: no real AWS is ever reachable from tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# Set before any boto3 or Powertools import in test modules.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_SERVICE_NAME": "snapset",
        "POWERTOOLS_METRICS_NAMESPACE": "Snapset",
        "POWERTOOLS_DEV": "0",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)

# In-process moto (tests/unit, tests/retention, tests/cli) as faithful and as fast as the local
# AWS server: tag lookups by resource id, not a scan of every tag; MaxResults and NextToken
# honoured, so the code's paging is exercised. (The server installs them in build_app.)
from localaws import ec2_pagination, ec2_tag_index  # noqa: E402

ec2_tag_index.install()
ec2_pagination.install()


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "events" / f"{name}.json").read_text())
    return data


@pytest.fixture
def state_change_event() -> dict[str, Any]:
    return load_event("ec2-instance-state-change")
