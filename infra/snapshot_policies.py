"""`SnapshotPolicies`: every Snapset resource for a validated `SnapsetConfig`, as one L3 construct.

Add it to any stack: `SnapshotPolicies(stack, "Snapset", config=load_config(raw))`. It needs no
AWS credentials, context lookups or Docker at synth time and stays region/account-agnostic (ARNs are
built from `AWS::Partition`, `AWS::Region` and `AWS::AccountId`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    CfnElement,
    Duration,
    Fn,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from aws_cdk.interfaces.aws_events import IRuleRef
from constructs import Construct, IConstruct

from infra.config import PolicyConfig, SnapsetConfig
from snapset.completion import MULTI_VOLUME_DETAIL_TYPE, SNAPSHOT_DETAIL_TYPE
from snapset.policy import TAG_POLICY
from snapset.settings import (
    ENV_IDEMPOTENCY_TABLE,
    ENV_MAX_WORKERS,
    ENV_SAFETY_MARGIN_MS,
    ENV_TOPIC_ARN,
    METRICS_NAMESPACE,
    SERVICE_NAME,
)
from snapset.triggers import (
    STATE_CHANGE_DETAIL_TYPE,
    instance_event_input_template,
    schedule_input,
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
# Newest Python runtime in aws-cdk-lib 2.275; the Powertools layer name must match it.
RUNTIME = lambda_.Runtime.PYTHON_3_14
# Powertools for AWS Lambda (Python) v3, published by AWS in account 017000801446 in every
# commercial region. The layer is built with `aws-lambda-powertools[all]`, so it carries pydantic
# and aws-xray-sdk as well.
POWERTOOLS_LAYER_ACCOUNT = "017000801446"
POWERTOOLS_LAYER_NAME = "AWSLambdaPowertoolsPythonV3-python314-arm64"


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


R = logs.RetentionDays
RETENTION = {
    1: R.ONE_DAY, 3: R.THREE_DAYS, 5: R.FIVE_DAYS, 7: R.ONE_WEEK, 14: R.TWO_WEEKS,
    30: R.ONE_MONTH, 60: R.TWO_MONTHS, 90: R.THREE_MONTHS, 120: R.FOUR_MONTHS,
    150: R.FIVE_MONTHS, 180: R.SIX_MONTHS, 365: R.ONE_YEAR, 400: R.THIRTEEN_MONTHS,
    545: R.EIGHTEEN_MONTHS, 731: R.TWO_YEARS, 1096: R.THREE_YEARS, 1827: R.FIVE_YEARS,
    2192: R.SIX_YEARS, 2557: R.SEVEN_YEARS, 2922: R.EIGHT_YEARS, 3288: R.NINE_YEARS,
    3653: R.TEN_YEARS,
}  # fmt: skip


def _ack(scope: IConstruct, rule: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


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


class _RawInputTemplate(events.RuleTargetInput):
    """An input transformer whose template is used verbatim (no InputPathsMap needed).

    `RuleTargetInput.from_text/from_object` quote or re-serialize the template; the Lambda's
    `instance_event_input_template` already is the exact template string.
    """

    def __init__(self, template: str) -> None:
        super().__init__()
        self._template = template

    def bind(self, rule: IRuleRef) -> events.RuleTargetInputProperties:  # noqa: ARG002
        return events.RuleTargetInputProperties(input_template=self._template)


class SnapshotPolicies(Construct):
    """Snapset for one account and region: Lambda, triggers, topic, DLQs, alarms, idempotency.

    Attributes: `function`, `role`, `topic`, `topic_key`, `idempotency_table`, `function_dlq`,
    `scheduler_dlq`, `rules_dlq`, `scheduler_role`, `schedules` (policy name -> CfnSchedules),
    `instance_rules` (policy name -> Rule), `completion_rule`, `alarms`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: SnapsetConfig,
        code: lambda_.Code | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        stack = Stack.of(self)
        self.alarms: list[cloudwatch.Alarm] = []

        self.topic_key = self._topic_key()
        self.topic = self._topic(stack)
        self.function_dlq = self._queue("FunctionDlq", "failed asynchronous invocations")
        self.scheduler_dlq = self._queue("SchedulerDlq", "schedule deliveries Scheduler gave up")
        self.rules_dlq = self._queue("RulesDlq", "event deliveries EventBridge gave up")
        self.idempotency_table = self._idempotency_table()
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=RETENTION[config.log_retention_days],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Snapset snapshot Lambda: EC2 snapshots, report topic, idempotency table",
        )
        self.function = self._function(code or self._code())
        self._grant_function(stack)
        self._restrict_topic()
        self._function_depends_on_policies(stack)

        self.scheduler_role = self._scheduler_role(stack)
        self.schedules: dict[str, list[scheduler.CfnSchedule]] = {}
        self.instance_rules: dict[str, events.Rule] = {}
        for index, policy in enumerate(config.policies):
            self.schedules[policy.name] = self._schedules(index, policy)
            if policy.on_instance_states:
                self.instance_rules[policy.name] = self._instance_rule(index, policy)
        self.completion_rule = self._completion_rule() if config.completion_events else None
        self._alarms()

    # --- encryption and notifications -------------------------------------------------------

    def _topic_key(self) -> kms.Key:
        key = kms.Key(
            self,
            "TopicKey",
            description="Snapset: encrypts the report topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(30),
        )
        # CloudWatch alarm actions publish to the encrypted topic, so CloudWatch must be able to
        # use the key (AWS: "Configure KMS permissions for AWS services").
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToUseTheKey",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )
        return key

    def _topic(self, stack: Stack) -> sns.Topic:
        topic = sns.Topic(
            self,
            "Topic",
            display_name="Snapset",
            master_key=self.topic_key,
            enforce_ssl=True,
        )
        for email in self.config.notification_emails:
            topic.add_subscription(subs.EmailSubscription(email))
        for index, sub in enumerate(self.config.subscriptions):
            sns.Subscription(
                self,
                f"Subscription{index}",
                topic=topic,
                protocol=sns.SubscriptionProtocol(sub.protocol.upper().replace("-", "_")),
                endpoint=sub.endpoint,
                raw_message_delivery=sub.raw_message_delivery or None,
                subscription_role_arn=sub.subscription_role_arn,
            )
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        return topic

    def _restrict_topic(self) -> None:
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="LambdaPublishes",
                principals=[iam.ArnPrincipal(self.role.role_arn)],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
            )
        )
        # Only the Lambda's role and AWS services the policy above lets in may publish: an IAM
        # principal of this account with sns:Publish in its own policy is still refused.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlySnapsetPublishes",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "ArnNotEquals": {"aws:PrincipalArn": self.role.role_arn},
                    "Bool": {"aws:PrincipalIsAWSService": "false"},
                },
            )
        )

    def _queue(self, construct_id: str, what: str) -> sqs.Queue:
        queue = sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        _ack(
            queue,
            "AwsSolutions-SQS3",
            f"This queue is itself a dead-letter queue (it holds {what}); it is watched by an "
            "alarm on ApproximateNumberOfMessagesVisible instead of having its own DLQ.",
        )
        return queue

    def _idempotency_table(self) -> dynamodb.Table:
        return dynamodb.Table(
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

    # --- the function -----------------------------------------------------------------------

    @staticmethod
    def _code() -> lambda_.Code:
        return lambda_.Code.from_asset(str(CODE_PATH), exclude=CODE_EXCLUDE)

    def _powertools_layer(self) -> lambda_.ILayerVersion:
        arn = self.config.powertools_layer_arn or Fn.sub(
            f"arn:${{AWS::Partition}}:lambda:${{AWS::Region}}:{POWERTOOLS_LAYER_ACCOUNT}:layer:"
            f"{POWERTOOLS_LAYER_NAME}:{self.config.powertools_layer_version}"
        )
        return lambda_.LayerVersion.from_layer_version_arn(self, "Powertools", arn)

    def _function(self, code: lambda_.Code) -> lambda_.Function:
        cfg = self.config
        return lambda_.Function(
            self,
            "Function",
            description="Snapset: crash-consistent multi-volume EBS snapshot sets",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=HANDLER,
            code=code,
            layers=[self._powertools_layer()],
            role=self.role,
            memory_size=cfg.lambda_memory_mb,
            timeout=Duration.seconds(cfg.lambda_timeout_seconds),
            reserved_concurrent_executions=cfg.max_concurrency,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            retry_attempts=2,
            max_event_age=Duration.minutes(cfg.max_event_age_minutes),
            # An on-failure destination keeps the event plus the error and request context, which
            # a function dead-letter queue (event only) would lose.
            on_failure=_QueueDestination(self.function_dlq),
            environment={
                ENV_TOPIC_ARN: self.topic.topic_arn,
                ENV_MAX_WORKERS: str(cfg.max_workers),
                ENV_IDEMPOTENCY_TABLE: self.idempotency_table.table_name,
                ENV_SAFETY_MARGIN_MS: str(cfg.safety_margin_ms),
                "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": cfg.log_level,
            },
        )

    def _grant_function(self, stack: Stack) -> None:
        role = self.role
        self.log_group.grant_write(role)

        def ec2_arn(resource: str, account: str | None = None) -> str:
            return stack.format_arn(
                service="ec2", resource=resource, resource_name="*", account=account
            )

        instance_arn, volume_arn = ec2_arn("instance"), ec2_arn("volume")
        snapshot_arn = ec2_arn("snapshot", account="")
        outposts = sorted({p.outpost_arn for p in self.config.policies if p.outpost_arn})

        self.snapshot_policy = snapshots = iam.Policy(
            self,
            "SnapshotPolicy",
            roles=[role],
            statements=[
                iam.PolicyStatement(
                    sid=SID_CREATE_SNAPSHOTS,
                    actions=["ec2:CreateSnapshots"],
                    resources=[instance_arn, volume_arn, snapshot_arn, *outposts],
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
                ),
            ],
        )
        # Retention (deleting a policy's expired sets) is built in parallel; its grants are here
        # so one place, and the IAM mapping test, covers every permission the function has.
        self.retention_policy = retention = iam.Policy(
            self,
            "RetentionPolicy",
            roles=[role],
            statements=[
                iam.PolicyStatement(
                    sid=SID_RETENTION_DELETE,
                    actions=["ec2:DeleteSnapshot"],
                    resources=[snapshot_arn],
                    conditions={"Null": {f"aws:ResourceTag/{TAG_POLICY}": "false"}},
                ),
                iam.PolicyStatement(
                    sid=SID_RETENTION_DESCRIBE_SNAPSHOTS,
                    actions=["ec2:DescribeSnapshotAttribute"],
                    resources=[snapshot_arn],
                ),
                iam.PolicyStatement(
                    sid=SID_RETENTION_DESCRIBE,
                    actions=["ec2:DescribeImages", "ec2:DescribeLockedSnapshots"],
                    resources=["*"],
                ),
            ],
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid=SID_PUBLISH, actions=["sns:Publish"], resources=[self.topic.topic_arn]
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid=SID_TOPIC_KEY,
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=[self.topic_key.key_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid=SID_IDEMPOTENCY,
                actions=[
                    "dynamodb:DeleteItem",
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                ],
                resources=[self.idempotency_table.table_arn],
            )
        )

        snapshot_wildcards = {
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
        for kind, pattern in snapshot_wildcards.items():
            _ack(snapshots, f"AwsSolutions-IAM5[Resource::arn:{pattern}]", why[kind])
            if kind == "snapshot":
                _ack(retention, f"AwsSolutions-IAM5[Resource::arn:{pattern}]", why[kind])
        _ack(
            snapshots,
            "AwsSolutions-IAM5[Resource::*]",
            "ec2:DescribeInstances, DescribeVolumes and DescribeSnapshots support no "
            "resource-level permissions (Resource must be *).",
        )
        _ack(
            retention,
            "AwsSolutions-IAM5[Resource::*]",
            "ec2:DescribeImages and ec2:DescribeLockedSnapshots support no resource-level "
            "permissions (Resource must be *).",
        )
        default_policy = role.node.find_child("DefaultPolicy")
        _ack(
            default_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "Active tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no "
            "resource-level permissions (Resource must be *).",
        )
        _ack(
            default_policy,
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "Publishing to an SSE-KMS topic needs kms:GenerateDataKey* (AWS SNS documentation); "
            "the grant is scoped to the topic's own key.",
        )

    def _function_depends_on_policies(self, stack: Stack) -> None:
        """Create the function after all its permissions, and name each dependency once.

        CDK makes the function depend on its role and the role's default policy; the role is
        already implied by the `Role` GetAtt (cfn-lint W3005), while the two separate policies
        are not, so DependsOn is set explicitly.
        """
        cfn_fn = self.function.node.default_child
        assert isinstance(cfn_fn, lambda_.CfnFunction)
        policies = [
            self.role.node.find_child("DefaultPolicy").node.find_child("Resource"),
            self.snapshot_policy.node.default_child,
            self.retention_policy.node.default_child,
        ]
        cfn_fn.add_override(
            "DependsOn",
            [stack.get_logical_id(p) for p in policies if isinstance(p, CfnElement)],
        )

    # --- triggers ---------------------------------------------------------------------------

    def _scheduler_role(self, stack: Stack) -> iam.Role:
        role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
            description="Snapset schedules: invoke the snapshot Lambda, dead-letter to the DLQ",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="InvokeSnapsetFunction",
                actions=["lambda:InvokeFunction"],
                resources=[self.function.function_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="DeadLetter",
                actions=["sqs:SendMessage"],
                resources=[self.scheduler_dlq.queue_arn],
            )
        )
        return role

    def _schedules(self, index: int, policy: PolicyConfig) -> list[scheduler.CfnSchedule]:
        payload = json.dumps(schedule_input(policy.snapshot_policy()), separators=(",", ":"))
        out = []
        for n, sched in enumerate(policy.schedules):
            out.append(
                scheduler.CfnSchedule(
                    self,
                    f"Schedule{index}x{n}-{policy.name}",
                    description=f"Snapset policy {policy.name}: {sched.expression} "
                    f"{sched.timezone}",
                    schedule_expression=sched.expression,
                    schedule_expression_timezone=sched.timezone,
                    flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(
                        mode="OFF"
                    ),
                    state="ENABLED",
                    target=scheduler.CfnSchedule.TargetProperty(
                        arn=self.function.function_arn,
                        role_arn=self.scheduler_role.role_arn,
                        input=payload,
                        retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                            maximum_retry_attempts=self.config.trigger_retry_attempts,
                            maximum_event_age_in_seconds=self.config.max_event_age_minutes * 60,
                        ),
                        dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(
                            arn=self.scheduler_dlq.queue_arn
                        ),
                    ),
                )
            )
        return out

    def _lambda_target(self, event: events.RuleTargetInput | None) -> targets.LambdaFunction:
        return targets.LambdaFunction(
            self.function,
            event=event,
            dead_letter_queue=self.rules_dlq,
            retry_attempts=self.config.trigger_retry_attempts,
            max_event_age=Duration.minutes(self.config.max_event_age_minutes),
        )

    def _instance_rule(self, index: int, policy: PolicyConfig) -> events.Rule:
        template = instance_event_input_template(policy.snapshot_policy())
        return events.Rule(
            self,
            f"InstanceRule{index}-{policy.name}",
            description=f"Snapset policy {policy.name}: instance state "
            + ", ".join(policy.on_instance_states),
            event_pattern=events.EventPattern(
                source=["aws.ec2"],
                detail_type=[STATE_CHANGE_DETAIL_TYPE],
                detail={"state": list(policy.on_instance_states)},
            ),
            targets=[self._lambda_target(_RawInputTemplate(template))],
        )

    def _completion_rule(self) -> events.Rule:
        rule = events.Rule(
            self,
            "CompletionRule",
            description="Snapset: snapshot set completion and snapshot failures",
            event_pattern=events.EventPattern(source=["aws.ec2"]),
            targets=[self._lambda_target(None)],
        )
        # The L2 EventPattern cannot express `$or`; the pattern is set on the L1 as a whole.
        cfn_rule = rule.node.default_child
        assert isinstance(cfn_rule, events.CfnRule)
        cfn_rule.add_property_override("EventPattern", completion_event_pattern())
        return rule

    # --- alarms -----------------------------------------------------------------------------

    def _alarm(
        self,
        construct_id: str,
        metric: cloudwatch.IMetric,
        threshold: int,
        description: str,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.alarms.append(alarm)

    def _alarms(self) -> None:
        a = self.config.alarms
        period = Duration.minutes(a.period_minutes)
        self._alarm(
            "FunctionErrorsAlarm",
            self.function.metric_errors(period=period, statistic="Sum"),
            a.errors_threshold,
            "Snapset: the snapshot Lambda failed (an invocation raised or timed out)",
        )
        self._alarm(
            "FunctionThrottlesAlarm",
            self.function.metric_throttles(period=period, statistic="Sum"),
            a.throttles_threshold,
            "Snapset: the snapshot Lambda was throttled",
        )
        for name, queue in (
            ("FunctionDlq", self.function_dlq),
            ("SchedulerDlq", self.scheduler_dlq),
            ("RulesDlq", self.rules_dlq),
        ):
            self._alarm(
                f"{name}Alarm",
                queue.metric_approximate_number_of_messages_visible(
                    period=period, statistic="Maximum"
                ),
                a.dlq_messages_threshold,
                f"Snapset: messages in the {name} dead-letter queue (undelivered or failed runs)",
            )
        # One alarm per configured policy on the engine's EMF metric. Dimensions must match the
        # emitted set exactly: the handler adds `policy`, Powertools adds `service`.
        for index, policy in enumerate(self.config.policies):
            self._alarm(
                f"InstancesFailedAlarm{index}-{policy.name}",
                failed_instances_metric(policy.name, period),
                a.failed_instances_threshold,
                f"Snapset policy {policy.name}: instances failed to snapshot",
            )

    # --- helpers for outputs ----------------------------------------------------------------

    def example_payload(self) -> dict[str, Any]:
        """A manual-invoke payload: the first policy, as the Lambda's request model."""
        policy = self.config.policies[0].snapshot_policy()
        payload: dict[str, Any] = policy.model_dump(mode="json", exclude_defaults=True)
        return payload

    def invoke_command(self) -> str:
        """`aws lambda invoke ...` for the first policy (a token string; resolves at deploy)."""
        payload = json.dumps(self.example_payload(), separators=(",", ":"))
        return (
            f"aws lambda invoke --function-name {self.function.function_name} "
            f"--cli-binary-format raw-in-base64-out --payload {shlex.quote(payload)} "
            "snapset-report.json"
        )


def failed_instances_metric(policy: str, period: Duration) -> cloudwatch.Metric:
    """The `InstancesFailed` EMF metric of one policy, with the exact emitted dimensions."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name="InstancesFailed",
        dimensions_map={"policy": policy, "service": SERVICE_NAME},
        statistic="Sum",
        period=period,
    )


def completion_event_pattern() -> dict[str, Any]:
    """Multi-volume set completion, and failures of single snapshots, delivered raw."""
    return {
        "source": ["aws.ec2"],
        "$or": [
            {
                "detail-type": [MULTI_VOLUME_DETAIL_TYPE],
                "detail": {"event": ["createSnapshots"]},
            },
            {
                "detail-type": [SNAPSHOT_DETAIL_TYPE],
                "detail": {"event": ["createSnapshot"], "result": ["failed"]},
            },
        ],
    }


__all__ = [
    "HANDLER",
    "METRICS_NAMESPACE",
    "SERVICE_NAME",
    "SnapshotPolicies",
    "completion_event_pattern",
    "failed_instances_metric",
]
