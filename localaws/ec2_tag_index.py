"""Tag lookups by resource id instead of a scan of every tag in the region (moto 5.2.5 patch).

moto's ``TaggedEC2Resource.get_tags`` asks ``TagBackend.describe_tags`` for the filter
``resource-id = <id>``: that compiles a pattern and matches it against every tagged resource
of the region, so each lookup costs O(all tags). Every ``tag:Key``/``tag-key``/``tag-value``
filter calls ``get_tags`` once per candidate resource, and every rendered instance, volume or
snapshot once more, so a tag-filtered DescribeInstances over N instances costs O(N x all tags).

moto already keeps the tags in a map by resource id (``TagBackend.tags``:
``{resource_id: {key: value}}``, written only by ``create_tags``, ``delete_tags`` and
``delete_tag_keys``). That map is the index: `install()` makes ``get_tags`` read the resource's
own entry, O(tags of that resource). There is no second copy to keep in step, so creating,
retagging, untagging and deleting resources cannot leave it stale. (moto never removes a
deleted resource's tags from the map; neither do we, so DescribeTags is unchanged too.)

The answer is identical to moto's: the same dicts (``resource_id``, ``key``, ``value``,
``resource_type``), in the same order (the resource's keys in insertion order). moto matches
the id as an fnmatch pattern anchored at both ends, so only that exact id can match — unless the
id itself holds pattern characters (``*?[`` or a backslash); those lookups, and any backend
whose ``describe_tags`` is not moto's, still go through moto's scan. No filter needs a
(key, value) -> ids index: moto's filters ask each candidate resource for its own tags.

DescribeSnapshots needs more: moto matches every filter against every snapshot of the region,
and its ``snapshot_ids`` test is a list scan per snapshot, so a retention listing over a week
of 10,000 instances' sets (180,000 snapshots) cost about 5 s of the server's one core, and
the nightly run could not keep its pace. `install()` also makes ``describe_snapshots`` keep,
before moto's filters run, only the snapshots whose own tags (the same map) hold one of the
values of each ``tag:Key`` filter whose values have no pattern characters (moto's matching of
such a value is equality), and look the ids up in a set. moto's filters then run on those
unchanged, so the answer and its order are moto's.

`install()` is idempotent and works in-process (``mock_aws``) as well as in the server;
`uninstall()` restores moto's lookups (for benchmarks and equivalence tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.ec2.exceptions import InvalidSnapshotIdError
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.models.tags import TagBackend
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, generic_filter, get_prefix

_PATTERN_CHARS = frozenset("*?[\\")
_MOTO_GET_TAGS: Callable[[Any], list[dict[str, str]]] = TaggedEC2Resource.get_tags
_MOTO_DESCRIBE_TAGS = TagBackend.describe_tags
_MOTO_DESCRIBE_SNAPSHOTS = EBSBackend.describe_snapshots


def moto_get_tags(resource: Any) -> list[dict[str, str]]:
    """moto's own lookup (a scan of every tag in the region), whether or not installed."""
    return _MOTO_GET_TAGS(resource)


def indexed_tags(backend: Any, resource_id: str) -> list[dict[str, str]]:
    """The resource's tags as moto's ``describe_tags(filters={"resource-id": [id]})`` gives
    them, read from the backend's map by resource id."""
    tags = backend.tags.get(resource_id)  # .get: never add an entry to the defaultdict
    if not tags:
        return []
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in list(tags.items())  # a snapshot: another request may be tagging
    ]


def get_tags(self: Any) -> list[dict[str, str]]:
    resource_id = self.id
    if not resource_id:
        return []
    backend = self.ec2_backend
    if (
        getattr(type(backend), "describe_tags", None) is not _MOTO_DESCRIBE_TAGS
        or not isinstance(resource_id, str)
        or not _PATTERN_CHARS.isdisjoint(resource_id)
    ):
        return _MOTO_GET_TAGS(self)
    return indexed_tags(backend, resource_id)


def _exact_tag_filters(filters: Any) -> list[tuple[str, frozenset[str]]]:
    """The ``tag:Key`` filters whose values moto matches by equality (no pattern characters)."""
    exact = []
    for name, values in dict(filters or {}).items():
        if (
            isinstance(name, str)
            and name.startswith("tag:")
            and values
            and all(isinstance(v, str) and _PATTERN_CHARS.isdisjoint(v) for v in values)
        ):
            exact.append((name[4:], frozenset(values)))
    return exact


def describe_snapshots(
    self: Any, snapshot_ids: list[str] | None = None, filters: Any = None
) -> list[Any]:
    """moto's ``describe_snapshots``: the same checks, answer and order, with the ids in a set
    and the exact tag filters read from each snapshot's own tags before moto's filters."""
    if getattr(type(self), "describe_tags", None) is not _MOTO_DESCRIBE_TAGS:
        return _MOTO_DESCRIBE_SNAPSHOTS(self, snapshot_ids, filters)
    matches = list(self.snapshots.values())
    if snapshot_ids:
        wanted = set(snapshot_ids)
        matches = [snap for snap in matches if snap.id in wanted]
        if len(snapshot_ids) > len(matches):
            raise InvalidSnapshotIdError()
    tags = self.tags
    for key, values in _exact_tag_filters(filters):
        # .get: never add an entry to moto's defaultdict
        matches = [snap for snap in matches if (tags.get(snap.id) or {}).get(key) in values]
    if filters:
        matches = generic_filter(filters, matches)
    return matches


def installed() -> bool:
    return TaggedEC2Resource.get_tags is get_tags


def install() -> None:
    """Patch moto's EC2 tag lookups (idempotent; in-process or in the server)."""
    setattr(TaggedEC2Resource, "get_tags", get_tags)  # noqa: B010
    setattr(EBSBackend, "describe_snapshots", describe_snapshots)  # noqa: B010


def uninstall() -> None:
    """Put moto's scanning lookups back."""
    setattr(TaggedEC2Resource, "get_tags", _MOTO_GET_TAGS)  # noqa: B010
    setattr(EBSBackend, "describe_snapshots", _MOTO_DESCRIBE_SNAPSHOTS)  # noqa: B010
