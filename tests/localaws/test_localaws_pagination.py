"""MaxResults and NextToken on the Describe calls Snapset pages through, through boto3 against the
server (`localaws.ec2_pagination`), as the EC2 API reference documents them: at most MaxResults
items a page, every item exactly once across the pages, MaxResults bounds, ids and MaxResults
not together, tokens that are not ours refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from localaws.ec2_pagination import IMAGES, INSTANCES, SNAPSHOTS, VOLUMES, Bounds

AZ = "us-east-1a"


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


def _volumes(ec2: Any, count: int, tags: dict[str, str] | None = None) -> list[str]:
    kwargs: dict[str, Any] = {"Size": 1, "AvailabilityZone": AZ}
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return [ec2.create_volume(**kwargs)["VolumeId"] for _ in range(count)]


def _snapshots(ec2: Any, count: int, tags: dict[str, str]) -> list[str]:
    [volume_id] = _volumes(ec2, 1)
    spec = [{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    return [
        ec2.create_snapshot(VolumeId=volume_id, TagSpecifications=spec)["SnapshotId"]
        for _ in range(count)
    ]


# call, the response's list, an item's id, the request's fixed arguments
Listing = tuple[str, str, Callable[[dict[str, Any]], str], dict[str, Any]]
SNAPSHOT_LISTING: Listing = (
    "describe_snapshots",
    "Snapshots",
    lambda s: str(s["SnapshotId"]),
    {"OwnerIds": ["self"], "Filters": [{"Name": "tag:set", "Values": ["a"]}]},
)
VOLUME_LISTING: Listing = ("describe_volumes", "Volumes", lambda v: str(v["VolumeId"]), {})
IMAGE_LISTING: Listing = (
    "describe_images",
    "Images",
    lambda i: str(i["ImageId"]),
    {"Owners": ["self"]},
)
RESERVATION_LISTING: Listing = (
    "describe_instances",
    "Reservations",
    lambda r: str(r["ReservationId"]),
    {"Filters": [{"Name": "tag:policy", "Values": ["nightly"]}]},
)


def _walk(ec2: Any, listing: Listing, max_results: int) -> list[list[str]]:
    """Every page's ids, following NextToken by hand."""
    call, key, item_id, kwargs = listing
    pages: list[list[str]] = []
    token: str | None = None
    while True:
        response = getattr(ec2, call)(
            **kwargs, MaxResults=max_results, **({"NextToken": token} if token else {})
        )
        pages.append([item_id(item) for item in response[key]])
        token = response.get("NextToken")
        if not token:
            return pages
        assert len(pages) < 100, "the pages never end"


def _all(ec2: Any, listing: Listing) -> list[str]:
    call, key, item_id, kwargs = listing
    response = getattr(ec2, call)(**kwargs)
    assert "NextToken" not in response  # without MaxResults: everything (moto's answer)
    return [item_id(item) for item in response[key]]


