"""Copies into other regions and shares with other accounts reach the stack as exactly what the
function needs: its grants (per region, scoped by the policies' tags and the deployed accounts),
the deployed copies and shares in its environment, the copy sweep's schedule and the copy
failure alarms; nothing of it when no policy copies or shares. cdk-nag runs in every synth here
(an unacknowledged finding fails it)."""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import lint
from infra_support import Synth, cdk_json, example_config, synth
from pydantic import TypeAdapter

from app import build_app
from infra.config import ConfigError, load_config
from snapset.copies import COPY_SWEEP_KEY, COPY_SWEEP_SCHEDULE
from snapset.policy import Distribution
from snapset.settings import ENV_DEPLOYED_COPIES

HOME_SNAPSHOTS = "arn:<AWS::Partition>:ec2:<AWS::Region>::snapshot/*"
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# A copy never carries a home set's identity tags (its own are snapset:copy-*).
NO_HOME_SET_KEYS = {
    "ForAllValues:StringNotEquals": {
        "aws:TagKeys": [
            "snapset:policy",
            "snapset:trigger-id",
            "snapset:instance-id",
            "snapset:copies",
            "snapset:copy-errors",
        ]
    }
}


def snapshots_in(region: str) -> str:
    return f"arn:<AWS::Partition>:ec2:{region}::snapshot/*"


def joined(value: Any) -> Any:
    """A resource or condition value as text, `Fn::Join` pieces with their references named;
    lists element by element."""
    if isinstance(value, list):
        return [joined(v) for v in value]
    if isinstance(value, dict) and "Fn::Join" in value:
        parts = value["Fn::Join"][1]
        return "".join(p if isinstance(p, str) else reference(p) for p in parts)
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return reference(value)
    return value


def reference(value: dict[str, Any]) -> str:
    return f"<{value['Ref']}>" if "Ref" in value else f"<{json.dumps(value)}>"


def readable(statement: dict[str, Any]) -> dict[str, Any]:
    """A statement with its ARNs and condition values as text."""
    out = {k: joined(v) for k, v in statement.items()}
    if "Condition" in statement:
        out["Condition"] = {
            op: {key: joined(v) for key, v in keys.items()}
            for op, keys in statement["Condition"].items()
        }
    return out


def copies_policy(s: Synth) -> dict[str, dict[str, Any]] | None:
    """The CopiesPolicy's statements by Sid, or None when the stack has none."""
    found = [v for k, v in s.resources("AWS::IAM::Policy").items() if "CopiesPolicy" in k]
    if not found:
        return None
    [policy] = found
    return {st["Sid"]: readable(st) for st in policy["Properties"]["PolicyDocument"]["Statement"]}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def all_actions(s: Synth) -> set[str]:
    return {
        action
        for policy in s.resources("AWS::IAM::Policy").values()
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in as_list(st["Action"])
    }


def environment(s: Synth) -> dict[str, Any]:
    variables: dict[str, Any] = s.only("AWS::Lambda::Function")["Properties"]["Environment"][
        "Variables"
    ]
    return variables


def sweeps(s: Synth) -> list[dict[str, Any]]:
    return [
        v["Properties"]
        for v in s.resources("AWS::Scheduler::Schedule").values()
        if json.loads(v["Properties"]["Target"]["Input"]) == {COPY_SWEEP_KEY: {}}
    ]


def copy_failure_alarms(s: Synth) -> dict[str, dict[str, Any]]:
    """The CopyFailures alarms by their `policy` dimension."""
    return {
        {d["Name"]: d["Value"] for d in a["Properties"]["Dimensions"]}["policy"]: a["Properties"]
        for a in s.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "CopyFailures"
    }


def without_distribution(config: dict[str, Any]) -> dict[str, Any]:
    for policy in config["policies"]:
        policy.pop("copies", None)
        policy.pop("share_with_accounts", None)
    return config


@pytest.fixture(scope="module")
def shipped() -> Synth:
    return synth()


