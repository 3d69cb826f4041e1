"""EBS snapshot locks and AMI-backed snapshots, on top of moto 5.2.5 (patches, not a fork).

What differs from plain moto after `install()`:

* ``LockSnapshot`` / ``UnlockSnapshot`` / ``DescribeLockedSnapshots`` exist (moto has none).
  A lock is ``governance`` or ``compliance`` (``CoolOffPeriod`` 1-72 hours, compliance only),
  for ``LockDuration`` 1-36500 days or until a future ``ExpirationDate`` (exactly one of the
  two). ``LockState`` is computed when asked: ``expired`` once ``LockExpiresOn`` has passed,
  ``compliance-cooloff`` until ``CoolOffPeriodExpiresOn``, else the mode. The duration of a
  lock on a ``pending`` snapshot starts when a request first sees it no longer pending.
  Re-locking modifies the lock (``LockCreatedOn`` kept, the duration counted from the change):
  anything goes in ``governance`` and ``compliance-cooloff``; in ``compliance`` only the mode
  ``compliance``, no cooling-off, and an expiry no earlier than the current one.
  ``UnlockSnapshot`` works on any lock but a ``compliance`` one. ``DescribeLockedSnapshots``
  lists this account's snapshots that have a lock, expired ones included (``SnapshotIds``, the
  ``lock-state`` filter, ``MaxResults`` 5-1000, ``NextToken``).
* ``DeleteSnapshot`` refuses a snapshot with an unexpired lock (``IncorrectState``; AWS does not
  document the code), and one referenced by a registered image's block device mapping
  (moto's own ``InvalidSnapshot.InUse``, until ``DeregisterImage``).
* ``RegisterImage`` with ``BlockDeviceMappings`` makes an image that references the given
  snapshots (``InvalidSnapshot.NotFound`` for an unknown one; ``VolumeSize`` and ``Encrypted``
  default to the snapshot's); ``RootDeviceName`` is honoured, ``RootDeviceType`` is ``ebs``.
  moto ignores the mappings and makes a snapshot of its own for the image; we drop that one.
  Without mappings ``RegisterImage`` is moto's.
* ``DescribeImages`` supports the ``block-device-mapping.`` filters ``snapshot-id``,
  ``device-name``, ``volume-size``, ``volume-type``, ``delete-on-termination`` and ``encrypted``
  (values OR-ed, ``*``/``?`` wildcards; an image matches if any of its mappings does), on every
  image, moto's own included. moto fails on these filters as soon as any image is listed.
  (``block-device-mapping.volume-id`` is an instance filter, not an image one.)

`install()` is idempotent and works in-process (``mock_aws``) as well as in the server.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidSnapshotInUse
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from localaws.clock import CLOCK

LOCK_MODES = ("compliance", "governance")
LOCK_STATES = ("compliance-cooloff", "governance", "compliance", "expired")
MAX_LOCK_DAYS = 36500
MAX_COOL_OFF_HOURS = 72
MIN_RESULTS, MAX_RESULTS = 5, 1000
_INSTALLED = "_localaws_ec2_images"


def _now() -> datetime:
    return CLOCK.now()


def _invalid(message: str, code: str = "InvalidParameterValue") -> Exception:
    return EC2ClientError(code, message)


def _aware(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise _invalid(f"Invalid ExpirationDate: {value}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- snapshot locks --------------------------------------------------------------------------


@dataclass
class SnapshotLock:
    """A snapshot's lock, kept on moto's Snapshot object (it goes when the snapshot goes)."""

    mode: str
    created_on: datetime
    duration_start: datetime | None  # None while the snapshot is pending
    duration_days: int | None = None
    expiration_date: datetime | None = None  # locked with ExpirationDate
    cool_off_hours: int | None = None
    cool_off_expires_on: datetime | None = None

    def expires_on(self) -> datetime | None:
        if self.expiration_date is not None:
            return self.expiration_date
        if self.duration_start is None or self.duration_days is None:
            return None
        return self.duration_start + timedelta(days=self.duration_days)

    def state(self, now: datetime) -> str:
        expires = self.expires_on()
        if expires is not None and now >= expires:
            return "expired"
        if self.cool_off_expires_on is not None and now < self.cool_off_expires_on:
            return "compliance-cooloff"
        return self.mode

    def fields(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {"LockState": self.state(now), "LockCreatedOn": self.created_on}
        if self.duration_days is not None:
            out["LockDuration"] = self.duration_days
        if self.duration_start is not None:
            out["LockDurationStartTime"] = self.duration_start
        if (expires := self.expires_on()) is not None:
            out["LockExpiresOn"] = expires
        if self.cool_off_hours is not None:
            out["CoolOffPeriod"] = self.cool_off_hours
            out["CoolOffPeriodExpiresOn"] = self.cool_off_expires_on
        return out


def snapshot_lock(snapshot: Any, now: datetime | None = None) -> SnapshotLock | None:
    """The snapshot's lock, its duration started if the snapshot is no longer pending."""
    lock: SnapshotLock | None = getattr(snapshot, "localaws_lock", None)
    if lock is not None and lock.duration_start is None and snapshot.status != "pending":
        lock.duration_start = now or _now()
    return lock


