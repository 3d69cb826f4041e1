"""``MaxResults``/``NextToken`` on the EC2 Describe calls Snapset pages through (moto 5.2.5 patch).

moto 5.2.5 ignores ``MaxResults`` and ``NextToken`` on DescribeSnapshots, DescribeVolumes and
DescribeImages (every match in one response, never a token), and on DescribeInstances pages
by reservation without checking ``MaxResults`` (any integer, 0 and negatives included) and fails
with HTTP 500 on a token it does not know. After `install()`:

* **DescribeSnapshots**: ``MaxResults`` 5-1000; above 1000 only 1000 are returned; below 5
  ``InvalidParameterValue``; with ``SnapshotIds`` ``InvalidParameterCombination``. The EC2 API
  reference: "This value can be between 5 and 1,000; if this value is larger than 1,000, only
  1,000 results are returned. If this parameter is not used, then the request returns all
  snapshots. You cannot specify this parameter and the snapshot IDs parameter in the same
  request."
* **DescribeVolumes**: ``MaxResults`` 5-500; above 500 only 500; below 5
  ``InvalidParameterValue``; with ``VolumeIds`` ``InvalidParameterCombination`` ("This value
  can be between 5 and 500; if you specify a value larger than 500, only 500 items are
  returned. If this parameter is not used, then all items are returned. You cannot specify this
  parameter and the volume IDs parameter in the same request.")
* **DescribeInstances**: ``MaxResults`` 5-1000, ``InvalidParameterValue`` outside ("This value
  can be between 5 and 1000. You cannot specify this parameter and the instance IDs parameter
  in the same call."; the combination is moto's own ``InvalidParameterCombination``). Pages
  count instances, as AWS's ``MaxResults`` ("the maximum number of items") does: a reservation
  with more instances than the page has room for is split across pages, each carrying a copy
  of it with its part of the instances (moto paged by reservation, so one RunInstances of
  1,000 instances was one item). Without ``MaxResults`` and a token a page holds at most 100
  reservations, moto's default.
* **DescribeImages**: ``MaxResults`` honoured; AWS documents no range, so only values below 1
  are refused (``InvalidParameterValue``; our choice).
* (DescribeLockedSnapshots is ours already, with ``MaxResults`` 5-1000: `localaws.ec2_images`.)

A page holds at most ``MaxResults`` items, in moto's order, and carries a ``NextToken`` when
items remain. Without ``MaxResults`` (and without a token) the response is moto's, untouched.
The token is opaque: it names the call and a cursor, the place in moto's store of the last item
returned. Every item gets a sequence number in the order of moto's store (a dict, so creation
order, which is also the order of moto's listings), and the next page is the items after the
cursor. So items deleted, created or retagged between pages change nothing else: every item
that stays in the listing is returned exactly once. A token that is not ours, or is another
call's, is ``InvalidPaginationToken``. A token with no ``MaxResults`` returns the rest.

`install()` is idempotent and works in-process (``mock_aws``) as well as in the server.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidParameterCombination
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.instances import InstanceResponse

_INSTALLED = "_localaws_ec2_pagination"
MOTO_INSTANCES_DEFAULT = 100  # moto's reservations per DescribeInstances page
_SEQ_ATTR = "localaws_list_seq"
_SEQ = count(1)
_SEQ_LOCK = threading.Lock()


@dataclass(frozen=True)
class Bounds:
    """``MaxResults`` as AWS documents it for one call."""

    low: int
    high: int | None  # None: no maximum
    clamp: bool  # above `high`: True, `high` items; False, InvalidParameterValue

    def limit(self, raw: Any) -> int | None:
        if raw is None:
            return None
        try:
            value = int(raw)
        except (TypeError, ValueError) as exc:
            raise _invalid_max_results(raw, self) from exc
        if value < self.low or (self.high is not None and value > self.high and not self.clamp):
            raise _invalid_max_results(value, self)
        return value if self.high is None else min(value, self.high)


@dataclass(frozen=True)
class Pager:
    """How one Describe call is paged: its action, bounds, and the ids that exclude MaxResults."""

    action: str
    bounds: Bounds
    store: str  # the backend's dict the listed items come from, in its order
    ids_param: str | None = None  # e.g. SnapshotIds: not together with MaxResults
    ids_wire_name: str = ""  # the name AWS's message gives it, e.g. snapshotSet


SNAPSHOTS = Pager(
    "DescribeSnapshots", Bounds(5, 1000, clamp=True), "snapshots", "SnapshotIds", "snapshotSet"
)
VOLUMES = Pager("DescribeVolumes", Bounds(5, 500, clamp=True), "volumes", "VolumeIds", "volumeSet")
INSTANCES = Pager("DescribeInstances", Bounds(5, 1000, clamp=False), "reservations")
IMAGES = Pager("DescribeImages", Bounds(1, None, clamp=False), "amis")


def _invalid_max_results(value: Any, bounds: Bounds) -> EC2ClientError:
    allowed = (
        f"at least {bounds.low}"
        if bounds.high is None
        else f"between {bounds.low} and {bounds.high}"
    )
    return EC2ClientError(
        "InvalidParameterValue",
        f"Value ( {value} ) for parameter maxResults is invalid. Parameter may only be {allowed}.",
    )


def _invalid_token(token: str) -> EC2ClientError:
    return EC2ClientError(
        "InvalidPaginationToken", f"The pagination token {token!r} is not valid or is expired."
    )


def encode_token(action: str, cursor: int) -> str:
    raw = json.dumps({"a": action, "after": cursor}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(action: str, token: str) -> int:
    """The cursor (sequence number of the last item returned) of one of our tokens."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        cursor = data["after"]
        valid = data["a"] == action and type(cursor) is int and cursor >= 0
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError) as exc:
        raise _invalid_token(token) from exc
    if not valid:
        raise _invalid_token(token)
    return int(cursor)


