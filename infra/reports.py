"""The report bucket: every run's full report (the SNS message may be trimmed to fit SNS)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import nag
from infra.config import SnapsetConfig
from snapset.fanout import RUN_PREFIX
from snapset.report_archive import REPORT_PREFIX

RUN_FILES_DAYS = 30

SID_STORE_REPORTS = "StoreFullReports"
SID_REPORT_KEY = "UseReportKey"


class ReportArchive(Construct):
    """An SSE-KMS bucket (customer key with rotation, S3 Bucket Keys, SSL only, no public access,
    owner-enforced objects) whose reports expire after `report_retention_days`.

    Exposes `bucket` and `key`; `grant_store(role)` lets a role write reports and nothing else.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: SnapsetConfig) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "ReportKey",
            description="Snapset: encrypts the full run reports",
            enable_key_rotation=True,
            # The key outlives the stack with the bucket: deleting it would make the kept
            # reports unreadable.
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self,
            "Reports",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            # One data key per bucket, not per object: KMS calls (and their cost and quota) stay
            # flat however many reports a fleet writes.
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireReports",
                    prefix=REPORT_PREFIX,
                    expiration=Duration.days(config.report_retention_days),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
                # A fan-out's batches and results serve its execution only (the report keeps
                # what they said): a month covers a late redrive.
                s3.LifecycleRule(
                    id="ExpireFanOutRunFiles",
                    prefix=RUN_PREFIX,
                    expiration=Duration.days(RUN_FILES_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
            ],
            # Reports are the audit trail of what was backed up: they outlive the stack.
            removal_policy=RemovalPolicy.RETAIN,
        )
        nag.acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "Only the function's role can write here (one PutObject per run, scoped to "
            "reports/); server access logs would need a second bucket per install, and reads "
            "and writes are audited by CloudTrail data events where the account enables them.",
        )

    def grant_store(self, role: iam.IRole) -> None:
        """s3:PutObject under the report prefix, and the key's GenerateDataKey for SSE-KMS."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_STORE_REPORTS,
                actions=["s3:PutObject"],
                resources=[self.bucket.arn_for_objects(f"{REPORT_PREFIX}*")],
            )
        )
        # A single-part PutObject to an SSE-KMS bucket needs only GenerateDataKey (kms:Decrypt
        # is for multipart uploads and reads, which the function never does).
        stack = Stack.of(self)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_REPORT_KEY,
                actions=["kms:GenerateDataKey"],
                resources=[self.key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"s3.{stack.region}.{stack.url_suffix}"}
                },
            )
        )
        bucket = self.bucket.node.default_child
        assert isinstance(bucket, s3.CfnBucket)
        policy = role.node.find_child("DefaultPolicy")
        nag.acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::<{stack.resolve(stack.get_logical_id(bucket))}.Arn>"
            f"/{REPORT_PREFIX}*]",
            "Report keys are made per run (policy, date, trigger id, request id); the grant is "
            "s3:PutObject alone, limited to the report prefix of Snapset's own bucket.",
        )