def _int_param(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"Invalid value for {name}: {value}") from exc
    if not low <= number <= high:
        raise _invalid(f"{name} must be between {low} and {high}; {number} was given.")
    return number


def lock_snapshot(self: Any) -> ActionResult:
    snapshot = self.ec2_backend.get_snapshot(self._get_param("SnapshotId"))
    mode = self._get_param("LockMode")
    if mode not in LOCK_MODES:
        raise _invalid(f"Value ({mode}) for parameter LockMode is invalid.")
    duration, expiration = self._get_param("LockDuration"), self._get_param("ExpirationDate")
    if (duration is None) == (expiration is None):
        raise _invalid(
            "Specify either LockDuration or ExpirationDate, but not both.",
            "InvalidParameterCombination",
        )
    now = _now()
    days = None if duration is None else _int_param(duration, "LockDuration", 1, MAX_LOCK_DAYS)
    expires = None if expiration is None else _aware(expiration)
    if expires is not None and expires <= now:
        raise _invalid("ExpirationDate must be in the future.")
    raw_cool_off = self._get_param("CoolOffPeriod")
    cool_off = None
    if raw_cool_off is not None:
        if mode != "compliance":
            raise _invalid(
                "CoolOffPeriod applies to compliance mode only.", "InvalidParameterCombination"
            )
        cool_off = _int_param(raw_cool_off, "CoolOffPeriod", 1, MAX_COOL_OFF_HOURS)

    current = snapshot_lock(snapshot, now)
    current_state = current.state(now) if current is not None else None
    fresh = current is None or current_state == "expired"
    started = None if snapshot.status == "pending" else now
    lock = SnapshotLock(
        mode=mode,
        created_on=now if current is None or fresh else current.created_on,
        duration_start=started,
        duration_days=days,
        expiration_date=expires,
        cool_off_hours=cool_off,
        cool_off_expires_on=None if cool_off is None else now + timedelta(hours=cool_off),
    )
    if current is not None and current_state == "compliance":
        if mode != "compliance" or cool_off is not None:
            raise _invalid(
                f"The snapshot {snapshot.id} is locked in compliance mode: its lock mode and "
                "cooling-off period can no longer be changed.",
                "IncorrectState",
            )

        def until(x: SnapshotLock) -> datetime:
            return x.expires_on() or now + timedelta(days=x.duration_days or 0)

        if until(lock) < until(current):
            raise _invalid(
                f"The snapshot {snapshot.id} is locked in compliance mode: its lock can only "
                "be extended.",
                "IncorrectState",
            )
    self.error_on_dryrun()
    snapshot.localaws_lock = lock
    return ActionResult({"SnapshotId": snapshot.id, **lock.fields(now)})


