"""Property-based tests: no input crashes the parser, and no invalid input reaches
CreateSnapshots (every request that parses yields parameters AWS accepts)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from snapset.errors import InvalidInput
from snapset.snapshots import SnapshotPlan, build_create_snapshots_request
from snapset.triggers import parse_request
from tests.conftest import FIXTURES, load_event

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def mostly(
    valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Valid three times in four, so that many examples get past validation."""
    return st.one_of(valid, valid, valid, hostile)


instance_id = st.from_regex(r"i-[0-9a-f]{17}", fullmatch=True)
volume_id = st.from_regex(r"vol-[0-9a-f]{17}", fullmatch=True)
tag_key = st.text(min_size=1, max_size=20)
template = st.lists(
    st.sampled_from(["{policy}", "{instance_id}", "{timestamp}", "{trigger}", "{{", "}}", "-"])
    | st.text(max_size=30),
    max_size=8,
).map("".join)
near_valid_policy = st.fixed_dictionaries(
    {
        "policy": mostly(
            st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True), st.text(max_size=5)
        ),
        "instance_ids": mostly(
            st.lists(instance_id, min_size=1, max_size=3, unique=True),
            st.lists(st.text(max_size=20), max_size=3),
        ),
    },
    optional={
        "target_tags": mostly(
            st.dictionaries(
                tag_key, st.lists(st.text(max_size=5), min_size=1, max_size=3), max_size=3
            ),
            json_values,
        ),
        "exclude_boot_volume": mostly(st.booleans(), json_scalars),
        "exclude_data_volume_ids": mostly(
            st.lists(volume_id, max_size=40, unique=True),
            st.lists(volume_id, min_size=41, max_size=45),
        ),
        "exclude_data_volume_tags": mostly(
            st.dictionaries(
                tag_key, st.lists(st.text(max_size=5), min_size=1, max_size=2), max_size=2
            ),
            json_values,
        ),
        "copy_tags_from_source": mostly(
            st.sampled_from(["volume", None]), st.sampled_from(["instance", 1])
        ),
        "tags": mostly(
            st.dictionaries(
                tag_key | st.text(min_size=100, max_size=127),
                template | st.text(max_size=256),
                max_size=47,
            ),
            st.dictionaries(
                st.text(max_size=130) | st.sampled_from(["aws:x", "snapset:policy", "AWS:y"]),
                template
                | st.sampled_from(["{nope}", "{policy:>9}", "{", "}"])
                | st.text(min_size=250, max_size=300),
                max_size=52,
            ),
        ),
        "description": mostly(template, st.text(min_size=200, max_size=300) | st.just("{bad}")),
        "outpost_arn": mostly(
            st.just("arn:aws:outposts:us-east-1:123456789012:outpost/op-0123456789abcdef0"),
            st.text(max_size=10),
        ),
        "dry_run": mostly(st.booleans(), json_scalars),
        "request_id": mostly(
            st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True), st.text(max_size=10)
        ),
        "retention": mostly(
            st.fixed_dictionaries({"count": st.integers(1, 1000)}),
            st.dictionaries(st.sampled_from(["count", "max_age_days", "x"]), json_scalars),
        ),
    },
)


def wrap(policy: dict[str, Any], how: int) -> Any:
    if how == 0:
        return policy
    if how == 1:
        return {**policy, "schedule": {"scheduled_time": "2026-11-27T03:00:00Z"}}
    event = load_event("ec2-instance-state-change")
    event["detail"]["instance-id"] = "i-0123456789abcdef0"
    return {"policy": policy, "event": event}


def _reference_limit(pattern: str) -> int:
    """A number stated in the CreateSnapshots API reference (fixtures/create_snapshots.txt)."""
    match = re.search(pattern, (FIXTURES / "create_snapshots.txt").read_text())
    assert match is not None, pattern
    return int(match.group(1))


# AWS's limits as AWS states them, never the code's own constants (a wrong constant would
# otherwise pass its own test).
_OTHER_LIMITS = json.loads((FIXTURES / "aws_limits.json").read_text())
MAX_EXCLUDED_DATA_VOLUMES = _reference_limit(r"You can specify up to (\d+) volume IDs per request")
MAX_TAG_KEY_LEN = _reference_limit(r"Tag keys are case-sensitive and accept a maximum of (\d+)")
MAX_TAG_VALUE_LEN = _reference_limit(r"Tag values are case-sensitive and accept a maximum of (\d+)")
MAX_DESCRIPTION_LEN = _OTHER_LIMITS["snapshot_description_max_chars"]["value"]
MAX_TAGS_PER_RESOURCE = _OTHER_LIMITS["tags_per_resource_max"]["value"]


