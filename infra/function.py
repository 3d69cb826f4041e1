"""The snapshot Lambda: its code, layer, role and least-privilege grants, log group, failure
destination and idempotency table."""

from __future__ import annotations

from pathlib import Path

import jsii
from aws_cdk import Aws, CfnElement, Duration, RemovalPolicy, Stack, Token
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct, IConstruct

from infra import nag
from infra.config import ConfigError, SnapsetConfig
from infra.logical_ids import keep_logical_id
from infra.queues import dead_letter_queue
from snapset.policy import (
    COPIES_IN_FLIGHT,
    COPY_TAG_KEYS,
    MANAGED_TAG_KEYS,
    TAG_COPIES,
    TAG_COPY_ERRORS,
    TAG_COPY_POLICY,
    TAG_POLICY,
)
from snapset.settings import (
    ENV_DEPLOYED_COPIES,
    ENV_DEPLOYED_POLICIES,
    ENV_EC2_API_SHARE,
    ENV_FAN_OUT_CONCURRENCY,
    ENV_IDEMPOTENCY_TABLE,
    ENV_MAX_WORKERS,
    ENV_REPORT_BUCKET,
    ENV_SAFETY_MARGIN_MS,
    ENV_TOPIC_ARN,
    METRICS_NAMESPACE,
    SERVICE_NAME,
)

HANDLER = "snapset.handler.handler"
CODE_PATH = Path(__file__).resolve().parent.parent / "lambdas"
CODE_EXCLUDE = [
    "requirements.txt",
    "**/__pycache__",
    "**/*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    "*.egg-info",
]
# Newest Python runtime in aws-cdk-lib 2.275; the Powertools layer is published per runtime.
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64
RUNTIME_REQUIREMENTS = CODE_PATH / "requirements.txt"
# Powertools for AWS Lambda (Python) publishes each release's layer ARN as a public SSM parameter
# in the regions it publishes layers to; the runtime is written with its dot (python3.14).
POWERTOOLS_PARAMETER = "/aws/service/powertools/python/{arch}/{runtime}/{version}"
# Partitions Powertools publishes no public parameter in (AWS GovCloud, China, ISO): a stack
# there must name its layer with powertools_layer_arn.
_UNPUBLISHED_REGION_PREFIXES = ("us-gov-", "cn-", "us-iso", "eu-isoe-", "us-isof-")


def powertools_version(requirements: Path = RUNTIME_REQUIREMENTS) -> str:
    """The aws-lambda-powertools release pinned for the function (what the tests ran)."""
    for line in requirements.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name.strip().lower().split("[")[0] == "aws-lambda-powertools":
            return version.strip()
    raise ConfigError(f"{requirements}: no aws-lambda-powertools==VERSION pin")


def powertools_parameter() -> str:
    """The SSM parameter holding the pinned release's layer ARN for our runtime and arch."""
    return POWERTOOLS_PARAMETER.format(
        arch=ARCHITECTURE.name, runtime=RUNTIME.name, version=powertools_version()
    )


def _layer_arn(scope: Construct, config: SnapsetConfig) -> str:
    if config.powertools_layer_arn:
        return config.powertools_layer_arn
    region = Stack.of(scope).region
    if not Token.is_unresolved(region) and region.startswith(_UNPUBLISHED_REGION_PREFIXES):
        raise ConfigError(
            f"Powertools publishes no layer parameter in {region}: set powertools_layer_arn to "
            "a Powertools layer (or a mirror) that carries aws-lambda-powertools=="
            f"{powertools_version()}"
        )
    # Resolved by CloudFormation when the change set is made: where the parameter does not
    # exist, the deploy stops before any resource changes.
    return ssm.StringParameter.value_for_string_parameter(scope, powertools_parameter())


