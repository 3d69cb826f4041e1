"""When a Scheduler cron fires in its time zone, and where daylight saving gets in the way.

EventBridge Scheduler evaluates a cron expression in the schedule's time zone, on the wall
clock. A wall time inside the hour skipped when clocks go forward does not exist, and Scheduler
skips that run; a wall time inside the hour repeated when clocks go back exists twice, and
Scheduler runs once. Cron fields are evaluated with pyawscron (AWS's cron dialect: `?`, `L`,
`W`, `#`, ranges and steps); the time zone rules come from the IANA database (`zoneinfo`, with
`tzdata` pinned for systems without one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from pyawscron import AWSCron

# Far enough ahead to meet a cron on a transition day that only some years put on it (a day of
# the month that is a Sunday, say): day-of-week and day-of-month line up again within 6 years.
LOOKAHEAD_YEARS = 8


def wall_time_kind(wall: datetime, zone: ZoneInfo) -> str:
    """`gap` (the wall time does not exist), `repeated` (it exists twice) or `normal`."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return "normal"
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
        return "gap"
    return "repeated"


@functools.cache
def transition_days(timezone: str, start: date, years: int = LOOKAHEAD_YEARS) -> tuple[date, ...]:
    """The local dates on which `timezone`'s UTC offset changes, from `start` on."""
    zone = ZoneInfo(timezone)
    moment = datetime(start.year, start.month, start.day, tzinfo=UTC)
    end = moment.replace(year=start.year + years)
    days: list[date] = []
    offset = moment.astimezone(zone).utcoffset()
    while moment < end:
        moment += timedelta(hours=1)
        local = moment.astimezone(zone)
        if local.utcoffset() != offset:
            offset = local.utcoffset()
            if not days or days[-1] != local.date():
                days.append(local.date())
    return tuple(days)


@dataclass(frozen=True)
class DstFindings:
    """The next fire time of a cron in the skipped hour (`gap`) and in the repeated hour."""

    gap: datetime | None
    repeated: datetime | None


def cron_fields(expression: str) -> str | None:
    """The fields of `cron(...)`, or None for a `rate(...)` (fixed intervals, no wall clock)."""
    if expression.startswith("cron(") and expression.endswith(")"):
        return expression[len("cron(") : -1]
    return None


@functools.cache
def dst_findings(expression: str, timezone: str, start: date) -> DstFindings:
    """Where a schedule's fire times meet a daylight-saving change from `start` on (local
    wall times, naive)."""
    fields = cron_fields(expression)
    gap = repeated = None
    if fields is None:
        return DstFindings(None, None)
    zone = ZoneInfo(timezone)
    for day in transition_days(timezone, start):
        # pyawscron works on one clock; given the wall clock as if it were UTC, it yields wall
        # times, which is how Scheduler reads the cron in the zone.
        begin = datetime(day.year, day.month, day.day, tzinfo=UTC)
        fires = AWSCron.get_all_schedule_bw_dates(begin, begin + timedelta(days=1), fields)
        for fire in fires:
            wall = fire.replace(tzinfo=None)
            if wall.date() != day:
                continue
            kind = wall_time_kind(wall, zone)
            if kind == "gap" and gap is None:
                gap = wall
            elif kind == "repeated" and repeated is None:
                repeated = wall
        if gap is not None and repeated is not None:
            break
    return DstFindings(gap, repeated)
