"""Faithful EC2 snapshot copies and shares on top of moto's EBS and KMS backends.

`install(emulator)` replaces moto's ``CopySnapshot`` and ``ModifySnapshotAttribute`` response
handlers and patches three backend methods:

* ``CopySnapshot`` (sent to the destination region's endpoint) is validated as EC2 validates it
  and creates the copy ``pending`` in the destination backend; a `CopyEmulator` completes it
  later on the server clock (``completed``, or ``error`` for an unusable KMS key or an injected
  failure) and emits the ``copySnapshot`` event EBS emits in the destination region. At most
  ``concurrent_limit`` copies are pending per destination region and account.
* ``ModifySnapshotAttribute`` takes both of its request forms (``OperationType`` + ``UserIds``
  and ``CreateVolumePermission.Add/Remove``; moto reads only the first) and refuses to share a
  snapshot encrypted with the AWS-managed ``aws/ebs`` key.
* ``EBSBackend.create_snapshot`` gives a snapshot its volume's ``KmsKeyId`` (moto keeps only
  ``Encrypted``), and the keys moto creates for ``alias/aws/*`` are AWS-managed
  (``KeyManager: AWS``; moto made them customer keys).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.utils import random_snapshot_id
from moto.kms.models import KmsBackend, kms_backends

from localaws.clock import CLOCK, Clock
from localaws.due_queue import DueQueue
from localaws.ec2_snapshots import (
    SNAPSHOT_DETAIL_TYPE,
    _parse_tag_specifications,  # CreateSnapshots' tag rules, which CopySnapshot shares
    snapshot_arn,
)
from localaws.events import EventSink, iso_millis

__all__ = [
    "AWS_MANAGED_SHARE_MESSAGE",
    "COPY_VOLUME_ID",
    "DEFAULT_CONCURRENT_LIMIT",
    "INJECTED_FAILURE_CAUSE",
    "KEY_NOT_ACCESSIBLE",
    "CopyEmulator",
    "default_ebs_key_arn",
    "install",
    "is_aws_managed_key",
]

log = logging.getLogger("localaws.ec2.copies")

# EBS quota "Concurrent snapshot copies per destination Region": 20, not adjustable.
DEFAULT_CONCURRENT_LIMIT = 20
# "Snapshots created by the CopySnapshot action have an arbitrary volume ID"; AWS reports this one.
COPY_VOLUME_ID = "vol-ffffffff"
# The StateMessage (and event cause) of a copy whose KMS key cannot be used. AWS documents that a
# bad KmsKeyId fails the copy asynchronously, not the text; this is the text AWS Backup surfaces
# for such a failure ("AMI snapshot copy failed with error: Given key ID is not accessible").
KEY_NOT_ACCESSIBLE = "Given key ID is not accessible"
INJECTED_FAILURE_CAUSE = "localaws: injected copy failure (fail_sources)"
AWS_MANAGED_SHARE_MESSAGE = "Encrypted snapshots with EBS default key cannot be shared"
_SNAPSHOT_ID = re.compile(r"^snap-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_PERMISSION_ATTRIBUTE = "createVolumePermission"


def _ec2_error(code: str, message: str) -> EC2ClientError:
    return EC2ClientError(code, message)


def _not_found(snapshot_id: str) -> EC2ClientError:
    return _ec2_error("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")


# --- KMS ---------------------------------------------------------------------------------------


def _kms(account: str, region: str) -> KmsBackend:
    backend: KmsBackend = kms_backends[account][region]
    return backend


def _resolve_key(account: str, region: str, key_id: str) -> Any | None:
    """The key `key_id` (id, ARN, alias or alias ARN) names in that region's KMS, or None. An
    ARN of another region or account names nothing here: EBS wants a key of the copy's region."""
    if key_id.startswith("arn:"):
        parts = key_id.split(":")
        if len(parts) < 6 or parts[3] != region or parts[4] != account:
            return None
    kms = _kms(account, region)
    try:
        raw_id = kms.any_id_to_key_id(key_id)
    except (AttributeError, KeyError, TypeError):  # an unknown alias resolves to None
        return None
    return kms.keys.get(raw_id)


