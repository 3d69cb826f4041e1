"""Daylight saving: a cron whose fire time falls in a skipped hour is refused at synth (one
lost night a year otherwise), one in a repeated hour is warned about; cron fields follow AWS's
dialect."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from infra_support import example_config, synth
from pyawscron import AWSCron

from infra.config import ConfigError, load_config
from infra.schedule_times import dst_findings, wall_time_kind

START = date(2026, 12, 2)


def config_with(schedule: dict[str, Any]) -> dict[str, Any]:
    return {
        "policies": [
            {"policy": "nightly", "target_tags": {"Backup": ["nightly"]}, "schedules": [schedule]}
        ]
    }


@pytest.mark.parametrize(
    ("wall", "zone", "kind"),
    [
        (datetime(2027, 3, 28, 2, 30), "Europe/Berlin", "gap"),
        (datetime(2027, 10, 31, 2, 30), "Europe/Berlin", "repeated"),
        (datetime(2027, 10, 31, 3, 30), "Europe/Berlin", "normal"),
        (datetime(2027, 3, 14, 2, 0), "America/New_York", "gap"),
        (datetime(2027, 11, 7, 1, 30), "America/New_York", "repeated"),
        (datetime(2027, 3, 28, 2, 30), "UTC", "normal"),
        (datetime(2027, 10, 3, 2, 15), "Australia/Lord_Howe", "gap"),  # a 30-minute change
    ],
)
def test_wall_time_kind(wall: datetime, zone: str, kind: str) -> None:
    assert wall_time_kind(wall, ZoneInfo(zone)) == kind


def test_findings_name_the_next_affected_fire_times() -> None:
    findings = dst_findings("cron(30 2 * * ? *)", "Europe/Berlin", START)
    assert findings.gap == datetime(2027, 3, 28, 2, 30)
    assert findings.repeated == datetime(2027, 10, 31, 2, 30)


@pytest.mark.parametrize(
    ("expression", "zone"),
    [
        ("cron(30 3 * * ? *)", "Europe/Berlin"),  # after both changes
        ("cron(30 2 ? * MON-FRI *)", "Europe/Berlin"),  # Berlin changes on Sundays
        ("cron(30 2 * * ? *)", "UTC"),
        ("rate(1 hour)", "Europe/Berlin"),  # fixed intervals, no wall clock
        ("cron(0 2 * * ? *)", "Asia/Tokyo"),  # no daylight saving
    ],
)
def test_schedules_clear_of_daylight_saving(expression: str, zone: str) -> None:
    assert dst_findings(expression, zone, START) == dst_findings("rate(1 day)", "UTC", START)


def test_a_cron_in_the_skipped_hour_is_an_error_naming_policy_expression_zone_and_date() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_with({"expression": "cron(30 2 * * ? *)", "timezone": "Europe/Berlin"}))
    message = str(info.value)
    assert message.startswith(
        "invalid 'snapset' configuration:\npolicies[0] \"nightly\": schedules[0]:"
    )
    assert "cron(30 2 * * ? *) in Europe/Berlin falls in the hour skipped" in message
    assert re.search(r"next on \d{4}-03-\d\d at 02:30", message), message
    assert "allow_dst_skip" in message


def test_the_lost_run_can_be_accepted_explicitly() -> None:
    schedule = {
        "expression": "cron(30 2 * * ? *)",
        "timezone": "Europe/Berlin",
        "allow_dst_skip": True,
    }
    config = load_config(config_with(schedule))
    assert config.policies[0].schedules[0].allow_dst_skip is True
    [warning] = config.schedule_warnings()  # it still fires in October's repeated hour
    assert warning.startswith('policy "nightly": schedules[0]: cron(30 2 * * ? *) in Europe/Berlin')


def test_a_cron_in_the_repeated_hour_warns_at_synth() -> None:
    config = example_config()
    config["policies"][0]["schedules"] = [
        {"expression": "cron(30 1 * * ? *)", "timezone": "America/New_York"}
    ]
    app = synth(config, nag=False)
    warnings = [str(e.data) for c in app.stack.node.find_all() for e in c.node.metadata]
    assert any("falls in the hour repeated when clocks go back" in w for w in warnings)


def test_the_shipped_schedules_lose_no_run() -> None:
    config = load_config(example_config())
    assert config.schedule_warnings() == []
    for policy in config.policies:
        for schedule in policy.schedules:
            assert not schedule.allow_dst_skip
            assert schedule.dst().gap is None


# AWS's documented cron examples (EventBridge Scheduler, "Cron expressions"), evaluated by the
# library the validation uses: the first fire times after Tuesday 2026-12-01 00:00.
AFTER = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "first"),
    [
        ("0 10 * * ? *", [datetime(2026, 12, 1, 10, 0), datetime(2026, 12, 2, 10, 0)]),
        ("15 12 * * ? *", [datetime(2026, 12, 1, 12, 15), datetime(2026, 12, 2, 12, 15)]),
        ("0 18 ? * MON-FRI *", [datetime(2026, 12, 1, 18, 0), datetime(2026, 12, 2, 18, 0)]),
        ("0 8 1 * ? *", [datetime(2026, 12, 1, 8, 0), datetime(2027, 1, 1, 8, 0)]),
        ("0/15 * * * ? *", [datetime(2026, 12, 1, 0, 15), datetime(2026, 12, 1, 0, 30)]),
        ("0/5 8-17 ? * MON-FRI *", [datetime(2026, 12, 1, 8, 0), datetime(2026, 12, 1, 8, 5)]),
        ("0 9 ? * 2#1 *", [datetime(2026, 12, 7, 9, 0), datetime(2027, 1, 4, 9, 0)]),  # 1st Mon
        ("0 10 L * ? *", [datetime(2026, 12, 31, 10, 0), datetime(2027, 1, 31, 10, 0)]),
        ("0 10 15W * ? *", [datetime(2026, 12, 15, 10, 0), datetime(2027, 1, 15, 10, 0)]),
        (
            "0 10 ? * 6L *",
            [datetime(2026, 12, 25, 10, 0), datetime(2027, 1, 29, 10, 0)],
        ),  # last Fri
    ],
)
def test_the_cron_dialect_matches_awss_examples(fields: str, first: list[datetime]) -> None:
    got = AWSCron.get_next_n_schedule(2, AFTER, fields)
    assert [g.replace(tzinfo=None) for g in got] == first


@pytest.mark.parametrize(
    "expression", ["cron(0 10 ? * L *)", "cron(30 2 LW * ? *)", "cron(30 2 ? * FRI-MON *)"]
)
def test_forms_the_cron_library_cannot_follow_never_crash_synth(expression: str) -> None:
    config = load_config(config_with({"expression": expression, "timezone": "Europe/Berlin"}))
    warnings = config.schedule_warnings()
    if "FRI-MON" in expression:  # a reversed range: valid for AWS, unreadable for pyawscron
        [warning] = warnings
        assert "daylight saving could not be checked" in warning
    else:
        assert warnings == []