def _assert_paged(ec2: Any, listing: Listing, max_results: int, expected: list[str]) -> None:
    pages = _walk(ec2, listing, max_results)
    assert all(len(p) <= max_results for p in pages)
    assert all(len(p) == max_results for p in pages[:-1])  # ours are full but for the last
    flat = [i for p in pages for i in p]
    assert flat == expected  # every item exactly once, in the unpaged listing's order
    assert len(pages) == max(1, -(-len(expected) // max_results))


def test_describe_snapshots_pages(ec2: Any) -> None:
    wanted = _snapshots(ec2, 12, {"set": "a"})
    _snapshots(ec2, 3, {"set": "b"})  # filtered out
    assert _all(ec2, SNAPSHOT_LISTING) == wanted
    for size in (5, 6, 12, 13):
        _assert_paged(ec2, SNAPSHOT_LISTING, size, wanted)
    paginator = ec2.get_paginator("describe_snapshots")
    _, _, item_id, kwargs = SNAPSHOT_LISTING
    pages = list(paginator.paginate(**kwargs, PaginationConfig={"PageSize": 5}))
    assert [len(p["Snapshots"]) for p in pages] == [5, 5, 2]
    assert [item_id(s) for p in pages for s in p["Snapshots"]] == wanted


def test_describe_volumes_pages(ec2: Any) -> None:
    _volumes(ec2, 11)
    everything = _all(ec2, VOLUME_LISTING)
    assert len(everything) == 11
    for size in (5, 10, 11, 500):
        _assert_paged(ec2, VOLUME_LISTING, size, everything)
    tagged = _volumes(ec2, 6, {"skip": "yes"})
    filtered: Listing = (
        *VOLUME_LISTING[:3],
        {"Filters": [{"Name": "tag:skip", "Values": ["yes"]}]},
    )
    _assert_paged(ec2, filtered, 5, tagged)


def test_describe_images_pages(ec2: Any, image_id: str) -> None:
    instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    for n in range(5):
        ec2.create_image(InstanceId=instance_id, Name=f"img-{n}")
    everything = _all(ec2, IMAGE_LISTING)
    assert len(everything) == 5
    for size in (1, 2, 5, 6):
        _assert_paged(ec2, IMAGE_LISTING, size, everything)


def _walk_raw(ec2: Any, size: int) -> list[list[tuple[str, str]]]:
    """Every DescribeInstances page of the nightly listing, as (reservation, instance) ids."""
    pages: list[list[tuple[str, str]]] = []
    token: str | None = None
    kwargs = RESERVATION_LISTING[3]
    while True:
        response = ec2.describe_instances(
            **kwargs, MaxResults=size, **({"NextToken": token} if token else {})
        )
        pages.append(
            [
                (r["ReservationId"], i["InstanceId"])
                for r in response["Reservations"]
                for i in r["Instances"]
            ]
        )
        token = response.get("NextToken")
        if not token:
            return pages
        assert len(pages) < 100, "the pages never end"


def test_describe_instances_pages_count_instances(ec2: Any, image_id: str) -> None:
    def launch(count: int, policy: str) -> None:
        ec2.run_instances(
            ImageId=image_id,
            MinCount=count,
            MaxCount=count,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "policy", "Value": policy}]}
            ],
        )

    for _ in range(4):
        launch(1, "nightly")
        launch(1, "weekly")
    launch(7, "nightly")  # one reservation of seven instances: split across pages
    launch(2, "nightly")
    unpaged = ec2.describe_instances(**RESERVATION_LISTING[3])
    assert "NextToken" not in unpaged
    everything = [
        (r["ReservationId"], i["InstanceId"])
        for r in unpaged["Reservations"]
        for i in r["Instances"]
    ]
    assert len(everything) == 13
    for size in (5, 6, 13, 1000):
        pages = _walk_raw(ec2, size)
        assert all(len(p) == size for p in pages[:-1])  # full but for the last
        assert 0 < len(pages[-1]) <= size
        # every instance once, in order, under its own reservation
        assert [pair for p in pages for pair in p] == everything
        assert len(pages) == -(-13 // size)


@pytest.mark.parametrize(
    ("call", "kwargs", "refused", "accepted"),
    [
        ("describe_snapshots", {"OwnerIds": ["self"]}, [4, 0, -1], [5, 1000, 1001, 100000]),
        ("describe_volumes", {}, [4, 0], [5, 500, 501, 1000]),
        ("describe_instances", {}, [4, 0, 1001], [5, 1000]),
        ("describe_images", {"Owners": ["self"]}, [0, -5], [1, 5000]),
    ],
)
def test_max_results_bounds(
    ec2: Any, call: str, kwargs: dict[str, Any], refused: list[int], accepted: list[int]
) -> None:
    for value in refused:
        with pytest.raises(ClientError) as exc:
            getattr(ec2, call)(**kwargs, MaxResults=value)
        assert _code(exc) == "InvalidParameterValue", value
        assert f"( {value} )" in str(exc.value)
    for value in accepted:
        getattr(ec2, call)(**kwargs, MaxResults=value)


def test_above_the_maximum_only_the_maximum_is_returned() -> None:
    """(Creating 1001 snapshots through the server is slow: the clamp, checked directly.)"""
    assert SNAPSHOTS.bounds.limit(1001) == 1000
    assert SNAPSHOTS.bounds.limit("1000") == 1000
    assert VOLUMES.bounds.limit(501) == 500
    assert IMAGES.bounds.limit(5000) == 5000
    assert INSTANCES.bounds.limit(None) is None
    assert Bounds(5, 10, clamp=True).limit(7) == 7


def test_ids_and_max_results_not_together(ec2: Any, image_id: str) -> None:
    [snapshot_id] = _snapshots(ec2, 1, {"set": "a"})
    [volume_id] = _volumes(ec2, 1)
    instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("describe_snapshots", {"SnapshotIds": [snapshot_id]}),
        ("describe_volumes", {"VolumeIds": [volume_id]}),
        ("describe_instances", {"InstanceIds": [instance_id]}),
    ]
    for call, kwargs in calls:
        with pytest.raises(ClientError) as exc:
            getattr(ec2, call)(**kwargs, MaxResults=5)
        assert _code(exc) == "InvalidParameterCombination", call
        assert len(next(iter(getattr(ec2, call)(**kwargs).values()))) == 1  # ids alone: fine


