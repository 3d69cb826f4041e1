"""One local AWS and one deployment of the synthesized stack per session (per xdist worker).

Deploying is the slow part, so tests share it and reset only what they touch: faults, emitted
events and the report queue before each test; the fleet a test launched is untagged after it
(so later schedules no longer target it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Fleet

from localaws import LocalAws
from localaws.deploy import Deployment, deploy
from localaws.report_inbox import ReportInbox
from localaws.router import Router
from localaws.synth import Synthesized, synthesize


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAws]:
    # IAM enforced: the function runs with its deployed role's credentials, and a call the role
    # does not grant fails the run (moto's access control; the tests' own clients are an
    # administrator's). See localaws/README.md for what moto checks.
    aws = LocalAws(snapshot_delay=None, enforce_iam=True)
    # Only the server's environment: without moto's ~1300 public AMIs (and their snapshots)
    # DescribeSnapshots is ~30x faster; Snapset never uses them.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        aws.start()
    try:
        yield aws
    finally:
        aws.stop()


@pytest.fixture(scope="session")
def synth() -> Synthesized:
    return synthesize()


@pytest.fixture(scope="session")
def deployment(local_aws: LocalAws, synth: Synthesized) -> Deployment:
    return deploy(local_aws, synth)


@pytest.fixture(scope="session")
def router(local_aws: LocalAws, deployment: Deployment) -> Iterator[Router]:
    routed = Router(local_aws, deployment)
    yield routed
    routed.close()


@pytest.fixture(scope="session")
def _inbox(local_aws: LocalAws, deployment: Deployment) -> ReportInbox:
    return ReportInbox(local_aws, deployment.topic_arn)


@pytest.fixture(scope="session")
def ec2(local_aws: LocalAws) -> Any:
    return local_aws.client("ec2")


@pytest.fixture
def inbox(local_aws: LocalAws, _inbox: ReportInbox) -> ReportInbox:
    """The topic's notifications, starting empty for this test (faults, events, clock reset)."""
    local_aws.clear_faults()
    local_aws.reset_clock()
    local_aws.complete_snapshots()
    local_aws.drain_events()
    _inbox.drain()
    return _inbox


@pytest.fixture
def fleet(ec2: Any, inbox: ReportInbox) -> Iterator[Fleet]:
    made = Fleet(ec2)
    yield made
    made.untag()
