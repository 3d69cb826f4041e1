"""The local AWS writes CreateSnapshots' XML answer itself (`ec2_snapshots.render_response`):
it must be the very text moto's serializer makes of the same snapshots.

In-process (``mock_aws``): moto's serializer is called directly as the reference, on hand-made
items with every edge the answer can hold, on generated ones, and on the snapshots the patched
handler has just made, whose raw answer it compares byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto import settings as moto_settings
from moto.core.responses import ActionContext, ActionResult
from moto.core.serialize import get_serializer_class
from moto.core.utils import get_service_model
from moto.ec2.models import ec2_backends
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from localaws import ec2_snapshots
from localaws.events import EventSink
from localaws.fleet import MOTO_ACCOUNT

REGION = "us-east-1"
IMAGE = "ami-12c6146b"  # one of moto's images that exists without the default AMIs


def moto_body(items: list[dict[str, Any]]) -> str:
    """What moto's own serializer answers for these snapshots."""
    service = get_service_model("ec2")
    operation = service.operation_model("CreateSnapshots")
    serializer = get_serializer_class("ec2", "ec2")
    context = ActionContext(service, operation, serializer, ElasticBlockStore)
    _status, _headers, body = ActionResult({"Snapshots": items}).execute_result(context)
    assert isinstance(body, str)
    return body


def item(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "SnapshotId": "snap-0123456789abcdef0",
        "VolumeId": "vol-0123456789abcdef0",
        "State": "pending",
        "Progress": "0%",
        "StartTime": datetime(2026, 12, 6, 22, 30, 5, tzinfo=UTC),
        "VolumeSize": 8,
        "Encrypted": False,
        "OwnerId": MOTO_ACCOUNT,
        "Description": "Created by Snapset",
        "Tags": [{"Key": "snapset:policy", "Value": "nightly"}],
    }
    return {**base, **changes}


CASES = {
    "one snapshot": [item()],
    "no snapshots (boot volume excluded, no data volume)": [],
    "two snapshots, many tags": [
        item(Tags=[{"Key": f"k{i}", "Value": f"v{i}"} for i in range(12)]),
        item(SnapshotId="snap-1", VolumeId="vol-1", VolumeSize=500),
    ],
    "empty description, no tags": [item(Description="", Tags=[])],
    "empty tag value": [item(Tags=[{"Key": "empty", "Value": ""}])],
    "markup in text": [
        item(
            Description="a <b> & \"c\" 'd' ]]> e",
            Tags=[{"Key": "a&b<c>", "Value": "<&>\"'"}],
        )
    ],
    "non-ASCII and whitespace": [
        item(Description="sauvegarde \u00e9t\u00e9 \u2603 \U0001f4be\n\ttab\rcr  ")
    ],
    "encrypted, completed": [item(Encrypted=True, State="completed", Progress="100%")],
    "error state": [item(State="error", Progress="0%")],
    "start time with microseconds": [
        item(StartTime=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    ],
    "start time in another zone": [
        item(StartTime=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))))
    ],
    "start time without a zone": [item(StartTime=datetime(2026, 1, 2, 3, 4, 5))],
    "start time across midnight in UTC": [
        item(StartTime=datetime(2026, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))))
    ],
}


@pytest.mark.parametrize("items", CASES.values(), ids=list(CASES))
def test_answer_is_moto_serializers_text(items: list[dict[str, Any]]) -> None:
    assert ec2_snapshots.render_response(items) == moto_body(items)


# XML 1.0 cannot carry most control characters; EC2 refuses them in tags and descriptions.
xml_text = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters=[chr(c) for c in range(32) if c not in (9, 10, 13)],
    ),
    max_size=40,
)
generated_item = st.builds(
    item,
    Description=xml_text,
    Tags=st.lists(st.fixed_dictionaries({"Key": xml_text, "Value": xml_text}), max_size=6),
    Encrypted=st.booleans(),
    VolumeSize=st.integers(min_value=1, max_value=65536),
    StartTime=st.datetimes(
        min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30), timezones=st.just(UTC)
    )
    | st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30)),
    State=st.sampled_from(["pending", "completed", "error"]),
    Progress=st.sampled_from(["0%", "42%", "100%"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(generated_item, max_size=4))
def test_generated_answers_are_moto_serializers_text(items: list[dict[str, Any]]) -> None:
    assert ec2_snapshots.render_response(items) == moto_body(items)


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    # The completer the unit tests' conftest installed, if any: installing is per process.
    completer = ec2_snapshots.installed_completer() or ec2_snapshots.SnapshotCompleter(
        EventSink(), lambda: (), delay=None
    )
    ec2_snapshots.install(completer)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def raw_answers(ec2: Any) -> list[tuple[int, str, str]]:
    """(status, Content-Type, body) of every CreateSnapshots answer the client gets from now."""
    raw: list[tuple[int, str, str]] = []
    ec2.meta.events.register(
        "after-call.ec2.CreateSnapshots",
        lambda http_response, **_: raw.append(
            (
                http_response.status_code,
                http_response.headers.get("Content-Type", ""),
                http_response.content.decode(),
            )
        ),
    )
    return raw


def made_snapshots(answer: dict[str, Any]) -> list[Any]:
    """moto's snapshot objects behind a CreateSnapshots answer, in its order."""
    backend = ec2_backends[MOTO_ACCOUNT][REGION]
    return [backend.snapshots[s["SnapshotId"]] for s in answer["Snapshots"]]


def test_handlers_raw_answer_is_moto_serializers_text_for_the_snapshots_it_made(
    ec2: Any,
) -> None:
    reservation = ec2.run_instances(
        ImageId=IMAGE,
        MinCount=1,
        MaxCount=1,
        BlockDeviceMappings=[
            {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}},
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 20, "Encrypted": True}},
        ],
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "app", "Value": "a&b"}]}],
    )
    instance_id = reservation["Instances"][0]["InstanceId"]
    raw = raw_answers(ec2)
    answer = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": instance_id},
        Description="nightly <set>",
        CopyTagsFromSource="volume",
        TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": "snapset:policy", "Value": "n"}]}
        ],
    )

    made = made_snapshots(answer)
    assert len(made) == 2
    [(status, content_type, body)] = raw
    assert (status, content_type) == (200, "text/xml")
    assert body == moto_body(ec2_snapshots.snapshot_items(made))
    by_volume = {s["VolumeSize"]: s for s in answer["Snapshots"]}
    assert by_volume[20]["Encrypted"] is True
    assert by_volume[8]["Encrypted"] is False
    assert {t["Key"]: t["Value"] for t in by_volume[20]["Tags"]} == {
        "app": "a&b",
        "snapset:policy": "n",
    }
    assert by_volume[20]["Description"] == "nightly <set>"
    assert by_volume[20]["State"] == "pending"
    assert by_volume[20]["Progress"] == "0%"


def test_pretty_printed_answers_are_left_to_moto(ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """MOTO_PRETTIFY_RESPONSES asks for indented XML, which only moto's serializer writes."""
    reservation = ec2.run_instances(ImageId=IMAGE, MinCount=1, MaxCount=1)
    instance_id = reservation["Instances"][0]["InstanceId"]
    raw = raw_answers(ec2)
    monkeypatch.setattr(moto_settings, "PRETTIFY_RESPONSES", True)
    answer = ec2.create_snapshots(InstanceSpecification={"InstanceId": instance_id})

    made = made_snapshots(answer)
    [(_status, _content_type, body)] = raw
    assert body == moto_body(ec2_snapshots.snapshot_items(made))
    assert "\n\t<snapshotSet>" in body  # indented: moto's pretty printer wrote it