def test_tokens_that_are_not_ours_are_refused(ec2: Any) -> None:
    _volumes(ec2, 7)
    _snapshots(ec2, 6, {"set": "a"})
    volume_token = ec2.describe_volumes(MaxResults=5)["NextToken"]
    snapshot_token = ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5)["NextToken"]
    bad: list[tuple[str, dict[str, Any]]] = [
        ("describe_snapshots", {"OwnerIds": ["self"], "NextToken": "garbage"}),
        ("describe_snapshots", {"OwnerIds": ["self"], "NextToken": volume_token}),
        ("describe_volumes", {"NextToken": snapshot_token, "MaxResults": 5}),
        ("describe_instances", {"NextToken": volume_token}),
        ("describe_instances", {"NextToken": "r-0123456789abcdef0"}),  # moto's kind: a 500 there
        ("describe_images", {"NextToken": "e30", "MaxResults": 5}),  # base64 of {}
    ]
    for call, kwargs in bad:
        with pytest.raises(ClientError) as exc:
            getattr(ec2, call)(**kwargs)
        assert _code(exc) == "InvalidPaginationToken", (call, kwargs)
    # a token without MaxResults: the rest
    rest = ec2.describe_volumes(NextToken=volume_token)
    assert len(rest["Volumes"]) == 3
    assert "NextToken" not in rest


def test_changes_between_pages_lose_and_repeat_nothing(ec2: Any) -> None:
    """The next page is what comes after the last item returned, in moto's store order, even
    when that item, or an earlier one, is deleted or stops matching, or items are created."""
    _, _, item_id, kwargs = SNAPSHOT_LISTING

    def next_page(token: str) -> tuple[list[str], str | None]:
        response = ec2.describe_snapshots(**kwargs, MaxResults=5, NextToken=token)
        return [item_id(s) for s in response["Snapshots"]], response.get("NextToken")

    snapshots = _snapshots(ec2, 12, {"set": "a"})
    first = ec2.describe_snapshots(**kwargs, MaxResults=5)
    assert [item_id(s) for s in first["Snapshots"]] == snapshots[:5]
    ec2.delete_snapshot(SnapshotId=snapshots[4])  # the item the token names
    ec2.delete_snapshot(SnapshotId=snapshots[0])  # an earlier one
    second, token = next_page(first["NextToken"])
    assert second == snapshots[5:10]
    assert token is not None

    # the last item of this page stops matching; a new one is created; one still to come goes
    ec2.create_tags(Resources=[snapshots[9]], Tags=[{"Key": "set", "Value": "b"}])
    ec2.delete_snapshot(SnapshotId=snapshots[10])
    [created] = _snapshots(ec2, 1, {"set": "a"})
    third, token = next_page(token)
    assert third == [snapshots[11], created]
    assert token is None


def test_numbering_follows_moto_store_not_first_sight(ec2: Any) -> None:
    """An item first listed by another query still pages in its place among the others."""
    _, _, item_id, kwargs = SNAPSHOT_LISTING
    older = _snapshots(ec2, 4, {"set": "a"})
    [other] = _snapshots(ec2, 1, {"set": "b"})
    newer = _snapshots(ec2, 3, {"set": "a"})
    ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:set", "Values": ["b"]}], MaxResults=5
    )  # `other` is seen first, on its own
    ec2.create_tags(Resources=[other], Tags=[{"Key": "set", "Value": "a"}])
    _assert_paged(ec2, SNAPSHOT_LISTING, 5, [*older, other, *newer])
    assert [item_id(s) for s in ec2.describe_snapshots(**kwargs)["Snapshots"]] == [
        *older,
        other,
        *newer,
    ]


def test_describe_instances_default_pages_follow_their_own_token(ec2: Any, image_id: str) -> None:
    for _ in range(101):
        ec2.run_instances(
            ImageId=image_id,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "policy", "Value": "nightly"}]}
            ],
        )
    first = ec2.describe_instances(**RESERVATION_LISTING[3])
    assert len(first["Reservations"]) == 100  # moto's default page, without MaxResults
    rest = ec2.describe_instances(**RESERVATION_LISTING[3], NextToken=first["NextToken"])
    assert "NextToken" not in rest
    ids = [r["ReservationId"] for page in (first, rest) for r in page["Reservations"]]
    assert len(ids) == len(set(ids)) == 101
