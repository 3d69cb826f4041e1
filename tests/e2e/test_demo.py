"""The demo doubles as a smoke test of the whole chain; its checks must catch divergences."""

from __future__ import annotations

import io

import pytest

from localaws.lambda_runtime import Invocation
from localaws.report_inbox import Report
from snapset_cli import demo
from snapset_cli.demo_checks import Checks, Expected, verify
from snapset_cli.demo_fleet import DemoInstance, DemoVolume
from snapset_cli.render import Out

pytestmark = pytest.mark.e2e


def test_demo_runs_and_prints_the_sets_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--no-color"]) == 0
    out = capsys.readouterr().out
    assert "Snapshot sets (6)" in out
    assert "SNS reports (10" in out
    assert "application" in out  # pg-1's set, taken between its scripts
    assert "db-1-scratch" in out  # excluded by tag, shown as excluded
    assert "checks passed" in out
    assert "FAIL" not in out
    assert "\033[" not in out  # no colour when not a terminal


def _scenario() -> tuple[DemoInstance, Expected, list[dict[str, object]], list[Report]]:
    root = DemoVolume("vol-root", "a-root", {"Name": "a-root"}, True)
    data = DemoVolume("vol-data", "a-data", {"Name": "a-data", "App": "x"}, False)
    skip = DemoVolume("vol-skip", "a-skip", {"Name": "a-skip", "Snapset": "exclude"}, False)
    inst = DemoInstance("a", "i-0123456789abcdef0", "running", {}, (root, data, skip), "test")
    policy = {
        "policy": "p",
        "instance_ids": [inst.instance_id],
        "exclude_data_volume_tags": {"Snapset": ["exclude"]},
        "tags": {"T": "{trigger}"},
    }
    result = {"trigger": {"id": "t-1", "time": "2026-01-01T00:00:00Z"}}
    inv = Invocation("invoke", "fn", {}, result=result)
    exp = Expected("manual p", policy, "manual", [inst], inv)
    managed = [
        {"Key": "snapset:policy", "Value": "p"},
        {"Key": "snapset:trigger-id", "Value": "t-1"},
        {"Key": "snapset:instance-id", "Value": inst.instance_id},
        {"Key": "snapset:consistency", "Value": "crash"},
        {"Key": "T", "Value": "manual"},
    ]
    snaps: list[dict[str, object]] = [
        {
            "SnapshotId": f"snap-{v.volume_id}",
            "VolumeId": v.volume_id,
            "StartTime": "t0",
            "State": "completed",
            "Tags": [*managed, *({"Key": k, "Value": x} for k, x in v.tags.items())],
        }
        for v in (root, data)
    ]
    stored = {"kind": "run", "status": "succeeded", "full_report": {"bucket": "b", "key": "k"}}
    reports = [
        Report("s", stored, {}, "m1", "arn"),
        Report("s", {"kind": "completion", "status": "succeeded"}, {}, "m2", "arn"),
    ]
    return inst, exp, snaps, reports


FULL_REPORTS = {"k": {"kind": "run", "status": "succeeded", "full_report": None}}


def _verified(
    inst: DemoInstance,
    exp: Expected,
    snaps: list[dict[str, object]],
    reports: list[Report],
    full_reports: dict[str, object] = FULL_REPORTS,
    ssm_log: list[dict[str, object]] | None = None,
) -> list[str]:
    checks = Checks(Out(io.StringIO(), colour=False))
    verify(
        checks,
        expected=[exp],
        fleet=[inst],
        snapshots=snaps,
        reports=reports,
        full_reports=full_reports,
        invocations=[],
        ssm_log=ssm_log or [],
    )
    return checks.failed


def _failures(
    snaps: list[dict[str, object]], full_reports: dict[str, object] = FULL_REPORTS
) -> list[str]:
    inst, exp, _, reports = _scenario()
    return _verified(inst, exp, snaps, reports, full_reports)


def test_the_checks_pass_on_a_faithful_run() -> None:
    assert _failures(_scenario()[2]) == []


@pytest.mark.parametrize(
    "stored", [{}, {"k": {"kind": "run", "status": "failed", "full_report": None}}]
)
def test_the_checks_catch_a_run_report_missing_or_different_in_the_bucket(
    stored: dict[str, object],
) -> None:
    assert _failures(_scenario()[2], stored) == [
        "every run report is stored in full in the report bucket: ['s']"
    ]


def test_the_checks_catch_an_excluded_volume_a_missing_tag_and_a_duplicate() -> None:
    _, _, snaps, _ = _scenario()
    excluded = {**snaps[1], "SnapshotId": "snap-x", "VolumeId": "vol-skip"}
    assert any("excluded volumes absent" in f for f in _failures([*snaps, excluded]))
    untagged = {**snaps[1], "Tags": [t for t in snaps[1]["Tags"] if t["Key"] != "App"]}  # type: ignore[attr-defined]
    assert any("carries its volume's tags" in f for f in _failures([snaps[0], untagged]))
    twice = {**snaps[1], "SnapshotId": "snap-again", "StartTime": "t1"}
    assert any("one CreateSnapshots call" in f for f in _failures([*snaps, twice]))


def _scripted_failures(log: list[dict[str, object]]) -> list[str]:
    inst, exp, snaps, reports = _scenario()
    exp.policy["scripts"] = {"document": "snapset-fsfreeze"}
    outcome = {
        "instance_id": inst.instance_id,
        "consistency": "application",
        "scripts": [{"status": "Success"}, {"status": "Success"}],
    }
    assert exp.invocation is not None
    exp.invocation.result["instances"] = [outcome]
    for snap in snaps:
        tags = snap["Tags"]
        assert isinstance(tags, list)
        snap["Tags"] = [
            {**t, "Value": "application"} if t["Key"] == "snapset:consistency" else t for t in tags
        ]
    return _verified(
        inst, exp, snaps, reports, ssm_log=[{**e, "instance_id": inst.instance_id} for e in log]
    )


IN_ORDER = [
    {"event": "SendCommand", "command": "pre-script"},
    {"event": "InvocationEnded", "command": "pre-script", "status": "Success"},
    {"event": "CreateSnapshots"},
    {"event": "SendCommand", "command": "post-script"},
    {"event": "InvocationEnded", "command": "post-script", "status": "Success"},
]


def test_the_checks_pass_a_set_taken_between_its_scripts() -> None:
    assert _scripted_failures(IN_ORDER) == []


def test_the_checks_catch_a_set_taken_before_its_pre_script() -> None:
    early = [IN_ORDER[2], IN_ORDER[0], IN_ORDER[1], *IN_ORDER[3:]]
    [failure] = _scripted_failures(early)
    assert "pre script, CreateSnapshots, post script, in that order" in failure
