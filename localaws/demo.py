"""`snapset demo` / `make demo`: the whole product on a local AWS, checked as it goes.

Synthesizes the stack (app.py with cdk.json's context), deploys it into a fresh local AWS, builds a
small fleet from the configured policies' target tags, fires every policy's schedule, stops an
instance and routes its state-change event through the deployed rules, invokes the function by
hand, completes the snapshots and routes the completion events. Then it prints the snapshot sets
and the SNS reports and checks them against what the policies say should have happened;
the exit status is non-zero when anything diverges.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from localaws.deploy import Deployment, deploy
from localaws.fleet import DataVolume, launch_instance
from localaws.lambda_runtime import Invocation
from localaws.process import LocalAws, LocalAwsError
from localaws.report_inbox import Report, ReportInbox
from localaws.router import Router, instance_state_change_event
from localaws.synth import PROJECT_ROOT, DeployError, synthesize

TAG_POLICY = "snapset:policy"
TAG_TRIGGER_ID = "snapset:trigger-id"
TAG_INSTANCE_ID = "snapset:instance-id"
EXCLUDE_TAG = ("Snapset", "exclude")
MANUAL_POLICY = "manual-db"


# --- output ---------------------------------------------------------------------------------


class Out:
    """Plain text; bold and colour only on a terminal (and never with NO_COLOR)."""

    def __init__(self, stream: TextIO, colour: bool | None = None) -> None:
        self.stream = stream
        if colour is None:
            colour = (
                stream.isatty()
                and "NO_COLOR" not in os.environ
                and os.environ.get("TERM", "") != "dumb"
            )
        self.colour = colour

    def _style(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return self._style(text, "1")

    def good(self, text: str) -> str:
        return self._style(text, "32")

    def bad(self, text: str) -> str:
        return self._style(text, "31;1")

    def dim(self, text: str) -> str:
        return self._style(text, "2")

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def heading(self, text: str) -> None:
        self.line()
        self.line(self.bold(text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 2) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        pad = " " * indent

        def fmt(cells: Sequence[str]) -> str:
            return pad + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))

        self.line(self.bold(fmt(header).rstrip()))
        for row in rows:
            self.line(fmt(row).rstrip())


# --- the fleet ------------------------------------------------------------------------------


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


def _tag_value(patterns: Sequence[str]) -> str:
    """A concrete value matching the first of a policy's tag patterns (EC2 wildcards * and ?)."""
    return patterns[0].replace("*", "x").replace("?", "x")


def _target_tags(policy: Mapping[str, Any]) -> dict[str, str]:
    return {k: _tag_value(v) for k, v in policy.get("target_tags", {}).items()}


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


def build_fleet(ec2: Any, policies: Sequence[Mapping[str, Any]]) -> Scenario:
    """Six instances, tagged from the configured policies' target tags.

    web-1, web-2, batch-1 (stopped) and api-1 (root volume only) carry the scheduled policy's
    target tags, web-2 also the stop policy's; db-1 is snapshotted by hand with a data volume
    excluded by tag; dev-1 looks like a target but matches no policy.
    """
    scheduled = next((dict(p) for p in policies if p.get("schedules")), None)
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
        web1_data.append(("tmp", {k: _tag_value(v) for k, v in sched_excl.items()}))
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


# --- expectations and checks ----------------------------------------------------------------


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


def _tags(raw: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw or []}


def our_snapshots(ec2: Any) -> list[dict[str, Any]]:
    snapshots = []
    for page in ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_POLICY]}]
    ):
        snapshots += page["Snapshots"]
    return snapshots


