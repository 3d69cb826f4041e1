"""`snapset plan`: targets and exclusions as the engine resolves them, DryRun only."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from localaws import ssm_commands
from snapset_cli import inputs
from snapset_cli import main as cli
from tests.cli.conftest import UNKNOWN_INSTANCE, Fleet, write_json


def table_rows(out: str) -> dict[str, list[str]]:
    """The table's rows by instance ID, split on runs of two or more spaces."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("i-"):
            cells = re.split(r"\s{2,}", line)
            rows[cells[0]] = cells
    return rows


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["plan", *args, "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def by_id(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["instance_id"]: e for e in plan["instances"]}


def test_plan_by_file_shows_volumes_exclusions_and_skips(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_json(tmp_path / "web.json", fleet.policy())
    before = fleet.snapshot_count()

    assert cli.main(["plan", "--policy", policy]) == 0

    out = capsys.readouterr().out
    assert "Plan for policy 'web' in us-east-1" in out
    assert "DryRun=True" in out
    rows = table_rows(out)
    assert set(rows) == {fleet.web1, fleet.web2, fleet.web3}  # db-1 is not app=web
    # INSTANCE STATE RESULT SNAPSHOT EXCLUDED [REASON]
    assert rows[fleet.web1][1:5] == [
        "running",
        "dry_run_ok",
        f"{fleet.web1_root},{fleet.web1_data}",
        fleet.web1_scratch,
    ]
    assert rows[fleet.web2][1:5] == ["running", "dry_run_ok", fleet.web2_root, fleet.web2_data]
    assert rows[fleet.web3][1:3] == ["terminated", "skipped"]
    assert rows[fleet.web3][-1] == "instance is terminated"
    assert "3 instance(s): 2 would snapshot (3 volume(s)), 1 skipped, 0 would fail." in out
    assert fleet.snapshot_count() == before


def test_plan_reports_failures_and_still_exits_0(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # web-1's root volume among the data-volume exclusions fails web-1 before any AWS call.
    policy = {
        "policy": "byid",
        "instance_ids": [fleet.web1, fleet.web2, UNKNOWN_INSTANCE],
        "exclude_data_volume_ids": [fleet.web1_root],
        "exclude_boot_volume": True,
    }
    path = write_json(tmp_path / "p.json", policy)
    before = fleet.snapshot_count()

    assert cli.main(["plan", "--policy", path]) == 0

    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows[fleet.web1][2] == "failed"
    assert rows[fleet.web1][-1].startswith("RootVolumeInDataExclusions: ")
    assert rows[UNKNOWN_INSTANCE][1:5] == ["not-found", "failed", "-", "-"]
    assert rows[UNKNOWN_INSTANCE][-1].startswith("InvalidInstanceID.NotFound: ")
    # exclude_boot_volume: web-2's root is left out and shown as such.
    assert rows[fleet.web2][2:5] == ["dry_run_ok", fleet.web2_data, f"{fleet.web2_root}(boot)"]
    # web-1 fails on its exclusions, yet its root would be left out too.
    assert rows[fleet.web1][4] == f"{fleet.web1_root}(boot)"
    assert "1 would snapshot (1 volume(s)), 0 skipped, 2 would fail." in out
    assert fleet.snapshot_count() == before


def test_plan_shows_unauthorized_dry_run(
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DryRun answers UnauthorizedOperation when the caller may not CreateSnapshots."""
    real = inputs.make_clients

    def deny_create_snapshots(**_: Any) -> tuple[Any, dict[str, Any]]:
        error = {"Code": "UnauthorizedOperation", "Message": "You are not authorized."}
        return type("Http", (), {"status_code": 403})(), {"Error": error}

    def clients_denying(*args: Any, **kwargs: Any) -> Any:
        clients = real(*args, **kwargs)
        clients.ec2.meta.events.register("before-call.ec2.CreateSnapshots", deny_create_snapshots)
        return clients

    monkeypatch.setattr(inputs, "make_clients", clients_denying)
    path = write_json(tmp_path / "p.json", {"policy": "one", "instance_ids": [fleet.web1]})

    plan = plan_json(capsys, "--policy", path)

    entry = by_id(plan)[fleet.web1]
    assert entry["status"] == "failed"
    assert entry["error"]["code"] == "UnauthorizedOperation"
    # The volumes it would have snapshotted are still shown.
    assert entry["snapshot_volume_ids"] == [fleet.web1_root, fleet.web1_data, fleet.web1_scratch]


def test_plan_by_name_from_cdk_json(
    fleet: Fleet, aws_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = [
        {
            "policy": "db",
            "target_tags": {"app": ["db"]},
            "schedules": [{"expression": "cron(0 3 * * ? *)"}],
        },
        {
            **fleet.policy(),
            "schedules": [{"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Berlin"}],
            "on_instance_states": ["stopped"],
        },
    ]
    context = {
        "snapset": {"notification_emails": ["ops@example.com"], "policies": policies},
        "@aws-cdk/core:checkSecretUsage": True,
    }
    write_json(aws_env / "cdk.json", {"app": "python3 app.py", "context": context})

    plan = plan_json(capsys, "--policy", "web")

    assert plan["policy"] == "web"
    assert set(by_id(plan)) == {fleet.web1, fleet.web2, fleet.web3}
    assert by_id(plan)[fleet.web1]["excluded_volume_ids"] == [fleet.web1_scratch]

    db = plan_json(capsys, "--policy", "db")
    assert [e["instance_id"] for e in db["instances"]] == [fleet.db1]


def test_plan_by_name_with_config_path(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_json(
        tmp_path / "elsewhere.json", {"context": {"snapset": {"policies": [fleet.policy()]}}}
    )
    plan = plan_json(capsys, "--policy", "web", "--config", config)
    assert plan["summary"]["dry_run_ok"] == 2


def test_plan_by_name_from_the_repository_cdk_json(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every policy of the project's own cdk.json loads (trigger-only keys stripped)."""
    config = Path(__file__).resolve().parents[2] / "cdk.json"
    if not config.is_file():
        pytest.skip("no cdk.json in the repository")
    names = [p["policy"] for p in json.loads(config.read_text())["context"]["snapset"]["policies"]]
    assert names
    for name in names:
        assert plan_json(capsys, "--policy", name, "--config", str(config))["policy"] == name


def test_plan_json_shape(fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "web.json", fleet.policy(request_id="ignored-by-plan"))

    plan = plan_json(capsys, "--policy", path)

    assert plan["kind"] == "plan"
    assert plan["region"] == "us-east-1"
    assert plan["summary"] == {
        "instances": 3,
        "dry_run_ok": 2,
        "skipped": 1,
        "failed": 0,
        "volumes": 3,
    }
    assert [e["instance_id"] for e in plan["instances"]] == sorted(
        [fleet.web1, fleet.web2, fleet.web3]
    )
    web1 = by_id(plan)[fleet.web1]
    assert web1 == {
        "instance_id": fleet.web1,
        "state": "running",
        "status": "dry_run_ok",
        "volume_ids": [fleet.web1_root, fleet.web1_data, fleet.web1_scratch],
        "snapshot_volume_ids": [fleet.web1_root, fleet.web1_data],
        "excluded_volume_ids": [fleet.web1_scratch],
        "excluded_boot_volume_id": None,
        "reason": f"would snapshot {fleet.web1_root}, {fleet.web1_data}",
        "error": None,
        "ssm": None,
    }
    web3 = by_id(plan)[fleet.web3]
    assert (web3["status"], web3["reason"]) == ("skipped", "instance is terminated")


def test_plan_reads_stdin(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(fleet.policy())))
    assert plan_json(capsys, "--policy", "-")["summary"]["instances"] == 3


def test_plan_no_targets(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "p.json", {"policy": "none", "target_tags": {"app": ["x"]}})
    assert cli.main(["plan", "--policy", path]) == 0
    assert "No instance matches" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cdk_json", "name", "message"),
    [
        (None, "web", "no cdk.json in"),
        ({"context": {"snapset": {}}}, "web", "no list of policies at context.snapset.policies"),
        ({"context": {"snapset": {"policies": [{"policy": "db"}]}}}, "web", "(policies: db)"),
        (
            {"context": {"snapset": {"policies": [{"policy": "web", "instance_ids": ["i-1"]}]}}},
            "web",
            "context.snapset.policies[0].instance_ids.0: String should match pattern",
        ),
        (
            {"context": {"snapset.policies": [{"policy": "web", "retention": {}}]}},
            "web",
            "context['snapset.policies'][0].retention: retention needs count and/or max_age_days",
        ),
    ],
)
def test_plan_by_name_errors(
    aws_env: Path,
    capsys: pytest.CaptureFixture[str],
    cdk_json: dict[str, Any] | None,
    name: str,
    message: str,
) -> None:
    if cdk_json is not None:
        write_json(aws_env / "cdk.json", cdk_json)
    assert cli.main(["plan", "--policy", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snapset plan: error: ")
    assert message in err


def test_plan_invalid_policy_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_json(tmp_path / "p.json", {"policy": "web", "target_tags": {"app": []}})
    assert cli.main(["plan", "--policy", path]) == 2
    err = capsys.readouterr().err
    assert "target_tags: tag 'app': give at least one value" in err


def test_plan_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--policy", "nope.json"]) == 2
    assert "policy file not found: nope.json" in capsys.readouterr().err


def test_plan_of_a_policy_with_scripts_says_which_instances_ssm_can_reach_and_runs_none(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ssm_commands.install()
    ssm_commands.configure({"instances": {fleet.web2: {"managed": False}}})
    scripts = {"document": "snapset-fsfreeze", "on_script_failure": "skip"}
    policy = write_json(tmp_path / "web.json", fleet.policy(scripts=scripts))

    assert cli.main(["plan", "--policy", policy]) == 0

    out = capsys.readouterr().out
    rows = table_rows(out)
    # INSTANCE STATE RESULT SNAPSHOT EXCLUDED SSM [REASON]
    assert rows[fleet.web1][5] == "Online"
    assert rows[fleet.web2][5] == "not managed"
    assert rows[fleet.web3][5] == "-"  # terminated: skipped, nothing to reach
    assert "Scripts: 1 of 3 online in SSM" in out
    assert [e for e in ssm_commands.log() if e["event"] == "SendCommand"] == []
