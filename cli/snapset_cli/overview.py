"""What `snapset plan` shows beside the plan table: when a policy runs, and account coverage.

Fire times come from `infra.schedule_times` (Scheduler's cron on the zone's wall clock, rates at
fixed intervals). Coverage compares the plans of every policy with the account's instances (one
paginated DescribeInstances) and sizes the volumes a run snapshots (one paginated
DescribeVolumes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from infra.config import ScheduleConfig
from infra.schedule_times import FireTime, UnsupportedSchedule, next_fire_times
from snapset.outcomes import InstanceStatus
from snapset.plan import Plan
from snapset.targets import Instance

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# Instances in these states are left out of coverage: they have nothing left to snapshot.
_GONE = frozenset({"shutting-down", "terminated"})


@dataclass(frozen=True)
class ScheduleView:
    """One schedule of a policy and its next fire times, or why they cannot be shown."""

    expression: str
    timezone: str
    fires: tuple[FireTime, ...] = ()
    error: str | None = None

    def next_run(self) -> datetime | None:
        return next((f.utc for f in self.fires if f.utc is not None), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "expression": self.expression,
            "timezone": self.timezone,
            "error": self.error,
            "fire_times": [
                {
                    "local": f.local.isoformat(),
                    "utc": f.utc.isoformat() if f.utc else None,
                    "kind": f.kind,
                    "skipped": f.skipped,
                    "dst_day": f.dst_day,
                }
                for f in self.fires
            ],
        }


def schedule_views(entry: Mapping[str, Any] | None, after: datetime, n: int) -> list[ScheduleView]:
    """The schedules of a cdk.json policy entry with their next `n` fire times after `after`.

    A schedule cdk.json would refuse, or one whose times cannot be computed, is shown with its
    error rather than failing the plan.
    """
    raw = entry.get("schedules") if entry else None
    views = []
    for item in raw if isinstance(raw, list) else []:
        data = {"expression": item} if isinstance(item, str) else item
        expression = str(data.get("expression")) if isinstance(data, Mapping) else repr(item)
        timezone = str(data.get("timezone", "UTC")) if isinstance(data, Mapping) else "UTC"
        try:
            schedule = ScheduleConfig.model_validate(data)
            fires = next_fire_times(schedule.expression, schedule.timezone, after, n)
        except ValidationError as exc:
            message = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            views.append(ScheduleView(expression, timezone, error=f"invalid: {message}"))
        except UnsupportedSchedule as exc:
            views.append(ScheduleView(expression, timezone, error=str(exc)))
        else:
            views.append(ScheduleView(expression, timezone, tuple(fires)))
    return views


def instance_states(entry: Mapping[str, Any] | None) -> list[str]:
    """The instance states a cdk.json policy entry runs on."""
    states = entry.get("on_instance_states") if entry else None
    return [str(s) for s in states] if isinstance(states, list) else []


def next_run(views: Sequence[ScheduleView], default: datetime) -> datetime:
    """When the policy's schedules run next (`default` without one): retention's `now`."""
    runs = [t for v in views if (t := v.next_run()) is not None]
    return min(runs, default=default)


# --- coverage ---------------------------------------------------------------------------------


def list_instances(ec2: EC2Client) -> list[Instance]:
    """Every instance of the region not shutting down or terminated (one paginated call)."""
    paginator = ec2.get_paginator("describe_instances")
    found = [
        Instance.from_api(raw)
        for page in paginator.paginate(PaginationConfig={"PageSize": 1000})
        for reservation in page.get("Reservations", [])
        for raw in reservation.get("Instances", [])
    ]
    return sorted((i for i in found if i.state not in _GONE), key=lambda i: i.instance_id)


def volume_sizes(ec2: EC2Client) -> dict[str, int]:
    """Every volume's size in GiB (one paginated DescribeVolumes)."""
    paginator = ec2.get_paginator("describe_volumes")
    return {
        v["VolumeId"]: v.get("Size", 0)
        for page in paginator.paginate(PaginationConfig={"PageSize": 500})
        for v in page.get("Volumes", [])
    }


@dataclass(frozen=True)
class PolicyCoverage:
    """What one run of a policy snapshots: instances, volumes and their provisioned GiB."""

    policy: str
    instances: int
    volumes: int
    gib: int


@dataclass(frozen=True)
class Untargeted:
    instance_id: str
    state: str
    name: str


@dataclass(frozen=True)
class Overlap:
    instance_id: str
    policies: tuple[str, ...]


@dataclass(frozen=True)
class Coverage:
    policies: tuple[PolicyCoverage, ...]
    untargeted: tuple[Untargeted, ...]
    overlaps: tuple[Overlap, ...]
    unsized_volumes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": [vars(p) for p in self.policies],
            "untargeted": [vars(u) for u in self.untargeted],
            "overlaps": [
                {"instance_id": o.instance_id, "policies": list(o.policies)} for o in self.overlaps
            ],
            "unsized_volumes": list(self.unsized_volumes),
        }


def coverage(
    plans: Sequence[Plan], instances: Sequence[Instance], sizes: Mapping[str, int]
) -> Coverage:
    """Per policy what a run snapshots; the instances no policy targets; the instances that
    several policies snapshot (each run pays for its own set)."""
    targeted = {e.instance_id for p in plans for e in p.instances}
    snapshotted_by: dict[str, list[str]] = {}
    per_policy = []
    unsized: set[str] = set()
    for plan in plans:
        entries = [e for e in plan.instances if e.status is InstanceStatus.DRY_RUN_OK]
        volumes = [v for e in entries for v in e.snapshot_volume_ids]
        unsized.update(v for v in volumes if v not in sizes)
        per_policy.append(
            PolicyCoverage(
                policy=plan.policy,
                instances=len(entries),
                volumes=len(volumes),
                gib=sum(sizes.get(v, 0) for v in volumes),
            )
        )
        for e in entries:
            snapshotted_by.setdefault(e.instance_id, []).append(plan.policy)
    return Coverage(
        policies=tuple(per_policy),
        untargeted=tuple(
            Untargeted(i.instance_id, i.state, i.tags.get("Name", ""))
            for i in instances
            if i.instance_id not in targeted
        ),
        overlaps=tuple(
            Overlap(iid, tuple(names))
            for iid, names in sorted(snapshotted_by.items())
            if len(names) > 1
        ),
        unsized_volumes=tuple(sorted(unsized)),
    )
