"""Application-consistent sets through the deployed stack: the function, with its deployed role,
runs each instance's pre script, CreateSnapshots and post script through the local AWS's Run
Command, in that order, and the report and the snapshots' tags say which consistency each set
has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Fleet, snapshots_of, tags_of, unique_time

from localaws import LocalAws
from localaws.report_inbox import ReportInbox
from localaws.router import Router

pytestmark = pytest.mark.e2e

DOCUMENT = "snapset-fsfreeze"  # cdk.json: db-consistent
DB_TAGS = {"Backup": "db"}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ssm" / "snapset-fsfreeze.yaml"


@pytest.fixture
def ssm(local_aws: LocalAws, inbox: ReportInbox) -> Any:
    """The document the deployed policy names, and Run Command's log starting empty."""
    client = local_aws.client("ssm")
    names = {d["Name"] for d in client.list_documents()["DocumentIdentifiers"]}
    if DOCUMENT not in names:
        client.create_document(
            Name=DOCUMENT,
            Content=EXAMPLE.read_text(),
            DocumentType="Command",
            DocumentFormat="YAML",
        )
    local_aws.set_ssm(script_seconds=0.2)
    local_aws.ssm_state(drain=True)
    return client


def steps(log: Sequence[Mapping[str, Any]], instance_id: str) -> list[tuple[str, str | None]]:
    """The instance's SendCommand (with its command), CancelCommand and CreateSnapshots calls,
    in the order the local AWS received them."""
    return [
        (e["event"], e.get("command"))
        for e in log
        if e.get("instance_id") == instance_id
        and e["event"] in ("SendCommand", "CancelCommand", "CreateSnapshots")
    ]


def by_instance(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["instance_id"]: o for o in report["instances"]}


def consistency_tags(ec2: Any, trigger_id: str, instance_id: str) -> set[str]:
    return {
        tags_of(s)["snapset:consistency"]
        for s in snapshots_of(ec2, trigger_id, **{"snapset:instance-id": instance_id})
    }


PRE, POST = ("SendCommand", "pre-script"), ("SendCommand", "post-script")
CREATE = ("CreateSnapshots", None)


def test_each_set_is_taken_between_its_scripts_and_says_what_consistency_it_has(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any, ssm: Any
) -> None:
    ok = fleet.launch(DB_TAGS)
    failing = fleet.launch(DB_TAGS)
    unmanaged = fleet.launch(DB_TAGS)
    failed = {"status": "Failed", "stderr": "mysql: cannot lock tables", "response_code": 1}
    local_aws.set_ssm(
        instances={
            failing.instance_id: {"results": {"pre-script": [failed]}},
            unmanaged.instance_id: {"managed": False},
        }
    )

    report = router.fire_schedule(policy="db-consistent", scheduled_time=unique_time()).unwrap()

    log = local_aws.ssm_log()
    outcomes = by_instance(report)
    trigger_id = report["trigger"]["id"]
    assert steps(log, ok.instance_id) == [PRE, CREATE, POST]
    first = outcomes[ok.instance_id]
    assert (first["status"], first["consistency"]) == ("started", "application")
    assert [(s["command"], s["status"]) for s in first["scripts"]] == [
        ("pre-script", "Success"),
        ("post-script", "Success"),
    ]
    assert consistency_tags(ec2, trigger_id, ok.instance_id) == {"application"}

    # crash_consistent: the set is taken anyway, tagged crash, and the post script still runs
    assert steps(log, failing.instance_id) == [PRE, CREATE, POST]
    second = outcomes[failing.instance_id]
    assert (second["status"], second["consistency"]) == ("started", "crash")
    pre, post = second["scripts"]
    assert (pre["status"], pre["attempts"]) == ("Failed", 1)
    assert "mysql: cannot lock tables" in pre["error"]["message"]
    assert post["status"] == "Success"
    assert consistency_tags(ec2, trigger_id, failing.instance_id) == {"crash"}

    # an instance SSM does not manage gets no command at all
    assert steps(log, unmanaged.instance_id) == [CREATE]
    third = outcomes[unmanaged.instance_id]
    assert third["consistency"] == "crash"
    [not_sent] = third["scripts"]
    assert not_sent["status"] == "NotManaged"
    assert "not managed by SSM" in not_sent["error"]["message"]

    assert report["status"] == "partial"
    summary = report["summary"]
    assert (summary["started"], summary["application_consistent"]) == (3, 1)
    assert (summary["crash_consistent"], summary["script_failures"]) == (2, 2)
    (published,) = inbox.drain()
    assert published.message["summary"] == summary
    assert published.subject.endswith("2 script failures")


def test_skip_takes_no_set_and_a_hung_script_is_cancelled_at_its_timeout(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ec2: Any, ssm: Any
) -> None:
    hung = fleet.launch(DB_TAGS)
    local_aws.set_ssm(
        instances={hung.instance_id: {"results": {"pre-script": [{"status": "Hang"}]}}}
    )
    payload = {
        "policy": "db-consistent",
        "instance_ids": [hung.instance_id],
        "scripts": {"document": DOCUMENT, "timeout_seconds": 10, "on_script_failure": "skip"},
        "request_id": f"hung-{hung.instance_id}",
    }

    report = router.invoke(payload).unwrap()

    # cancelled with the deployed role's grant, no set, and the post script sent all the same
    assert steps(local_aws.ssm_log(), hung.instance_id) == [
        PRE,
        ("CancelCommand", "pre-script"),
        POST,
    ]
    [outcome] = report["instances"]
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "PreScriptFailed"
    assert "did not end within 10 s" in outcome["error"]["message"]
    assert [(s["command"], s["status"]) for s in outcome["scripts"]] == [
        ("pre-script", "TimedOut"),
        ("post-script", "Success"),
    ]
    assert snapshots_of(ec2, **{"snapset:instance-id": hung.instance_id}) == []
    assert report["status"] == "failed"


def test_a_fleet_runs_its_scripts_side_by_side(
    local_aws: LocalAws, router: Router, fleet: Fleet, inbox: ReportInbox, ssm: Any
) -> None:
    ids = fleet.launch_many(64, DB_TAGS)
    local_aws.set_ssm(script_seconds=1.0)

    report = router.fire_schedule(policy="db-consistent", scheduled_time=unique_time()).unwrap()

    assert report["summary"]["application_consistent"] == 64
    log = local_aws.ssm_log()
    assert all(steps(log, i) == [PRE, CREATE, POST] for i in ids)
    # not one instance after another: many scripts were running at the same moment
    assert local_aws.ssm_state()["peak_in_progress"] >= 16
