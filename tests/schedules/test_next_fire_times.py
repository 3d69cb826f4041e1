"""`next_fire_times`: Scheduler's cron on the zone's wall clock (pyawscron, checked against AWS's
documented examples), rates at fixed intervals, daylight-saving days flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.schedule_times import UnsupportedSchedule, next_fire_times

# A Tuesday.
AFTER = datetime(2026, 12, 1, tzinfo=UTC)


def utc_times(expression: str, n: int = 3, zone: str = "UTC") -> list[datetime | None]:
    return [f.utc for f in next_fire_times(expression, zone, AFTER, n)]


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "first"),
    [
        # The examples of EventBridge Scheduler's "Cron-based schedules" and EventBridge's cron
        # reference, with what each says it means.
        ("cron(0 10 * * ? *)", [at(2026, 12, 1, 10), at(2026, 12, 2, 10), at(2026, 12, 3, 10)]),
        (
            "cron(15 12 * * ? *)",
            [at(2026, 12, 1, 12, 15), at(2026, 12, 2, 12, 15), at(2026, 12, 3, 12, 15)],
        ),
        (
            "cron(0 18 ? * MON-FRI *)",
            [at(2026, 12, 1, 18), at(2026, 12, 2, 18), at(2026, 12, 3, 18)],
        ),
        ("cron(0 8 1 * ? *)", [at(2026, 12, 1, 8), at(2027, 1, 1, 8), at(2027, 2, 1, 8)]),
        (
            "cron(0/15 * * * ? *)",
            [at(2026, 12, 1, 0, 15), at(2026, 12, 1, 0, 30), at(2026, 12, 1, 0, 45)],
        ),
        (
            "cron(0/10 * ? * MON-FRI *)",
            [at(2026, 12, 1, 0, 10), at(2026, 12, 1, 0, 20), at(2026, 12, 1, 0, 30)],
        ),
        # every 5 minutes between 8:00 and 17:55 Monday to Friday: 17:55 is the last of a day.
        (
            "cron(0/5 8-17 ? * MON-FRI *)",
            [at(2026, 12, 1, 8), at(2026, 12, 1, 8, 5), at(2026, 12, 1, 8, 10)],
        ),
        ("cron(0 9 ? * 2#1 *)", [at(2026, 12, 7, 9), at(2027, 1, 4, 9), at(2027, 2, 1, 9)]),
        # "1/10" in minutes: the 1st, 11th, 21st... minute (the reference's own example).
        (
            "cron(1/10 * * * ? *)",
            [at(2026, 12, 1, 0, 1), at(2026, 12, 1, 0, 11), at(2026, 12, 1, 0, 21)],
        ),
        # L in day-of-month: the last day; 3W: the weekday nearest the 3rd (Sat 2027-04-03 -> Fri).
        ("cron(0 10 L * ? *)", [at(2026, 12, 31, 10), at(2027, 1, 31, 10), at(2027, 2, 28, 10)]),
        ("cron(0 10 3W 4 ? *)", [at(2027, 4, 2, 10), at(2028, 4, 3, 10), at(2029, 4, 3, 10)]),
        # 1W on a Saturday stays in its month: Monday the 3rd (2027-05-01 is a Saturday).
        ("cron(0 10 1W 5 ? *)", [at(2027, 5, 3, 10), at(2028, 5, 1, 10), at(2029, 5, 1, 10)]),
        # 6L: the last Friday of the month.
        ("cron(0 10 ? * 6L *)", [at(2026, 12, 25, 10), at(2027, 1, 29, 10), at(2027, 2, 26, 10)]),
        # L alone in day-of-week: the last day of the week, Saturday (pyawscron loops on it).
        ("cron(0 10 ? * L *)", [at(2026, 12, 5, 10), at(2026, 12, 12, 10), at(2026, 12, 19, 10)]),
        # LW: the last weekday of the month (pyawscron cannot parse it); 2027-01-31 is a Sunday.
        ("cron(0 10 LW * ? *)", [at(2026, 12, 31, 10), at(2027, 1, 29, 10), at(2027, 2, 26, 10)]),
        (
            "cron(0 10 * JAN-MAR/2 ? 2027)",
            [at(2027, 1, 1, 10), at(2027, 1, 2, 10), at(2027, 1, 3, 10)],
        ),
    ],
)
def test_cron_fire_times_match_awss_examples(expression: str, first: list[datetime]) -> None:
    assert utc_times(expression) == first


def test_monday_to_friday_skips_the_weekend() -> None:
    friday_evening = at(2026, 12, 4, 19)
    fires = next_fire_times("cron(0 18 ? * MON-FRI *)", "UTC", friday_evening, 1)
    assert fires[0].utc == at(2026, 12, 7, 18)


def test_the_cron_is_read_on_the_zones_wall_clock() -> None:
    winter = next_fire_times("cron(0 9 * * ? *)", "America/New_York", AFTER, 1)[0]
    summer = next_fire_times("cron(0 9 * * ? *)", "America/New_York", at(2027, 7, 1), 1)[0]
    assert (winter.local.hour, winter.utc) == (9, at(2026, 12, 1, 14))
    assert (summer.local.hour, summer.utc) == (9, at(2027, 7, 1, 13))


def test_the_skipped_and_repeated_hours_are_flagged() -> None:
    fires = next_fire_times("cron(30 2 * * ? *)", "Europe/Berlin", at(2027, 3, 27, 12), 2)
    assert [(f.local.day, f.kind, f.skipped, f.dst_day) for f in fires] == [
        (28, "gap", True, True),
        (29, "normal", False, False),
    ]
    assert fires[0].utc is None  # Scheduler does not run it
    back = next_fire_times("cron(30 2 * * ? *)", "Europe/Berlin", at(2027, 10, 30, 12), 1)[0]
    assert (back.kind, back.dst_day, back.utc) == ("repeated", True, at(2027, 10, 31, 0, 30))


def test_a_fire_time_clear_of_the_change_is_still_on_a_flagged_day() -> None:
    fires = next_fire_times("cron(30 3 * * ? *)", "Europe/Berlin", at(2027, 3, 27, 12), 2)
    assert [(f.kind, f.dst_day) for f in fires] == [("normal", True), ("normal", False)]
    assert fires[0].utc == at(2027, 3, 28, 1, 30)  # 03:30 CEST


def test_fire_times_are_strictly_after() -> None:
    assert utc_times("cron(0 10 * * ? *)", 1)[0] == at(2026, 12, 1, 10)
    fires = next_fire_times("cron(0 10 * * ? *)", "UTC", at(2026, 12, 1, 10), 1)
    assert fires[0].utc == at(2026, 12, 2, 10)


def test_a_rate_fires_at_fixed_intervals_from_its_start_across_a_change() -> None:
    start = at(2027, 3, 26, 23)  # midnight in Berlin, CET
    fires = next_fire_times("rate(1 day)", "Europe/Berlin", at(2027, 3, 27, 1), 3, start=start)
    assert [f.utc for f in fires] == [start + timedelta(days=d) for d in (1, 2, 3)]
    # 24 hours, not the wall clock: midnight becomes 01:00 once clocks go forward.
    assert [f.local.hour for f in fires] == [0, 1, 1]
    assert [f.dst_day for f in fires] == [True, False, False]  # 00:00 CET on the 28th
    assert fires[1].local.day == 29


def test_a_rate_without_a_start_counts_from_after_and_a_future_start_fires_first() -> None:
    assert utc_times("rate(15 minutes)", 2) == [at(2026, 12, 1, 0, 15), at(2026, 12, 1, 0, 30)]
    later = at(2026, 12, 5, 6)
    fires = next_fire_times("rate(2 hours)", "UTC", AFTER, 2, start=later)
    assert [f.utc for f in fires] == [later, later + timedelta(hours=2)]


def test_an_expression_that_stopped_firing_gives_none() -> None:
    assert utc_times("cron(0 10 * * ? 2025)") == []


@pytest.mark.parametrize("expression", ["cron(0 10 ? * FRI-MON *)", "at(2027-01-01T00:00:00)"])
def test_what_cannot_be_computed_says_so(expression: str) -> None:
    with pytest.raises(UnsupportedSchedule):
        next_fire_times(expression, "UTC", AFTER, 1)


def test_no_fire_time_is_in_the_past_inside_a_repeated_hour() -> None:
    # 02:40 CET, the second pass of Berlin's repeated hour: 02:50 CEST (00:50 UTC) is past.
    second_pass = at(2027, 10, 31, 1, 40)
    fire = next_fire_times("cron(50 2 * * ? *)", "Europe/Berlin", second_pass, 1)[0]
    assert fire.utc == at(2027, 11, 1, 1, 50)
