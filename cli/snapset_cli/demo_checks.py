"""The demo's checks: the snapshot sets and SNS reports against what the policies say.

The tags are spelled out here rather than imported from `snapset`, so a renamed tag in the
product fails the demo instead of passing it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from localaws.lambda_runtime import Invocation
from localaws.report_inbox import Report
from snapset_cli.demo_fleet import (
    TAG_CONSISTENCY,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    DemoInstance,
    DemoVolume,
)
from snapset_cli.render import Out


@dataclass
class Expected:
    label: str  # how the demo names the trigger
    policy: dict[str, Any]
    trigger_type: str
    instances: list[DemoInstance]
    invocation: Invocation | None = None

    @property
    def trigger_id(self) -> str | None:
        result = self.invocation.result if self.invocation else None
        return result.get("trigger", {}).get("id") if isinstance(result, dict) else None


def planned_volumes(
    policy: Mapping[str, Any], instance: DemoInstance
) -> tuple[list[DemoVolume], list[DemoVolume]]:
    """(snapshotted, excluded) volumes of an instance under a policy, from the policy alone."""
    excluded_tags = policy.get("exclude_data_volume_tags") or {}
    excluded_ids = set(policy.get("exclude_data_volume_ids") or [])
    take: list[DemoVolume] = []
    leave: list[DemoVolume] = []
    for volume in instance.volumes:
        if volume.is_root:
            (leave if policy.get("exclude_boot_volume") else take).append(volume)
            continue
        by_tag = bool(excluded_tags) and all(
            volume.tags.get(k) in v for k, v in excluded_tags.items()
        )
        (leave if by_tag or volume.volume_id in excluded_ids else take).append(volume)
    return take, leave


@dataclass
class Checks:
    out: Out
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed.append(what)
        else:
            self.failed.append(f"{what}: {detail}" if detail else what)
        return ok


def tag_map(raw: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw or []}


def our_snapshots(ec2: Any) -> list[dict[str, Any]]:
    snapshots = []
    for page in ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_POLICY]}]
    ):
        snapshots += page["Snapshots"]
    return snapshots


def group_sets(
    snapshots: Sequence[dict[str, Any]],
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Snapshots by (policy, trigger id, instance id): one group per snapshot set."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for snap in snapshots:
        tags = tag_map(snap.get("Tags"))
        key = (tags[TAG_POLICY], tags.get(TAG_TRIGGER_ID, ""), tags.get(TAG_INSTANCE_ID, ""))
        groups[key].append(snap)
    return groups


def _expected_tag(template: str, exp: Expected, instance_id: str) -> str:
    result = exp.invocation.result if exp.invocation else None
    when = result.get("trigger", {}).get("time", "") if isinstance(result, dict) else ""
    values = {
        "policy": exp.policy["policy"],
        "instance_id": instance_id,
        "trigger": exp.trigger_type,
        "timestamp": str(when).replace("+00:00", "Z"),
    }
    return template.format_map(values)


def _check_snapshot_tags(
    checks: Checks,
    exp: Expected,
    inst: DemoInstance,
    snap: Mapping[str, Any],
    volume: DemoVolume | None,
) -> None:
    label, snapshot_id = exp.label, snap["SnapshotId"]
    tags = tag_map(snap.get("Tags"))
    managed = {
        TAG_POLICY: exp.policy["policy"],
        TAG_TRIGGER_ID: exp.trigger_id,
        TAG_INSTANCE_ID: inst.instance_id,
        # Every demo instance is online in SSM and its scripts succeed.
        TAG_CONSISTENCY: "application" if exp.policy.get("scripts") else "crash",
    }
    wrong_managed = {k: tags.get(k) for k, v in managed.items() if tags.get(k) != v}
    checks.check(
        not wrong_managed, f"{label}: {snapshot_id} has the managed tags", f"{wrong_managed}"
    )
    policy_tags: dict[str, str] = exp.policy.get("tags", {})
    if exp.policy.get("copy_tags_from_source", "volume") == "volume" and volume is not None:
        missing = {
            k: v for k, v in volume.tags.items() if k not in policy_tags and tags.get(k) != v
        }
        checks.check(
            not missing, f"{label}: {snapshot_id} carries its volume's tags", f"missing {missing}"
        )
    wrong = {
        k: (tags.get(k), _expected_tag(v, exp, inst.instance_id))
        for k, v in policy_tags.items()
        if tags.get(k) != _expected_tag(v, exp, inst.instance_id)
    }
    checks.check(not wrong, f"{label}: {snapshot_id} has the policy's tags", f"(got, want) {wrong}")


def _check_set(
    checks: Checks,
    exp: Expected,
    inst: DemoInstance,
    got: Sequence[dict[str, Any]],
    volumes_by_id: Mapping[str, DemoVolume],
) -> None:
    take, leave = planned_volumes(exp.policy, inst)
    label = exp.label
    got_volumes = sorted(s["VolumeId"] for s in got)
    planned = sorted(v.volume_id for v in take)
    checks.check(
        got_volumes == planned,
        f"{label}: one set of {inst.name} with exactly its planned volumes",
        f"got {got_volumes}, planned {planned}",
    )
    starts = sorted({str(s["StartTime"]) for s in got})
    checks.check(
        len(starts) <= 1, f"{label}: {inst.name}'s set is one CreateSnapshots call", f"{starts}"
    )
    present = {v.volume_id for v in leave} & set(got_volumes)
    checks.check(not present, f"{label}: {inst.name}'s excluded volumes absent", f"{present}")
    for snap in got:
        _check_snapshot_tags(checks, exp, inst, snap, volumes_by_id.get(snap["VolumeId"]))


def _outcome(exp: Expected, instance_id: str) -> Mapping[str, Any]:
    result = exp.invocation.result if exp.invocation else None
    instances = result.get("instances", []) if isinstance(result, dict) else []
    return next((o for o in instances if o.get("instance_id") == instance_id), {})


def _check_scripts(
    checks: Checks, exp: Expected, inst: DemoInstance, ssm_log: Sequence[Mapping[str, Any]]
) -> None:
    """Pre script, CreateSnapshots, post script, in that order on the instance (the local
    AWS's order log), each script succeeded, and the report says the set is application
    consistent."""
    label = exp.label
    steps = [
        (e["event"], e.get("command"))
        for e in ssm_log
        if e.get("instance_id") == inst.instance_id
        and e.get("event") in ("SendCommand", "CreateSnapshots")
    ]
    want = [
        ("SendCommand", "pre-script"),
        ("CreateSnapshots", None),
        ("SendCommand", "post-script"),
    ]
    checks.check(
        steps == want,
        f"{label}: {inst.name}: pre script, CreateSnapshots, post script, in that order",
        f"got {steps}",
    )
    ends = [
        e.get("status")
        for e in ssm_log
        if e.get("instance_id") == inst.instance_id and e.get("event") == "InvocationEnded"
    ]
    checks.check(
        ends == ["Success", "Success"], f"{label}: {inst.name}: both scripts succeeded", f"{ends}"
    )
    outcome = _outcome(exp, inst.instance_id)
    reported = (outcome.get("consistency"), [r.get("status") for r in outcome.get("scripts", [])])
    checks.check(
        reported == ("application", ["Success", "Success"]),
        f"{label}: {inst.name}: the report says application consistent",
        f"got {reported}",
    )


def _check_reports(
    checks: Checks,
    expected: Sequence[Expected],
    sets: int,
    reports: Sequence[Report],
    full_reports: Mapping[str, Any],
) -> None:
    runs = [r for r in reports if r.kind == "run"]
    checks.check(
        len(runs) == len(expected), f"{len(expected)} run reports on the topic", f"got {len(runs)}"
    )
    bad_runs = [r.subject for r in runs if r.status != "succeeded"]
    checks.check(not bad_runs, "every run report succeeded", f"{bad_runs}")
    unstored = [
        r.subject
        for r in runs
        if not r.message.get("full_report")
        or full_reports.get(r.message["full_report"]["key"]) != {**r.message, "full_report": None}
    ]
    checks.check(
        not unstored, "every run report is stored in full in the report bucket", f"{unstored}"
    )
    completions = [r for r in reports if r.kind == "completion"]
    checks.check(
        len(completions) == sets,
        f"{sets} completion reports (one per set)",
        f"got {len(completions)}",
    )
    bad = [r.subject for r in completions if r.status != "succeeded"]
    checks.check(not bad, "every set completed successfully", f"{bad}")


def verify(
    checks: Checks,
    *,
    expected: Sequence[Expected],
    fleet: Sequence[DemoInstance],
    snapshots: Sequence[dict[str, Any]],
    reports: Sequence[Report],
    full_reports: Mapping[str, Any],
    invocations: Sequence[Invocation],
    ssm_log: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Check what happened against what the policies say, independently of the handler's code.

    `full_reports` maps each object key of the report bucket to its parsed JSON; `ssm_log` is
    the local AWS's order log of SendCommand and CreateSnapshots calls."""
    errors = [f"{i.source}: {i.error!r}" for i in invocations if i.error is not None]
    checks.check(not errors, "every invocation returned", "; ".join(errors))
    groups = group_sets(snapshots)
    wanted: set[tuple[str, str, str]] = set()
    volumes_by_id = {v.volume_id: v for i in fleet for v in i.volumes}
    for exp in expected:
        trigger_id = exp.trigger_id
        if not checks.check(trigger_id is not None, f"{exp.label}: the run returned its report"):
            continue
        for inst in exp.instances:
            key = (exp.policy["policy"], str(trigger_id), inst.instance_id)
            if not planned_volumes(exp.policy, inst)[0]:
                checks.check(key not in groups, f"{exp.label}: {inst.name}: nothing to snapshot")
                continue
            wanted.add(key)
            _check_set(checks, exp, inst, groups.get(key, []), volumes_by_id)
            if exp.policy.get("scripts"):
                _check_scripts(checks, exp, inst, ssm_log)
    extra = sorted(set(groups) - wanted)
    checks.check(not extra, "no other snapshot sets exist", f"unexpected sets {extra}")
    touched = {s["VolumeId"] for s in snapshots}
    for inst in fleet:
        if not any(inst in e.instances for e in expected):
            hit = {v.volume_id for v in inst.volumes} & touched
            checks.check(not hit, f"{inst.name} (in no policy) has no snapshots", f"{hit}")
    states = {s["State"] for s in snapshots}
    checks.check(states <= {"completed"}, "every snapshot completed", f"states {states}")
    _check_reports(checks, expected, len(wanted), reports, full_reports)
