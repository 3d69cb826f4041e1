"""`snapset plan` beside the table: when schedules fire, what retention would delete and keep and
why, and with --all the account's coverage."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.ec2.models import ec2_backends

from localaws.ec2_images import install
from localaws.fleet import MOTO_ACCOUNT
from snapset.policy import TAG_INSTANCE_ID, TAG_POLICY, TAG_TRIGGER_ID, Retention
from snapset.retention import SnapshotRecord, SnapshotSet
from snapset.retention_preview import explain_retention
from snapset_cli import main as cli
from tests.cli.conftest import REGION, Fleet, write_json

# DescribeLockedSnapshots and DescribeImages' snapshot filter, as the local AWS has them.
install()

AT = "2027-03-27T12:00:00Z"
AT_TIME = datetime(2027, 3, 27, 12, tzinfo=UTC)


# --- explain_retention (pure) ------------------------------------------------------------------


def a_set(trigger_id: str, days_ago: float, *states: str) -> SnapshotSet:
    started = AT_TIME - timedelta(days=days_ago)
    records = tuple(
        SnapshotRecord(f"snap-{trigger_id}-{n}", state, started, {})
        for n, state in enumerate(states or ("completed",))
    )
    return SnapshotSet(trigger_id, records)


def decisions(
    sets: list[SnapshotSet], retention: Retention, **kw: Any
) -> dict[str, tuple[str, str]]:
    return {
        d.trigger_id: (d.action, d.reason)
        for d in explain_retention(sets, retention, AT_TIME, **kw)
    }


def test_count_keeps_the_newest_sets_and_says_why_the_rest_go() -> None:
    sets = [a_set("t1", 4), a_set("t2", 3), a_set("t3", 2), a_set("t4", 1)]
    got = explain_retention(sets, Retention(count=2), AT_TIME)
    assert [(d.trigger_id, d.action, d.reason) for d in got] == [
        ("t4", "keep", "newest"),
        ("t3", "keep", "within-count"),
        ("t2", "delete", "beyond-count"),
        ("t1", "delete", "beyond-count"),
    ]
    assert got[2].detail == "2 newer completed sets, count is 2"
    assert (got[3].age_days, got[3].snapshot_ids) == (4, ("snap-t1-0",))


def test_age_pending_and_a_newer_failed_set_keep_sets() -> None:
    sets = [a_set("old", 40), a_set("young", 10), a_set("new", 1), a_set("busy", 50, "pending")]
    assert decisions(sets, Retention(max_age_days=30)) == {
        "old": ("delete", "older-than-max-age"),
        "young": ("keep", "within-age"),
        "new": ("keep", "newest"),
        "busy": ("keep", "pending"),
    }
    failed_newer = [a_set("old", 40), a_set("bad", 2, "error"), a_set("new", 1)]
    got = decisions(failed_newer, Retention(max_age_days=30))
    assert got["old"] == ("keep", "newer-set-unsettled")


def test_protections_keep_what_the_rules_let_go_and_name_the_protection() -> None:
    sets = [a_set("a", 9), a_set("b", 8), a_set("c", 7), a_set("d", 6), a_set("e", 1)]
    protections = {"snap-a-0": "locked", "snap-b-0": "ami-backed", "snap-c-0": "shared"}
    got = decisions(sets, Retention(count=1), protections=protections)
    assert got == {
        "a": ("keep", "locked"),
        "b": ("keep", "ami-backed"),
        "c": ("keep", "shared"),
        "d": ("delete", "beyond-count"),
        "e": ("keep", "newest"),
    }


def test_the_current_set_is_kept_as_current() -> None:
    sets = [a_set("old", 9), a_set("now", 0)]
    got = decisions(sets, Retention(count=1), current_trigger_id="now")
    assert got == {"now": ("keep", "current"), "old": ("keep", "newest")}


# --- plan --policy NAME: schedules and retention ----------------------------------------------


def snapshot(fleet: Fleet, volume_id: str, trigger_id: str, days_ago: float, iid: str) -> str:
    tags = {TAG_POLICY: "web", TAG_TRIGGER_ID: trigger_id, TAG_INSTANCE_ID: iid}
    sid: str = fleet.ec2.create_snapshot(
        VolumeId=volume_id,
        TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )["SnapshotId"]
    ec2_backends[MOTO_ACCOUNT][REGION].snapshots[sid].start_time = AT_TIME - timedelta(
        days=days_ago
    )
    return sid


def cdk_json(aws_env: Path, *policies: dict[str, Any]) -> None:
    write_json(aws_env / "cdk.json", {"context": {"snapset": {"policies": list(policies)}}})


def sets_of(plan: dict[str, Any], iid: str) -> dict[str, tuple[str, str]]:
    [preview] = [p for p in plan["retention"] if p["instance_id"] == iid]
    return {s["trigger_id"]: (s["action"], s["reason"]) for s in preview["sets"]}


def test_plan_shows_what_retention_would_delete_and_keep_with_the_real_checks(
    fleet: Fleet, aws_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # web-2's sets (root volume only, the data volume is excluded): t1..t5, one a day.
    ids = {t: snapshot(fleet, fleet.web2_root, t, d, fleet.web2) for t, d in
           [("t1", 5), ("t2", 4), ("t3", 3), ("t4", 2), ("t5", 1)]}  # fmt: skip
    fleet.ec2.lock_snapshot(SnapshotId=ids["t1"], LockMode="governance", LockDuration=1)
    fleet.ec2.register_image(
        Name="from-t2",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": ids["t2"]}}],
    )
    fleet.ec2.modify_snapshot_attribute(
        SnapshotId=ids["t3"],
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=["210987654321"],
    )
    schedule = {"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Berlin"}
    cdk_json(aws_env, {**fleet.policy(retention={"count": 1}), "schedules": [schedule]})
    before = set(ec2_backends[MOTO_ACCOUNT][REGION].snapshots)

    assert cli.main(["plan", "--policy", "web", "--at", AT, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)

    # Retention is previewed for the next run: 03:00 in Berlin on the 28th, 01:00 UTC (CEST).
    assert plan["retention_as_of"] == "2027-03-28T01:00:00Z"
    assert sets_of(plan, fleet.web2) == {
        "t5": ("keep", "newest"),
        "t4": ("delete", "beyond-count"),
        "t3": ("keep", "shared"),
        "t2": ("keep", "ami-backed"),
        "t1": ("keep", "locked"),
    }
    assert sets_of(plan, fleet.web1) == {}
    # Retention runs only where a set would start: not for the terminated web-3.
    assert {p["instance_id"] for p in plan["retention"]} == {fleet.web1, fleet.web2}
    assert set(ec2_backends[MOTO_ACCOUNT][REGION].snapshots) == before  # nothing deleted

    assert cli.main(["plan", "--policy", "web", "--at", AT]) == 0
    out = capsys.readouterr().out
    assert f"{fleet.web2}: 5 set(s), would delete 1, keep 4" in out
    why = "beyond-count: 1 newer completed set, count is 1"
    assert re.search(rf"DELETE\s+t4\s+2027-03-25 12:00\s+2d\s+1\s+{why}\n", out)
    assert re.search(r"keep\s+t1\s.*locked", out)


def test_plan_by_name_shows_the_next_fire_times_local_and_utc_with_dst_flags(
    fleet: Fleet, aws_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedules = [
        {"expression": "cron(30 2 * * ? *)", "timezone": "Europe/Berlin", "allow_dst_skip": True},
        "rate(12 hours)",
    ]
    cdk_json(aws_env, {**fleet.policy(), "schedules": schedules, "on_instance_states": ["stopped"]})

    assert cli.main(["plan", "--policy", "web", "--at", AT, "--next", "3"]) == 0
    out = capsys.readouterr().out

    assert "cron(30 2 * * ? *) in Europe/Berlin" in out
    assert re.search(r"Sun 2027-03-28 02:30 CET\s+-\s+skipped: the wall time does not exist", out)
    assert re.search(r"Mon 2027-03-29 02:30 CEST\s+2027-03-29 00:30\n", out)
    assert re.search(r"Sat 2027-03-28 00:00 UTC|Sun 2027-03-28 00:00 UTC\s+2027-03-28 00:00", out)
    assert "on instance state changes: stopped" in out
    assert "Retention of 'web': none" in out

    assert cli.main(["plan", "--policy", "web", "--at", AT, "--next", "3", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    cron, rate = plan["schedules"]
    assert [(f["utc"], f["kind"], f["dst_day"]) for f in cron["fire_times"]] == [
        (None, "gap", True),
        ("2027-03-29T00:30:00+00:00", "normal", False),
        ("2027-03-30T00:30:00+00:00", "normal", False),
    ]
    assert [f["utc"] for f in rate["fire_times"]][:1] == ["2027-03-28T00:00:00+00:00"]
    assert plan["on_instance_states"] == ["stopped"]
    assert plan["retention"] is None
    assert plan["summary"]["instances"] == 3  # the existing keys stay


def test_a_policy_file_has_no_triggers_and_says_so(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_json(tmp_path / "web.json", fleet.policy())
    assert cli.main(["plan", "--policy", path]) == 0
    assert "no triggers known (a policy file has none" in capsys.readouterr().out


# --- plan --all: coverage ----------------------------------------------------------------------


def test_plan_all_lists_untargeted_instances_overlaps_and_sizes(
    fleet: Fleet, aws_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = {"policy": "db", "target_tags": {"app": ["db"]}, "on_instance_states": ["stopped"]}
    by_id = {
        "policy": "web2-too",
        "instance_ids": [fleet.web2],
        "schedules": ["cron(0 4 * * ? *)"],
    }
    web = {**fleet.policy(), "schedules": ["cron(0 3 * * ? *)"]}
    cdk_json(aws_env, web, db, by_id)
    lonely = fleet.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    lonely_id = lonely["Instances"][0]["InstanceId"]
    gone = fleet.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    fleet.ec2.terminate_instances(InstanceIds=[gone["Instances"][0]["InstanceId"]])

    assert cli.main(["plan", "--all", "--at", AT, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)

    assert data["kind"] == "plan-all"
    assert [p["policy"] for p in data["plans"]] == ["web", "db", "web2-too"]
    cov = data["coverage"]
    # web: web-1 root + data (8 GiB each; moto's root volumes are 8 GiB), web-2 root.
    assert cov["policies"] == [
        {"policy": "web", "instances": 2, "volumes": 3, "gib": 24},
        {"policy": "db", "instances": 1, "volumes": 1, "gib": 8},
        {"policy": "web2-too", "instances": 1, "volumes": 2, "gib": 16},
    ]
    # A terminated instance has nothing to snapshot: it is nobody's gap.
    assert [u["instance_id"] for u in cov["untargeted"]] == [lonely_id]
    assert cov["overlaps"] == [{"instance_id": fleet.web2, "policies": ["web", "web2-too"]}]

    assert cli.main(["plan", "--all", "--at", AT]) == 0
    out = capsys.readouterr().out
    assert out.count("Plan for policy") == 3
    assert re.search(r"web2-too\s+1\s+2\s+16\n", out)
    assert re.search(rf"1 instance\(s\) no policy targets:\n.*\n\s+{lonely_id}\s+running", out)
    assert re.search(rf"{fleet.web2}\s+web, web2-too", out)


def test_plan_all_fails_with_exit_1_when_listing_the_account_fails(
    fleet: Fleet, aws_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cdk_json(aws_env, {**fleet.policy(), "schedules": ["cron(0 3 * * ? *)"]})

    def denied(ec2: Any) -> dict[str, int]:
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "X")

    monkeypatch.setattr("snapset_cli.main.volume_sizes", denied)
    assert cli.main(["plan", "--all"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "snapset plan: error: listing instances and volumes: UnauthorizedOperation"
    )
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan"], "the following arguments are required: --policy FILE|NAME, or --all"),
        (["plan", "--all"], "config file not found"),
        (["plan", "--policy", "web", "--next", "0"], "--next: must be between 1 and 100"),
        (["plan", "--policy", "web", "--at", "soon"], "--at: must be an ISO 8601 time"),
    ],
)
def test_plan_usage_errors_exit_2(
    aws_env: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_plan_all_and_policy_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--all", "--policy", "web"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_plan_all_names_an_invalid_policy(
    aws_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cdk_json(aws_env, {"policy": "ok", "instance_ids": ["i-0123456789abcdef0"]}, {"policy": "bad"})
    assert cli.main(["plan", "--all"]) == 2
    assert "invalid policy 'bad'" in capsys.readouterr().err


# --- unreadable payloads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "what"),
    [(["run", "--payload", "-"], "payload"), (["plan", "--policy", "-"], "policy")],
)
def test_a_number_too_long_to_convert_exits_2_with_one_line(
    command: list[str],
    what: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"policy": "p", "n": ' + "1" * 5000 + "}"))
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"snapset {command[0]}: error: {what} in stdin cannot be read: ")
    assert err.count("\n") == 1
