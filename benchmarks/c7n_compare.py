#!/usr/bin/env python3
"""Snapset vs Cloud Custodian (c7n): wall time and EC2 calls of one crash-consistent snapshot
set per instance, side by side on the same local AWS server.

Method. One localaws server (moto 5.2.5, started without moto's public AMIs,
``MOTO_EC2_LOAD_DEFAULT_AMIS=false``, completion delay off: snapshots stay ``pending``, which
neither tool waits for) serves both tools. For each fleet size N (``--sizes``) and each run,
the server is reset and the same fleet is launched again: N running instances tagged
``Backup=nightly`` (RunInstances in chunks, MinCount=MaxCount, with a root volume at /dev/sda1
and a data volume at /dev/sdf from BlockDeviceMappings; the volumes carry a ``fleet`` tag, so
both tools have a volume tag to copy). Then one tool runs, as a subprocess, against the
server's endpoint (``AWS_ENDPOINT_URL``, dummy credentials, the region in the environment,
no AWS config files); its wall time is the subprocess's, start-up included. Runs alternate
(Snapset, c7n, Snapset, ...), ``--repeat`` times each (default 3); the table shows medians.

* Snapset: ``snapset run --payload P --no-progress`` (the CLI's code path, its default
  ``--max-workers`` 8), P a manual payload targeting ``Backup=nightly`` (``target_tags``),
  CreateSnapshots with ``CopyTagsFromSource=volume`` (the policy default) and Snapset's
  ``snapset:*`` tags (policy, trigger id, instance id, consistency), no retention, no scripts,
  no SNS topic. P carries no ``request_id``, so the CLI runs under a trigger id made for this
  run, which no set can carry yet: a first delivery, with no DescribeSnapshots look-up (a
  payload with its own ``request_id`` would be treated as a possible redelivery). The CLI paces
  CreateSnapshots to ``--ec2-share`` of EC2's real bucket (burst 100, refill 5/s; share 0.5 by
  default, 0.01 to 1) and has no option that turns pacing off. c7n does not pace, so this
  benchmark runs the CLI's own ``main`` (``python -c``, the console script's start-up) with
  ``build_engine(..., ec2_api_share=None)``, the engine's unpaced mode that
  ``benchmarks/api_calls.py`` uses too; nothing else of the CLI is changed.
  ``--snapset-paced`` adds a row for the CLI exactly as shipped (``--ec2-share 1``), whose
  wall cannot be below (N - 100) / 5 s.
* Cloud Custodian: c7n (pinned, ``C7N_VERSION``) in its own venv, ``.bench/c7n-venv``
  (git-ignored; made with ``python -m venv`` and ``pip install`` on first use, reused after;
  never a project dependency), ``custodian run -s OUT -r REGION --cache-period 0
  policy.yml`` with ``resource: ec2``, ``filters: [{"tag:Backup": "nightly"}]``,
  ``actions: [{type: snapshot}]``. c7n lists every instance (DescribeInstances, no server-side
  filter), filters the tag itself, calls STS GetCallerIdentity once, and its snapshot action
  (``c7n/resources/ec2.py``, ``Snapshot``) calls CreateSnapshots once per instance
  (``InstanceSpecification={InstanceId, ExcludeBootVolume: false}``,
  ``CopyTagsFromSource=volume`` by default) from 2 threads, through c7n's retry on
  throttling; it adds no tags of its own (only ``copy-tags`` does). ``--cache-period 0``: no
  resource cache from an earlier run.
* The server is unthrottled (no token buckets) and adds no latency unless ``--latency-ms``
  says so (a delay slept before every EC2 call, concurrent calls sleep concurrently): by
  default the figures are the tools' own cost plus the server's, not EC2's rate limits.
* EC2 calls are counted by the server (localaws's fault injector with count-only rules, one
  per API either tool calls, ``ec2:*``, ``sts:*`` and ``*`` for the rest), per run; calls per
  instance are the median run's. After each run the server's snapshots are checked: a set is
  an instance whose two volumes have exactly one snapshot each; a run that made fewer than N
  sets (or extra snapshots) is shown as such, with its exit code, and the benchmark exits 1.
* "net ms/inst" takes each tool's start-up out: (median wall - median wall on an empty
  server) / N.
* "CPU s tool/server": median CPU seconds (user + system) of the tool's process and of the
  server's during the runs (Linux ``/proc``; "-" elsewhere). Wall on this shared 2-core machine
  varies by 10-20% from run to run; CPU varies much less and says whose work a gap is.

Caveats. Both tools talk to one moto server process (its handlers serialised by the GIL) on
the same machine (2 cores here, shared with other work: repeat runs vary by tens of percent),
so the figures are mostly the server's CPU per call, and a tool's concurrency buys nothing
against it: this setting favours the tool that makes fewer calls and hides round-trip
latency, where Snapset's 8 workers count against c7n's 2 (with ``--latency-ms 50`` at
N = 200, one run, Snapset's wall was 0.84x c7n's).
moto's costs are not EC2's: moto's generic XML serializer charged the server for every tag in
a CreateSnapshots answer, so Snapset's four identity tags per snapshot cost it time EC2 does
not charge in any measurable way; localaws now writes that answer directly (in-process at
2,000 instances, client and server together, 1.6 ms a call with Snapset's tags and 1.5 ms
without, against 2.1-2.9 and 1.9-2.2 ms through moto's serializer). Parsing and storing the
tags still costs the server 5-7% more CPU for Snapset's calls than for c7n's.
Both tools pay a new TCP connection per call: the server (werkzeug) closes each one.
DescribeInstances costs moto about 2.4 ms per instance (its serializer), a cost both tools pay.
Snapset's report (per-instance outcomes, JSON on stdout) and c7n's resources.json and
metadata in its output directory are each tool's own work and are in their figures.

    .venv/bin/python benchmarks/c7n_compare.py [--sizes 100,1000,3000] [--repeat 3]
        [--snapset-paced] [--latency-ms 0] [--chunk 500]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localaws import FaultRule, LocalAws  # noqa: E402
from localaws.fleet import DEFAULT_IMAGE_ID, MOTO_ACCOUNT  # noqa: E402

REGION = "us-east-1"
C7N_VERSION = "0.9.53"
C7N_VENV = ROOT / ".bench" / "c7n-venv"
# botocore reads AWS_ENDPOINT_URL from boto3 1.28 / botocore 1.31 on.
MIN_BOTOCORE = (1, 31)
TAG_KEY, TAG_VALUE = "Backup", "nightly"
# `snapset` (the console script's `main`) with the engine unpaced (`ec2_api_share=None`),
# nothing else changed: the CLI has no option for it (`--ec2-share` is 0.01 to 1). Run with
# `python -c`, so its start-up is the CLI's own (this module imports localaws).
UNPACED_CLI = """\
import sys
from snapset.run import build_engine
from snapset_cli import main as cli