def custom_config() -> dict[str, Any]:
    """cdk.json's policies, plus one that copies into two regions (one under a key of its own,
    with no retention anywhere) and shares with two accounts, on instance events only, and one
    that only shares, with dr-nightly's account; dr-nightly copies into us-west-2 only here."""
    config = example_config()
    for policy in config["policies"]:
        if policy["policy"] == "dr-nightly":
            policy["copies"] = [c for c in policy["copies"] if c["region"] == "us-west-2"]
    config["policies"] += [
        {
            "policy": "dr-multi",
            "instance_ids": ["i-0123456789abcdef0"],
            "copies": [
                {"region": "eu-west-1", "kms_key_arn": KEY},
                {"region": "us-west-2", "copy_tags": False},
            ],
            "share_with_accounts": ["444455556666", "111122223333"],
            "on_instance_states": ["stopped"],
        },
        {
            "policy": "share-only",
            "target_tags": {"Backup": ["shared"]},
            "share_with_accounts": ["111122223333"],
            "schedules": ["rate(1 day)"],
        },
    ]
    return config


@pytest.fixture(scope="module")
def custom() -> Synth:
    return synth(custom_config())


# --- the grants -----------------------------------------------------------------------------


BOTH = ["eu-west-1", "us-west-2"]


def test_shipped_copy_and_share_grants(shipped: Synth) -> None:
    sids = copies_policy(shipped)
    assert sids is not None
    assert sids == {
        "TagCopiedSets": {
            "Sid": "TagCopiedSets",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": HOME_SNAPSHOTS,
            "Condition": {
                "StringEquals": {"aws:ResourceTag/snapset:copies": ["copying", "pending"]},
                "ForAllValues:StringEquals": {
                    "aws:TagKeys": ["snapset:copies", "snapset:copy-errors"]
                },
            },
        },
        "CopySetsFromHome": {
            "Sid": "CopySetsFromHome",
            "Effect": "Allow",
            "Action": "ec2:CopySnapshot",
            "Resource": HOME_SNAPSHOTS,
            "Condition": {"StringEquals": {"aws:RequestedRegion": BOTH}},
        },
        "ShareSets0": {
            "Sid": "ShareSets0",
            "Effect": "Allow",
            "Action": "ec2:ModifySnapshotAttribute",
            "Resource": HOME_SNAPSHOTS,
            "Condition": {
                "StringEquals": {
                    "aws:ResourceTag/snapset:policy": ["dr-nightly"],
                    "ec2:Add/userId": ["111122223333"],
                },
                "StringEqualsIfExists": {"ec2:Attribute": "createVolumePermission"},
                "Null": {"ec2:Add/group": "true"},
            },
        },
        "CopySetsIntoEuWest1": {
            "Sid": "CopySetsIntoEuWest1",
            "Effect": "Allow",
            "Action": "ec2:CopySnapshot",
            "Resource": snapshots_in("eu-west-1"),
            "Condition": {
                "StringEquals": {"aws:RequestTag/snapset:copy-policy": ["dr-nightly"]},
                **NO_HOME_SET_KEYS,
            },
        },
        "TagCopiesAtCreationInEuWest1": {
            "Sid": "TagCopiesAtCreationInEuWest1",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": snapshots_in("eu-west-1"),
            "Condition": {
                "StringEquals": {
                    "ec2:CreateAction": "CopySnapshot",
                    "aws:RequestTag/snapset:copy-policy": ["dr-nightly"],
                },
                **NO_HOME_SET_KEYS,
            },
        },
        "CopyRetentionInEuWest1": {
            "Sid": "CopyRetentionInEuWest1",
            "Effect": "Allow",
            "Action": ["ec2:DeleteSnapshot", "ec2:DescribeSnapshotAttribute"],
            "Resource": snapshots_in("eu-west-1"),
            "Condition": {"StringEquals": {"aws:ResourceTag/snapset:copy-policy": ["dr-nightly"]}},
        },
        "CopySetsIntoUsWest2": {
            "Sid": "CopySetsIntoUsWest2",
            "Effect": "Allow",
            "Action": "ec2:CopySnapshot",
            "Resource": snapshots_in("us-west-2"),
            "Condition": {
                "StringEquals": {"aws:RequestTag/snapset:copy-policy": ["dr-nightly"]},
                **NO_HOME_SET_KEYS,
            },
        },
        "TagCopiesAtCreationInUsWest2": {
            "Sid": "TagCopiesAtCreationInUsWest2",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": snapshots_in("us-west-2"),
            "Condition": {
                "StringEquals": {
                    "ec2:CreateAction": "CopySnapshot",
                    "aws:RequestTag/snapset:copy-policy": ["dr-nightly"],
                },
                **NO_HOME_SET_KEYS,
            },
        },
        "DescribeCopies": {
            "Sid": "DescribeCopies",
            "Effect": "Allow",
            "Action": "ec2:DescribeSnapshots",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:RequestedRegion": BOTH}},
        },
        "CopyRetentionInUsWest2": {
            "Sid": "CopyRetentionInUsWest2",
            "Effect": "Allow",
            "Action": ["ec2:DeleteSnapshot", "ec2:DescribeSnapshotAttribute"],
            "Resource": snapshots_in("us-west-2"),
            "Condition": {"StringEquals": {"aws:ResourceTag/snapset:copy-policy": ["dr-nightly"]}},
        },
        "CopyRetentionDescribeUnscopable": {
            "Sid": "CopyRetentionDescribeUnscopable",
            "Effect": "Allow",
            "Action": ["ec2:DescribeImages", "ec2:DescribeLockedSnapshots"],
            "Resource": "*",
            # eu-west-1's copies have the policy's own retention (count 7)
            "Condition": {"StringEquals": {"aws:RequestedRegion": BOTH}},
        },
    }


