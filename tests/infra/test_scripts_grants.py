"""A policy's scripts reach the role as exactly what Run Command needs: SendCommand only with
the deployed policies' documents, and nothing of SSM when no policy has scripts."""

from __future__ import annotations

from typing import Any

import pytest
from infra_support import Synth, example_config, synth

SHARED = "arn:aws:ssm:us-east-1:111122223333:document/shared-freeze"
SAP = "AWSSystemsManagerSAP-CreateDLMSnapshotForSAPHANA"


def ssm_statements(s: Synth) -> list[dict[str, Any]]:
    return [
        st
        for policy in s.resources("AWS::IAM::Policy").values()
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        if any(
            a.startswith("ssm:")
            for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
        )
    ]


def joined(value: Any) -> str:
    """A resource ARN as text, `Fn::Join` pieces with their references named."""
    if isinstance(value, str):
        return value
    parts = value["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{next(iter(p.values()))}>" for p in parts)


@pytest.fixture(scope="module")
def s() -> Synth:
    config = example_config()
    config["policies"].append(
        {
            "policy": "sap",
            "instance_ids": ["i-0123456789abcdef0"],
            "scripts": {"document": SAP},
            "schedules": ["rate(1 day)"],
        }
    )
    config["policies"].append(
        {
            "policy": "shared",
            "instance_ids": ["i-0123456789abcdef1"],
            "scripts": {"document": SHARED, "stages": ["pre"]},
            "schedules": ["rate(1 day)"],
        }
    )
    return synth(config)


def test_send_command_names_each_deployed_document(s: Synth) -> None:
    [send] = [st for st in ssm_statements(s) if st["Sid"] == "SendPolicyScripts"]
    assert send["Action"] == "ssm:SendCommand"
    assert sorted(joined(r) for r in send["Resource"]) == sorted(
        [
            "arn:<AWS::Partition>:ssm:<AWS::Region>::document/" + SAP,
            SHARED,
            "arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:document/snapset-fsfreeze",
        ]
    )
    assert "Condition" not in send


def test_send_command_reaches_only_the_instances_a_policy_with_scripts_targets(s: Synth) -> None:
    sends = {st["Sid"]: st for st in ssm_statements(s) if st["Action"] == "ssm:SendCommand"}
    # db-consistent (policy 2) targets Backup=db: any instance, but only one carrying that tag
    tagged = sends["SendPolicyScriptsToTagged2"]
    assert joined(tagged["Resource"]) == (
        "arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/*"
    )
    assert tagged["Condition"] == {"StringLike": {"ssm:resourceTag/Backup": ["db"]}}
    # sap and shared (policies 4 and 5) name their instances
    assert joined(sends["SendPolicyScriptsToInstances4"]["Resource"]) == (
        "arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/i-0123456789abcdef0"
    )
    assert joined(sends["SendPolicyScriptsToInstances5"]["Resource"]) == (
        "arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/i-0123456789abcdef1"
    )
    # the policies without scripts reach no instance
    assert sorted(sends) == [
        "SendPolicyScripts",
        "SendPolicyScriptsToInstances4",
        "SendPolicyScriptsToInstances5",
        "SendPolicyScriptsToTagged2",
    ]


def test_following_a_command_is_granted_where_ssm_has_no_resource_types(s: Synth) -> None:
    [follow] = [st for st in ssm_statements(s) if st["Sid"] == "FollowPolicyScripts"]
    assert sorted(follow["Action"]) == [
        "ssm:CancelCommand",
        "ssm:DescribeInstanceInformation",
        "ssm:ListCommandInvocations",
    ]
    assert follow["Resource"] == "*"


def test_without_scripts_the_role_has_nothing_of_ssm() -> None:
    config = example_config()
    config["policies"] = [p for p in config["policies"] if "scripts" not in p]
    plain = synth(config, nag=False)
    assert ssm_statements(plain) == []
    names = {
        a["Properties"].get("MetricName")
        for a in plain.resources("AWS::CloudWatch::Alarm").values()
    }
    assert "PostScriptFailures" not in names


def test_each_policy_with_scripts_has_its_script_failures_alarm(s: Synth) -> None:
    alarms = [
        a["Properties"]
        for a in s.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "PostScriptFailures"
    ]
    assert sorted({d["Name"]: d["Value"] for d in a["Dimensions"]}["policy"] for a in alarms) == [
        "db-consistent",
        "sap",
        "shared",
    ]
    for alarm in alarms:
        assert alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_the_function_waits_for_its_scripts_grants(s: Synth) -> None:
    [function] = s.resources("AWS::Lambda::Function").values()
    [scripts_policy] = [k for k in s.resources("AWS::IAM::Policy") if "ScriptsPolicy" in k]
    assert scripts_policy in function["DependsOn"]