def unpaced(*args, **kwargs):
    kwargs["ec2_api_share"] = None
    return build_engine(*args, **kwargs)


cli.build_engine = unpaced  # the name cmd_run calls
sys.exit(cli.main(sys.argv[1:]))
"""
# Count-only rules (no fault): every EC2 API either tool was seen to call, then the totals.
COUNTED_APIS = (
    "DescribeInstances",
    "DescribeSnapshots",
    "CreateSnapshots",
    "CreateSnapshot",
    "CreateTags",
    "DescribeVolumes",
    "DescribeImages",
    "DescribeTags",
    "DescribeAccountAttributes",
    "DescribeRegions",
)
SNAPSET = "snapset"
SNAPSET_PACED = "snapset (paced)"
C7N = "c7n"


# --- the c7n venv --------------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed_versions(venv: Path) -> dict[str, str] | None:
    python = _venv_python(venv)
    if not python.exists():
        return None
    probe = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({p: m.version(p) for p in ('c7n', 'boto3', 'botocore')}))"
    )
    done = subprocess.run(  # noqa: S603 - the venv's own interpreter
        [str(python), "-c", probe], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def ensure_c7n(venv: Path = C7N_VENV) -> dict[str, str]:
    """c7n==C7N_VERSION in its own venv (made and installed once, reused after)."""
    versions = _installed_versions(venv)
    if versions is None or versions.get("c7n") != C7N_VERSION:
        print(f"installing c7n=={C7N_VERSION} into {venv.relative_to(ROOT)} ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        pip = [str(_venv_python(venv)), "-m", "pip", "--quiet", "--disable-pip-version-check"]
        for step in (
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [*pip, "install", f"c7n=={C7N_VERSION}"],
        ):
            done = subprocess.run(step, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step)}: exit {done.returncode}\n{done.stderr}")
        versions = _installed_versions(venv)
        if versions is None or versions.get("c7n") != C7N_VERSION:
            raise RuntimeError(f"c7n=={C7N_VERSION} did not install into {venv}")
    botocore = tuple(int(p) for p in versions["botocore"].split(".")[:2])
    if botocore < MIN_BOTOCORE:
        raise RuntimeError(
            f"c7n's venv has botocore {versions['botocore']}, which ignores AWS_ENDPOINT_URL"
        )
    return versions


# --- the fleet -----------------------------------------------------------------------------


@dataclass
class Fleet:
    volume_instance: dict[str, str] = field(default_factory=dict)  # volume id -> instance id
    instances: int = 0
    launch_s: float = 0.0


def launch_fleet(ec2: Any, n: int, chunk: int) -> Fleet:
    """N running instances tagged Backup=nightly, each with a root and a data volume."""
    fleet = Fleet()
    started = time.perf_counter()
    while fleet.instances < n:
        count = min(chunk, n - fleet.instances)
        reservation = ec2.run_instances(
            ImageId=DEFAULT_IMAGE_ID,
            MinCount=count,
            MaxCount=count,
            InstanceType="t3.micro",
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}},
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 10}},
            ],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": TAG_KEY, "Value": TAG_VALUE}]},
                {"ResourceType": "volume", "Tags": [{"Key": "fleet", "Value": "bench"}]},
            ],
        )
        for raw in reservation["Instances"]:
            volumes = [m["Ebs"]["VolumeId"] for m in raw["BlockDeviceMappings"]]
            if len(volumes) != 2:
                raise RuntimeError(f"{raw['InstanceId']} has volumes {volumes}, not 2")
            for volume_id in volumes:
                fleet.volume_instance[volume_id] = raw["InstanceId"]
        fleet.instances += len(reservation["Instances"])
    fleet.launch_s = time.perf_counter() - started
    return fleet


@dataclass(frozen=True)
class Made:
    snapshots: int
    sets: int  # instances whose two volumes have exactly one snapshot each
    extra: int  # snapshots beyond one per volume, or of volumes not in the fleet


def count_sets(ec2: Any, fleet: Fleet) -> Made:
    per_volume: Counter[str] = Counter()
    paginator = ec2.get_paginator("describe_snapshots")
    pages = paginator.paginate(
        OwnerIds=["self"], Filters=[{"Name": "owner-id", "Values": [MOTO_ACCOUNT]}]
    )
    for page in pages:
        per_volume.update(s["VolumeId"] for s in page["Snapshots"])
    snapshots = sum(per_volume.values())
    per_instance: Counter[str] = Counter(
        fleet.volume_instance[v] for v, k in per_volume.items() if k == 1
    )
    sets = sum(1 for k in per_instance.values() if k == 2)
    extra = sum(k - 1 if v in fleet.volume_instance else k for v, k in per_volume.items() if k >= 1)
    return Made(snapshots, sets, extra)


# --- the tools -----------------------------------------------------------------------------


def tool_environment(endpoint: str) -> dict[str, str]:
    """This process's environment without any AWS setting, plus the local AWS's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SNAPSET_"))}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's dummy credentials
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def snapset_payload() -> dict[str, Any]:
    return {"policy": "bench-nightly", "target_tags": {TAG_KEY: [TAG_VALUE]}}