def test_each_destination_region_admits_only_the_policies_copying_there(custom: Synth) -> None:
    sids = copies_policy(custom)
    assert sids is not None
    for sid, region, policies in (
        ("UsWest2", "us-west-2", ["dr-nightly", "dr-multi"]),
        ("EuWest1", "eu-west-1", ["dr-multi"]),
    ):
        copy_into = sids[f"CopySetsInto{sid}"]
        assert copy_into["Resource"] == snapshots_in(region)
        assert copy_into["Condition"] == {
            "StringEquals": {"aws:RequestTag/snapset:copy-policy": policies},
            **NO_HOME_SET_KEYS,
        }
        tag_new = sids[f"TagCopiesAtCreationIn{sid}"]
        assert tag_new["Resource"] == snapshots_in(region)
        assert tag_new["Condition"] == {
            "StringEquals": {
                "ec2:CreateAction": "CopySnapshot",
                "aws:RequestTag/snapset:copy-policy": policies,
            },
            **NO_HOME_SET_KEYS,
        }
    assert sids["CopySetsFromHome"]["Condition"] == {
        "StringEquals": {"aws:RequestedRegion": ["eu-west-1", "us-west-2"]}
    }
    assert sids["DescribeCopies"]["Condition"] == sids["CopySetsFromHome"]["Condition"]
    # any set still waiting for its copies, whichever policy (the sweep closes them all)
    assert sids["TagCopiedSets"]["Condition"]["StringEquals"] == {
        "aws:ResourceTag/snapset:copies": ["copying", "pending"]
    }


def test_destination_retention_only_where_a_policy_retains_its_copies(custom: Synth) -> None:
    sids = copies_policy(custom)
    assert sids is not None
    # dr-multi has no retention (its own or its copies'): it deletes nothing anywhere
    assert sids["CopyRetentionInUsWest2"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/snapset:copy-policy": ["dr-nightly"]}
    }
    assert "CopyRetentionInEuWest1" not in sids
    assert sids["CopyRetentionDescribeUnscopable"]["Condition"] == {
        "StringEquals": {"aws:RequestedRegion": ["us-west-2"]}
    }


