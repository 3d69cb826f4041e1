"""boto3 clients with botocore's own retry modes, built once per invocation or CLI run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_ssm import SSMClient

# Adaptive mode adds client-side rate limiting on throttling, which matters when many worker
# threads share one EC2 client; SNS gets the standard mode.
EC2_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 8},
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=64,
)
# CreateSnapshots has no client token: a retry after a lost response can make a second set, so
# botocore must not resend it blind. The engine retries it itself, looking for the set first.
EC2_CREATE_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 1},
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=64,
)
SNS_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=10
)
# The full report can be megabytes at fleet scale: a longer read timeout than SNS's.
S3_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30
)

# StartExecution is idempotent on name and input, so botocore may resend it.
SFN_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=10
)


# Run Command for a policy's scripts. SendCommand has no client token, so a resend after a
# lost response runs the script twice: DLM-style documents are written to tolerate that (a
# second freeze of a frozen file system fails, a second thaw is a no-op), and throttling, the
# common retry, made no command.
SSM_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=10,
    max_pool_connections=64,
)


@dataclass(frozen=True)
class Clients:
    ec2: EC2Client
    sns: SNSClient
    ec2_create: EC2Client
    make_ssm: Callable[[], SSMClient]

    @functools.cached_property
    def ssm(self) -> SSMClient:
        """Made on first use, from one thread (a run's lookups, before its workers start): only
        a policy with scripts pays for SSM's service model, and botocore's client creation is
        not thread-safe."""
        return self.make_ssm()


def make_clients(
    region: str | None = None,
    endpoint_url: str | None = None,
    session: boto3.Session | None = None,
) -> Clients:
    """EC2, SNS and SSM clients from the standard AWS configuration (env, profile, role)."""
    session = session or boto3.Session()
    return Clients(
        ec2=session.client("ec2", region_name=region, endpoint_url=endpoint_url, config=EC2_CONFIG),
        sns=session.client("sns", region_name=region, endpoint_url=endpoint_url, config=SNS_CONFIG),
        ec2_create=session.client(
            "ec2", region_name=region, endpoint_url=endpoint_url, config=EC2_CREATE_CONFIG
        ),
        make_ssm=functools.partial(
            session.client, "ssm", region_name=region, endpoint_url=endpoint_url, config=SSM_CONFIG
        ),
    )
