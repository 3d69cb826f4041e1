"""A faithful EC2 ``CreateSnapshots`` on top of moto's EBS backend.

`install(completer)` replaces moto's ``ElasticBlockStore.create_snapshots`` response handler
with `create_snapshots` below (validation, exclusions, CopyTagsFromSource, ``pending`` state)
and patches ``Snapshot.progress`` so that a pending snapshot does not claim ``100%``.
The snapshots are registered with a `SnapshotCompleter`, which later moves them to
``completed`` (or ``error`` for volumes named in the ``snapshot_error_volumes`` fault) and
emits the EventBridge events AWS emits.
"""

from __future__ import annotations

import itertools
import logging
import re
import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from moto import settings as moto_settings
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from localaws.clock import CLOCK, Clock
from localaws.due_queue import DueQueue
from localaws.events import EventSink, iso_millis

log = logging.getLogger("localaws.ec2")

MAX_EXCLUDED_VOLUMES = 40
MULTI_VOLUME_DETAIL_TYPE = "EBS Multi-Volume Snapshots Completion Status"
SNAPSHOT_DETAIL_TYPE = "EBS Snapshot Notification"
_INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_VOLUME_ID = re.compile(r"^vol-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_NOT_SNAPSHOTTABLE_STATES = {"shutting-down", "terminated"}


def snapshot_arn(region: str, snapshot_id: str) -> str:
    # As in AWS's documented examples of these events: the region sits in the account field.
    return f"arn:aws:ec2::{region}:snapshot/{snapshot_id}"


def volume_arn(region: str, volume_id: str) -> str:
    return f"arn:aws:ec2::{region}:volume/{volume_id}"


# --- completion ------------------------------------------------------------------------------


@dataclass(order=True)
class _Batch:
    due: float  # the clock's monotonic() deadline, or +inf when completion is manual
    seq: int
    account: str = field(compare=False)
    region: str = field(compare=False)
    start_time: datetime = field(compare=False)
    snapshots: list[Any] = field(compare=False)  # moto Snapshot objects
    generation: int = field(compare=False, default=0)


class SnapshotCompleter(DueQueue[_Batch]):
    """Completes pending ``CreateSnapshots`` batches after ``delay`` seconds (``None``: only
    when asked through `complete_all`), in a background thread and lazily on `complete_due`."""

    def __init__(
        self,
        events: EventSink,
        error_volumes: Callable[[], Collection[str]],
        delay: float | None = 0.5,
        clock: Clock = CLOCK,
    ) -> None:
        super().__init__(clock, "localaws-completer")
        self.events = events
        self._error_volumes = error_volumes
        self.delay = delay
        self._seq = itertools.count()
        self._generation = 0  # bumped by reset(): batches of an older generation are dropped

    # scheduling
    def add(self, account: str, region: str, start_time: datetime, snapshots: list[Any]) -> None:
        due = float("inf") if self.delay is None else self.clock.monotonic() + max(self.delay, 0.0)
        self._push(
            _Batch(due, next(self._seq), account, region, start_time, snapshots, self._generation)
        )

    def complete_due(self) -> list[str]:
        return self._complete(self._pop(everything=False))

    def complete_all(self) -> list[str]:
        return self._complete(self._pop(everything=True))

    def pending_count(self) -> int:
        with self._cond:
            return sum(len(b.snapshots) for b in self._heap)

    def reset(self) -> None:
        with self._cond:
            self._heap.clear()
            self._generation += 1

    # completion proper
    def _complete(self, batches: Iterable[_Batch]) -> list[str]:
        done: list[str] = []
        for batch in batches:
            if batch.generation != self._generation:
                continue  # created before a reset: its backend and snapshots are gone
            self._complete_batch(batch)
            done.extend(s.id for s in batch.snapshots)
        return done

    def _complete_batch(self, batch: _Batch) -> None:
        failing = set(self._error_volumes())
        end = self.clock.now()
        region, start = batch.region, iso_millis(batch.start_time)
        entries, causes = [], []
        for snap in batch.snapshots:
            failed = snap.volume.id in failing
            snap.status = "error" if failed else "completed"
            snap.localaws_progress = "0%" if failed else "100%"
            entries.append(
                {
                    "snapshot_id": snapshot_arn(region, snap.id),
                    "source": volume_arn(region, snap.volume.id),
                    "status": snap.status,
                }
            )
            if failed:
                causes.append(f"Snapshot {snap.id} is in status error")
                self.events.emit(
                    account=batch.account,
                    region=region,
                    detail_type=SNAPSHOT_DETAIL_TYPE,
                    resources=[snapshot_arn(region, snap.id)],
                    when=end,
                    detail={
                        "event": "createSnapshot",
                        "result": "failed",
                        "cause": f"Source volume {snap.volume.id} is in status error",
                        "request-id": "",
                        "snapshot_id": snapshot_arn(region, snap.id),
                        "source": volume_arn(region, snap.volume.id),
                        "startTime": start,
                        "endTime": iso_millis(end),
                    },
                )
        self.events.emit(
            account=batch.account,
            region=region,
            detail_type=MULTI_VOLUME_DETAIL_TYPE,
            resources=[snapshot_arn(region, s.id) for s in batch.snapshots],
            when=end,
            detail={
                "event": "createSnapshots",
                "result": "failed" if causes else "succeeded",
                "cause": "; ".join(causes),
                "request-id": "",
                "startTime": start,
                "endTime": iso_millis(end),
                "snapshots": entries,
            },
        )


# --- the request handler ---------------------------------------------------------------------


def _ec2_error(code: str, message: str) -> Exception:
    return EC2ClientError(code, message)


def _invalid(message: str) -> Exception:
    return _ec2_error("InvalidParameterValue", message)


def _as_bool(value: Any) -> bool:
    return str(value).strip().lower() == "true"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):  # tolerate {"VolumeId": [...]} / {"member": [...]} shapes
        value = next(iter(value.values()), [])
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _check_tag(key: str, value: str) -> None:
    if key.lower().startswith("aws:"):
        raise _invalid(
            f"Value ( {key} ) for parameter key is invalid. "
            "Tag keys starting with 'aws:' are reserved for internal use"
        )
    if not key or len(key) > 127:
        raise _invalid(f"Tag key '{key}' must be between 1 and 127 characters long")
    if len(value) > 256:
        raise _invalid(f"Tag value for key '{key}' exceeds 256 characters")