def test_each_policy_shares_only_with_its_own_accounts(custom: Synth) -> None:
    sids = copies_policy(custom)
    assert sids is not None
    shares = {k: v for k, v in sids.items() if k.startswith("ShareSets")}
    assert sorted(shares) == ["ShareSets0", "ShareSets1"]
    by_policies = {
        tuple(st["Condition"]["StringEquals"]["aws:ResourceTag/snapset:policy"]): st
        for st in shares.values()
    }
    assert set(by_policies) == {("dr-nightly", "share-only"), ("dr-multi",)}
    assert by_policies["dr-nightly", "share-only"]["Condition"]["StringEquals"][
        "ec2:Add/userId"
    ] == ["111122223333"]
    assert by_policies[("dr-multi",)]["Condition"]["StringEquals"]["ec2:Add/userId"] == [
        "111122223333",
        "444455556666",
    ]
    for st in shares.values():
        assert st["Action"] == "ec2:ModifySnapshotAttribute"
        assert st["Resource"] == HOME_SNAPSHOTS
        assert st["Condition"]["Null"] == {"ec2:Add/group": "true"}
        assert st["Condition"]["StringEqualsIfExists"] == {
            "ec2:Attribute": "createVolumePermission"
        }


def test_kms_only_on_the_named_destination_keys_through_ec2(custom: Synth) -> None:
    sids = copies_policy(custom)
    assert sids is not None
    via_ec2 = {"kms:ViaService": ["ec2.eu-west-1.<AWS::URLSuffix>"]}
    assert sids["UseCopyKeys"] == {
        "Sid": "UseCopyKeys",
        "Effect": "Allow",
        "Action": [
            "kms:Decrypt",
            "kms:DescribeKey",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
        ],
        "Resource": KEY,
        "Condition": {"StringEquals": via_ec2},
    }
    assert sids["CopyKeyGrants"] == {
        "Sid": "CopyKeyGrants",
        "Effect": "Allow",
        "Action": "kms:CreateGrant",
        "Resource": KEY,
        "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}, "StringEquals": via_ec2},
    }
    # the key is named by these two statements only
    naming = {
        st.get("Sid")
        for res in custom.resources("AWS::IAM::Policy").values()
        for st in res["Properties"]["PolicyDocument"]["Statement"]
        if KEY in as_list(joined(st["Resource"]))
    }
    assert naming == {"UseCopyKeys", "CopyKeyGrants"}


def test_without_named_keys_no_kms_statement(shipped: Synth) -> None:
    sids = copies_policy(shipped)
    assert sids is not None
    assert not {"UseCopyKeys", "CopyKeyGrants"} & set(sids)


def test_home_lookups_stay_in_the_stack_region(shipped: Synth) -> None:
    """The destinations' look-ups are granted by region above; the home ones only at home."""
    home = {"StringEquals": {"aws:RequestedRegion": "<AWS::Region>"}}
    for part, sid in (
        ("CreateSnapshotsPolicy", "DescribeUnscopable"),
        ("RetentionPolicy", "RetentionDescribeUnscopable"),
    ):
        [policy] = [v for k, v in shipped.resources("AWS::IAM::Policy").items() if part in k]
        [st] = [
            readable(st)
            for st in policy["Properties"]["PolicyDocument"]["Statement"]
            if st.get("Sid") == sid
        ]
        assert st["Resource"] == "*"
        assert st["Condition"] == home


def test_the_function_waits_for_its_copy_grants(shipped: Synth) -> None:
    [function] = shipped.resources("AWS::Lambda::Function").values()
    [copies] = [k for k in shipped.resources("AWS::IAM::Policy") if "CopiesPolicy" in k]
    assert copies in function["DependsOn"]


def test_the_custom_template_is_cfn_lint_clean(custom: Synth) -> None:
    matches = lint(json.dumps(custom.raw), regions=["us-east-1", "eu-central-1"])
    assert [str(m) for m in matches] == []


# --- nothing without copies or shares --------------------------------------------------------


