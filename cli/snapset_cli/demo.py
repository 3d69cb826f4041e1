"""`snapset demo` / `make demo`: the whole product on a local AWS, checked as it goes.

Synthesizes the stack (app.py with cdk.json's context), deploys it into a fresh local AWS, builds a
small fleet from the configured policies' target tags, fires every policy's schedule, stops an
instance and routes its state-change event through the deployed rules, invokes the function by
hand, completes the snapshots and routes the completion events (which share the sets of a policy
with `share_with_accounts` and start the copies of one with `copies`), then fires the deployed
copy sweep, completes the copies and fires it again. Then it prints the snapshot sets, the
copies and shares and the SNS reports and checks them against what the policies say should have
happened; the exit status is non-zero when anything diverges.
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
from pathlib import Path
from typing import Any

from infra.config import CDK_JSON, TRIGGER_FIELDS, ConfigError, context_policies, read_cdk_context
from localaws.deploy import Deployment, deploy
from localaws.lambda_runtime import Invocation
from localaws.process import LocalAws, LocalAwsError
from localaws.report_inbox import Report, ReportInbox
from localaws.router import Router, instance_state_change_event
from localaws.synth import PROJECT_ROOT, DeployError, synthesize
from snapset_cli.demo_checks import (
    Checks,
    Distributed,
    Expected,
    copy_regions,
    distributed_sources,
    group_sets,
    our_snapshots,
    read_distributed,
    tag_map,
    verify,
    verify_distributed,
)
from snapset_cli.demo_fleet import (
    COPY_SWEEP_KEY,
    EXCLUDE_TAG,
    TAG_CONSISTENCY,
    TAG_COPIES,
    TAG_COPY_OF,
    TAG_INSTANCE_ID,
    DemoInstance,
    DemoVolume,
    Scenario,
    build_fleet,
    tag_value,
)
from snapset_cli.render import Out

# --- main -----------------------------------------------------------------------------------


EXAMPLE_DOCUMENT = "examples/ssm/snapset-fsfreeze.yaml"


def _policies(project_root: Path) -> list[dict[str, Any]]:
    found = context_policies(read_cdk_context(project_root / CDK_JSON))
    if found is None:
        raise ConfigError(f"{project_root / CDK_JSON}: no list of policies")
    return found[0]


def create_script_documents(
    out: Out, ssm: Any, policies: Sequence[Mapping[str, Any]], project_root: Path
) -> None:
    """Create the SSM documents the policies' scripts name (a user does this before deploying),
    from the shipped example (`examples/ssm/snapset-fsfreeze.yaml`)."""
    example = project_root / EXAMPLE_DOCUMENT
    names = sorted({p["scripts"]["document"] for p in policies if p.get("scripts")})
    for name in names:
        if name.startswith(("arn:", "AWS", "Amazon")):
            out.line(f"  (scripts document {name} is not this account's: not created)")
            continue
        ssm.create_document(
            Name=name,
            Content=example.read_text(),
            DocumentType="Command",
            DocumentFormat="YAML",
        )
        out.line(f"  ssm:CreateDocument {name} from {EXAMPLE_DOCUMENT} (the policy's scripts)")


def _policy_body(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as the Lambda's request model sees it (cdk.json adds its triggers)."""
    return {k: v for k, v in policy.items() if k not in TRIGGER_FIELDS}


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
    groups = group_sets(snapshots)
    out.heading(f"Snapshot sets ({len(groups)})")
    rows = []
    for (policy, trigger_id, instance_id), snaps in sorted(
        groups.items(), key=lambda g: (order.get(g[0][:2], 99), by_instance[g[0][2]].name)
    ):
        inst = by_instance[instance_id]
        taken = [volumes[s["VolumeId"]] for s in snaps]
        excluded = [v for v in inst.volumes if v not in taken]
        set_tags = tag_map(snaps[0].get("Tags"))
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
                set_tags.get(TAG_CONSISTENCY, "?"),
                " ".join([*own, "+ volume's + snapset:*"]),
            ]
        )
    out.table(
        ["TRIGGER", "INSTANCE", "SNAPSHOTTED", "EXCLUDED", "CONSISTENCY", "SNAPSHOT TAGS"], rows
    )