def c7n_policy() -> dict[str, Any]:
    return {
        "policies": [
            {
                "name": "bench-nightly",
                "resource": "ec2",
                "filters": [{f"tag:{TAG_KEY}": TAG_VALUE}],
                "actions": [{"type": "snapshot"}],
            }
        ]
    }


def tool_command(tool: str, work: Path) -> list[str]:
    if tool == C7N:
        policy = work / "policy.yml"
        if not policy.exists():
            # JSON is YAML: no YAML writer needed here.
            policy.write_text(json.dumps(c7n_policy(), indent=2) + "\n")
        return [
            str(C7N_VENV / "bin" / "custodian"),
            "run",
            "-s",
            str(work / "c7n-out"),
            "-r",
            REGION,
            "-f",
            str(work / "c7n.cache"),
            "--cache-period",
            "0",
            str(policy),
        ]
    payload = work / "payload.json"
    if not payload.exists():
        payload.write_text(json.dumps(snapset_payload(), indent=2) + "\n")
    run = ["run", "--payload", str(payload), "--no-progress"]
    if tool == SNAPSET_PACED:
        return [str(ROOT / ".venv" / "bin" / "snapset"), *run, "--ec2-share", "1"]
    return [sys.executable, "-c", UNPACED_CLI, *run]


@dataclass(frozen=True)
class Run:
    tool: str
    n: int
    wall_s: float
    exit_code: int
    made: Made
    calls: Mapping[str, int]  # by API; "EC2 total", "other services"
    launch_s: float
    note: str = ""
    tool_cpu_s: float = 0.0  # the tool's process, user + system
    server_cpu_s: float | None = None  # the server's, user + system (None: not measurable)

    @property
    def ok(self) -> bool:
        return self.made.sets == self.n and self.made.extra == 0


