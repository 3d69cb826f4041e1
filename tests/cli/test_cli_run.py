"""`snapset run`: the Lambda's code path from a terminal; exit codes; SNS publication."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from snapset_cli import inputs
from snapset_cli import main as cli
from tests.cli.conftest import UNKNOWN_INSTANCE, Fleet, Reports, write_json


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = cli.main(["run", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def test_run_succeeds_and_prints_the_report(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy(request_id="nightly-1"))

    code, report, err = run(capsys, "--payload", payload)

    assert code == 0
    assert err == ""
    assert report["status"] == "succeeded"
    assert report["policy"] == "web"
    assert report["trigger"]["type"] == "manual"
    assert report["trigger"]["id"] == "nightly-1"
    assert report["summary"]["started"] == 2
    assert report["summary"]["skipped"] == 1
    statuses = {i["instance_id"]: i["status"] for i in report["instances"]}
    assert statuses == {fleet.web1: "started", fleet.web2: "started", fleet.web3: "skipped"}
    tagged = fleet.ec2.describe_snapshots(
        Filters=[{"Name": "tag:snapset:trigger-id", "Values": ["nightly-1"]}]
    )["Snapshots"]
    assert {s["VolumeId"] for s in tagged} >= {fleet.web1_root, fleet.web2_root}


def test_run_dry_run_payload_exits_0_and_creates_nothing(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy(dry_run=True))
    before = fleet.snapshot_count()

    code, report, _ = run(capsys, "--payload", payload)

    assert code == 0
    assert report["status"] == "dry_run"
    assert report["summary"]["dry_run_ok"] == 2
    assert fleet.snapshot_count() == before


@pytest.mark.parametrize(
    ("known", "status"),
    [(True, "partial"), (False, "failed")],
)
def test_run_unknown_instance_exits_1(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], known: bool, status: str
) -> None:
    ids = [fleet.web1, UNKNOWN_INSTANCE] if known else [UNKNOWN_INSTANCE]
    payload = write_json(tmp_path / "p.json", {"policy": "byid", "instance_ids": ids})

    code, report, _ = run(capsys, "--payload", payload)

    assert code == 1
    assert report["status"] == status
    failed = [i for i in report["instances"] if i["status"] == "failed"]
    assert [(f["instance_id"], f["error"]["code"]) for f in failed] == [
        (UNKNOWN_INSTANCE, "InvalidInstanceID.NotFound")
    ]


def test_run_invalid_payload_exits_2_naming_the_field(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(
        tmp_path / "p.json", {"policy": "web", "instance_ids": ["i-0123456789abcdef0"], "tags": 3}
    )

    code, report, err = run(capsys, "--payload", payload)

    assert code == 2
    assert report is None
    assert err.startswith("snapset run: error: invalid manual payload: tags: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "payload in p.json is not valid JSON"),
        ("[1, 2]", "input must be a JSON object, got list"),
    ],
)
def test_run_unreadable_payload_exits_2(
    aws_env: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    (aws_env / "p.json").write_text(text)
    code, _, err = run(capsys, "--payload", "p.json")
    assert code == 2
    assert message in err


def test_run_reads_stdin(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(fleet.policy())))
    code, report, _ = run(capsys, "--payload", "-")
    assert code == 0
    assert report["summary"]["started"] == 2


def test_run_publishes_the_report(
    fleet: Fleet, reports: Reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy())

    code, report, _ = run(capsys, "--payload", payload, "--topic-arn", reports.topic_arn)

    assert code == 0
    [notification] = reports.messages()
    assert json.loads(notification["Message"]) == report
    assert notification["Subject"].startswith("Snapset web: succeeded - 2 started")
    assert notification["MessageAttributes"]["status"]["Value"] == "succeeded"


def test_run_publishes_to_the_topic_from_the_environment(
    fleet: Fleet,
    reports: Reports,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNAPSET_TOPIC_ARN", reports.topic_arn)
    payload = write_json(
        tmp_path / "p.json", {"policy": "byid", "instance_ids": [UNKNOWN_INSTANCE]}
    )

    code, _, _ = run(capsys, "--payload", payload)

    assert code == 1
    [notification] = reports.messages()
    assert json.loads(notification["Message"])["status"] == "failed"


def test_run_without_topic_publishes_nothing(
    fleet: Fleet, reports: Reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy())
    assert run(capsys, "--payload", payload)[0] == 0
    assert reports.messages() == []


def test_run_publish_failure_exits_1_after_printing_the_report(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy())
    missing_topic = "arn:aws:sns:us-east-1:123456789012:no-such-topic"

    code, report, err = run(capsys, "--payload", payload, "--topic-arn", missing_topic)

    assert code == 1
    assert report["status"] == "succeeded"
    assert "publishing the report to arn:aws:sns:us-east-1:123456789012:no-such-topic" in err


def test_run_rejects_a_bad_topic_arn_before_running(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy())
    before = fleet.snapshot_count()
    code, _, err = run(capsys, "--payload", payload, "--topic-arn", "my-topic")
    assert code == 2
    assert "--topic-arn must be an SNS topic ARN" in err
    assert fleet.snapshot_count() == before


def test_run_instance_event_outside_the_policy_is_ignored(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], state_change_event: Any
) -> None:
    event = {**state_change_event, "detail": {"instance-id": fleet.db1, "state": "stopped"}}
    payload = write_json(tmp_path / "p.json", {"policy": fleet.policy(), "event": event})

    code, result, _ = run(capsys, "--payload", payload)

    assert code == 0
    assert result["status"] == "ignored"
    assert result["instance_id"] == fleet.db1


def test_run_instance_event_for_a_target(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], state_change_event: Any
) -> None:
    event = {**state_change_event, "detail": {"instance-id": fleet.web2, "state": "stopped"}}
    payload = write_json(tmp_path / "p.json", {"policy": fleet.policy(), "event": event})

    code, report, _ = run(capsys, "--payload", payload)

    assert code == 0
    assert report["trigger"]["type"] == "instance_event"
    assert [i["instance_id"] for i in report["instances"]] == [fleet.web2]
    assert report["instances"][0]["excluded_volume_ids"] == [fleet.web2_data]


def test_run_verbose_logs_on_stderr(
    fleet: Fleet, reports: Reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_json(tmp_path / "p.json", fleet.policy())
    code, _, err = run(capsys, "--payload", payload, "--topic-arn", reports.topic_arn, "-v")
    assert code == 0
    assert "INFO" in err
    assert f"report published to {reports.topic_arn}" in err


# --- AWS configuration ------------------------------------------------------------------------


def test_no_region_exits_2_naming_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    payload = write_json(tmp_path / "p.json", {"policy": "p", "instance_ids": [UNKNOWN_INSTANCE]})
    code, _, err = run(capsys, "--payload", payload)
    assert code == 2
    assert "no AWS region configured: pass --region, or set AWS_REGION or AWS_DEFAULT_REGION" in err


def test_no_credentials_exits_2_naming_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    policy = write_json(tmp_path / "p.json", {"policy": "p", "instance_ids": [UNKNOWN_INSTANCE]})
    assert cli.main(["plan", "--policy", policy]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials found: pass --profile or set AWS_PROFILE" in err


def test_unknown_profile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = write_json(tmp_path / "p.json", {"policy": "p", "instance_ids": [UNKNOWN_INSTANCE]})
    code, _, err = run(capsys, "--payload", payload, "--profile", "nope")
    assert code == 2
    assert "The config profile (nope) could not be found" in err


def test_options_reach_make_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_make_clients(region: Any, endpoint_url: Any, session: Any) -> Any:
        seen.update(region=region, endpoint_url=endpoint_url)
        raise inputs.CliError("stop here")

    monkeypatch.setattr(inputs, "make_clients", fake_make_clients)
    payload = write_json(tmp_path / "p.json", {"policy": "p", "instance_ids": [UNKNOWN_INSTANCE]})
    args = ["--payload", payload, "--region", "eu-west-1", "--endpoint-url", "http://localhost:1"]
    assert run(capsys, *args)[0] == 2
    assert seen == {"region": "eu-west-1", "endpoint_url": "http://localhost:1"}


@pytest.mark.parametrize("value", ["0", "65", "many"])
def test_max_workers_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    payload = write_json(tmp_path / "p.json", {"policy": "p", "instance_ids": [UNKNOWN_INSTANCE]})
    assert cli.main(["run", "--payload", payload, "--max-workers", value]) == 2
    assert "--max-workers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "what"),
    [(["run", "--payload", "-"], "payload"), (["plan", "--policy", "-"], "policy")],
)
def test_a_deeply_nested_payload_exits_2_with_one_line(
    command: list[str],
    what: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("[" * 10_000 + "]" * 10_000))
    assert cli.main(command) == 2
    expected = f"snapset {command[0]}: error: {what} in stdin is nested too deeply to read\n"
    assert capsys.readouterr().err == expected