def _parse_tag_specifications(raw: Any) -> dict[str, str]:
    tags: dict[str, str] = {}
    specs = raw if isinstance(raw, list) else ([raw] if raw else [])
    for spec in specs:
        resource_type = spec.get("ResourceType")
        if not resource_type:
            raise _invalid("Tag specification resource type must have a value")
        if resource_type != "snapshot":
            raise _invalid(
                f"'{resource_type}' is not a valid taggable resource type for this operation."
            )
        for tag in spec.get("Tags") or spec.get("Tag") or []:
            key, value = str(tag.get("Key", "")), str(tag.get("Value", ""))
            _check_tag(key, value)
            tags[key] = value
    return tags


# moto finds an instance by copying and scanning every reservation, so one CreateSnapshots per
# instance cost O(fleet) and a night O(fleet squared). Its reservations are only ever added
# (terminated instances stay, as on AWS for a while), so an index per backend, rebuilt on a
# miss, is never stale.
_INSTANCE_INDEX: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def find_instance(backend: Any, instance_id: str) -> Any | None:
    """The backend's instance with this id, or None."""
    index = _INSTANCE_INDEX.get(backend)
    instance = index.get(instance_id) if index is not None else None
    if instance is None:
        index = {i.id: i for i in backend.all_instances()}
        _INSTANCE_INDEX[backend] = index
        instance = index.get(instance_id)
    return instance