def counting_rules(latency_ms: float = 0.0) -> list[FaultRule]:
    """Rules that only count (and, with `latency_ms`, delay every EC2 call that much)."""
    return [
        *(FaultRule(f"ec2:{api}") for api in COUNTED_APIS),
        FaultRule("ec2:*", latency_ms=latency_ms),
        FaultRule("sts:*"),
        FaultRule("*"),
    ]


def read_counts(stats: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    by_rule = {str(s["api"]): int(s["calls"]) for s in stats}
    calls = {api: by_rule[f"ec2:{api}"] for api in COUNTED_APIS if by_rule[f"ec2:{api}"]}
    ec2_total = by_rule["ec2:*"]
    if (other_ec2 := ec2_total - sum(calls.values())) > 0:
        calls["other EC2"] = other_ec2
    calls["EC2 total"] = ec2_total
    calls["STS"] = by_rule["sts:*"]
    calls["other services"] = by_rule["*"] - ec2_total - by_rule["sts:*"]
    return calls


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # fields after the command name, which is in parentheses and may hold spaces
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool(
    aws: LocalAws, tool: str, n: int, work: Path, *, chunk: int, latency_ms: float = 0.0
) -> Run:
    """Reset the server, launch the fleet, run `tool` once against it and check what it made."""
    aws.reset()
    ec2 = aws.client("ec2")
    fleet = launch_fleet(ec2, n, chunk)
    aws.set_faults(*counting_rules(latency_ms))  # counts from zero (and delays, if asked)
    command = tool_command(tool, work)
    server_cpu, tool_cpu = process_cpu_seconds(aws.pid), children_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own commands
        command,
        env=tool_environment(aws.endpoint_url),
        capture_output=True,
        text=True,
        cwd=work,
        check=False,
    )
    wall = time.perf_counter() - started
    tool_cpu = children_cpu_seconds() - tool_cpu
    server_after = process_cpu_seconds(aws.pid)
    server_cpu = None if server_cpu is None or server_after is None else server_after - server_cpu
    calls = read_counts(aws.faults()["stats"])
    aws.clear_faults()
    made = count_sets(ec2, fleet)
    note = ""
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()[-3:]
        note = f"exit {done.returncode}: " + " | ".join(lines)
    elif tool != C7N:
        report = json.loads(done.stdout)
        note = f"report status {report.get('status')}, {report.get('summary', {})}"
    return Run(
        tool, n, wall, done.returncode, made, calls, fleet.launch_s, note, tool_cpu, server_cpu
    )


# --- output --------------------------------------------------------------------------------