def test_without_copies_or_shares_nothing_of_them() -> None:
    plain = synth(without_distribution(example_config()))
    assert copies_policy(plain) is None
    assert not {"ec2:CopySnapshot", "ec2:ModifySnapshotAttribute", "kms:CreateGrant"} & (
        all_actions(plain)
    )
    assert environment(plain)[ENV_DEPLOYED_COPIES] == "{}"
    assert sweeps(plain) == []
    assert copy_failure_alarms(plain) == {}


def test_shares_alone_grant_sharing_and_nothing_of_copies() -> None:
    config = without_distribution(example_config())
    config["policies"][0]["share_with_accounts"] = ["111122223333"]
    shares = synth(config)
    sids = copies_policy(shares)
    assert sids is not None
    assert sorted(sids) == ["ShareSets0"]
    assert sids["ShareSets0"]["Condition"]["StringEquals"] == {
        "aws:ResourceTag/snapset:policy": ["nightly-app"],
        "ec2:Add/userId": ["111122223333"],
    }
    assert "ec2:CopySnapshot" not in all_actions(shares)
    assert sweeps(shares) == []
    assert copy_failure_alarms(shares) == {}
    assert json.loads(environment(shares)[ENV_DEPLOYED_COPIES]) == {
        "nightly-app": {"copies": [], "share_with_accounts": ["111122223333"]}
    }


# --- the environment, the schedule, the alarms -----------------------------------------------


DEPLOYED = TypeAdapter(dict[str, Distribution])


def test_deployed_copies_are_the_distributions_of_the_policies_that_have_one(
    shipped: Synth, custom: Synth
) -> None:
    assert environment(shipped)[ENV_DEPLOYED_COPIES] == (
        '{"dr-nightly":{"copies":[{"region":"us-west-2","retention":{"count":3},'
        '"copy_tags":true},{"region":"eu-west-1","copy_tags":true}],'
        '"share_with_accounts":["111122223333"]}}'
    )
    config = load_config(custom_config())
    deployed = DEPLOYED.validate_json(environment(custom)[ENV_DEPLOYED_COPIES])
    assert deployed == {
        p.name: Distribution.of(p) for p in config.policies if p.copies or p.share_with_accounts
    }
    assert list(deployed) == ["dr-nightly", "dr-multi", "share-only"]
    assert deployed["dr-multi"].copies[0].kms_key_arn == KEY
    assert deployed["dr-multi"].copies[1].copy_tags is False