def _resolve_volumes(backend: Any, spec: dict[str, Any]) -> list[Any]:
    """Validate the InstanceSpecification; return the volumes to snapshot (device order)."""
    instance_id = str(spec.get("InstanceId") or "")
    excluded = _as_list(spec.get("ExcludeDataVolumeIds"))
    if len(excluded) > MAX_EXCLUDED_VOLUMES:
        raise _invalid(
            f"The maximum number of volume IDs in ExcludeDataVolumeIds is "
            f"{MAX_EXCLUDED_VOLUMES}; {len(excluded)} were given."
        )
    if not _INSTANCE_ID.match(instance_id):
        raise _ec2_error("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
    instance = find_instance(backend, instance_id)
    if instance is None:
        raise _ec2_error(
            "InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist"
        )
    if instance.state in _NOT_SNAPSHOTTABLE_STATES:
        raise _ec2_error(
            "IncorrectState",
            f"The instance '{instance_id}' is not in a state from which snapshots can be "
            f"created (current state: {instance.state}).",
        )

    root_device = instance.root_device_name
    attached = [(dev, m.volume_id) for dev, m in instance.get_block_device_mapping if m.volume_id]
    root_ids = {vid for dev, vid in attached if dev == root_device}
    data_ids = {vid for dev, vid in attached if dev != root_device}
    for volume_id in excluded:
        if not _VOLUME_ID.match(volume_id):
            raise _ec2_error("InvalidVolumeID.Malformed", f'Invalid id: "{volume_id}"')
        if volume_id not in backend.volumes:
            raise _ec2_error("InvalidVolume.NotFound", f"The volume '{volume_id}' does not exist.")
        if volume_id in root_ids:
            raise _invalid(
                f"The root volume {volume_id} of instance {instance_id} cannot be excluded "
                "with ExcludeDataVolumeIds. To exclude the root volume, use ExcludeBootVolume."
            )
        if volume_id not in data_ids:
            raise _invalid(
                f"The volume {volume_id} is not attached to instance {instance_id} as a data "
                "volume; ExcludeDataVolumeIds accepts only data volumes attached to the instance."
            )

    exclude_boot = _as_bool(spec.get("ExcludeBootVolume", False))
    skip = set(excluded) | (root_ids if exclude_boot else set())
    return [backend.volumes[vid] for _, vid in attached if vid not in skip]


def _volume_tags(volume: Any) -> dict[str, str]:
    return {
        t["key"]: t["value"] for t in volume.get_tags() if not t["key"].lower().startswith("aws:")
    }


# Called with (account id, region, instance id, outcome, snapshot ids) for every CreateSnapshots
# this handler answers: outcome "ok" or the error code. `localaws.ssm_commands` logs the calls so
# tests can check that each instance's pre script ended before its CreateSnapshots.
CreateSnapshotsObserver = Callable[[str, str, str, str, list[str]], None]
_observers: list[CreateSnapshotsObserver] = []


def add_create_snapshots_observer(observer: CreateSnapshotsObserver) -> None:
    """Have `observer` told about every CreateSnapshots call (idempotent)."""
    if observer not in _observers:
        _observers.append(observer)


def remove_create_snapshots_observer(observer: CreateSnapshotsObserver) -> None:
    """Stop telling `observer` (if it was told)."""
    if observer in _observers:
        _observers.remove(observer)


def _notify(backend: Any, instance_id: str, outcome: str, snapshot_ids: list[str]) -> None:
    for observer in list(_observers):
        try:
            observer(backend.account_id, backend.region_name, instance_id, outcome, snapshot_ids)
        except Exception:  # an observer's bug must not change the API's answer
            log.exception("CreateSnapshots observer failed")


def snapshot_items(snapshots: Iterable[Any]) -> list[dict[str, Any]]:
    """The ``Snapshots`` of the CreateSnapshots answer, as moto's serializer takes them."""
    return [
        {
            "SnapshotId": s.id,
            "VolumeId": s.volume.id,
            "State": s.status,
            "Progress": s.progress,
            "StartTime": s.start_time,
            "VolumeSize": s.volume.size,
            "Encrypted": bool(s.encrypted),
            "OwnerId": s.owner_id,
            "Description": s.description,
            "Tags": [{"Key": t["key"], "Value": t["value"]} for t in s.get_tags()],
        }
        for s in snapshots
    ]


# moto's generic serializer walks botocore's shapes field by field: 0.4-1.3 ms of a call
# in-process at 2,000 instances, more with every tag (a tool that tags its sets paid the server
# for it, which EC2 does not charge in any measurable way). The answer is small and fixed, so
# it is written directly: the same text moto's serializer makes of `snapshot_items` (elements in the
# SnapshotInfo shape's order, empty ones self-closed, times in UTC with zeroed milliseconds,
# `&`, `<` and `>` escaped), which tests/localaws/test_localaws_create_snapshots_render.py
# compares with moto's own.
def _element(name: str, text: str) -> str:
    return f"<{name}>{escape(text)}</{name}>" if text else f"<{name}/>"


def _utc_millis_zeroed(value: datetime) -> str:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _render_item(item: dict[str, Any]) -> str:
    tags = "".join(
        f"<item>{_element('key', t['Key'])}{_element('value', t['Value'])}</item>"
        for t in item["Tags"]
    )
    return "".join(
        (
            "<item>",
            _element("description", item["Description"] or ""),
            f"<tagSet>{tags}</tagSet>" if tags else "<tagSet/>",
            _element("encrypted", "true" if item["Encrypted"] else "false"),
            _element("volumeId", item["VolumeId"]),
            _element("state", item["State"]),
            _element("volumeSize", str(item["VolumeSize"])),
            _element("startTime", _utc_millis_zeroed(item["StartTime"])),
            _element("progress", item["Progress"]),
            _element("ownerId", item["OwnerId"]),
            _element("snapshotId", item["SnapshotId"]),
            "</item>",
        )
    )


def render_response(items: Iterable[dict[str, Any]]) -> str:
    """The CreateSnapshots XML answer, as moto's serializer writes it for these items."""
    body = "".join(_render_item(item) for item in items)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<CreateSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15">'
        + (f"<snapshotSet>{body}</snapshotSet>" if body else "<snapshotSet/>")
        + "<requestId>request-id</requestId></CreateSnapshotsResponse>"
    )