def unlock_snapshot(self: Any) -> ActionResult:
    snapshot = self.ec2_backend.get_snapshot(self._get_param("SnapshotId"))
    now = _now()
    lock = snapshot_lock(snapshot, now)
    if lock is None:
        raise _invalid(f"The snapshot {snapshot.id} is not locked.", "IncorrectState")
    if lock.state(now) == "compliance":
        raise _invalid(
            f"The snapshot {snapshot.id} is locked in compliance mode and its cooling-off "
            "period has expired: it cannot be unlocked.",
            "IncorrectState",
        )
    self.error_on_dryrun()
    snapshot.localaws_lock = None
    return ActionResult({"SnapshotId": snapshot.id})


def describe_locked_snapshots(self: Any) -> ActionResult:
    backend = self.ec2_backend
    wanted = set(self._get_param("SnapshotIds", []) or [])
    filters = self._filters_from_querystring()
    for name in filters:
        if name != "lock-state":
            raise _invalid(f"The filter '{name}' is invalid")
    states = filters.get("lock-state")
    raw_max = self._get_param("MaxResults")
    limit = None if raw_max is None else _int_param(raw_max, "MaxResults", MIN_RESULTS, MAX_RESULTS)
    token = self._get_param("NextToken")
    try:
        start = int(token) if token else 0
    except ValueError as exc:
        raise _invalid(f"Invalid NextToken: {token}", "InvalidPaginationToken") from exc
    self.error_on_dryrun()

    now = _now()
    rows = []
    for snapshot in list(backend.snapshots.values()):
        if snapshot.owner_id != backend.account_id or (wanted and snapshot.id not in wanted):
            continue
        lock = snapshot_lock(snapshot, now)
        if lock is None:
            continue
        row = {"OwnerId": snapshot.owner_id, "SnapshotId": snapshot.id, **lock.fields(now)}
        if states is None or row["LockState"] in states:
            rows.append(row)
    end = len(rows) if limit is None else start + limit
    result: dict[str, Any] = {"Snapshots": rows[start:end]}
    if end < len(rows):
        result["NextToken"] = str(end)
    return ActionResult(result)


# --- images that reference snapshots ---------------------------------------------------------


def _image_mappings(ami: Any) -> list[dict[str, Any]]:
    mappings: list[dict[str, Any]] = ami.block_device_mappings
    return mappings


def _referenced_snapshots(ami: Any) -> set[str]:
    mappings = getattr(ami, "localaws_block_device_mappings", None) or []
    return {m["Ebs"]["SnapshotId"] for m in mappings if m.get("Ebs", {}).get("SnapshotId")}


def _resolve_mapping(backend: Any, raw: dict[str, Any]) -> dict[str, Any]:
    mapping = {k: v for k, v in raw.items() if k != "Ebs"}
    ebs = raw.get("Ebs")
    if ebs is not None:
        ebs = dict(ebs)
        if ebs.get("SnapshotId"):
            snapshot = backend.get_snapshot(ebs["SnapshotId"])  # InvalidSnapshot.NotFound
            ebs.setdefault("VolumeSize", snapshot.volume.size)
            ebs.setdefault("Encrypted", bool(snapshot.encrypted))
        mapping["Ebs"] = ebs
    return mapping


def _make_register_image(moto_register: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def register_image(self: Any) -> Any:
        raw = self._get_param("BlockDeviceMappings") or []
        if not raw:
            return moto_register(self)
        backend = self.ec2_backend
        mappings = [_resolve_mapping(backend, m) for m in raw]
        root = self._get_param("RootDeviceName") or mappings[0].get("DeviceName")
        self.error_on_dryrun()
        image = backend.register_image(self._get_param("Name"), self._get_param("Description"))
        backend.snapshots.pop(image.ebs_snapshot.id, None)  # moto's stand-in; AWS makes none
        image.localaws_block_device_mappings = mappings
        image.root_device_name = root
        image.root_device_type = "ebs"
        for attr, param in (("architecture", "Architecture"), ("boot_mode", "BootMode")):
            if self._get_param(param):
                setattr(image, attr, self._get_param(param))
        root_ids = [m["Ebs"]["SnapshotId"] for m in mappings if m.get("DeviceName") == root]
        if root_ids and root_ids[0]:
            image.ebs_snapshot = backend.snapshots[root_ids[0]]
        return ActionResult({"ImageId": image.id})

    return register_image


def _bool_text(value: Any) -> str | None:
    return None if value is None else str(value).lower()


_MAPPING_FILTERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "block-device-mapping.snapshot-id": lambda m: m.get("Ebs", {}).get("SnapshotId"),
    "block-device-mapping.device-name": lambda m: m.get("DeviceName"),
    "block-device-mapping.volume-size": lambda m: m.get("Ebs", {}).get("VolumeSize"),
    "block-device-mapping.volume-type": lambda m: m.get("Ebs", {}).get("VolumeType"),
    "block-device-mapping.delete-on-termination": lambda m: _bool_text(
        m.get("Ebs", {}).get("DeleteOnTermination")
    ),
    "block-device-mapping.encrypted": lambda m: _bool_text(m.get("Ebs", {}).get("Encrypted")),
}