def _usable(key: Any | None) -> bool:
    # EBS needs an enabled symmetric encryption key (no asymmetric keys, none pending deletion).
    # moto leaves KeyUsage unset when CreateKey omits it; KMS's default is ENCRYPT_DECRYPT.
    return (
        key is not None
        and key.key_state == "Enabled"
        and (key.key_usage or "ENCRYPT_DECRYPT") == "ENCRYPT_DECRYPT"
        and (key.key_spec or "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT"
    )


def is_aws_managed_key(account: str, region: str, key_id: str | None) -> bool:
    """Whether `key_id` is an AWS-managed key (``aws/ebs``) of that region. An encrypted snapshot
    without a key id was encrypted with the default key, which is the AWS-managed one."""
    if not key_id:
        return True
    key = _resolve_key(account, region, key_id)
    return key is not None and key.key_manager == "AWS"


def default_ebs_key_arn(account: str, region: str) -> str:
    """The region's EBS default key (``ModifyEbsDefaultKmsKeyId``'s, else ``aws/ebs``, created
    on first use as AWS creates it)."""
    backend = ec2_backends[account][region]
    arn: str = backend.default_kms_key_id or backend._create_default_encryption_key()
    return arn


def _mark_aws_managed(kms: KmsBackend) -> None:
    for key in kms.keys.values():
        if any(alias.startswith("alias/aws/") for alias in key.aliases):
            key.key_manager = "AWS"


# --- the emulator ------------------------------------------------------------------------------


@dataclass(order=True)
class _Copy:
    due: float  # the clock's monotonic() deadline, or +inf when completion is manual
    seq: int
    account: str = field(compare=False)
    region: str = field(compare=False)
    source_region: str = field(compare=False)
    source_id: str = field(compare=False)
    source_key: str | None = field(compare=False)  # the source's key, checked at completion
    lineage: str = field(compare=False)  # the volume the source snapshot was taken of
    start_time: datetime = field(compare=False)
    snapshot: Any = field(compare=False)  # the moto Snapshot in the destination backend
    generation: int = field(compare=False, default=0)

    def view(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot.id,
            "source_snapshot_id": self.source_id,
            "source_region": self.source_region,
            "region": self.region,
            "account_id": self.account,
            "start_time": iso_millis(self.start_time),
        }


class CopyEmulator(DueQueue["_Copy"]):
    """Pending snapshot copies, their completion on the server clock (after ``delay`` seconds;
    ``None``: only `complete_all`), the concurrent-copy limit and injected failures."""

    def __init__(
        self, events: EventSink, default_delay: float | None = 0.5, clock: Clock = CLOCK
    ) -> None:
        super().__init__(clock, "localaws-copies")
        self.events = events
        self.default_delay = default_delay
        self.delay = default_delay
        self.concurrent_limit = DEFAULT_CONCURRENT_LIMIT
        self.fail_sources: dict[str, str] = {}  # source snapshot id -> the failed copy's cause
        self._done: list[dict[str, Any]] = []
        self._seq = itertools.count()
        self._generation = 0  # bumped by reset(): copies of an older generation are dropped

    # configuration and state
    def configure(self, body: Mapping[str, Any]) -> None:
        """Apply ``delay_seconds`` (None: manual; for copies started afterwards),
        ``concurrent_limit`` and ``fail_sources`` (ids, or ``{id: cause}``; replaces the
        previous ones); nothing is applied if any field is bad."""
        unknown = set(body) - {"delay_seconds", "concurrent_limit", "fail_sources"}
        if unknown:
            raise ValueError(f"unknown copies fields: {sorted(unknown)}")
        delay, limit, fail = self.delay, self.concurrent_limit, self.fail_sources
        if "delay_seconds" in body:
            raw = body["delay_seconds"]
            delay = None if raw is None else float(raw)
            if delay is not None and delay < 0:
                raise ValueError("delay_seconds must be >= 0 or null")
        if "concurrent_limit" in body:
            limit = int(body["concurrent_limit"])
            if limit < 1:
                raise ValueError("concurrent_limit must be >= 1")
        if "fail_sources" in body:
            fail = _fail_sources(body["fail_sources"])
        with self._cond:
            self.delay, self.concurrent_limit, self.fail_sources = delay, limit, fail

    def state(self) -> dict[str, Any]:
        with self._cond:
            pending = sorted(
                (c for c in self._heap if c.generation == self._generation), key=lambda c: c.seq
            )
            return {
                "delay_seconds": self.delay,
                "concurrent_limit": self.concurrent_limit,
                "fail_sources": dict(self.fail_sources),
                "pending": [c.view() for c in pending],
                "done": list(self._done),
            }

    def reset(self) -> None:
        with self._cond:
            self._heap.clear()
            self._done.clear()
            self._generation += 1
            self.delay = self.default_delay
            self.concurrent_limit = DEFAULT_CONCURRENT_LIMIT
            self.fail_sources = {}

    # admission
    def _in_flight(self, account: str, region: str) -> int:
        return sum(
            1
            for c in self._heap
            if c.generation == self._generation
            and c.account == account
            and c.region == region
            and _alive(c)  # a pending copy deleted frees its slot
        )

    def admit(
        self,
        account: str,
        region: str,
        source: Any,
        source_region: str,
        create: Callable[[datetime], Any],
    ) -> Any:
        """Admit a copy of `source` into (`account`, `region`) if a slot is free and create it
        with `create(start_time)` (under the lock: two concurrent requests cannot both take the
        last slot); `ResourceLimitExceeded` otherwise."""
        with self._cond:
            if self._in_flight(account, region) >= self.concurrent_limit:
                raise _ec2_error(
                    "ResourceLimitExceeded",
                    "Too many snapshot copies in progress. The limit is "
                    f"{self.concurrent_limit} for this destination region.",
                )
            start = self.clock.now()
            snapshot = create(start)
            due = (
                float("inf") if self.delay is None else self.clock.monotonic() + max(self.delay, 0)
            )
            heapq.heappush(
                self._heap,
                _Copy(
                    due,
                    next(self._seq),
                    account,
                    region,
                    source_region,
                    source.id,
                    source.kms_key_id if source.encrypted else None,
                    getattr(source, "localaws_lineage", source.volume.id),
                    start,
                    snapshot,
                    self._generation,
                ),
            )
            self._cond.notify()
            return snapshot

    # completion
    def complete_due(self) -> list[str]:
        """Complete the copies due by now on the server clock; their ids."""
        return self._complete(self._pop(everything=False))

    def complete_all(self) -> list[str]:
        """Complete every pending copy now; their ids."""
        return self._complete(self._pop(everything=True))

    def _complete(self, copies: Iterable[_Copy]) -> list[str]:
        done = []
        for copy in copies:
            if copy.generation != self._generation:
                continue  # started before a reset: its backend and snapshot are gone
            if not _alive(copy):
                continue  # deleted while pending: nothing completes, no event
            self._finish(copy)
            done.append(copy.snapshot.id)
        return done

    def _failure(self, copy: _Copy) -> str | None:
        snap = copy.snapshot
        if snap.encrypted and not _usable(_resolve_key(copy.account, copy.region, snap.kms_key_id)):
            return KEY_NOT_ACCESSIBLE
        if copy.source_key and not _usable(
            _resolve_key(copy.account, copy.source_region, copy.source_key)
        ):
            return KEY_NOT_ACCESSIBLE
        return self.fail_sources.get(copy.source_id)

    def _incremental(self, copy: _Copy) -> bool:
        # EBS copies incrementally when the destination still holds a copy of an earlier
        # snapshot of the same volume, encrypted the same way; otherwise it copies in full.
        snap = copy.snapshot
        return any(
            other is not snap
            and getattr(other, "localaws_lineage", None) == copy.lineage
            and other.status == "completed"
            and other.encrypted == snap.encrypted
            and other.kms_key_id == snap.kms_key_id
            for other in ec2_backends[copy.account][copy.region].snapshots.values()
        )

    def _finish(self, copy: _Copy) -> None:
        snap = copy.snapshot
        cause = self._failure(copy)
        incremental = cause is None and self._incremental(copy)
        end = self.clock.now()
        snap.status = "error" if cause else "completed"
        snap.localaws_progress = "0%" if cause else "100%"
        snap.status_message = cause
        snap.completion_time = end
        detail: dict[str, Any] = {
            "event": "copySnapshot",
            "result": "failed" if cause else "succeeded",
            "cause": cause or "",
            "request-id": "",
            "snapshot_id": snapshot_arn(copy.region, snap.id),
            "source": snapshot_arn(copy.source_region, copy.source_id),
            "startTime": iso_millis(copy.start_time),
            "endTime": iso_millis(end),
        }
        if cause is None:
            detail["incremental"] = "true" if incremental else "false"
            detail["transferType"] = "standard"
        with self._cond:
            self._done.append({**copy.view(), "result": detail["result"], "cause": cause})
        self.events.emit(
            account=copy.account,
            region=copy.region,
            detail_type=SNAPSHOT_DETAIL_TYPE,
            resources=[snapshot_arn(copy.region, snap.id)],
            when=end,
            detail=detail,
        )


def _alive(copy: _Copy) -> bool:
    """Whether the copy's snapshot is still in its backend (not deleted, not reset away)."""
    current = ec2_backends[copy.account][copy.region].snapshots.get(copy.snapshot.id)
    return current is not None and current is copy.snapshot


def _fail_sources(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return {str(v): INJECTED_FAILURE_CAUSE for v in raw}
    raise ValueError("fail_sources must be a list of snapshot ids or an object {id: cause}")


# --- CopySnapshot ------------------------------------------------------------------------------


class _CopyVolume:
    """What a copy's ``volume`` is: AWS's arbitrary ``vol-ffffffff`` with the source's size."""

    def __init__(self, size: int) -> None:
        self.id = COPY_VOLUME_ID
        self.size = size


def _visible_source(account: str, region: str, snapshot_id: str) -> Any:
    """The source snapshot as `account` sees it in `region`: its own, or one another account
    shared with it (``createVolumePermission``: its id, or the group ``all``)."""
    own = ec2_backends[account][region].snapshots.get(snapshot_id)
    if own is not None:
        return own
    for owner, backends in list(ec2_backends.items()):
        regional = dict.get(backends, region)  # not backends[region], which would create it
        if owner == account or regional is None:
            continue
        shared = regional.snapshots.get(snapshot_id)
        if shared is not None and (
            account in shared.create_volume_permission_userids
            or "all" in shared.create_volume_permission_groups
        ):
            return shared
    raise _not_found(snapshot_id)


def _copy_snapshot(emulator: CopyEmulator) -> Callable[[Any], Any]:
    def copy_snapshot(self: Any) -> Any:
        backend = self.ec2_backend
        account, region = backend.account_id, backend.region_name
        source_id = str(self._get_param("SourceSnapshotId") or "")
        source_region = str(self._get_param("SourceRegion") or "")
        description = str(self._get_param("Description") or "")
        encrypted = self._get_bool_param("Encrypted", False)
        kms_key_id = self._get_param("KmsKeyId")
        if not source_region:
            raise _ec2_error(
                "MissingParameter", "The request must contain the parameter SourceRegion"
            )
        if not source_id:
            raise _ec2_error(
                "MissingParameter", "The request must contain the parameter SourceSnapshotId"
            )
        if source_region not in ec2_backends[account]:
            raise _ec2_error(
                "InvalidParameterValue",
                f"Value ({source_region}) for parameter SourceRegion is invalid: unknown region",
            )
        if not _SNAPSHOT_ID.match(source_id):
            raise _ec2_error("InvalidSnapshotID.Malformed", f'Invalid id: "{source_id}"')
        if kms_key_id and not encrypted:
            raise _ec2_error(
                "InvalidParameterDependency",
                "The parameter KmsKeyId requires the parameter Encrypted to be set.",
            )
        tags = _parse_tag_specifications(
            self._get_param("TagSpecifications") or self._get_param("TagSpecification")
        )
        source = _visible_source(account, source_region, source_id)
        if source.status != "completed":
            raise _ec2_error("IncorrectState", f"Snapshot '{source_id}' is not 'completed'.")
        self.error_on_dryrun()  # DryRunOperation (HTTP 412) only after validation passed

        # An encrypted source gives an encrypted copy ("You cannot set this parameter to false").
        encrypt = bool(source.encrypted or encrypted or backend.ebs_encryption_by_default)
        key = None
        if encrypt:
            if kms_key_id:
                named = _resolve_key(account, region, str(kms_key_id))
                key = named.arn if named is not None else str(kms_key_id)  # fails at completion
            else:
                key = default_ebs_key_arn(account, region)

        def create(start: datetime) -> Any:
            snap: Any = Snapshot(
                backend,
                random_snapshot_id(),
                volume=_CopyVolume(source.volume.size),
                description=description,
                encrypted=encrypt,
                kms_key_id=key,
            )
            snap.start_time = start
            snap.status = "pending"
            snap.localaws_progress = "0%"
            snap.transfer_type = "standard"
            snap.localaws_lineage = getattr(source, "localaws_lineage", source.volume.id)
            backend.snapshots[snap.id] = snap
            if tags:
                snap.add_tags(tags)
            return snap

        snap = emulator.admit(account, region, source, source_region, create)
        return ActionResult(
            {
                "SnapshotId": snap.id,
                "Tags": [{"Key": t["key"], "Value": t["value"]} for t in snap.get_tags()],
            }
        )

    return copy_snapshot


# --- ModifySnapshotAttribute -------------------------------------------------------------------


def _permission_items(raw: Any) -> list[dict[str, str]]:
    if isinstance(raw, Mapping):  # {"member": [...]} / {"1": {...}} shapes
        raw = list(raw.values())
        if len(raw) == 1 and isinstance(raw[0], list):
            raw = raw[0]
    if isinstance(raw, Mapping):
        raw = [raw]
    return [dict(item) for item in raw or [] if isinstance(item, Mapping)]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _modify_snapshot_attribute(self: Any) -> Any:
    backend = self.ec2_backend
    snapshot_id = str(self._get_param("SnapshotId") or "")
    attribute = self._get_param("Attribute")
    if attribute is not None and attribute != _PERMISSION_ATTRIBUTE:
        raise _ec2_error(
            "InvalidParameterValue",
            f"Value ({attribute}) for parameter attribute is invalid. "
            "Only createVolumePermission can be modified.",
        )
    snapshot = backend.snapshots.get(snapshot_id)
    if snapshot is None:
        raise _not_found(snapshot_id)
    # Both request forms: OperationType + UserIds/GroupNames, or CreateVolumePermission.
    changes: dict[str, tuple[list[str], list[str]]] = {"add": ([], []), "remove": ([], [])}
    operation = self._get_param("OperationType")
    if operation in changes:
        changes[operation][0].extend(_as_list(self._get_param("UserIds")))
        changes[operation][1].extend(_as_list(self._get_param("GroupNames")))
    permission = self._get_param("CreateVolumePermission") or {}
    for name, key in (("add", "Add"), ("remove", "Remove")):
        for item in _permission_items(permission.get(key)):
            if item.get("UserId"):
                changes[name][0].append(str(item["UserId"]))
            if item.get("Group"):
                changes[name][1].append(str(item["Group"]))
    if (
        changes["add"][0]
        and snapshot.encrypted
        and is_aws_managed_key(backend.account_id, backend.region_name, snapshot.kms_key_id)
    ):
        raise _ec2_error("OperationNotPermitted", AWS_MANAGED_SHARE_MESSAGE)
    self.error_on_dryrun()
    for name in ("add", "remove"):
        user_ids, groups = changes[name]
        if not (user_ids or groups):
            continue
        if name == "add":
            backend.add_create_volume_permission(snapshot_id, user_ids=user_ids, groups=groups)
        else:
            backend.remove_create_volume_permission(snapshot_id, user_ids=user_ids, groups=groups)
    return EmptyResult()


# --- install -----------------------------------------------------------------------------------

_INSTALLED = "_localaws_copies"


def install(emulator: CopyEmulator) -> None:
    """Patch moto (idempotent): the two handlers above report to `emulator`."""
    handler = _copy_snapshot(emulator)
    handler.__name__ = "copy_snapshot"
    ElasticBlockStore.copy_snapshot = handler  # type: ignore[method-assign,assignment]
    ElasticBlockStore.modify_snapshot_attribute = _modify_snapshot_attribute  # type: ignore[method-assign]
    if getattr(EBSBackend, _INSTALLED, False):
        return

    moto_create_snapshot = EBSBackend.create_snapshot

    def create_snapshot(self: Any, volume_id: str, *args: Any, **kwargs: Any) -> Snapshot:
        snapshot = moto_create_snapshot(self, volume_id, *args, **kwargs)
        if snapshot.encrypted and snapshot.kms_key_id is None:
            snapshot.kms_key_id = snapshot.volume.kms_key_id  # a snapshot has its volume's key
        return snapshot

    EBSBackend.create_snapshot = create_snapshot  # type: ignore[method-assign]

    moto_default_key = EBSBackend._create_default_encryption_key

    def create_default_encryption_key(self: Any) -> str:
        arn: str = moto_default_key(self)
        _mark_aws_managed(_kms(self.account_id, self.region_name))
        return arn

    EBSBackend._create_default_encryption_key = create_default_encryption_key  # type: ignore[method-assign]

    moto_generate = KmsBackend._generate_default_keys

    def generate_default_keys(self: Any, alias_name: str) -> str | None:
        key_id: str | None = moto_generate(self, alias_name)
        _mark_aws_managed(self)
        return key_id

    KmsBackend._generate_default_keys = generate_default_keys  # type: ignore[method-assign]
    setattr(EBSBackend, _INSTALLED, True)
