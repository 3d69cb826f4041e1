"""Text output shared by the CLI and the demo: tables, and bold and colour on terminals only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO

from snapset.outcomes import InstanceStatus
from snapset.plan import Plan, PlanEntry
from snapset_cli.overview import Coverage, ScheduleView


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 0) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; the header line first."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    pad = " " * indent

    def fmt(cells: Sequence[str]) -> str:
        return (
            pad + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
        ).rstrip()

    return [fmt(header), *(fmt(row) for row in rows)]


class Out:
    """Plain text; bold and colour only on a terminal (and never with NO_COLOR)."""

    def __init__(self, stream: IO[str], colour: bool | None = None) -> None:
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
        head, *body = table_lines(header, rows, indent)
        self.line(self.bold(head))
        for line in body:
            self.line(line)


def _why(entry: PlanEntry) -> str:
    if entry.error is not None:
        message = entry.error.message.removeprefix(f"{entry.instance_id}: ")
        return f"{entry.error.code}: {message}"
    if entry.status is InstanceStatus.DRY_RUN_OK:
        return ""
    return entry.reason or ""


def render_plan(plan: Plan) -> str:
    """The plan as a table: instance, state, result, volumes to snapshot and excluded, why."""
    lines = [
        f"Plan for policy {plan.policy!r} in {plan.region} "
        "(CreateSnapshots called with DryRun=True: nothing is created)",
        "",
    ]
    if not plan.instances:
        return "\n".join([*lines, "No instance matches the policy's instance_ids or target_tags."])
    scripts = any(e.ssm is not None for e in plan.instances)
    header = (
        "INSTANCE",
        "STATE",
        "RESULT",
        "SNAPSHOT",
        "EXCLUDED",
        *(("SSM",) * scripts),
        "REASON",
    )
    rows: list[tuple[str, ...]] = [header]
    for e in plan.instances:
        excluded = list(e.excluded_volume_ids)
        if e.excluded_boot_volume_id:
            excluded.insert(0, f"{e.excluded_boot_volume_id}(boot)")
        rows.append(
            (
                e.instance_id,
                e.state,
                e.status.value,
                ",".join(e.snapshot_volume_ids) or "-",
                ",".join(excluded) or "-",
                *((e.ssm or "-",) * scripts),
                _why(e),
            )
        )
    lines += table_lines(rows[0], rows[1:])
    s = plan.summary
    lines += [
        "",
        f"{s.instances} instance(s): {s.dry_run_ok} would snapshot ({s.volumes} volume(s)), "
        f"{s.skipped} skipped, {s.failed} would fail.",
    ]
    if scripts:
        reachable = sum(e.scripts_reachable for e in plan.instances)
        lines.append(
            f"Scripts: {reachable} of {len(plan.instances)} online in SSM, whose sets are "
            "application-consistent if their pre scripts succeed; the others get crash-consistent "
            "sets or none (on_script_failure). The plan runs no script."
        )
    return "\n".join(lines)


# --- beside the plan: schedules, retention, coverage ------------------------------------------

_FIRE_NOTES = {
    "gap": "skipped: the wall time does not exist (clocks go forward); Scheduler does not run it",
    "repeated": "repeated hour (clocks go back): runs once; UTC shown for the first pass",
}


def _fire_rows(view: ScheduleView) -> list[tuple[str, str, str]]:
    rows = []
    for f in view.fires:
        note = _FIRE_NOTES.get(f.kind, "daylight-saving day" if f.dst_day else "")
        utc = f"{f.utc:%Y-%m-%d %H:%M}" if f.utc else "-"
        rows.append((f"{f.local:%a %Y-%m-%d %H:%M %Z}", utc, note))
    return rows


def render_schedules(
    out: Out, policy: str, views: Sequence[ScheduleView], states: Sequence[str]
) -> None:
    """Each schedule's next fire times, local and UTC, daylight-saving days flagged."""
    out.heading(f"When {policy!r} runs")
    if states:
        out.line(f"  on instance state changes: {', '.join(states)}")
    if not views and not states:
        out.line("  no triggers known (a policy file has none; plan a cdk.json NAME to see them)")
    for view in views:
        out.line(f"  {view.expression} in {view.timezone}")
        if view.error is not None:
            out.line(f"    {out.bad('fire times unavailable')}: {view.error}")
        elif not view.fires:
            out.line("    never fires again")
        else:
            if view.expression.startswith("rate("):
                out.line(
                    out.dim(
                        "    (fixed intervals from the schedule's start, not known here: "
                        "counted from the plan's time)"
                    )
                )
            out.table((f"NEXT {len(view.fires)} (LOCAL)", "UTC", "NOTE"), _fire_rows(view), 4)


def render_retention(out: Out, plan: Plan) -> None:
    """What retention would delete and keep on the next run, per instance, and why."""
    if plan.retention is None:
        out.heading(f"Retention of {plan.policy!r}: none (snapshots are never deleted)")
        return
    when = f"{plan.retention_as_of:%Y-%m-%d %H:%M} UTC" if plan.retention_as_of else "now"
    out.heading(f"Retention of {plan.policy!r} on a run at {when}")
    if not plan.retention:
        out.line("  no instance would be snapshotted, so retention would not run")
    for preview in plan.retention:
        doomed = sum(s.action == "delete" for s in preview.sets)
        out.line(
            f"  {preview.instance_id}: {len(preview.sets)} set(s), would delete {doomed}, "
            f"keep {len(preview.sets) - doomed}"
        )
        rows = [
            (
                s.action.upper() if s.action == "delete" else s.action,
                s.trigger_id,
                f"{s.start_time:%Y-%m-%d %H:%M}",
                f"{s.age_days}d",
                str(len(s.snapshot_ids)),
                f"{s.reason}: {s.detail}" if s.reason not in s.detail else s.detail,
            )
            for s in preview.sets
        ]
        if rows:
            out.table(("ACTION", "SET", "STARTED (UTC)", "AGE", "SNAPSHOTS", "WHY"), rows, 4)
        for error in preview.errors:
            out.line(f"    {out.bad('check failed')}: {error.code}: {error.message}")


def render_coverage(out: Out, region: str, cov: Coverage) -> None:
    """Per policy what a run snapshots, untargeted instances, instances several policies take."""
    out.heading(f"Coverage in {region}")
    rows = [(p.policy, str(p.instances), str(p.volumes), str(p.gib)) for p in cov.policies]
    out.table(("POLICY", "INSTANCES", "VOLUMES", "GIB"), rows)
    if cov.unsized_volumes:
        out.line(f"  (no size known for {', '.join(cov.unsized_volumes)}: counted as 0 GiB)")
    out.line()
    if cov.untargeted:
        out.line(out.bad(f"  {len(cov.untargeted)} instance(s) no policy targets:"))
        untargeted = [(u.instance_id, u.state, u.name or "-") for u in cov.untargeted]
        out.table(("INSTANCE", "STATE", "NAME"), untargeted, 4)
    else:
        out.line(out.good("  every instance is targeted by a policy"))
    if cov.overlaps:
        out.line(f"  {len(cov.overlaps)} instance(s) several policies snapshot (a set each):")
        overlaps = [(o.instance_id, ", ".join(o.policies)) for o in cov.overlaps]
        out.table(("INSTANCE", "POLICIES"), overlaps, 4)
    else:
        out.line("  no instance is snapshotted by more than one policy")