def _matches(ami: Any, name: str, values: list[str]) -> bool:
    field = _MAPPING_FILTERS[name]
    for mapping in _image_mappings(ami):
        value = field(mapping)
        if value is not None and any(fnmatch.fnmatchcase(str(value), v) for v in values):
            return True
    return False


def _make_describe_images(moto_describe: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def describe_images(
        self: Any,
        ami_ids: list[str] | None = None,
        filters: dict[str, Any] | None = None,
        exec_users: list[str] | None = None,
        owners: list[str] | None = None,
    ) -> list[Any]:
        filters = dict(filters or {})
        ours = {k: filters.pop(k) for k in list(filters) if k in _MAPPING_FILTERS}
        images = moto_describe(
            self, ami_ids=ami_ids, filters=filters, exec_users=exec_users, owners=owners
        )
        for name, raw in ours.items():
            values = [raw] if isinstance(raw, str) else list(raw)
            images = [ami for ami in images if _matches(ami, name, values)]
        return images

    return describe_images


def _make_delete_snapshot(moto_delete: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def delete_snapshot(self: Any, snapshot_id: str) -> Any:
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is not None:
            for ami in list(self.amis.values()):
                if snapshot_id in _referenced_snapshots(ami):
                    raise InvalidSnapshotInUse(snapshot_id, ami.id)
            now = _now()
            lock = snapshot_lock(snapshot, now)
            if lock is not None and lock.state(now) != "expired":
                raise _invalid(
                    f"The snapshot {snapshot_id} is locked ({lock.state(now)}) and cannot be "
                    "deleted until its lock expires or it is unlocked.",
                    "IncorrectState",
                )
        return moto_delete(self, snapshot_id)

    return delete_snapshot


def install() -> None:
    """Patch moto's EC2 (idempotent; in-process or in the server)."""
    if getattr(ElasticBlockStore, _INSTALLED, False):
        return
    setattr(ElasticBlockStore, _INSTALLED, True)
    handlers: dict[str, Callable[[Any], Any]] = {
        "lock_snapshot": lock_snapshot,
        "unlock_snapshot": unlock_snapshot,
        "describe_locked_snapshots": describe_locked_snapshots,
    }
    for name, handler in handlers.items():
        setattr(ElasticBlockStore, name, handler)
    wrappers: list[tuple[type, str, Callable[[Any], Any]]] = [
        (AmisResponse, "register_image", _make_register_image),
        (AmiBackend, "describe_images", _make_describe_images),
        (EBSBackend, "delete_snapshot", _make_delete_snapshot),
    ]
    for cls, name, wrap in wrappers:
        setattr(cls, name, wrap(getattr(cls, name)))
    moto_mappings = Ami.block_device_mappings

    def block_device_mappings(self: Any) -> list[dict[str, Any]]:
        ours: list[dict[str, Any]] | None = getattr(self, "localaws_block_device_mappings", None)
        return ours if ours is not None else moto_mappings.fget(self)  # type: ignore[attr-defined]

    Ami.block_device_mappings = property(block_device_mappings)  # type: ignore[method-assign,assignment]