def sequence(store: Mapping[str, Any], items: Sequence[Any]) -> list[int]:
    """Each item's sequence number, in the order of moto's `store` (numbered on first sight).

    moto's stores are dicts: new items are appended, so the items without a number are always
    the store's tail, and numbering that tail in order keeps the numbers in store order. Items
    are looked up by id in the store (moto lists copies of reservations)."""
    with _SEQ_LOCK:
        originals = [store.get(str(item.id), item) for item in items]
        if any(not hasattr(obj, _SEQ_ATTR) for obj in originals):
            tail = []
            for obj in reversed(list(store.values())):
                if hasattr(obj, _SEQ_ATTR):
                    break
                tail.append(obj)
            for obj in [*reversed(tail), *originals]:
                if not hasattr(obj, _SEQ_ATTR):
                    setattr(obj, _SEQ_ATTR, next(_SEQ))
        return [int(getattr(obj, _SEQ_ATTR)) for obj in originals]


def page(
    items: Sequence[Any],
    store: Mapping[str, Any],
    action: str,
    token: str | None,
    limit: int | None,
) -> tuple[list[Any], str | None]:
    """The page of `items` (moto's listing, in store order) after `token`'s cursor, at most
    `limit` long, and the next token."""
    numbers = sequence(store, items)
    cursor = decode_token(action, token) if token else 0
    rest = [(n, item) for n, item in zip(numbers, items, strict=True) if n > cursor]
    chunk = rest if limit is None else rest[:limit]
    if len(chunk) == len(rest) or not chunk:
        return [item for _, item in chunk], None
    return [item for _, item in chunk], encode_token(action, chunk[-1][0])


def _check_request(self: Any, pager: Pager) -> tuple[int | None, str | None]:
    limit = pager.bounds.limit(self._get_param("MaxResults"))
    token = self._get_param("NextToken") or None
    if limit is not None and pager.ids_param and self._get_param(pager.ids_param):
        raise InvalidParameterCombination(
            f"The parameter {pager.ids_wire_name} cannot be used with the parameter maxResults"
        )
    if token is not None:
        decode_token(pager.action, token)  # a bad token fails before any work
    return limit, token