def assert_acceptable_to_aws(params: Any) -> None:
    spec = params["InstanceSpecification"]
    assert len(spec.get("ExcludeDataVolumeIds", [])) <= MAX_EXCLUDED_DATA_VOLUMES
    assert len(params.get("Description", "")) <= MAX_DESCRIPTION_LEN
    (tag_spec,) = params["TagSpecifications"]
    assert tag_spec["ResourceType"] == "snapshot"
    tags = tag_spec["Tags"]
    assert len(tags) <= MAX_TAGS_PER_RESOURCE
    assert len({t["Key"] for t in tags}) == len(tags)
    for tag in tags:
        assert 1 <= len(tag["Key"]) <= MAX_TAG_KEY_LEN
        assert len(tag["Value"]) <= MAX_TAG_VALUE_LEN
        assert not tag["Key"].lower().startswith("aws:")
        tag["Key"].encode()
        tag["Value"].encode()
    assert params.get("CopyTagsFromSource", "volume") == "volume"
    assert isinstance(params["DryRun"], bool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_crashes_the_parser(payload: Any) -> None:
    try:
        parse_request(payload, NOW)
    except InvalidInput as exc:
        assert exc.message


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_policy, st.integers(min_value=0, max_value=2))
def test_every_request_that_parses_is_acceptable_to_create_snapshots(
    policy: dict[str, Any], how: int
) -> None:
    try:
        request = parse_request(wrap(policy, how), NOW)
    except InvalidInput as exc:
        assert exc.message
        event("rejected")
        return
    event("accepted")
    instance_id = "i-0123456789abcdef0"
    plan = SnapshotPlan(
        snapshot_volume_ids=("vol-0123456789abcdef0",),
        excluded_volume_ids=tuple(request.policy.exclude_data_volume_ids),
    )
    assert_acceptable_to_aws(build_create_snapshots_request(request, instance_id, plan))


def _parses(policy: dict[str, Any]) -> bool:
    try:
        parse_request(policy, now=NOW)
    except InvalidInput:
        return False
    return True


BASE = {"policy": "p", "instance_ids": ["i-0123456789abcdef0"]}


@pytest.mark.parametrize(
    ("field", "at_limit", "over_limit"),
    [
        (
            "tag key",
            {"tags": {"k" * MAX_TAG_KEY_LEN: "v"}},
            {"tags": {"k" * (MAX_TAG_KEY_LEN + 1): "v"}},
        ),
        (
            "tag value",
            {"tags": {"k": "v" * MAX_TAG_VALUE_LEN}},
            {"tags": {"k": "v" * (MAX_TAG_VALUE_LEN + 1)}},
        ),
        (
            "description",
            {"description": "d" * MAX_DESCRIPTION_LEN},
            {"description": "d" * (MAX_DESCRIPTION_LEN + 1)},
        ),
        (
            "excluded volumes",
            {
                "exclude_data_volume_ids": [
                    f"vol-{n:017x}" for n in range(MAX_EXCLUDED_DATA_VOLUMES)
                ]
            },
            {
                "exclude_data_volume_ids": [
                    f"vol-{n:017x}" for n in range(MAX_EXCLUDED_DATA_VOLUMES + 1)
                ]
            },
        ),
        (
            # Snapset reserves six managed tag keys on every snapshot: policy, trigger,
            # instance, consistency, and the copy state and errors of a copying policy (a
            # copy carries six of its own), so one limit holds whatever the deployed copies
            "tags per snapshot",
            {"tags": {f"k{n}": "v" for n in range(MAX_TAGS_PER_RESOURCE - 6)}},
            {"tags": {f"k{n}": "v" for n in range(MAX_TAGS_PER_RESOURCE - 5)}},
        ),
    ],
)
def test_everything_aws_accepts_parses_and_nothing_more(
    field: str, at_limit: dict[str, Any], over_limit: dict[str, Any]
) -> None:
    """Both sides of each AWS limit: a policy is neither looser nor stricter than AWS."""
    assert _parses({**BASE, **at_limit}), field
    assert not _parses({**BASE, **over_limit}), field
