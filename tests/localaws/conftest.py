"""Fixtures for the local AWS tests: one server per session (per xdist worker), reset per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from localaws_testlib import Instance

from localaws import LocalAws

DATA_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]


@pytest.fixture(scope="session")
def local_aws_server() -> Iterator[LocalAws]:
    with LocalAws(snapshot_delay=0.5) as server:
        yield server


@pytest.fixture
def aws(local_aws_server: LocalAws) -> LocalAws:
    """The session's server, reset (moto backends, faults, events, pending snapshots)."""
    local_aws_server.reset()
    return local_aws_server


@pytest.fixture(scope="session")
def _ec2_client(local_aws_server: LocalAws) -> Any:
    return local_aws_server.client("ec2", max_attempts=1)  # creating clients is slow: share


@pytest.fixture
def ec2(aws: LocalAws, _ec2_client: Any) -> Any:
    """EC2 client without retries, on a freshly reset server."""
    return _ec2_client


@pytest.fixture(scope="session")
def image_id(local_aws_server: LocalAws) -> str:
    images = local_aws_server.client("ec2").describe_images(
        Filters=[{"Name": "root-device-name", "Values": ["/dev/sda1"]}], Owners=["amazon"]
    )["Images"]
    return str(images[0]["ImageId"])


@pytest.fixture
def make_instance(ec2: Any, image_id: str) -> Callable[..., Instance]:
    """Launch an instance with a root volume plus data volumes (tags/encryption per volume)."""

    def make(
        data_volume_tags: Sequence[Mapping[str, str]] = ({}, {}),
        encrypted: Sequence[bool] | None = None,
    ) -> Instance:
        reservation = ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro"
        )
        inst = reservation["Instances"][0]
        instance_id, az = inst["InstanceId"], inst["Placement"]["AvailabilityZone"]
        root = next(
            m["Ebs"]["VolumeId"]
            for m in inst["BlockDeviceMappings"]
            if m["DeviceName"] == inst["RootDeviceName"]
        )
        data_ids = []
        for index, tags in enumerate(data_volume_tags):
            kwargs: dict[str, Any] = {"Size": 10 + index, "AvailabilityZone": az}
            if tags:
                kwargs["TagSpecifications"] = [
                    {
                        "ResourceType": "volume",
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                    }
                ]
            if encrypted and encrypted[index]:
                kwargs["Encrypted"] = True
            volume_id = ec2.create_volume(**kwargs)["VolumeId"]
            ec2.attach_volume(
                VolumeId=volume_id, InstanceId=instance_id, Device=DATA_DEVICES[index]
            )
            data_ids.append(volume_id)
        return Instance(instance_id, root, tuple(data_ids), az)

    return make
