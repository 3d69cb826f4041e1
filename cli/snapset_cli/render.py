"""Text output shared by the CLI and the demo: tables, and bold and colour on terminals only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

from snapset.outcomes import InstanceStatus
from snapset.plan import Plan, PlanEntry


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
    header = ("INSTANCE", "STATE", "RESULT", "SNAPSHOT", "EXCLUDED", "REASON")
    rows = [header]
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
    return "\n".join(lines)
