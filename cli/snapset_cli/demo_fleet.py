"""The demo's fleet: instances and volumes launched on the local AWS from the policies' tags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from localaws.fleet import DataVolume, launch_instance

TAG_POLICY = "snapset:policy"
TAG_TRIGGER_ID = "snapset:trigger-id"
TAG_INSTANCE_ID = "snapset:instance-id"
TAG_CONSISTENCY = "snapset:consistency"
TAG_COPIES = "snapset:copies"
TAG_COPY_OF = "snapset:copy-of"
# The deployed copy sweep schedule's input (`{"copy_sweep": {}}`).
COPY_SWEEP_KEY = "copy_sweep"
EXCLUDE_TAG = ("Snapset", "exclude")
MANUAL_POLICY = "manual-db"


@dataclass(frozen=True)
class DemoVolume:
    volume_id: str
    name: str
    tags: Mapping[str, str]
    is_root: bool


@dataclass(frozen=True)
class DemoInstance:
    name: str
    instance_id: str
    state: str
    tags: Mapping[str, str]
    volumes: tuple[DemoVolume, ...]
    role: str  # what it is there to show


def tag_value(patterns: Sequence[str]) -> str:
    """A concrete value matching the first of a policy's tag patterns (EC2 wildcards * and ?)."""
    return patterns[0].replace("*", "x").replace("?", "x")


def _target_tags(policy: Mapping[str, Any]) -> dict[str, str]:
    return {k: tag_value(v) for k, v in policy.get("target_tags", {}).items()}