def make_handler(completer: SnapshotCompleter) -> Callable[[Any], Any]:
    def create_snapshots(self: Any) -> Any:
        spec = self._get_param("InstanceSpecification") or {}
        instance_id = str(spec.get("InstanceId") or "") if isinstance(spec, dict) else ""
        try:
            result, snapshot_ids = answer(self)
        except ServiceException as exc:
            _notify(self.ec2_backend, instance_id, str(exc.code), [])
            raise
        _notify(self.ec2_backend, instance_id, "ok", snapshot_ids)
        return result

    def answer(self: Any) -> tuple[Any, list[str]]:
        backend = self.ec2_backend
        spec = self._get_param("InstanceSpecification") or {}
        description = str(self._get_param("Description") or "")
        copy_tags = self._get_param("CopyTagsFromSource")
        if copy_tags is not None and copy_tags != "volume":
            raise _invalid(
                f"Value ({copy_tags}) for parameter CopyTagsFromSource is invalid. "
                "Valid values: volume"
            )
        tags = _parse_tag_specifications(
            self._get_param("TagSpecifications") or self._get_param("TagSpecification")
        )
        volumes = _resolve_volumes(backend, spec)
        self.error_on_dryrun()  # DryRunOperation (HTTP 412) only after validation passed

        start = completer.clock.now()
        snapshots = []
        for volume in volumes:
            snap = backend.create_snapshot(volume.id, description)
            snap.start_time = start  # "the same for all snapshots initiated by the same request"
            snap.status = "pending"
            snap.localaws_progress = "0%"
            merged = _volume_tags(volume) if copy_tags == "volume" else {}
            merged.update(tags)  # explicit TagSpecifications win over copied volume tags
            if merged:
                snap.add_tags(merged)
            snapshots.append(snap)
        if snapshots:
            completer.add(backend.account_id, backend.region_name, start, snapshots)
        if moto_settings.PRETTIFY_RESPONSES:
            result: Any = ActionResult({"Snapshots": snapshot_items(snapshots)})
        else:
            result = (render_response(snapshot_items(snapshots)), {"Content-Type": "text/xml"})
        return result, [s.id for s in snapshots]

    return create_snapshots


