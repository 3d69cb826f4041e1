"""The demo doubles as a smoke test of the whole chain; its checks must catch divergences."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from localaws.lambda_runtime import Invocation
from localaws.report_inbox import Report
from snapset_cli import demo
from snapset_cli.demo_checks import Checks, Distributed, Expected, verify, verify_distributed
from snapset_cli.demo_fleet import DemoInstance, DemoVolume
from snapset_cli.render import Out

pytestmark = pytest.mark.e2e


def test_demo_runs_and_prints_the_sets_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--no-color"]) == 0
    out = capsys.readouterr().out
    assert "Snapshot sets (7)" in out
    # 5 runs, 7 completions, dr-1's copy report
    assert "SNS reports (13" in out
    assert "application" in out  # pg-1's set, taken between its scripts
    assert "db-1-scratch" in out  # excluded by tag, shown as excluded
    # dr-1's set under dr-nightly: shared by its completion event, copied, reported by the sweep
    assert "dr-nightly: set of dr-1 shared with 111122223333 (2 snapshots, 0 errors)" in out
    assert "Copies and shares (2 source snapshots)" in out
    rows = [c for c in map(str.split, out.splitlines()) if c[:1] == ["dr-1"] and "snap-" in c[1]]
    assert sorted(r[2] for r in rows) == ["dr-1-data", "dr-1-root"]
    for cells in rows:  # shared, tagged done, one completed copy in each region
        assert cells[3:5] == ["111122223333", "done"]
        assert (cells[6], cells[8]) == ("completed", "completed")
        assert cells[5] != cells[7]
    assert "copy report dr-nightly dr-1: succeeded: us-west-2 completed (2 copies" in out
    assert "eu-west-1 completed (2 copies" in out
    assert "checks passed" in out
    assert "copied once per snapshot to each of its regions" in out  # the copy checks ran
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
    full_reports: Mapping[str, object] = FULL_REPORTS,
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
    snaps: list[dict[str, object]], full_reports: Mapping[str, object] = FULL_REPORTS
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


IN_ORDER: list[dict[str, object]] = [
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


# --- the checks of a policy's copies and shares ---------------------------------------------

SHARED_WITH = "111122223333"
REGIONS = ("us-west-2", "eu-west-1")


def _dr_scenario() -> tuple[Expected, list[dict[str, Any]], list[Report], Distributed]:
    """A faithful end of dr-1's set: shared, one completed copy of each snapshot in each
    region, one succeeded copy report, the set tagged done."""
    root = DemoVolume("vol-root", "dr-root", {"Name": "dr-root"}, True)
    data = DemoVolume("vol-data", "dr-data", {"Name": "dr-data"}, False)
    inst = DemoInstance("dr-1", "i-0dddddddddddddddd", "running", {}, (root, data), "test")
    policy = {
        "policy": "dr",
        "target_tags": {"Backup": ["dr"]},
        "copies": [{"region": r} for r in REGIONS],
        "share_with_accounts": [SHARED_WITH],
    }
    result = {"trigger": {"id": "dr@t", "time": "2026-01-01T00:00:00Z"}}
    exp = Expected("schedule dr", policy, "schedule", [inst], Invocation("s", "fn", {}, result))
    snaps: list[dict[str, Any]] = [
        {
            "SnapshotId": f"snap-{v.name}",
            "VolumeId": v.volume_id,
            "State": "completed",
            "Tags": [
                {"Key": "snapset:policy", "Value": "dr"},
                {"Key": "snapset:trigger-id", "Value": "dr@t"},
                {"Key": "snapset:instance-id", "Value": inst.instance_id},
                {"Key": "snapset:copies", "Value": "done"},
            ],
        }
        for v in (root, data)
    ]
    ids = [s["SnapshotId"] for s in snaps]
    copies = {
        region: [
            {
                "SnapshotId": f"{sid}-{region}",
                "State": "completed",
                "Tags": [{"Key": "snapset:copy-of", "Value": sid}],
            }
            for sid in ids
        ]
        for region in REGIONS
    }
    permissions = {sid: [{"UserId": SHARED_WITH}] for sid in ids}
    about = {"policy": "dr", "instance_id": inst.instance_id, "trigger": {"id": "dr@t"}}
    shares = {"accounts": [SHARED_WITH], "shared": ids, "errors": []}
    regions = [{"region": r, "status": "completed", "copies": []} for r in REGIONS]
    reports = [
        Report("c", {**about, "kind": "completion", "shares": shares}, {}, "m1", "arn"),
        Report(
            "r",
            {**about, "kind": "copy", "status": "succeeded", "regions": regions},
            {},
            "m2",
            "arn",
        ),
    ]
    return exp, snaps, reports, Distributed(permissions, copies)


Scene = tuple[list[dict[str, Any]], list[Report], Distributed]


def _copy_failures(breaks: Callable[[Scene], Scene] = lambda scene: scene) -> list[str]:
    exp, snaps, reports, distributed = _dr_scenario()
    snaps, reports, distributed = breaks((snaps, reports, distributed))
    checks = Checks(Out(io.StringIO(), colour=False))
    verify_distributed(
        checks, expected=[exp], snapshots=snaps, distributed=distributed, reports=reports
    )
    return checks.failed


def test_the_copy_checks_pass_a_shared_set_copied_once_to_each_region_and_reported() -> None:
    assert _copy_failures() == []


def _permissions(scene: Scene, sid: str, value: list[dict[str, str]]) -> Scene:
    snaps, reports, distributed = scene
    return snaps, reports, replace(distributed, permissions={**distributed.permissions, sid: value})


def _copies(scene: Scene, region: str, change: Callable[[list[Any]], list[Any]]) -> Scene:
    snaps, reports, distributed = scene
    made = change([dict(c) for c in distributed.copies[region]])
    return snaps, reports, replace(distributed, copies={**distributed.copies, region: made})


def _reports(scene: Scene, change: Callable[[list[Report]], list[Report]]) -> Scene:
    return scene[0], change(list(scene[1])), scene[2]


def _message(report: Report, **fields: Any) -> Report:
    return replace(report, message={**report.message, **fields})


def _tagged(scene: Scene, value: str) -> Scene:
    snaps, reports, distributed = scene
    first = {
        **snaps[0],
        "Tags": [
            {**t, "Value": value} if t["Key"] == "snapset:copies" else t for t in snaps[0]["Tags"]
        ],
    }
    return [first, *snaps[1:]], reports, distributed


SHARE = "schedule dr: dr-1's set is shared with 111122223333 (every snapshot)"
SHARES_REPORTED = "schedule dr: dr-1's completion report names its shares"
WEST = "schedule dr: dr-1: one completed copy of each of its 2 snapshots in us-west-2"
IRELAND = "schedule dr: dr-1: one completed copy of each of its 2 snapshots in eu-west-1"
ONE_REPORT = "schedule dr: dr-1: one copy report"
REPORT_OK = "schedule dr: dr-1: its copy report succeeded, every region completed"
ON_TOPIC = "1 copy report(s) on the topic (one per copied set)"
DONE = "schedule dr: dr-1's set is tagged snapset:copies=done"


@pytest.mark.parametrize(
    ("breaks", "failing"),
    [
        pytest.param(lambda s: _permissions(s, "snap-dr-data", []), [SHARE], id="not-shared"),
        pytest.param(
            lambda s: _permissions(s, "snap-dr-data", [{"UserId": SHARED_WITH}, {"Group": "all"}]),
            [SHARE],
            id="public-too",
        ),
        pytest.param(
            lambda s: _permissions(s, "snap-dr-root", [{"UserId": "444455556666"}]),
            [SHARE],
            id="another-account",
        ),
        pytest.param(
            lambda s: _reports(s, lambda r: [_message(r[0], shares=None), r[1]]),
            [SHARES_REPORTED],
            id="completion-without-shares",
        ),
        pytest.param(
            lambda s: _reports(
                s,
                lambda r: [
                    _message(
                        r[0],
                        shares={
                            "accounts": [SHARED_WITH],
                            "shared": ["snap-dr-root"],
                            "errors": [{"code": "OperationNotPermitted", "message": "x"}],
                        },
                    ),
                    r[1],
                ],
            ),
            [SHARES_REPORTED],
            id="completion-with-a-share-error",
        ),
        pytest.param(lambda s: _copies(s, "eu-west-1", lambda c: c[1:]), [IRELAND], id="missing"),
        pytest.param(
            lambda s: _copies(s, "us-west-2", lambda c: [*c, {**c[0], "SnapshotId": "snap-2nd"}]),
            [WEST],
            id="copied-twice",
        ),
        pytest.param(
            lambda s: _copies(s, "us-west-2", lambda c: [{**c[0], "State": "pending"}, c[1]]),
            [WEST],
            id="still-pending",
        ),
        pytest.param(
            lambda s: _copies(s, "us-west-2", lambda c: [{**c[0], "State": "error"}, c[1]]),
            [WEST],
            id="failed",
        ),
        pytest.param(
            lambda s: _copies(
                s,
                "eu-west-1",
                lambda c: [
                    *c,
                    {
                        **c[0],
                        "SnapshotId": "snap-x",
                        "Tags": [{"Key": "snapset:copy-of", "Value": "snap-x"}],
                    },
                ],
            ),
            ["no other copies in eu-west-1"],
            id="a-copy-of-something-else",
        ),
        pytest.param(
            lambda s: _reports(s, lambda r: r[:1]), [ONE_REPORT, ON_TOPIC], id="no-report"
        ),
        pytest.param(
            lambda s: _reports(s, lambda r: [*r, r[1]]), [ONE_REPORT, ON_TOPIC], id="reported-twice"
        ),
        pytest.param(
            lambda s: _reports(
                s,
                lambda r: [
                    r[0],
                    _message(
                        r[1],
                        status="partial",
                        regions=[
                            {"region": "us-west-2", "status": "completed"},
                            {"region": "eu-west-1", "status": "failed"},
                        ],
                    ),
                ],
            ),
            [REPORT_OK],
            id="partial",
        ),
        pytest.param(
            lambda s: _reports(
                s,
                lambda r: [
                    r[0],
                    _message(r[1], regions=[{"region": "us-west-2", "status": "completed"}]),
                ],
            ),
            [REPORT_OK],
            id="a-region-missing",
        ),
        pytest.param(lambda s: _tagged(s, "copying"), [DONE], id="set-not-done"),
    ],
)
def test_each_copy_check_fails_when_its_condition_breaks(
    breaks: Callable[[Scene], Scene], failing: list[str]
) -> None:
    failures = _copy_failures(breaks)
    assert len(failures) == len(failing), failures
    for failure, what in zip(failures, failing, strict=True):
        assert failure.startswith(what), failures


def test_the_copy_checks_fail_when_the_set_is_missing() -> None:
    failures = _copy_failures(lambda s: ([], s[1], s[2]))
    assert "schedule dr: dr-1 has a set to distribute" in failures
