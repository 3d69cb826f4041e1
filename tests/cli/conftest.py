"""CLI tests: in-process moto, dummy credentials, a small tagged fleet, no AWS config files."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localaws.topic_queue import drain_notifications, subscribe_queue

REGION = "us-east-1"
UNKNOWN_INSTANCE = "i-0000000000000000f"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Dummy credentials and region; nothing read from ~/.aws; a clean working directory."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_SNS",
        "AWS_SECURITY_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "SNAPSET_TOPIC_ARN",
        "SNAPSET_MAX_WORKERS",
    ):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


class FakeTty(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@dataclass
class Fleet:
    """web-1: root + data + a volume tagged snapset-exclude; web-2: root + data excluded by ID;
    web-3: terminated; db-1: not a web instance."""

    ec2: Any
    web1: str
    web1_root: str
    web1_data: str
    web1_scratch: str
    web2: str
    web2_root: str
    web2_data: str
    web3: str
    db1: str

    def snapshot_count(self) -> int:
        """Snapshots of the fleet's volumes (moto's default AMI snapshots left out)."""
        volumes = [self.web1_root, self.web1_data, self.web1_scratch, self.web2_root]
        volumes.append(self.web2_data)
        filters = [{"Name": "volume-id", "Values": volumes}]
        return len(self.ec2.describe_snapshots(Filters=filters)["Snapshots"])

    def policy(self, **overrides: Any) -> dict[str, Any]:
        """The `web` policy: app=web, excluding by volume tag and by volume ID."""
        return {
            "policy": "web",
            "target_tags": {"app": ["web"]},
            "exclude_data_volume_tags": {"snapset-exclude": ["true"]},
            "exclude_data_volume_ids": [self.web2_data],
            **overrides,
        }


def _instance(ec2: Any, name: str, app: str) -> tuple[str, str, str]:
    tags = [{"Key": "Name", "Value": name}, {"Key": "app", "Value": app}]
    raw = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]
    iid = raw["InstanceId"]
    described = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    root = described["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    return iid, root, raw["Placement"]["AvailabilityZone"]


def _volume(ec2: Any, iid: str, az: str, device: str, tags: dict[str, str]) -> str:
    spec = [{"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    volume_id: str = ec2.create_volume(Size=8, AvailabilityZone=az, TagSpecifications=spec)[
        "VolumeId"
    ]
    ec2.attach_volume(VolumeId=volume_id, InstanceId=iid, Device=device)
    return volume_id


@pytest.fixture
def aws(aws_env: Path) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def fleet(aws: None) -> Fleet:
    ec2 = boto3.client("ec2", region_name=REGION)
    web1, web1_root, az = _instance(ec2, "web-1", "web")
    web1_data = _volume(ec2, web1, az, "/dev/sdf", {"role": "data"})
    web1_scratch = _volume(ec2, web1, az, "/dev/sdg", {"snapset-exclude": "true"})
    web2, web2_root, az2 = _instance(ec2, "web-2", "web")
    web2_data = _volume(ec2, web2, az2, "/dev/sdf", {"role": "data"})
    web3, _, _ = _instance(ec2, "web-3", "web")
    ec2.terminate_instances(InstanceIds=[web3])
    db1, _, _ = _instance(ec2, "db-1", "db")
    return Fleet(
        ec2, web1, web1_root, web1_data, web1_scratch, web2, web2_root, web2_data, web3, db1
    )


@dataclass
class Reports:
    """An SNS topic with an SQS queue subscribed, to read what `run` published."""

    topic_arn: str
    sqs: Any
    queue_url: str

    def messages(self) -> list[dict[str, Any]]:
        return drain_notifications(self.sqs, self.queue_url)


@pytest.fixture
def reports(aws: None) -> Reports:
    sns = boto3.client("sns", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    topic_arn = sns.create_topic(Name="snapset-reports")["TopicArn"]
    queue_url, _ = subscribe_queue(sns, sqs, topic_arn, "reports")
    return Reports(topic_arn, sqs, queue_url)


def write_json(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)