def _paged(
    moto_handler: Callable[[Any], ActionResult], pager: Pager, key: str
) -> Callable[[Any], ActionResult]:
    """moto's handler, then one page of its list (the rest of moto's answer unchanged)."""

    def handler(self: Any) -> ActionResult:
        limit, token = _check_request(self, pager)
        result = moto_handler(self)
        if limit is None and token is None:
            return result
        body = dict(result.result)  # type: ignore[call-overload]
        items, next_token = page(
            list(body.get(key) or []),
            getattr(self.ec2_backend, pager.store),
            pager.action,
            token,
            limit,
        )
        body[key] = items
        if next_token is not None:
            body["NextToken"] = next_token
        return ActionResult(body)

    handler.__name__ = getattr(moto_handler, "__name__", "handler")
    return handler


def describe_instances(self: Any) -> ActionResult:
    """moto's DescribeInstances (same checks, filters and reservation order), with MaxResults
    bounds and our tokens."""
    self.error_on_dryrun()
    if "InstanceId.1" in self.data and "MaxResults" in self.data:
        raise InvalidParameterCombination(
            "The parameter instancesSet cannot be used with the parameter maxResults"
        )
    limit, token = _check_request(self, INSTANCES)
    filter_dict = self._filters_from_querystring()
    instance_ids = self._get_param("InstanceIds", [])
    if instance_ids:
        reservations = self.ec2_backend.get_reservations_by_instance_ids(
            instance_ids, filters=filter_dict
        )
    else:
        reservations = self.ec2_backend.describe_instances(filters=filter_dict)
    items, next_token = page_instances(
        reservations,
        self.ec2_backend.reservations,
        token,
        limit,
        # without either, moto's own page: at most 100 reservations
        max_reservations=MOTO_INSTANCES_DEFAULT if limit is None and token is None else None,
    )
    return ActionResult({"Reservations": items, "NextToken": next_token})


# An instance-counting cursor: the reservation's sequence number times this, plus how many of
# its instances earlier pages returned.
_SPLIT = 1 << 20


def page_instances(
    reservations: Sequence[Any],
    store: Mapping[str, Any],
    token: str | None,
    limit: int | None,
    max_reservations: int | None = None,
) -> tuple[list[Any], str | None]:
    """A DescribeInstances page of at most `limit` instances, as AWS counts MaxResults (items,
    not reservations: a reservation of 1,000 instances is split across pages, each page
    carrying a copy of it with its part of the instances), or of at most `max_reservations`
    whole reservations, and the next token (one kind for both)."""
    numbers = sequence(store, reservations)
    start, done = divmod(decode_token(INSTANCES.action, token), _SPLIT) if token else (0, 0)
    out: list[Any] = []
    taken = 0
    for n, reservation in zip(numbers, reservations, strict=True):
        if n < start:
            continue
        skip = done if n == start else 0
        instances = list(reservation.instances)[skip:]
        if not instances:
            continue
        room = len(instances) if limit is None else limit - taken
        if room <= 0 or (max_reservations is not None and len(out) >= max_reservations):
            return out, encode_token(INSTANCES.action, n * _SPLIT + skip)
        piece = copy.copy(reservation)
        piece.instances = instances[:room]
        out.append(piece)
        taken += len(piece.instances)
        if len(piece.instances) < len(instances):
            return out, encode_token(INSTANCES.action, n * _SPLIT + skip + len(piece.instances))
    return out, None


def install() -> None:
    """Patch moto's EC2 Describe handlers (idempotent; in-process or in the server)."""
    if getattr(ElasticBlockStore, _INSTALLED, False):
        return
    setattr(ElasticBlockStore, _INSTALLED, True)
    paged: list[tuple[type, str, Pager, str]] = [
        (ElasticBlockStore, "describe_snapshots", SNAPSHOTS, "Snapshots"),
        (ElasticBlockStore, "describe_volumes", VOLUMES, "Volumes"),
        (AmisResponse, "describe_images", IMAGES, "Images"),
    ]
    for cls, name, pager, key in paged:
        setattr(cls, name, _paged(getattr(cls, name), pager, key))
    setattr(InstanceResponse, "describe_instances", describe_instances)  # noqa: B010