def median_run(runs: Sequence[Run]) -> Run:
    """The run whose wall is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


def calls_per_instance(run: Run) -> str:
    """EC2 calls per instance by API [the run's calls] and their sum, then other services'."""
    n = run.n
    by_api = [
        f"{api} {count / n:.3f} [{count}]"
        for api, count in run.calls.items()
        if api not in ("EC2 total", "STS", "other services")
    ]
    total = run.calls["EC2 total"]
    text = ", ".join(by_api) + f" = {total / n:.3f} [{total}]"
    others = [f"{k} {run.calls[k]}" for k in ("STS", "other services") if run.calls[k]]
    if others:
        text += " (+ " + ", ".join(others) + " calls per run)"
    return text


def cpu_medians(runs: Sequence[Run]) -> str:
    """Median CPU seconds of the tool's process and of the server's during the runs."""
    tool = statistics.median(r.tool_cpu_s for r in runs)
    servers = [r.server_cpu_s for r in runs if r.server_cpu_s is not None]
    server = f"{statistics.median(servers):.2f}" if len(servers) == len(runs) else "-"
    return f"{tool:.2f}/{server}"


def print_table(n: int, by_tool: Mapping[str, Sequence[Run]], startup: Mapping[str, float]) -> None:
    launch = statistics.median(r.launch_s for runs in by_tool.values() for r in runs)
    print(
        f"\nN = {n:,} instances ({2 * n:,} volumes); the fleet took {launch:.1f} s to launch "
        "before each run (not timed)"
    )
    print(
        f"  {'tool':<16} {'median s':>9} {'ms/inst':>8} {'net ms/inst':>11}  {'runs s':<20} "
        f"{'CPU s tool/server':>17}  "
        f"{'sets made':<16} EC2 calls per instance [in the run], median run, by API = all EC2"
    )
    medians: dict[str, float] = {}
    nets: dict[str, float] = {}
    for tool, runs in by_tool.items():
        wall = statistics.median(r.wall_s for r in runs)
        net = wall - startup.get(tool, 0.0)
        medians[tool], nets[tool] = wall, net
        each = "/".join(f"{r.wall_s:.1f}" for r in runs)
        made = "/".join(f"{r.made.sets}" + ("" if r.ok and not r.exit_code else "!") for r in runs)
        print(
            f"  {tool:<16} {wall:>9.2f} {wall / n * 1e3:>8.2f} {net / n * 1e3:>11.2f}  "
            f"{each:<20} {cpu_medians(runs):>17}  "
            f"{made:<16} {calls_per_instance(median_run(runs))}"
        )
        for r in runs:
            if not r.ok or r.exit_code:
                print(
                    f"    ! a {tool} run made {r.made.sets:,} of {n:,} sets "
                    f"({r.made.snapshots:,} snapshots, {r.made.extra} extra), exit "
                    f"{r.exit_code}; {r.note}"
                )
    for tool in (SNAPSET, SNAPSET_PACED):
        if tool in medians and C7N in medians:
            print(
                f"  ratio {tool}/c7n: {medians[tool] / medians[C7N]:.2f} (median wall), "
                f"{nets[tool] / nets[C7N]:.2f} (net of start-up)"
            )
    if SNAPSET_PACED in medians:
        print(
            f"  pacing floor of `--ec2-share 1` at N = {n}: "
            f"(N - 100) / 5 = {max(0, n - 100) / 5:.0f} s"
        )


def describe_setup(versions: Mapping[str, str], snapset_paced: bool, latency_ms: float) -> None:
    policy = json.dumps(c7n_policy()["policies"][0])
    lines = [
        "Snapset vs Cloud Custodian on one local AWS server (moto 5.2.5 + localaws, no public",
        "AMIs), UNTHROTTLED: no token buckets, so this measures the tools' own cost (and the",
        "server's), not EC2's rate limits; "
        + (
            f"every EC2 call delayed {latency_ms:g} ms on the server."
            if latency_ms
            else "no added latency (the server's own only)."
        ),
        "Every run: the server reset, the same fleet launched (running instances tagged",
        "Backup=nightly, a root and a data volume each), one tool run as a subprocess (wall",
        "includes its process start-up), then its snapshots counted on the server.",
        f"  snapset   `snapset run --payload P --no-progress`, P = {json.dumps(snapset_payload())}",
        "            (CLI defaults: --max-workers 8, no retention, no scripts, no SNS topic). No",
        "            request_id, so the run's trigger id is made for it: a first delivery, no",
        "            DescribeSnapshots look-up; one CreateSnapshots per instance",
        "            (CopyTagsFromSource=volume, 4 snapset:* tags in TagSpecifications).",
        "            UNPACED: the CLI's main with build_engine(ec2_api_share=None); the CLI",
        "            itself paces CreateSnapshots at --ec2-share (0.01-1, default 0.5) of EC2's",
        "            burst 100 and 5/s refill, and has no option to turn that off.",
    ]
    if snapset_paced:
        lines.append("  snapset (paced)  the CLI as shipped, `--ec2-share 1` (EC2's whole bucket)")
    lines += [
        f"  c7n       c7n {versions['c7n']} (boto3 {versions['boto3']}, botocore "
        f"{versions['botocore']}) in {C7N_VENV.relative_to(ROOT)},",
        f"            `custodian run -s OUT -r {REGION} --cache-period 0 policy.yml`, {policy}",
        "            (the snapshot action: one CreateSnapshots per instance, CopyTagsFromSource=",
        "            volume, 2 threads, unpaced; the ec2 resource lists every instance and filters",
        "            the tag client-side; one STS GetCallerIdentity).",
        "  net ms/inst: (median wall - median start-up) / N, start-up measured on an empty",
        "  server. CPU s: median CPU of the tool's process / the server's during a run.",
        "  sets made: per run; '!' marks a run that did not make exactly N sets.",
    ]
    print("\n".join(lines))


def parse_sizes(raw: str) -> list[int]:
    try:
        sizes = [int(s) for s in raw.replace(" ", ",").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be integers (got {raw!r})") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive (got {raw!r})")
    return sizes


def start_server() -> LocalAws:
    """The local AWS without moto's public AMIs (in the server's environment only)."""
    saved = os.environ.get("MOTO_EC2_LOAD_DEFAULT_AMIS")
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    try:
        return LocalAws(region=REGION, snapshot_delay=None).start()
    finally:
        if saved is None:
            del os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"]
        else:
            os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = saved


def measure(aws: LocalAws, args: argparse.Namespace, tools: Sequence[str], work: Path) -> bool:
    """Print the start-up line and a table per size; whether every run made exactly N sets."""
    ok = True
    startup: dict[str, float] = {}
    for tool in tools:
        runs = [
            run_tool(aws, tool, 0, work, chunk=args.chunk, latency_ms=args.latency_ms)
            for _ in range(args.repeat)
        ]
        startup[tool] = statistics.median(r.wall_s for r in runs)
        for r in runs:
            if r.exit_code or r.made.snapshots:
                print(f"  ! {tool} on an empty server: exit {r.exit_code}; {r.note}")
                ok = False
    print(
        "\nstart-up (an empty server, median): "
        + ", ".join(f"{tool} {s:.2f} s" for tool, s in startup.items()),
        flush=True,
    )
    for n in args.sizes:
        by_tool: dict[str, list[Run]] = {t: [] for t in tools}
        for _ in range(args.repeat):
            for tool in tools:  # alternating, so drift hits both tools alike
                run = run_tool(aws, tool, n, work, chunk=args.chunk, latency_ms=args.latency_ms)
                by_tool[tool].append(run)
                ok &= run.ok and run.exit_code == 0
        print_table(n, by_tool, startup)
        sys.stdout.flush()
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[100, 1000, 3000], help="e.g. 100,1000,3000"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and size (3)")
    parser.add_argument("--chunk", type=int, default=500, help="instances per RunInstances")
    parser.add_argument(
        "--snapset-paced",
        action="store_true",
        help="also run the CLI as shipped (--ec2-share 1: paced to EC2's burst 100 and 5/s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay every EC2 call this much on the server (default 0: none), as AWS's "
        "round trips would; concurrent calls wait concurrently",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    versions = ensure_c7n()
    describe_setup(versions, args.snapset_paced, args.latency_ms)
    tools = [SNAPSET, C7N] + ([SNAPSET_PACED] if args.snapset_paced else [])
    aws = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="c7n-compare-") as tmp:
            ok = measure(aws, args, tools, Path(tmp))
    finally:
        aws.stop()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if not ok:
        print("error: some run did not make exactly N sets (marked '!' above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