def _group(snapshots: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Snapshots by (policy, trigger id, instance id): one group per snapshot set."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for snap in snapshots:
        tags = _tags(snap.get("Tags"))
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
    tags = _tags(snap.get("Tags"))
    managed = {
        TAG_POLICY: exp.policy["policy"],
        TAG_TRIGGER_ID: exp.trigger_id,
        TAG_INSTANCE_ID: inst.instance_id,
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


def _check_reports(
    checks: Checks, expected: Sequence[Expected], sets: int, reports: Sequence[Report]
) -> None:
    runs = [r for r in reports if r.kind == "run"]
    checks.check(
        len(runs) == len(expected), f"{len(expected)} run reports on the topic", f"got {len(runs)}"
    )
    bad_runs = [r.subject for r in runs if r.status != "succeeded"]
    checks.check(not bad_runs, "every run report succeeded", f"{bad_runs}")
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
    invocations: Sequence[Invocation],
) -> None:
    """Check what happened against what the policies say, independently of the handler's code."""
    errors = [f"{i.source}: {i.error!r}" for i in invocations if i.error is not None]
    checks.check(not errors, "every invocation returned", "; ".join(errors))
    groups = _group(snapshots)
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
    extra = sorted(set(groups) - wanted)
    checks.check(not extra, "no other snapshot sets exist", f"unexpected sets {extra}")
    touched = {s["VolumeId"] for s in snapshots}
    for inst in fleet:
        if not any(inst in e.instances for e in expected):
            hit = {v.volume_id for v in inst.volumes} & touched
            checks.check(not hit, f"{inst.name} (in no policy) has no snapshots", f"{hit}")
    states = {s["State"] for s in snapshots}
    checks.check(states <= {"completed"}, "every snapshot completed", f"states {states}")
    _check_reports(checks, expected, len(wanted), reports)


# --- main -----------------------------------------------------------------------------------


def _policies(project_root: Path) -> list[dict[str, Any]]:
    context = json.loads((project_root / "cdk.json").read_text())["context"]
    policies: list[dict[str, Any]] = context["snapset"]["policies"]
    return policies


def _policy_body(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as the Lambda's request model sees it (cdk.json adds its triggers)."""
    return {k: v for k, v in policy.items() if k not in ("schedules", "on_instance_states")}


def _volume_names(volumes: Sequence[DemoVolume]) -> str:
    return ", ".join(f"{v.name}{' (boot)' if v.is_root else ''}" for v in volumes) or "-"


def print_fleet(out: Out, fleet: Sequence[DemoInstance]) -> None:
    out.heading(f"Fleet ({len(fleet)} instances)")
    rows = [
        [
            i.name,
            i.instance_id,
            i.state,
            " ".join(f"{k}={v}" for k, v in i.tags.items() if k != "Name") or "-",
            "root" + (f" + {len(i.volumes) - 1} data" if len(i.volumes) > 1 else " only"),
            i.role,
        ]
        for i in fleet
    ]
    out.table(["NAME", "INSTANCE", "STATE", "TAGS", "VOLUMES", "SHOWS"], rows)


def print_sets(
    out: Out,
    expected: Sequence[Expected],
    snapshots: Sequence[dict[str, Any]],
    fleet: Sequence[DemoInstance],
) -> None:
    by_instance = {i.instance_id: i for i in fleet}
    volumes = {v.volume_id: v for i in fleet for v in i.volumes}
    order = {(e.policy["policy"], e.trigger_id): n for n, e in enumerate(expected)}
    labels = {(e.policy["policy"], e.trigger_id): e.label for e in expected}
    groups = _group(snapshots)
    out.heading(f"Snapshot sets ({len(groups)})")
    rows = []
    for (policy, trigger_id, instance_id), snaps in sorted(
        groups.items(), key=lambda g: (order.get(g[0][:2], 99), by_instance[g[0][2]].name)
    ):
        inst = by_instance[instance_id]
        taken = [volumes[s["VolumeId"]] for s in snaps]
        excluded = [v for v in inst.volumes if v not in taken]
        set_tags = _tags(snaps[0].get("Tags"))
        copied = taken[0].tags
        own = sorted(
            f"{k}={v}"
            for k, v in set_tags.items()
            if not k.startswith("snapset:") and copied.get(k) != v
        )
        rows.append(
            [
                labels.get((policy, trigger_id), policy),
                inst.name,
                _volume_names(sorted(taken, key=lambda v: (not v.is_root, v.name))),
                _volume_names(excluded),
                " ".join([*own, "+ volume's + snapset:*"]),
            ]
        )
    out.table(["TRIGGER", "INSTANCE", "SNAPSHOTTED", "EXCLUDED", "SNAPSHOT TAGS"], rows)


def print_reports(out: Out, reports: Sequence[Report]) -> None:
    out.heading(f"SNS reports ({len(reports)}, read through an SQS subscription)")
    out.table(
        ["KIND", "STATUS", "SUBJECT"],
        [[r.kind or "?", r.status or "?", r.subject] for r in reports],
    )


def print_substitutions(out: Out, deployment: Deployment, verbose: bool) -> None:
    out.line(f"  what the local CloudFormation did not do ({len(deployment.substitutions)}):")
    grouped: dict[tuple[str, str, str], int] = defaultdict(int)
    for sub in deployment.substitutions:
        grouped[(sub.action, sub.resource_type, sub.subject)] += 1
    for (action, rtype, subject), count in grouped.items():
        times = f" x{count}" if count > 1 else ""
        out.line(f"    {action:<11} {rtype}{times}: {subject}")
    if verbose:
        for sub in deployment.substitutions:
            out.line(out.dim(f"      {sub}"))
    else:
        out.line(out.dim("    (--verbose for the details)"))


@dataclass
class Demo:
    """The running demo: the local AWS, the deployed stack and the fleet."""

    out: Out
    aws: LocalAws
    deployment: Deployment
    scenario: Scenario
    router: Router
    ec2: Any
    expected: list[Expected] = field(default_factory=list)

    def targets(self, policy: Mapping[str, Any]) -> list[DemoInstance]:
        """The fleet's instances a policy targets, by its instance ids or its target tags."""
        ids = set(policy.get("instance_ids", []))
        wanted = policy.get("target_tags", {})
        return [
            i
            for i in self.scenario.fleet
            if i.instance_id in ids
            or (wanted and all(i.tags.get(k) == _tag_value(v) for k, v in wanted.items()))
        ]

    def show(self, inv: Invocation) -> None:
        out = self.out
        result = inv.result if isinstance(inv.result, dict) else {}
        summary = result.get("summary", {})
        state = out.good("ok") if inv.ok else out.bad(f"raised {inv.error!r}")
        out.line(
            f"    -> {state}: {result.get('status', '?')}, {summary.get('started', 0)} started, "
            f"{summary.get('skipped', 0)} skipped, {summary.get('failed', 0)} failed "
            f"({inv.seconds:.2f} s)"
        )

    def fire_schedules(self) -> None:
        for schedule in self.router.schedules():
            payload = json.loads(schedule["Target"]["Input"])
            policy = {k: v for k, v in payload.items() if k != "schedule"}
            timezone = schedule.get("ScheduleExpressionTimezone", "UTC")
            self.out.line(
                f"  schedule {policy['policy']} ({schedule['ScheduleExpression']} {timezone}) "
                "fires now"
            )
            inv = self.router.fire_schedule(
                schedule["Name"], group=schedule.get("GroupName", "default")
            )
            self.show(inv)
            label = f"schedule {policy['policy']}"
            self.expected.append(Expected(label, policy, "schedule", self.targets(policy), inv))

    def stop_instance(self) -> None:
        target, policy = self.scenario.stop_target, self.scenario.event_policy
        if target is None or policy is None:
            self.out.line("  (no configured policy snapshots on 'stopped': no instance event)")
            return
        self.ec2.stop_instances(InstanceIds=[target.instance_id])
        event = instance_state_change_event(
            target.instance_id,
            "stopped",
            account=self.deployment.res.account,
            region=self.aws.region,
        )
        matched = self.router.matching_targets(event)
        self.out.line(
            f"  ec2:StopInstances {target.name}, then its 'EC2 Instance State-change "
            f"Notification' (stopped): matches {len(matched)} rule(s)"
        )
        invocations = self.router.route_event(event)
        for delivered in invocations:
            self.show(delivered)
        body = _policy_body(policy)
        inv = invocations[0] if len(invocations) == 1 else None
        self.expected.append(
            Expected(f"stop {body['policy']}", body, "instance_event", [target], inv)
        )

    def invoke_by_hand(self) -> None:
        payload = self.scenario.manual_payload
        target = self.scenario.manual_target
        skip_key, skip_value = EXCLUDE_TAG
        self.out.line(
            f"  lambda:Invoke {payload['policy']} for {target.name}, excluding data volumes "
            f"tagged {skip_key}={skip_value}"
        )
        inv = self.router.invoke(payload)
        self.show(inv)
        policy = {k: v for k, v in payload.items() if k != "request_id"}
        self.expected.append(
            Expected(f"manual {payload['policy']}", policy, "manual", [target], inv)
        )

    def complete(self) -> None:
        completed = self.aws.complete_snapshots()
        self.out.line(f"  EBS completes {len(completed)} snapshots; their events are routed:")
        invocations = self.router.route_emitted_events()
        reports = sum(
            len(i.result.get("reports", [])) for i in invocations if isinstance(i.result, dict)
        )
        self.out.line(
            f"    -> {len(invocations)} event(s) to the completion rule, "
            f"{reports} completion report(s)"
        )


@contextlib.contextmanager
def _server_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Environment for the server process only (it inherits ours when it starts).

    moto's ~1300 public AMIs and their snapshots make every DescribeSnapshots ~30x slower;
    Snapset never uses them. A value already set by the caller wins.
    """
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run(out: Out, verbose: bool, project_root: Path) -> int:
    started = time.monotonic()
    out.line(out.bold("Snapset demo: the synthesized stack on a local AWS"))
    out.line(out.dim("(no AWS account: a moto server with localaws's patches)"))
    out.heading("1. Synthesize")
    synth = synthesize(project_root)
    out.line(
        f"  app.py with cdk.json's context -> stack {synth.stack_name}: "
        f"{len(synth.template['Resources'])} resources, {len(synth.assets)} file assets "
        f"({synth.seconds:.1f} s)"
    )
    aws = LocalAws(snapshot_delay=None)
    with _server_environment({"MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}):
        aws.start()  # stops the server itself if start-up fails or is interrupted
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(aws.stop)
        out.heading("2. Deploy")
        out.line(f"  local AWS at {aws.endpoint_url} (pid {aws.pid})")
        deployment = deploy(aws, synth)
        out.line(
            f"  CloudFormation CreateStack {deployment.stack_name}: CREATE_COMPLETE "
            f"({deployment.seconds:.1f} s, bootstrap parameter and assets staged)"
        )
        print_substitutions(out, deployment, verbose)
        ec2 = aws.client("ec2")
        scenario = build_fleet(ec2, _policies(project_root))
        print_fleet(out, scenario.fleet)
        inbox = ReportInbox(aws, deployment.topic_arn)
        router = Router(aws, deployment, log_stream=sys.stderr if verbose else None)
        demo = Demo(out, aws, deployment, scenario, router, ec2)
        try:
            out.heading("3. Triggers")
            demo.fire_schedules()
            demo.stop_instance()
            demo.invoke_by_hand()
            demo.complete()
        finally:
            router.close()
        snapshots = our_snapshots(ec2)
        reports = inbox.drain()
    print_sets(out, demo.expected, snapshots, scenario.fleet)
    print_reports(out, reports)
    checks = Checks(out)
    verify(
        checks,
        expected=demo.expected,
        fleet=scenario.fleet,
        snapshots=snapshots,
        reports=reports,
        invocations=router.invocations,
    )
    out.heading("4. Checks")
    for failure in checks.failed:
        out.line(f"  {out.bad('FAIL')} {failure}")
    if checks.failed:
        out.line(f"  {len(checks.passed)} passed, {out.bad(f'{len(checks.failed)} failed')}")
    else:
        text = (
            f"all {len(checks.passed)} checks passed: one set per instance per trigger with "
            "exactly the planned volumes, excluded volumes absent, the volume's, the policy's "
            "and the managed tags on every snapshot, nothing outside the policies, every report "
            "on the topic"
        )
        lines = textwrap.wrap(text, 96)
        out.line(f"  {out.good('ok')} {lines[0]}")
        for line in lines[1:]:
            out.line(f"     {line}")
    out.line()
    out.line(out.dim(f"Done in {time.monotonic() - started:.1f} s; the local AWS is stopped."))
    return 1 if checks.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="snapset demo",
        description="Deploy the synthesized stack into a local AWS and exercise it, checked.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="list every substitution, and echo the function's logs to stderr",
    )
    parser.add_argument("--no-color", action="store_true", help="no colour, even on a terminal")
    args = parser.parse_args(list(argv) if argv is not None else None)
    out = Out(sys.stdout, colour=False if args.no_color else None)
    try:
        return run(out, args.verbose, PROJECT_ROOT)
    except (DeployError, LocalAwsError) as exc:
        out.line(f"snapset demo: {exc}")
        return 1
    except KeyboardInterrupt:
        out.line("snapset demo: interrupted")
        return 130