# Statement ids (Sid) of the Lambda role's policies; tests and reviewers find grants by them.
SID_CREATE_SNAPSHOTS = "CreateSnapshots"
SID_TAG_NEW_SNAPSHOTS = "TagSnapshotsAtCreation"
SID_DESCRIBE = "DescribeUnscopable"
SID_RETENTION_DELETE = "RetentionDeleteOwnSnapshots"
SID_RETENTION_DESCRIBE_SNAPSHOTS = "RetentionDescribeSnapshotAttribute"
SID_RETENTION_DESCRIBE = "RetentionDescribeUnscopable"
SID_PUBLISH = "PublishReports"
SID_TOPIC_KEY = "UseTopicKey"
SID_IDEMPOTENCY = "IdempotencyRecords"
SID_DESTINATION = "AsyncFailureDestination"
SID_SCRIPTS_SEND = "SendPolicyScripts"
SID_SCRIPTS_FOLLOW = "FollowPolicyScripts"
# SSM reserves these document name prefixes to AWS's own documents.
AWS_OWNED_PREFIXES = ("AWS", "Amazon")
SID_SCRIPTS_INSTANCES = "SendPolicyScriptsToInstances"
SID_SCRIPTS_TAGGED = "SendPolicyScriptsToTagged"
# Copies and shares (the destination region's name, e.g. `UsWest2`, ends the per-region ones).
SID_COPY_TAG_SETS = "TagCopiedSets"
SID_SHARE_SETS = "ShareSets"
SID_COPY_FROM_HOME = "CopySetsFromHome"
SID_COPY_INTO = "CopySetsInto"
SID_COPY_TAG_NEW = "TagCopiesAtCreationIn"
SID_COPY_DESCRIBE = "DescribeCopies"
SID_COPY_RETENTION = "CopyRetentionIn"
SID_COPY_RETENTION_DESCRIBE = "CopyRetentionDescribeUnscopable"
SID_COPY_KEYS = "UseCopyKeys"
SID_COPY_KEY_GRANTS = "CopyKeyGrants"
# What EBS asks of a KMS key to encrypt the snapshots it makes (EBS encryption requirements:
# CreateGrant, Decrypt, DescribeKey, GenerateDataKeyWithoutPlaintext, ReEncrypt).
EBS_KEY_ACTIONS = [
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
]

R = logs.RetentionDays
RETENTION = {
    1: R.ONE_DAY, 3: R.THREE_DAYS, 5: R.FIVE_DAYS, 7: R.ONE_WEEK, 14: R.TWO_WEEKS,
    30: R.ONE_MONTH, 60: R.TWO_MONTHS, 90: R.THREE_MONTHS, 120: R.FOUR_MONTHS,
    150: R.FIVE_MONTHS, 180: R.SIX_MONTHS, 365: R.ONE_YEAR, 400: R.THIRTEEN_MONTHS,
    545: R.EIGHTEEN_MONTHS, 731: R.TWO_YEARS, 1096: R.THREE_YEARS, 1827: R.FIVE_YEARS,
    2192: R.SIX_YEARS, 2557: R.SEVEN_YEARS, 2922: R.EIGHT_YEARS, 3288: R.NINE_YEARS,
    3653: R.TEN_YEARS,
}  # fmt: skip


@jsii.implements(lambda_.IDestination)
class _QueueDestination:
    """An SQS on-failure destination that grants only sqs:SendMessage.

    `aws_lambda_destinations.SqsDestination` grants `grantSendMessages` (SendMessage plus
    GetQueueAttributes and GetQueueUrl); Lambda needs only SendMessage for a destination.
    """

    def __init__(self, queue: sqs.IQueue) -> None:
        self._queue = queue

    def bind(
        self,
        scope: Construct,  # noqa: ARG002
        fn: lambda_.IFunction,
        *,
        type: lambda_.DestinationType | None = None,  # noqa: ARG002
    ) -> lambda_.DestinationConfig:
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid=SID_DESTINATION,
                actions=["sqs:SendMessage"],
                resources=[self._queue.queue_arn],
            )
        )
        return lambda_.DestinationConfig(destination=self._queue.queue_arn)


