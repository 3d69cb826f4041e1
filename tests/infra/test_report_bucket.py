"""The report bucket: full run reports, encrypted, private, expiring, written by the function
alone and under its prefix only."""

from __future__ import annotations

from typing import Any

import pytest
from infra_support import Synth, example_config, synth

from infra.config import ConfigError, load_config
from infra.fan_out import SID_LIST_RUN_FILES, SID_RUN_FILES
from infra.reports import SID_REPORT_KEY, SID_STORE_REPORTS
from snapset.fanout import RUN_PREFIX
from snapset.report_archive import REPORT_PREFIX
from snapset.settings import ENV_REPORT_BUCKET


@pytest.fixture(scope="module")
def s() -> Synth:
    config = example_config()
    config["report_retention_days"] = 30
    return synth(config)


def _bucket(s: Synth) -> tuple[str, dict[str, Any]]:
    [(logical_id, bucket)] = s.resources("AWS::S3::Bucket").items()
    return logical_id, bucket


def _report_key(s: Synth) -> str:
    [key_id] = [
        k
        for k, v in s.resources("AWS::KMS::Key").items()
        if v["Properties"]["Description"] == "Snapset: encrypts the full run reports"
    ]
    return key_id


def _role_statements(s: Synth) -> dict[str, dict[str, Any]]:
    policies = s.resources("AWS::IAM::Policy").items()
    [policy] = [v for k, v in policies if "FunctionRoleDefaultPolicy" in k]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    return {st["Sid"]: st for st in statements if "Sid" in st}


def test_encrypted_with_its_own_rotating_key_and_bucket_keys(s: Synth) -> None:
    _, bucket = _bucket(s)
    key_id = _report_key(s)
    [rule] = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule == {
        "BucketKeyEnabled": True,
        "ServerSideEncryptionByDefault": {
            "KMSMasterKeyID": {"Fn::GetAtt": [key_id, "Arn"]},
            "SSEAlgorithm": "aws:kms",
        },
    }
    key = s.resources("AWS::KMS::Key")[key_id]
    assert key["Properties"]["EnableKeyRotation"] is True
    # the reports outlive the stack, and so does the key that can read them
    assert key["DeletionPolicy"] == bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"


def test_private_owner_enforced_and_ssl_only(s: Synth) -> None:
    logical_id, bucket = _bucket(s)
    assert bucket["Properties"]["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["Properties"]["OwnershipControls"] == {
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]
    }
    policy = s.only("AWS::S3::BucketPolicy")["Properties"]
    assert policy["Bucket"] == {"Ref": logical_id}
    [deny] = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_reports_expire_after_the_configured_days(s: Synth) -> None:
    _, bucket = _bucket(s)
    assert bucket["Properties"]["LifecycleConfiguration"]["Rules"] == [
        {
            "Id": "ExpireReports",
            "Prefix": REPORT_PREFIX,
            "ExpirationInDays": 30,
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            "Status": "Enabled",
        },
        {
            "Id": "ExpireFanOutRunFiles",
            "Prefix": RUN_PREFIX,
            "ExpirationInDays": 30,
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            "Status": "Enabled",
        },
    ]


def test_retention_defaults_to_400_days_and_is_checked() -> None:
    assert load_config(example_config()).report_retention_days == 400
    for bad in (0, 3654, "30"):
        config = {**example_config(), "report_retention_days": bad}
        with pytest.raises(ConfigError, match="report_retention_days"):
            load_config(config)


def test_the_function_may_only_put_reports_under_the_prefix(s: Synth) -> None:
    logical_id, _ = _bucket(s)
    sids = _role_statements(s)
    store = sids[SID_STORE_REPORTS]
    assert store["Action"] == "s3:PutObject"
    assert store["Resource"] == {
        "Fn::Join": ["", [{"Fn::GetAtt": [logical_id, "Arn"]}, f"/{REPORT_PREFIX}*"]]
    }
    key = sids[SID_REPORT_KEY]
    assert key["Action"] == "kms:GenerateDataKey"
    assert key["Resource"] == {"Fn::GetAtt": [_report_key(s), "Arn"]}
    # the key is usable only through S3, in this region
    assert key["Condition"] == {
        "StringEquals": {
            "kms:ViaService": {
                "Fn::Join": ["", ["s3.", {"Ref": "AWS::Region"}, ".", {"Ref": "AWS::URLSuffix"}]]
            }
        }
    }
    # nothing else in any of the function role's policies reaches S3 but the fan-out's run
    # files, read and written under their own prefix only
    runs = sids[SID_RUN_FILES]
    assert sorted(runs["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert runs["Resource"] == {
        "Fn::Join": ["", [{"Fn::GetAtt": [logical_id, "Arn"]}, f"/{RUN_PREFIX}*"]]
    }
    for name, policy in s.resources("AWS::IAM::Policy").items():
        if "StateMachine" in name:  # the state machine's role: its ItemReader reads batches
            continue
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            s3_actions = [a for a in actions if a.startswith("s3:")]
            allowed = (SID_STORE_REPORTS, SID_RUN_FILES, SID_LIST_RUN_FILES)
            assert s3_actions == [] or st.get("Sid") in allowed, st
    # listing only under the run prefix (it makes a missing result a 404, not a 403)
    listing = sids[SID_LIST_RUN_FILES]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Resource"] == {"Fn::GetAtt": [logical_id, "Arn"]}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{RUN_PREFIX}*"]}}


def test_the_function_and_the_outputs_name_the_bucket(s: Synth) -> None:
    logical_id, _ = _bucket(s)
    env = s.only("AWS::Lambda::Function")["Properties"]["Environment"]["Variables"]
    assert env[ENV_REPORT_BUCKET] == {"Ref": logical_id}
    assert s.raw["Outputs"]["ReportBucket"]["Value"] == {"Ref": logical_id}
