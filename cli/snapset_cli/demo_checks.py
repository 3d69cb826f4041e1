"""The demo's checks: the snapshot sets and SNS reports against what the policies say.

The tags are spelled out here rather than imported from `snapset`, so a renamed tag in the
product fails the demo instead of passing it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from localaws.lambda_runtime import Invocation
from localaws.report_inbox import Report
from snapset_cli.demo_fleet import (
    TAG_CONSISTENCY,
    TAG_COPIES,
    TAG_COPY_OF,
    TAG_INSTANCE_ID,
    TAG_POLICY,
    TAG_TRIGGER_ID,
    DemoInstance,
    DemoVolume,
    distributes,
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


# --- copies to other regions and shares with other accounts ---------------------------------


@dataclass(frozen=True)
class Distributed:
    """What the local AWS holds of the sets of policies with copies or shares: each source
    snapshot's `createVolumePermission` entries (DescribeSnapshotAttribute) and, per
    destination region, every snapshot there tagged `snapset:copy-of`."""

    permissions: Mapping[str, Sequence[Mapping[str, str]]]
    copies: Mapping[str, Sequence[Mapping[str, Any]]]


def copy_regions(expected: Sequence[Expected]) -> list[str]:
    """The destination regions of the expected runs' policies, in the policies' order."""
    regions: list[str] = []
    for exp in expected:
        for rule in exp.policy.get("copies") or []:
            if rule["region"] not in regions:
                regions.append(rule["region"])
    return regions


def distributed_sources(
    expected: Sequence[Expected], snapshots: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The snapshots of the expected runs' policies that copy or share their sets."""
    names = {exp.policy["policy"] for exp in expected if distributes(exp.policy)}
    return [s for s in snapshots if tag_map(s.get("Tags")).get(TAG_POLICY) in names]


def read_distributed(
    ec2: Any,
    ec2_in: Callable[[str], Any],
    expected: Sequence[Expected],
    snapshots: Sequence[dict[str, Any]],
) -> Distributed:
    """Read the shares of the copying and sharing policies' snapshots at home (`ec2`) and the
    copies in each destination region (`ec2_in(region)` is that region's client)."""
    permissions = {
        s["SnapshotId"]: ec2.describe_snapshot_attribute(
            SnapshotId=s["SnapshotId"], Attribute="createVolumePermission"
        )["CreateVolumePermissions"]
        for s in distributed_sources(expected, snapshots)
    }
    copies: dict[str, list[dict[str, Any]]] = {}
    for region in copy_regions(expected):
        pages = (
            ec2_in(region)
            .get_paginator("describe_snapshots")
            .paginate(OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_COPY_OF]}])
        )
        copies[region] = [snap for page in pages for snap in page["Snapshots"]]
    return Distributed(permissions, copies)


def _reports_of(
    reports: Sequence[Report], kind: str, exp: Expected, inst: DemoInstance
) -> list[Report]:
    return [
        r
        for r in reports
        if r.kind == kind
        and isinstance(r.message, dict)
        and r.message.get("policy") == exp.policy["policy"]
        and r.message.get("instance_id") == inst.instance_id
        and (r.message.get("trigger") or {}).get("id") == exp.trigger_id
    ]


def _check_shares(
    checks: Checks,
    exp: Expected,
    inst: DemoInstance,
    *,
    ids: Sequence[str],
    permissions: Mapping[str, Sequence[Mapping[str, str]]],
    reports: Sequence[Report],
) -> None:
    """Every snapshot of the set readable by exactly the policy's accounts (no one else, not
    public), and the set's completion report naming those shares without an error."""
    label, accounts = exp.label, sorted(exp.policy["share_with_accounts"])
    want = [("UserId", a) for a in accounts]
    wrong = {
        sid: got
        for sid in ids
        if (got := sorted(kv for p in permissions.get(sid, []) for kv in p.items())) != want
    }
    checks.check(
        not wrong,
        f"{label}: {inst.name}'s set is shared with {', '.join(accounts)} (every snapshot)",
        f"createVolumePermission {wrong}",
    )
    completions = _reports_of(reports, "completion", exp, inst)
    reported = [r.message.get("shares") for r in completions]
    want_shares = {"accounts": accounts, "shared": sorted(ids), "errors": []}
    got_shares = [
        {
            "accounts": sorted(r.get("accounts", [])),
            "shared": sorted(r.get("shared", [])),
            "errors": list(r.get("errors", [])),
        }
        if isinstance(r, dict)
        else r
        for r in reported
    ]
    checks.check(
        got_shares == [want_shares],
        f"{label}: {inst.name}'s completion report names its shares",
        f"got {reported}",
    )