_installed: list[SnapshotCompleter] = []


def installed_completer() -> SnapshotCompleter | None:
    """The completer the patch reports to, if installed: a test harness that imports its
    conftest twice in one process (mutmut runs pytest in-process more than once) keeps the
    completer its tests complete sets with, instead of installing a second one."""
    return _installed[-1] if _installed else None


def install(completer: SnapshotCompleter) -> None:
    """Patch moto (idempotent for one server process)."""
    _installed.append(completer)
    handler = make_handler(completer)
    handler.__name__ = "create_snapshots"
    ElasticBlockStore.create_snapshots = handler  # type: ignore[method-assign,assignment]
    # moto's Snapshot.progress is a constant "100%"; ours follows the state.
    Snapshot.progress = property(  # type: ignore[method-assign,assignment]
        lambda self: getattr(self, "localaws_progress", "100%")
    )


def set_start_times(snapshot_ids: list[str], start_time: datetime) -> list[str]:
    """Backdate snapshots (any account and region), as if their sets had been started then:
    history for retention tests, which AWS itself never lets anyone write."""
    wanted = set(snapshot_ids)
    changed = []
    for account in ec2_backends.values():
        for backend in account.values():
            for snapshot_id, snapshot in backend.snapshots.items():
                if snapshot_id in wanted:
                    snapshot.start_time = start_time
                    changed.append(snapshot_id)
    return sorted(changed)


def seed_sets(
    account: str,
    region: str,
    sets: list[dict[str, Any]],
    *,
    exclude_boot_volume: bool = False,
) -> list[str]:
    """Completed snapshot sets, as CreateSnapshots (with `CopyTagsFromSource='volume'`) would
    have made them at each set's `start_time`: retention history at fleet scale, written
    straight into the backend because AWS never lets anyone write history, and a week of it
    for 10,000 instances through the API takes longer than the night it prepares. Each set is
    `{"instance_id", "tags": {...}, "start_time": ISO-8601}`; the instance's volumes are
    resolved and validated as CreateSnapshots resolves them. No event is emitted and nothing
    is throttled or counted. Returns the snapshot ids."""
    backend = ec2_backends[account][region]
    made = []
    for n, entry in enumerate(sets):
        spec = {"InstanceId": entry["instance_id"], "ExcludeBootVolume": exclude_boot_volume}
        tags = {str(k): str(v) for k, v in dict(entry.get("tags") or {}).items()}
        start = datetime.fromisoformat(str(entry["start_time"]))
        try:
            for key, value in tags.items():
                _check_tag(key, value)
            volumes = _resolve_volumes(backend, spec)
        except (ServiceException, EC2ClientError) as exc:
            # A control call's bad body is a 400 naming the set (the sets before it stay).
            raise ValueError(f"sets[{n}] ({entry['instance_id']}): {exc}") from exc
        for volume in volumes:
            snap = backend.create_snapshot(volume.id, "")
            snap.start_time = start
            snap.status = "completed"
            snap.add_tags({**_volume_tags(volume), **tags})
            made.append(snap.id)
    return made