def test_one_copy_sweep_schedule_with_the_schedules_conventions(shipped: Synth) -> None:
    [sweep] = sweeps(shipped)
    assert COPY_SWEEP_SCHEDULE == "rate(5 minutes)"
    assert (sweep["ScheduleExpression"], sweep["ScheduleExpressionTimezone"]) == (
        COPY_SWEEP_SCHEDULE,
        "UTC",
    )
    assert sweep["Target"]["Input"] == '{"copy_sweep":{}}'
    assert sweep["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert sweep["State"] == "ENABLED"
    [policy_schedule, *_] = [
        v["Properties"]
        for v in shipped.resources("AWS::Scheduler::Schedule").values()
        if "policy" in json.loads(v["Properties"]["Target"]["Input"])
    ]
    # the same function, role, dead-letter queue and retries as the policies' schedules
    for key in ("Arn", "RoleArn", "DeadLetterConfig", "RetryPolicy"):
        assert sweep["Target"][key] == policy_schedule["Target"][key], key
    assert "SchedulerRole" in sweep["Target"]["RoleArn"]["Fn::GetAtt"][0]
    assert "SchedulerDlq" in sweep["Target"]["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]


def test_a_copy_failures_alarm_per_policy_with_copies(custom: Synth) -> None:
    alarms = copy_failure_alarms(custom)
    assert sorted(alarms) == ["dr-multi", "dr-nightly"]
    for policy, alarm in alarms.items():
        assert alarm["Namespace"] == "Snapset"
        assert sorted(alarm["Dimensions"], key=lambda d: d["Name"]) == [
            {"Name": "policy", "Value": policy},
            {"Name": "service", "Value": "snapset"},
        ]
        assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 1)
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert len(alarm["AlarmActions"]) == 1


# --- the configuration ---------------------------------------------------------------------


def policy(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "policy": "prod-db",
        "target_tags": {"Backup": ["nightly"]},
        "schedules": ["rate(1 day)"],
    }
    base.update(overrides)
    return base


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return str(info.value)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            {"copies": [{"region": "xx-north-9"}]},
            "policies[1] \"prod-db\": copies[0].region: 'xx-north-9' is not an AWS region",
        ),
        (
            {"copies": [{"region": "us-west-2"}, {"region": "us-west-2"}]},
            'policies[1] "prod-db": copies: one copy per region (repeated: us-west-2)',
        ),
        (
            {
                "copies": [
                    {"region": r} for r in ("us-west-1", "us-west-2", "eu-west-1", "eu-west-2")
                ]
            },
            'policies[1] "prod-db": copies: List should have at most 3 items',
        ),
        (
            {"copies": [{"region": "us-west-2", "kms_key_arn": KEY}]},
            'policies[1] "prod-db": copies[0]: kms_key_arn: a KMS key is regional',
        ),
        (
            {"copies": [{"region": "us-west-2", "retention": {}}]},
            'policies[1] "prod-db": copies[0].retention: retention needs count',
        ),
        (
            {"share_with_accounts": ["1234"]},
            'policies[1] "prod-db": share_with_accounts[0]: String should match pattern',
        ),
        (
            {"share_with_accounts": [f"{n:012d}" for n in range(21)]},
            'policies[1] "prod-db": share_with_accounts: List should have at most 20 items',
        ),
    ],
)
def test_bad_copies_and_shares_name_policy_and_field(bad: dict[str, Any], expected: str) -> None:
    assert expected in error_of({"policies": [policy(policy="web"), policy(**bad)]})


def test_copies_on_an_instance_event_policy_are_allowed() -> None:
    stopped = policy(schedules=[], on_instance_states=["stopped"], copies=[{"region": "us-west-2"}])
    [loaded] = load_config({"policies": [stopped]}).policies
    assert [c.region for c in loaded.copies] == ["us-west-2"]


def build_in(region: str, snapset: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> cdk.App:
    """The app as `cdk synth` builds it in an account and region it knows (no synth)."""
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "123456789012")
    monkeypatch.setenv("CDK_DEFAULT_REGION", region)
    context = copy.deepcopy(cdk_json()["context"])
    context["snapset"] = snapset
    return build_app(cdk.App(context=context, outdir=tempfile.mkdtemp()), nag=False)


def test_a_copy_into_the_stacks_own_region_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as info:
        build_in("us-west-2", example_config(), monkeypatch)
    assert str(info.value).endswith(
        'policies[3] "dr-nightly": copies[0].region: us-west-2 is the region the stack is '
        "deployed to, and a copy must go to another region"
    )
    # elsewhere the same configuration builds (env-agnostic, the Lambda checks at run time)
    build_in("eu-central-1", example_config(), monkeypatch)


def test_in_a_known_region_the_copy_grants_need_no_other_acknowledgment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a region known, ARNs carry it instead of `AWS::Region`: the copies policy's
    acknowledgments name its resources as cdk-nag does then."""
    app = build_in("eu-central-1", custom_config(), monkeypatch)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with contextlib.suppress(RuntimeError):  # findings elsewhere are not this test's
        app.synth()
    report = json.loads((Path(app.outdir) / "validation-report.json").read_text())
    copies_findings = [
        (v["ruleName"], c["constructPath"])
        for r in report["pluginReports"]
        if r["pluginName"] != "Construct Annotations"
        for v in r["violations"]
        for c in v["violatingConstructs"]
        if "CopiesPolicy" in c["constructPath"]
    ]
    assert copies_findings == []