def stored_reports(s3: Any, bucket: str) -> dict[str, Any]:
    """Every object of the report bucket, parsed, by key."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = json.loads(body)
    return found


def _copy_cell(made: Sequence[Mapping[str, Any]]) -> str:
    if not made:
        return "-"
    return ", ".join(f"{c['SnapshotId']} {c['State']}" for c in made)


def _copy_report_line(report: Report, names: Mapping[str, str]) -> str:
    message = report.message if isinstance(report.message, dict) else {}
    regions = []
    for entry in message.get("regions", []):
        retention = entry.get("retention") or {}
        kept = (
            f", retention kept {retention.get('kept', 0)} deleted "
            f"{len(retention.get('deleted', []))}"
            if retention
            else ""
        )
        regions.append(
            f"{entry.get('region')} {entry.get('status')} "
            f"({len(entry.get('copies', []))} copies{kept})"
        )
    instance = names.get(message.get("instance_id", ""), message.get("instance_id", "?"))
    return (
        f"  copy report {message.get('policy', '?')} {instance}: {report.status or '?'}: "
        f"{'; '.join(regions) or 'no regions'}"
    )


def print_distributed(
    out: Out,
    *,
    expected: Sequence[Expected],
    snapshots: Sequence[dict[str, Any]],
    distributed: Distributed,
    reports: Sequence[Report],
    fleet: Sequence[DemoInstance],
) -> None:
    """The sets of policies with copies or shares: each source snapshot, who it is shared
    with, its copies-tag and its copy in each destination region; then each copy report."""
    sources = distributed_sources(expected, snapshots)
    if not sources:
        return
    names = {i.instance_id: i.name for i in fleet}
    volumes = {v.volume_id: v.name for i in fleet for v in i.volumes}
    regions = copy_regions(expected)
    out.heading(f"Copies and shares ({len(sources)} source snapshots)")
    rows = []
    for snap in sorted(sources, key=lambda s: volumes.get(s["VolumeId"], s["VolumeId"])):
        tags = tag_map(snap.get("Tags"))
        shared = [
            p.get("UserId") or f"group {p.get('Group')}"
            for p in distributed.permissions.get(snap["SnapshotId"], [])
        ]
        copies = [
            _copy_cell(
                [
                    c
                    for c in distributed.copies.get(region, [])
                    if tag_map(c.get("Tags")).get(TAG_COPY_OF) == snap["SnapshotId"]
                ]
            )
            for region in regions
        ]
        rows.append(
            [
                names.get(tags.get(TAG_INSTANCE_ID, ""), "?"),
                snap["SnapshotId"],
                volumes.get(snap["VolumeId"], snap["VolumeId"]),
                ", ".join(shared) or "-",
                tags.get(TAG_COPIES, "-"),
                *copies,
            ]
        )
    header = ["INSTANCE", "SNAPSHOT", "VOLUME", "SHARED WITH", TAG_COPIES.upper()]
    out.table([*header, *(f"COPY IN {r}" for r in regions)], rows)
    for report in reports:
        if report.kind == "copy":
            out.line(_copy_report_line(report, names))


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
    copy_sweep: dict[str, Any] | None = None  # the deployed copy sweep schedule

    def targets(self, policy: Mapping[str, Any]) -> list[DemoInstance]:
        """The fleet's instances a policy targets, by its instance ids or its target tags."""
        ids = set(policy.get("instance_ids", []))
        wanted = policy.get("target_tags", {})
        return [
            i
            for i in self.scenario.fleet
            if i.instance_id in ids
            or (wanted and all(i.tags.get(k) == tag_value(v) for k, v in wanted.items()))
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
            if COPY_SWEEP_KEY in payload:
                # No policy's run: it has work only once sets complete (`copy`).
                self.copy_sweep = schedule
                continue
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
        names = {i.instance_id: i.name for i in self.scenario.fleet}
        for inv in invocations:
            result = inv.result if isinstance(inv.result, dict) else {}
            for report in result.get("reports", []):
                if shares := report.get("shares"):
                    self.out.line(
                        f"    {report.get('policy')}: set of "
                        f"{names.get(report.get('instance_id'), report.get('instance_id'))} "
                        f"shared with {', '.join(shares.get('accounts', []))} "
                        f"({len(shares.get('shared', []))} snapshots, "
                        f"{len(shares.get('errors', []))} errors)"
                    )

    def _in_flight(self) -> str:
        pending: dict[str, int] = defaultdict(int)
        for copy in self.aws.copies_state()["pending"]:
            pending[copy["region"]] += 1
        return ", ".join(f"{n} in {region}" for region, n in pending.items()) or "none"

    def _sweep(self, schedule: Mapping[str, Any], when: str) -> None:
        timezone = schedule.get("ScheduleExpressionTimezone", "UTC")
        self.out.line(f"  copy sweep ({schedule['ScheduleExpression']} {timezone}) fires {when}")
        inv = self.router.fire_schedule(
            schedule["Name"], group=schedule.get("GroupName", "default")
        )
        result = inv.result if isinstance(inv.result, dict) else {}
        state = self.out.good("ok") if inv.ok else self.out.bad(f"raised {inv.error!r}")
        started = sum((result.get("started") or {}).values())
        queued = sum((result.get("queued") or {}).values())
        self.out.line(
            f"    -> {state}: {started} copies started, {queued} queued, "
            f"{result.get('reported', 0)} copy report(s); in flight: {self._in_flight()} "
            f"({inv.seconds:.2f} s)"
        )

    def copy(self) -> None:
        """The deployed copy sweep while the copies started by the completion events are in
        flight (nothing to report), then once they completed (each set reported)."""
        schedule = self.copy_sweep
        if schedule is None:
            self.out.line("  (no configured policy copies its sets: no copy sweep)")
            return
        self.out.line(f"  copies the completion events started, in flight: {self._in_flight()}")
        self._sweep(schedule, "now")
        completed = self.aws.complete_copies()
        self.out.line(f"  EBS completes {len(completed)} copies in their regions")
        self._sweep(schedule, "again")


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


def print_checks(out: Out, checks: Checks, *, copies: bool) -> None:
    out.heading("4. Checks")
    for failure in checks.failed:
        out.line(f"  {out.bad('FAIL')} {failure}")
    if checks.failed:
        out.line(f"  {len(checks.passed)} passed, {out.bad(f'{len(checks.failed)} failed')}")
        return
    text = (
        f"all {len(checks.passed)} checks passed: one set per instance per trigger with "
        "exactly the planned volumes, excluded volumes absent, the volume's, the policy's "
        "and the managed tags on every snapshot, pre script -> CreateSnapshots -> post script "
        "on the application-consistent instance, "
        + (
            "the copying policy's set shared with its accounts and copied once per snapshot "
            "to each of its regions, reported once and tagged done, "
            if copies
            else ""
        )
        + "nothing outside the policies, every report on the topic"
    )
    lines = textwrap.wrap(text, 96)
    out.line(f"  {out.good('ok')} {lines[0]}")
    for line in lines[1:]:
        out.line(f"     {line}")


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
        create_script_documents(out, aws.client("ssm"), _policies(project_root), project_root)
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
            demo.copy()
        finally:
            router.close()
        snapshots = our_snapshots(ec2)
        distributed = read_distributed(
            ec2, lambda region: aws.client("ec2", region_name=region), demo.expected, snapshots
        )
        ssm_log = aws.ssm_log()
        reports = inbox.drain()
        full_reports = stored_reports(aws.client("s3"), deployment.outputs["ReportBucket"])
    print_sets(out, demo.expected, snapshots, scenario.fleet)
    print_distributed(
        out,
        expected=demo.expected,
        snapshots=snapshots,
        distributed=distributed,
        reports=reports,
        fleet=scenario.fleet,
    )
    print_reports(out, reports)
    checks = Checks(out)
    verify(
        checks,
        expected=demo.expected,
        fleet=scenario.fleet,
        snapshots=snapshots,
        reports=reports,
        full_reports=full_reports,
        invocations=router.invocations,
        ssm_log=ssm_log,
    )
    verify_distributed(
        checks,
        expected=demo.expected,
        snapshots=snapshots,
        distributed=distributed,
        reports=reports,
    )
    print_checks(out, checks, copies=bool(copy_regions(demo.expected)))
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
    except (DeployError, LocalAwsError, ConfigError) as exc:
        out.line(f"snapset demo: {exc}")
        return 1
    except KeyboardInterrupt:
        out.line("snapset demo: interrupted")
        return 130