def function_code() -> lambda_.Code:
    """The runtime package alone (`lambdas/`); dependencies come from the Powertools layer."""
    return lambda_.Code.from_asset(str(CODE_PATH), exclude=CODE_EXCLUDE)


class SnapshotFunction(Construct):
    """The Lambda with exactly the permissions its code uses.

    Takes the topic it reports to, the topic's key and the bucket of full reports (whose grant
    `ReportArchive.grant_store` makes). Exposes `function`, `role`,
    `idempotency_table`, `log_group`, `dlq` (failed async invocations), and the role's two
    policies besides its default one: `create_snapshots_policy` (CreateSnapshots, tagging new
    snapshots, the lookups) and `retention_policy` (deleting expired snapshots and its checks),
    plus `scripts_policy` (Run Command) and `copies_policy` (copies into other regions, shares
    with other accounts), each None when no policy needs it.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: SnapsetConfig,
        topic: sns.ITopic,
        topic_key: kms.IKey,
        report_bucket: s3.IBucket,
        code: lambda_.Code | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dlq = dead_letter_queue(self, "FunctionDlq", "failed asynchronous invocations")
        self.idempotency_table = dynamodb.Table(
            self,
            "IdempotencyTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expiration",
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # Records are short-lived idempotency keys, not data worth keeping after the stack.
            removal_policy=RemovalPolicy.DESTROY,
        )
        keep_logical_id(self, self.idempotency_table, "IdempotencyTable")
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=RETENTION[config.log_retention_days],
            removal_policy=RemovalPolicy.RETAIN,
        )
        keep_logical_id(self, self.log_group, "Logs")
        self.role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Snapset snapshot Lambda: EC2 snapshots, report topic, idempotency table",
        )
        layer_arn = _layer_arn(self, config)
        self.function = lambda_.Function(
            self,
            "Function",
            description="Snapset: crash-consistent multi-volume EBS snapshot sets",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=HANDLER,
            code=code or function_code(),
            layers=[lambda_.LayerVersion.from_layer_version_arn(self, "Powertools", layer_arn)],
            role=self.role,
            memory_size=config.lambda_memory_mb,
            timeout=Duration.seconds(config.lambda_timeout_seconds),
            reserved_concurrent_executions=config.max_concurrency,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            retry_attempts=2,
            max_event_age=Duration.minutes(config.max_event_age_minutes),
            # An on-failure destination keeps the event plus the error and request context,
            # which a function dead-letter queue (event only) would lose.
            on_failure=_QueueDestination(self.dlq),
            environment={
                ENV_TOPIC_ARN: topic.topic_arn,
                ENV_MAX_WORKERS: str(config.max_workers),
                ENV_IDEMPOTENCY_TABLE: self.idempotency_table.table_name,
                ENV_REPORT_BUCKET: report_bucket.bucket_name,
                ENV_SAFETY_MARGIN_MS: str(config.safety_margin_ms),
                ENV_EC2_API_SHARE: str(config.ec2_api_share),
                # What the fan-out's Maps may use of the reserved concurrency: one
                # invocation is kept for the triggers (the one that hands off among them).
                **(
                    {ENV_FAN_OUT_CONCURRENCY: str(max(1, config.max_concurrency - 1))}
                    if config.max_concurrency is not None
                    else {}
                ),
                ENV_DEPLOYED_POLICIES: config.deployed_policies(),
                ENV_DEPLOYED_COPIES: config.deployed_copies(),
                "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": config.log_level,
            },
        )
        # A replaced function would get a new name and drop the events it still retries; its
        # invoke config is a setting of the function (see infra.logical_ids).
        keep_logical_id(self, self.function, "Function")
        keep_logical_id(
            self,
            self.function.node.find_child("EventInvokeConfig"),
            "Function",
            "EventInvokeConfig",
        )
        self.log_group.grant_write(self.role)
        self.create_snapshots_policy = _create_snapshots_policy(self, self.role, config)
        self.retention_policy = _retention_policy(self, self.role, config)
        self.scripts_policy = _scripts_policy(self, self.role, config)
        self.copies_policy = _copies_policy(self, self.role, config)
        _grant_reports_and_idempotency(self.role, topic, topic_key, self.idempotency_table)
        default_policy = self.role.node.find_child("DefaultPolicy")
        _acknowledge(default_policy, self.create_snapshots_policy, self.retention_policy)
        policies: list[IConstruct] = [
            default_policy,
            self.create_snapshots_policy,
            self.retention_policy,
        ]
        if self.scripts_policy is not None:
            policies.append(self.scripts_policy)
        if self.copies_policy is not None:
            policies.append(self.copies_policy)
        _depend_on(self.function, policies)


def _ec2_arn(scope: Construct, resource: str, account: str | None = None) -> str:
    return Stack.of(scope).format_arn(
        service="ec2", resource=resource, resource_name="*", account=account
    )


def _create_snapshots_policy(
    scope: Construct, role: iam.IRole, config: SnapsetConfig
) -> iam.Policy:
    """CreateSnapshots on this account's instances and volumes (and the policies' Outposts),
    tags only on the snapshots it creates, and the lookups that support no resource ARN."""
    snapshot_arn = _ec2_arn(scope, "snapshot", account="")
    outposts = sorted({p.outpost_arn for p in config.policies if p.outpost_arn})
    return iam.Policy(
        scope,
        "CreateSnapshotsPolicy",
        roles=[role],
        statements=[
            iam.PolicyStatement(
                sid=SID_CREATE_SNAPSHOTS,
                actions=["ec2:CreateSnapshots"],
                resources=[
                    _ec2_arn(scope, "instance"),
                    _ec2_arn(scope, "volume"),
                    snapshot_arn,
                    *outposts,
                ],
            ),
            iam.PolicyStatement(
                sid=SID_TAG_NEW_SNAPSHOTS,
                actions=["ec2:CreateTags"],
                resources=[snapshot_arn],
                conditions={"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}},
            ),
            iam.PolicyStatement(
                sid=SID_DESCRIBE,
                actions=[
                    "ec2:DescribeInstances",
                    "ec2:DescribeSnapshots",
                    "ec2:DescribeVolumes",
                ],
                resources=["*"],
                conditions=_in_home_region(scope),
            ),
        ],
    )


def _in_home_region(scope: Construct) -> dict[str, dict[str, str]]:
    """The stack's region only, for actions that support no resource ARN (a copy's look-ups in
    its destination are granted on their own, see `_copies_policy`)."""
    return {"StringEquals": {"aws:RequestedRegion": Stack.of(scope).region}}


def _retention_policy(scope: Construct, role: iam.IRole, config: SnapsetConfig) -> iam.Policy:
    """The retention checks, and DeleteSnapshot only where a deployed policy retains."""
    snapshot_arn = _ec2_arn(scope, "snapshot", account="")
    retention = iam.Policy(
        scope,
        "RetentionPolicy",
        roles=[role],
        statements=[
            iam.PolicyStatement(
                sid=SID_RETENTION_DESCRIBE_SNAPSHOTS,
                actions=["ec2:DescribeSnapshotAttribute"],
                resources=[snapshot_arn],
            ),
            iam.PolicyStatement(
                sid=SID_RETENTION_DESCRIBE,
                actions=["ec2:DescribeImages", "ec2:DescribeLockedSnapshots"],
                resources=["*"],
                conditions=_in_home_region(scope),
            ),
        ],
    )
    # DeleteSnapshot only on snapshots tagged with a deployed policy that has retention, so
    # a payload naming any other policy cannot delete anything; none retains, none deletes.
    if retaining := config.retaining_policies():
        retention.add_statements(
            iam.PolicyStatement(
                sid=SID_RETENTION_DELETE,
                actions=["ec2:DeleteSnapshot"],
                resources=[snapshot_arn],
                conditions={"StringEquals": {f"aws:ResourceTag/{TAG_POLICY}": retaining}},
            )
        )
    return retention


def _grant_reports_and_idempotency(
    role: iam.IRole, topic: sns.ITopic, topic_key: kms.IKey, table: dynamodb.ITable
) -> None:
    """Publish to the report topic (with its key) and use the idempotency records."""
    role.add_to_principal_policy(
        iam.PolicyStatement(sid=SID_PUBLISH, actions=["sns:Publish"], resources=[topic.topic_arn])
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid=SID_TOPIC_KEY,
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=[topic_key.key_arn],
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid=SID_IDEMPOTENCY,
            actions=[
                "dynamodb:DeleteItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ],
            resources=[table.table_arn],
        )
    )


def document_arn(scope: Construct, document: str) -> str:
    """The ARN of a policy's SSM document: as given when it is one (a shared document), else
    this account's and region's, with no account for AWS-owned documents (`AWS…` and
    `Amazon…` names are reserved to AWS)."""
    if document.startswith("arn:"):
        return document
    return Stack.of(scope).format_arn(
        service="ssm",
        resource="document",
        resource_name=document,
        account="" if document.startswith(AWS_OWNED_PREFIXES) else None,
    )


def _scripts_policy(scope: Construct, role: iam.IRole, config: SnapsetConfig) -> iam.Policy | None:
    """Run Command for the deployed policies' scripts: SendCommand only with their documents and
    only on the instances those policies target (by instance ARN, or by the target tags as
    `ssm:resourceTag` conditions), and following (and cancelling) the commands it sent. None
    when no policy has scripts, so a payload cannot run any document on any instance."""
    documents = config.script_documents()
    if not documents:
        return None
    # SendCommand is authorized on the document and on each instance, each against its own
    # statement.
    statements = [
        iam.PolicyStatement(
            sid=SID_SCRIPTS_SEND,
            actions=["ssm:SendCommand"],
            resources=[document_arn(scope, d) for d in documents],
        )
    ]
    stack = Stack.of(scope)
    for index, policy in enumerate(config.policies):
        if policy.scripts is None:
            continue
        if policy.instance_ids:
            statements.append(
                iam.PolicyStatement(
                    sid=f"{SID_SCRIPTS_INSTANCES}{index}",
                    actions=["ssm:SendCommand"],
                    resources=[
                        stack.format_arn(service="ec2", resource="instance", resource_name=i)
                        for i in policy.instance_ids
                    ],
                )
            )
        if policy.target_tags:
            # Every key must match one of its values, as EC2's tag filters (and StringLike's
            # wildcards) do.
            statements.append(
                iam.PolicyStatement(
                    sid=f"{SID_SCRIPTS_TAGGED}{index}",
                    actions=["ssm:SendCommand"],
                    resources=[_ec2_arn(scope, "instance")],
                    conditions={
                        "StringLike": {
                            f"ssm:resourceTag/{key}": values
                            for key, values in policy.target_tags.items()
                        }
                    },
                )
            )
    statements.append(
        iam.PolicyStatement(
            sid=SID_SCRIPTS_FOLLOW,
            actions=[
                "ssm:CancelCommand",
                "ssm:DescribeInstanceInformation",
                "ssm:ListCommandInvocations",
            ],
            resources=["*"],
        )
    )
    scripts_policy = iam.Policy(scope, "ScriptsPolicy", roles=[role], statements=statements)
    nag.acknowledge(
        scripts_policy,
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:"
        "instance/*]",
        "SendCommand on instances is limited by ssm:resourceTag conditions to the target tags "
        "of the deployed policies with scripts (which instances carry them is known only at run "
        "time), and to the deployed policies' documents",
    )
    nag.acknowledge(
        scripts_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "ssm:ListCommandInvocations, ssm:CancelCommand and ssm:DescribeInstanceInformation support "
        "no resource-level permissions (Resource must be *).",
    )
    return scripts_policy


def _region_sid(region: str) -> str:
    """`us-west-2` -> `UsWest2`: Sids are alphanumeric."""
    return "".join(part.capitalize() for part in region.split("-"))


def _snapshots_in(scope: Construct, region: str) -> str:
    """Every snapshot ARN of `region` (snapshot ARNs carry no account)."""
    return Stack.of(scope).format_arn(
        service="ec2", region=region, account="", resource="snapshot", resource_name="*"
    )


def _copies_policy(scope: Construct, role: iam.IRole, config: SnapsetConfig) -> iam.Policy | None:
    """Copies into other regions and shares with other accounts, for the deployed policies that
    have them; None when no policy copies or shares, so a payload can neither copy nor share.

    In the stack's region: re-tagging the sets still waiting for copies (`snapset:copies`,
    `snapset:copy-errors` only), sharing a sharing policy's sets with its own accounts only
    (`createVolumePermission`, never a group such as `all`), and reading them as the source of
    CopySnapshot from requests to the destination regions. In each destination region:
    CopySnapshot and tags at creation only with a deployed copying policy's `snapset:copy-policy`
    request tag, DescribeSnapshots there, and for the policies that retain copies there
    DeleteSnapshot and its checks on copies tagged with them.

    KMS: only the destination keys the copies name (`kms_key_arn`), through EC2 in their region,
    and CreateGrant only for a grant EBS makes. The source snapshot's key is not granted: which
    key encrypts a set is known only at run time (a volume's key, the account's EBS default),
    and EBS uses it in the stack's region (DescribeKey, Decrypt/ReEncryptFrom, CreateGrant) on
    the function's behalf. The AWS managed key `aws/ebs` lets every principal of the account
    use it through EC2; a customer managed source key must allow the function's role in its
    key policy, or copies of its snapshots fail (and are reported).
    """
    regions = config.copy_regions()
    shares = config.shares()
    if not regions and not shares:
        return None
    home = Stack.of(scope).region
    home_snapshots = _snapshots_in(scope, home)
    copy_policy_tag = f"aws:RequestTag/{TAG_COPY_POLICY}"
    # A copy carries its source's identity under its own keys, never a home set's: no Snapset
    # in the destination (its retention, its existing-set look-up) takes it for its own set.
    home_set_keys = {
        "ForAllValues:StringNotEquals": {
            "aws:TagKeys": [k for k in MANAGED_TAG_KEYS if k not in COPY_TAG_KEYS]
        }
    }
    statements: list[iam.PolicyStatement] = []
    if regions:
        statements += [
            iam.PolicyStatement(
                sid=SID_COPY_TAG_SETS,
                actions=["ec2:CreateTags"],
                resources=[home_snapshots],
                # Only sets still waiting for their copies, whatever their policy: the sweep
                # also closes the sets of a policy deployed without copies (a CLI payload's).
                conditions={
                    "StringEquals": {f"aws:ResourceTag/{TAG_COPIES}": sorted(COPIES_IN_FLIGHT)},
                    "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_COPIES, TAG_COPY_ERRORS]},
                },
            ),
            # CopySnapshot is sent to the destination and authorizes the source snapshot too
            # (EBS's resource-level permissions for the source, 2025): any home snapshot, but
            # only from a request to a destination region, whose new snapshot must carry a
            # copying policy's tag (next statements).
            iam.PolicyStatement(
                sid=SID_COPY_FROM_HOME,
                actions=["ec2:CopySnapshot"],
                resources=[home_snapshots],
                conditions={"StringEquals": {"aws:RequestedRegion": list(regions)}},
            ),
        ]
    for index, (names, accounts) in enumerate(shares):
        statements.append(
            iam.PolicyStatement(
                sid=f"{SID_SHARE_SETS}{index}",
                actions=["ec2:ModifySnapshotAttribute"],
                resources=[home_snapshots],
                conditions={
                    "StringEquals": {
                        f"aws:ResourceTag/{TAG_POLICY}": names,
                        "ec2:Add/userId": accounts,
                    },
                    # The attribute is named by the request's legacy form only; the other form
                    # (CreateVolumePermission) can modify nothing else.
                    "StringEqualsIfExists": {"ec2:Attribute": "createVolumePermission"},
                    # A group (`all`) would make the set public.
                    "Null": {"ec2:Add/group": "true"},
                },
            )
        )
    for region, names in regions.items():
        snapshots = _snapshots_in(scope, region)
        statements += [
            iam.PolicyStatement(
                sid=f"{SID_COPY_INTO}{_region_sid(region)}",
                actions=["ec2:CopySnapshot"],
                resources=[snapshots],
                conditions={"StringEquals": {copy_policy_tag: names}, **home_set_keys},
            ),
            iam.PolicyStatement(
                sid=f"{SID_COPY_TAG_NEW}{_region_sid(region)}",
                actions=["ec2:CreateTags"],
                resources=[snapshots],
                conditions={
                    "StringEquals": {"ec2:CreateAction": "CopySnapshot", copy_policy_tag: names},
                    **home_set_keys,
                },
            ),
        ]
    if regions:
        statements.append(
            iam.PolicyStatement(
                sid=SID_COPY_DESCRIBE,
                actions=["ec2:DescribeSnapshots"],
                resources=["*"],
                conditions={"StringEquals": {"aws:RequestedRegion": list(regions)}},
            )
        )
    retaining = config.copy_retaining_regions()
    for region, names in retaining.items():
        statements.append(
            iam.PolicyStatement(
                sid=f"{SID_COPY_RETENTION}{_region_sid(region)}",
                actions=["ec2:DeleteSnapshot", "ec2:DescribeSnapshotAttribute"],
                resources=[_snapshots_in(scope, region)],
                conditions={"StringEquals": {f"aws:ResourceTag/{TAG_COPY_POLICY}": names}},
            )
        )
    if retaining:
        statements.append(
            iam.PolicyStatement(
                sid=SID_COPY_RETENTION_DESCRIBE,
                actions=["ec2:DescribeImages", "ec2:DescribeLockedSnapshots"],
                resources=["*"],
                conditions={"StringEquals": {"aws:RequestedRegion": list(retaining)}},
            )
        )
    if keys := config.copy_keys():
        via_ec2 = sorted({f"ec2.{key.split(':')[3]}.{Aws.URL_SUFFIX}" for key in keys})
        statements += [
            iam.PolicyStatement(
                sid=SID_COPY_KEYS,
                actions=EBS_KEY_ACTIONS,
                resources=keys,
                conditions={"StringEquals": {"kms:ViaService": via_ec2}},
            ),
            iam.PolicyStatement(
                sid=SID_COPY_KEY_GRANTS,
                actions=["kms:CreateGrant"],
                resources=keys,
                conditions={
                    "Bool": {"kms:GrantIsForAWSResource": "true"},
                    "StringEquals": {"kms:ViaService": via_ec2},
                },
            ),
        ]
    copies_policy = iam.Policy(scope, "CopiesPolicy", roles=[role], statements=statements)
    _acknowledge_copies(copies_policy, list(regions), shares=bool(shares))
    return copies_policy


def _nag_resource(scope: Construct, arn: str) -> str:
    """How cdk-nag names an ARN in its findings: references as `<Name>`, literals as they are
    (a stack with a known region and account has them in its ARNs)."""
    resolved = Stack.of(scope).resolve(arn)
    if isinstance(resolved, str):
        return resolved
    parts = resolved["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)


def _acknowledge_copies(copies_policy: iam.Policy, regions: list[str], *, shares: bool) -> None:
    home = _nag_resource(
        copies_policy, _snapshots_in(copies_policy, Stack.of(copies_policy).region)
    )
    uses = []
    if regions:
        uses.append(
            "re-tagging only the sets of the deployed policies that copy (aws:ResourceTag/"
            "snapset:policy) and only with the snapset:copies and snapset:copy-errors keys, and "
            "reading them as CopySnapshot's source only from requests to the destination regions"
        )
    if shares:
        uses.append(
            "sharing only the sets of the deployed policies that share (aws:ResourceTag/"
            "snapset:policy) and only with their deployed accounts, never with a group"
        )
    nag.acknowledge(
        copies_policy,
        f"AwsSolutions-IAM5[Resource::{home}]",
        "snapshot sets are made at run time, so their IDs are unknown here; the grant allows "
        + "; ".join(uses),
    )
    for region in regions:
        copies = _nag_resource(copies_policy, _snapshots_in(copies_policy, region))
        nag.acknowledge(
            copies_policy,
            f"AwsSolutions-IAM5[Resource::{copies}]",
            f"copies in {region} do not exist before CopySnapshot makes them: making and "
            "tagging them requires the snapset:copy-policy request tag of a deployed policy "
            "copying there, and deleting them (destination retention) the snapset:copy-policy "
            "tag of a deployed policy retaining copies there",
        )
    if regions:
        nag.acknowledge(
            copies_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ec2:DescribeSnapshots, DescribeImages and DescribeLockedSnapshots support no "
            "resource-level permissions (Resource must be *); aws:RequestedRegion limits them "
            "to the destination regions of the copies.",
        )


def _acknowledge(default_policy: IConstruct, create: iam.Policy, retention: iam.Policy) -> None:
    wildcards = {
        "instance": "<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/*",
        "volume": "<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:volume/*",
        "snapshot": "<AWS::Partition>:ec2:<AWS::Region>::snapshot/*",
    }
    why = {
        "instance": "CreateSnapshots targets instances chosen at run time (by ID or tag); "
        "the grant is limited to this account and region",
        "volume": "CreateSnapshots reads every attached volume of the chosen instance, so it "
        "needs the volumes of this account and region",
        "snapshot": "snapshot IDs do not exist before CreateSnapshots makes them; snapshot "
        "ARNs have no account, the grant is limited to this region",
    }
    for kind, pattern in wildcards.items():
        nag.acknowledge(create, f"AwsSolutions-IAM5[Resource::arn:{pattern}]", why[kind])
        if kind == "snapshot":
            nag.acknowledge(retention, f"AwsSolutions-IAM5[Resource::arn:{pattern}]", why[kind])
    nag.acknowledge(
        create,
        "AwsSolutions-IAM5[Resource::*]",
        "ec2:DescribeInstances, DescribeVolumes and DescribeSnapshots support no "
        "resource-level permissions (Resource must be *).",
    )
    nag.acknowledge(
        retention,
        "AwsSolutions-IAM5[Resource::*]",
        "ec2:DescribeImages and ec2:DescribeLockedSnapshots support no resource-level "
        "permissions (Resource must be *).",
    )
    nag.acknowledge(
        default_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "Active tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no "
        "resource-level permissions (Resource must be *).",
    )
    nag.acknowledge(
        default_policy,
        "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
        "Publishing to an SSE-KMS topic needs kms:GenerateDataKey* (AWS SNS documentation); "
        "the grant is scoped to the topic's own key.",
    )


def _depend_on(function: lambda_.Function, policies: list[IConstruct]) -> None:
    """Create the function after all its permissions, and name each dependency once.

    CDK makes the function depend on its role and the role's default policy; the role is
    already implied by the `Role` GetAtt (cfn-lint W3005), while the two separate policies
    are not, so DependsOn is set explicitly.
    """
    cfn_fn = function.node.default_child
    assert isinstance(cfn_fn, lambda_.CfnFunction)
    stack = Stack.of(function)
    cfn_policies = [p.node.default_child for p in policies]
    cfn_fn.add_override(
        "DependsOn", [stack.get_logical_id(p) for p in cfn_policies if isinstance(p, CfnElement)]
    )
