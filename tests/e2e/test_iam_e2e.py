"""IAM at run time: the deployed function runs with its role's credentials and moto's access
control on, so a call its role does not grant fails the run (localaws/README.md says what moto
checks: actions, not resources or conditions)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from e2e_support import SCHEDULED_TAGS, Fleet, ids_of, nightly_history, unique_time

from localaws import LocalAws
from localaws.report_inbox import ReportInbox
from localaws.router import Router

pytestmark = pytest.mark.e2e

# moto refuses with its generic code (EC2 itself says UnauthorizedOperation).
ACCESS_DENIED = {"AccessDenied", "UnauthorizedOperation"}


def role_name(router: Router) -> str:
    return router.function_role().rsplit("/", 1)[-1]


def as_function(local_aws: LocalAws, router: Router, service: str) -> Any:
    creds = router.function_credentials()
    return local_aws.client(
        service,
        max_attempts=1,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        aws_session_token=creds["session_token"],
    )


@pytest.fixture
def without_delete_snapshot(local_aws: LocalAws, router: Router) -> Iterator[str]:
    """The deployed role, its `ec2:DeleteSnapshot` statement removed for this test."""
    iam = local_aws.client("iam")
    role = role_name(router)
    saved = {}
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        kept = [s for s in document["Statement"] if "ec2:DeleteSnapshot" not in json.dumps(s)]
        if len(kept) < len(document["Statement"]):
            saved[name] = document
            iam.put_role_policy(
                RoleName=role,
                PolicyName=name,
                PolicyDocument=json.dumps({**document, "Statement": kept}),
            )
    assert saved, "no policy of the deployed role grants ec2:DeleteSnapshot"
    try:
        yield role
    finally:
        for name, document in saved.items():
            iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))


def test_the_function_runs_as_its_deployed_role(local_aws: LocalAws, router: Router) -> None:
    identity = as_function(local_aws, router, "sts").get_caller_identity()
    assert f":assumed-role/{role_name(router)}/" in identity["Arn"]
    # Granted: the run's describe calls. Not granted: anything else, e.g. deleting a volume.
    ec2 = as_function(local_aws, router, "ec2")
    ec2.describe_volumes(MaxResults=5)
    volume = local_aws.client("ec2").create_volume(Size=1, AvailabilityZone="us-east-1a")
    with pytest.raises(ClientError) as denied:
        ec2.delete_volume(VolumeId=volume["VolumeId"])
    assert denied.value.response["Error"]["Code"] in ACCESS_DENIED
    local_aws.client("ec2").delete_volume(VolumeId=volume["VolumeId"])  # the admin may


def test_a_role_without_delete_snapshot_makes_retention_fail_with_access_denied(
    local_aws: LocalAws,
    router: Router,
    fleet: Fleet,
    inbox: ReportInbox,
    ec2: Any,
    without_delete_snapshot: str,
) -> None:
    fleet.launch(SCHEDULED_TAGS, data=[{"Disk": "data"}])
    history = nightly_history(local_aws, router, ec2, days=[8, 7, 6, 5, 4, 3, 2, 1])
    inbox.drain()

    report = router.fire_schedule(policy="nightly-app", scheduled_time=unique_time()).unwrap()

    [outcome] = report["instances"]
    assert outcome["status"] == "started"  # the run itself is granted
    retention = outcome["retention"]
    (oldest_trigger, doomed) = history[0]
    assert retention["deleted"] == []
    assert {e["snapshot_id"] for e in retention["errors"]} == doomed
    assert {e["code"] for e in retention["errors"]} <= ACCESS_DENIED
    assert all(e["message"].startswith("DeleteSnapshot ") for e in retention["errors"])
    assert ids_of(ec2, oldest_trigger) == doomed  # nothing deleted
    (published,) = inbox.drain()
    assert published.message["instances"][0]["retention"] == retention