def _outside(policies: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Tags of an instance that looks like a target but matches no policy."""
    for policy in policies:
        tags = _target_tags(policy)
        if tags:
            key = sorted(tags)[-1]
            return {**tags, key: tags[key] + "-not"}
    return {"Environment": "dev"}


def _launch(
    ec2: Any,
    *,
    name: str,
    tags: Mapping[str, str],
    data: Sequence[tuple[str, Mapping[str, str]]],
    role: str,
    state: str = "running",
) -> DemoInstance:
    """One instance; its volumes are named `<name>-root` and `<name>-<suffix>` (Name tags)."""
    specs = [
        DataVolume(size=8 + i, tags={"Name": f"{name}-{suffix}", **extra})
        for i, (suffix, extra) in enumerate(data)
    ]
    launched = launch_instance(
        ec2,
        tags={"Name": name, **tags},
        root_tags={"Name": f"{name}-root"},
        data_volumes=specs,
        state=state,
    )
    volumes = [DemoVolume(launched.root_volume_id, f"{name}-root", {"Name": f"{name}-root"}, True)]
    volumes += [
        DemoVolume(vid, str(spec.tags["Name"]), dict(spec.tags), False)
        for vid, spec in zip(launched.data_volume_ids, specs, strict=True)
    ]
    return DemoInstance(
        name, launched.instance_id, state, dict(launched.tags), tuple(volumes), role
    )


@dataclass
class Scenario:
    scheduled_policy: dict[str, Any] | None
    event_policy: dict[str, Any] | None
    manual_payload: dict[str, Any]
    fleet: list[DemoInstance]
    stop_target: DemoInstance | None
    manual_target: DemoInstance


def distributes(policy: Mapping[str, Any]) -> bool:
    """Whether a policy copies its sets to other regions or shares them with other accounts."""
    return bool(policy.get("copies") or policy.get("share_with_accounts"))


def build_fleet(ec2: Any, policies: Sequence[Mapping[str, Any]]) -> Scenario:
    """Six instances, a seventh for a policy with scripts and an eighth for a policy with
    copies or shares, tagged from the configured policies' target tags.

    web-1, web-2, batch-1 (stopped) and api-1 (root volume only) carry the scheduled policy's
    target tags, web-2 also the stop policy's; db-1 is snapshotted by hand with a data volume
    excluded by tag; dev-1 looks like a target but matches no policy; pg-1 carries the target
    tags of the first policy with pre and post scripts (an application-consistent set); dr-1
    those of the first scheduled policy with copies or shares (a set copied to other regions
    and shared with other accounts).
    """
    scheduled = next(
        (
            dict(p)
            for p in policies
            if p.get("schedules") and not p.get("scripts") and not distributes(p)
        ),
        None,
    )
    consistent = next((dict(p) for p in policies if p.get("scripts")), None)
    distributed = next((dict(p) for p in policies if p.get("schedules") and distributes(p)), None)
    on_stop = next(
        (dict(p) for p in policies if "stopped" in p.get("on_instance_states", ())), None
    )
    sched_tags = _target_tags(scheduled) if scheduled else {}
    stop_tags = _target_tags(on_stop) if on_stop else {}
    skip_key, skip_value = EXCLUDE_TAG
    # When the scheduled policy excludes data volumes by tag, web-1 shows that too.
    sched_excl = (scheduled or {}).get("exclude_data_volume_tags") or {}
    web1_data: list[tuple[str, Mapping[str, str]]] = [("data", {"App": "web", "Disk": "data"})]
    if sched_excl:
        web1_data.append(("tmp", {k: tag_value(v) for k, v in sched_excl.items()}))
    launch = partial(_launch, ec2)
    fleet = [
        launch(name="web-1", tags=sched_tags, data=web1_data, role="scheduled"),
        launch(
            name="web-2",
            tags={**sched_tags, **stop_tags},
            data=[("data", {"App": "web", "Disk": "data"}), ("logs", {"Disk": "logs"})],
            role="scheduled, then stopped (instance event)",
        ),
        launch(
            name="batch-1",
            tags=sched_tags,
            data=[("data", {"App": "batch"})],
            role="scheduled while stopped",
            state="stopped",
        ),
        launch(name="api-1", tags=sched_tags, data=[], role="scheduled, root volume only"),
        launch(
            name="db-1",
            tags={"Role": "db"},
            data=[
                ("data", {"App": "db", "Disk": "data"}),
                ("scratch", {"Disk": "scratch", skip_key: skip_value}),
            ],
            role=f"manual invoke; a {skip_key}={skip_value} data volume",
        ),
        launch(
            name="dev-1",
            tags=_outside(policies),
            data=[("data", {"App": "web"})],
            role="outside every policy",
        ),
    ]
    if consistent is not None and consistent.get("target_tags"):
        fleet.append(
            launch(
                name="pg-1",
                tags=_target_tags(consistent),
                data=[("pgdata", {"App": "postgres", "Disk": "data"})],
                role=f"application-consistent: {consistent['scripts']['document']} pre/post "
                "scripts through SSM",
            )
        )
    if distributed is not None and distributed.get("target_tags"):
        regions = [c["region"] for c in distributed.get("copies", [])]
        accounts = distributed.get("share_with_accounts", [])
        shows = [f"copied to {', '.join(regions)}"] if regions else []
        shows += [f"shared with {', '.join(accounts)}"] if accounts else []
        fleet.append(
            launch(
                name="dr-1",
                tags=_target_tags(distributed),
                data=[("data", {"App": "orders", "Disk": "data"})],
                role=f"{distributed['policy']}: {', '.join(shows)}",
            )
        )
    by_name = {i.name: i for i in fleet}
    manual = {
        "policy": MANUAL_POLICY,
        "instance_ids": [by_name["db-1"].instance_id],
        "exclude_data_volume_tags": {skip_key: [skip_value]},
        "tags": {"Reason": "before-upgrade", "CreatedBy": "snapset-{trigger}"},
        "description": "Snapset {policy}: {instance_id} by hand",
        "request_id": "demo-manual-1",
    }
    stop_target = by_name["web-2"] if on_stop and stop_tags else None
    return Scenario(scheduled, on_stop, manual, fleet, stop_target, by_name["db-1"])
