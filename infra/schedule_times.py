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
import re
from collections.abc import Iterator
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
    """The next fire time of a cron in the skipped hour (`gap`) and in the repeated hour, or
    why they could not be computed (`unchecked`)."""

    gap: datetime | None
    repeated: datetime | None
    unchecked: str | None = None


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
    try:
        for day in transition_days(timezone, start):
            # Scheduler reads the cron on the zone's wall clock, as cron_wall_times does.
            midnight = datetime(day.year, day.month, day.day)
            for wall in cron_wall_times(fields, midnight - timedelta(seconds=1)):
                if wall.date() != day:
                    break
                kind = wall_time_kind(wall, zone)
                if kind == "gap" and gap is None:
                    gap = wall
                elif kind == "repeated" and repeated is None:
                    repeated = wall
            if gap is not None and repeated is not None:
                break
    except UnsupportedSchedule as exc:
        # AWS accepts forms pyawscron cannot follow (a reversed range such as FRI-MON): the
        # schedule stays valid, and the daylight-saving check says it could not be made.
        return DstFindings(gap, repeated, unchecked=str(exc))
    return DstFindings(gap, repeated)


# --- next fire times ---------------------------------------------------------------------------

_RATE_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_RATE = re.compile(r"rate\((\d+) (minute|hour|day)s?\)")
# The most fire times one call computes: a plan shows a handful, not a year of minutes.
MAX_FIRE_TIMES = 100


class UnsupportedSchedule(ValueError):
    """An expression whose fire times cannot be computed (the message says why)."""


@dataclass(frozen=True)
class FireTime:
    """One fire time of a schedule.

    `local` is the wall time in the schedule's zone (aware) and `utc` the moment it runs. `kind`
    is `wall_time_kind` of the wall time: at a `gap` time Scheduler skips the run (`utc` is
    None); at a `repeated` time it runs once, and `utc` is the earlier of the two instants (which
    one Scheduler takes is not documented). `dst_day` is true on a day the zone's UTC offset
    changes, however the fire time itself fares.
    """

    local: datetime
    utc: datetime | None
    kind: str
    dst_day: bool

    @property
    def skipped(self) -> bool:
        return self.kind == "gap"


def rate_interval(expression: str) -> timedelta | None:
    """The interval of `rate(value unit)`, or None for any other expression."""
    match = _RATE.fullmatch(expression.strip())
    if match is None:
        return None
    return int(match.group(1)) * _RATE_UNITS[match.group(2)]


def _walk(cron: AWSCron, after: datetime) -> Iterator[datetime]:
    """pyawscron's fire times strictly after `after` (naive wall times), until it finds none."""
    cursor = after.replace(tzinfo=UTC)
    while True:
        try:
            fire = cron.occurrence(cursor).next()
        except Exception as exc:  # pyawscron raises bare Exceptions on forms it cannot follow
            message = f"pyawscron cannot evaluate cron({cron.cron}): {exc}"
            raise UnsupportedSchedule(message) from exc
        if fire is None:  # past the last year the expression allows
            return
        yield fire.replace(tzinfo=None)
        cursor = fire


def cron_wall_times(fields: str, after: datetime) -> Iterator[datetime]:
    """The wall times a cron fires at, strictly after the naive wall time `after`, in order.

    pyawscron reads AWS's dialect except for two forms, translated here: `L` alone in
    day-of-week (the last day of the week, Saturday, which pyawscron loops on) and `LW` in
    day-of-month (the last weekday of the month, which it cannot parse): the month's last day,
    moved back to the Friday when it falls on a weekend.
    """
    parts = fields.split()
    if len(parts) != 6:
        raise UnsupportedSchedule(f"cron needs 6 fields (got {len(parts)})")
    if parts[4].upper() == "L":
        parts[4] = "7"
    last_weekday = parts[2].upper() == "LW"
    if last_weekday:
        parts[2] = "L"
    try:
        cron = AWSCron(" ".join(parts))
    except (ValueError, IndexError) as exc:
        raise UnsupportedSchedule(f"pyawscron cannot parse cron({fields}): {exc}") from exc
    if not last_weekday:
        yield from _walk(cron, after)
        return
    # Moving back at most two days keeps the order; start two days early not to miss one.
    for wall in _walk(cron, after - timedelta(days=2)):
        moved = wall - timedelta(days=max(0, wall.weekday() - 4))
        if moved > after:
            yield moved


def next_fire_times(
    expression: str,
    timezone: str,
    after: datetime,
    n: int,
    *,
    start: datetime | None = None,
) -> list[FireTime]:
    """The next `n` fire times of a Scheduler expression strictly after the aware `after`.

    A cron is evaluated on the zone's wall clock, as Scheduler does, then converted to UTC; a
    time in a skipped hour is listed with `skipped` (Scheduler does not run it). A rate fires at
    fixed intervals from the schedule's `start` (Scheduler's StartDate, or when the schedule was
    created); without `start` the intervals are counted from `after`. Fewer than `n` come back
    when the expression stops firing (a year field in the past). Raises UnsupportedSchedule for
    an expression neither form computes.
    """
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    if not 1 <= n <= MAX_FIRE_TIMES:
        raise ValueError(f"n must be between 1 and {MAX_FIRE_TIMES} (got {n})")
    zone = ZoneInfo(timezone)
    if (interval := rate_interval(expression)) is not None:
        origin, now = (start or after).astimezone(UTC), after.astimezone(UTC)
        first = origin if origin > now else origin + ((now - origin) // interval + 1) * interval
        return [_rate_fire(first + k * interval, zone) for k in range(n)]
    fields = cron_fields(expression.strip())
    if fields is None:
        raise UnsupportedSchedule(f"not a cron(...) or rate(...) expression: {expression!r}")
    wall_after = after.astimezone(zone).replace(tzinfo=None)
    found: list[FireTime] = []
    for wall in cron_wall_times(fields, wall_after):
        fire = _cron_fire(wall, zone)
        if fire.utc is not None and fire.utc <= after:
            continue  # the earlier instant of a repeated hour `after` is already past
        found.append(fire)
        if len(found) == n:
            break
    return found


def _on_dst_day(day: date, zone: ZoneInfo) -> bool:
    return day in transition_days(zone.key, day.replace(month=1, day=1), 1)


def _cron_fire(wall: datetime, zone: ZoneInfo) -> FireTime:
    kind = wall_time_kind(wall, zone)
    local = wall.replace(tzinfo=zone, fold=0)
    utc = None if kind == "gap" else local.astimezone(UTC)
    return FireTime(local=local, utc=utc, kind=kind, dst_day=_on_dst_day(wall.date(), zone))


def _rate_fire(moment: datetime, zone: ZoneInfo) -> FireTime:
    local = moment.astimezone(zone)
    return FireTime(local=local, utc=moment, kind="normal", dst_day=_on_dst_day(local.date(), zone))