def _check_copies(
    checks: Checks,
    exp: Expected,
    inst: DemoInstance,
    *,
    got: Sequence[dict[str, Any]],
    copies: Mapping[str, Sequence[Mapping[str, Any]]],
    reports: Sequence[Report],
) -> None:
    """One completed copy of each snapshot in each of the policy's regions, one copy report
    of the set (succeeded, every region completed), and the set tagged `snapset:copies=done`."""
    label = exp.label
    ids = sorted(s["SnapshotId"] for s in got)
    regions = [rule["region"] for rule in exp.policy["copies"]]
    for region in regions:
        found: dict[str, list[tuple[str, str]]] = {sid: [] for sid in ids}
        for copy in copies.get(region, []):
            source = tag_map(copy.get("Tags")).get(TAG_COPY_OF, "")
            if source in found:
                found[source].append((copy["SnapshotId"], copy["State"]))
        wrong = {sid: made for sid, made in found.items() if [s for _, s in made] != ["completed"]}
        checks.check(
            not wrong,
            f"{label}: {inst.name}: one completed copy of each of its {len(ids)} snapshots "
            f"in {region}",
            f"(copy, state) by source {wrong}",
        )
    sent = _reports_of(reports, "copy", exp, inst)
    checks.check(len(sent) == 1, f"{label}: {inst.name}: one copy report", f"got {len(sent)}")
    outcome = [
        (r.status, {g.get("region"): g.get("status") for g in r.message.get("regions", [])})
        for r in sent
    ]
    want = ("succeeded", dict.fromkeys(regions, "completed"))
    checks.check(
        all(o == want for o in outcome),
        f"{label}: {inst.name}: its copy report succeeded, every region completed",
        f"got {outcome}",
    )
    pending = {
        s["SnapshotId"]: tags.get(TAG_COPIES)
        for s in got
        if (tags := tag_map(s.get("Tags"))).get(TAG_COPIES) != "done"
    }
    checks.check(
        not pending, f"{label}: {inst.name}'s set is tagged {TAG_COPIES}=done", f"{pending}"
    )


def verify_distributed(
    checks: Checks,
    *,
    expected: Sequence[Expected],
    snapshots: Sequence[dict[str, Any]],
    distributed: Distributed,
    reports: Sequence[Report],
) -> None:
    """Check the sets of policies with `share_with_accounts` or `copies` against those
    policies, once their completion events were routed and the copy sweep reported them:
    shared with exactly the policy's accounts, one completed copy of each snapshot per
    destination region, one succeeded copy report per set, the set tagged done; and no
    other copy or copy report exists."""
    groups = group_sets(snapshots)
    copied: set[str] = set()
    copied_sets = 0
    for exp in expected:
        if not distributes(exp.policy) or exp.trigger_id is None:
            continue
        for inst in exp.instances:
            if not planned_volumes(exp.policy, inst)[0]:
                continue
            got = groups.get((exp.policy["policy"], exp.trigger_id, inst.instance_id), [])
            if not checks.check(bool(got), f"{exp.label}: {inst.name} has a set to distribute"):
                continue
            ids = [s["SnapshotId"] for s in got]
            if exp.policy.get("share_with_accounts"):
                _check_shares(
                    checks,
                    exp,
                    inst,
                    ids=ids,
                    permissions=distributed.permissions,
                    reports=reports,
                )
            if exp.policy.get("copies"):
                copied_sets += 1
                copied.update(ids)
                _check_copies(
                    checks, exp, inst, got=got, copies=distributed.copies, reports=reports
                )
    copy_reports = [r for r in reports if r.kind == "copy"]
    checks.check(
        len(copy_reports) == copied_sets,
        f"{copied_sets} copy report(s) on the topic (one per copied set)",
        f"got {len(copy_reports)}",
    )
    for region, made in distributed.copies.items():
        stray = sorted(
            c["SnapshotId"] for c in made if tag_map(c.get("Tags")).get(TAG_COPY_OF) not in copied
        )
        checks.check(not stray, f"no other copies in {region}", f"{stray}")
