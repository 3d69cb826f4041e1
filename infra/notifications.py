"""The report topic: its KMS key, its subscriptions, and who may publish to it."""

from __future__ import annotations

from aws_cdk import Annotations, ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from infra.config import SnapsetConfig
from infra.logical_ids import keep_logical_id


class Notifications(Construct):
    """An SSE-KMS topic (customer key with rotation, SSL only) with the configured subscriptions.

    CloudWatch alarms of this account may publish; `only_publisher` then denies everyone else
    but the given role. Exposes `topic` and `key`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: SnapsetConfig) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        alarm_source = {
            "StringEquals": {"aws:SourceAccount": stack.account},
            "ArnLike": {
                "aws:SourceArn": stack.format_arn(
                    service="cloudwatch",
                    resource="alarm",
                    resource_name="*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            },
        }
        self.key = kms.Key(
            self,
            "TopicKey",
            description="Snapset: encrypts the report topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(30),
        )
        keep_logical_id(self, self.key, "TopicKey")
        # CloudWatch alarm actions publish to the encrypted topic, so CloudWatch must be able to
        # use the key (AWS: "Configure KMS permissions for AWS services").
        # Only this account's alarms: the same source conditions as the topic policy below.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToUseTheKey",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions=alarm_source,
            )
        )
        self.topic = sns.Topic(
            self, "Topic", display_name="Snapset", master_key=self.key, enforce_ssl=True
        )
        keep_logical_id(self, self.topic, "Topic")
        # enforce_ssl made the topic's policy; the statements below and in `only_publisher` join it.
        keep_logical_id(self, self.topic.node.find_child("Policy"), "Topic", "Policy")
        for email in config.notification_emails:
            self.topic.add_subscription(subs.EmailSubscription(email))
            # An email subscription replaced by CloudFormation must be confirmed again.
            keep_logical_id(self, self.topic.node.find_child(email), "Topic", email)
        for index, sub in enumerate(config.subscriptions):
            subscription = sns.Subscription(
                self,
                f"Subscription{index}",
                topic=self.topic,
                protocol=sns.SubscriptionProtocol(sub.protocol.upper().replace("-", "_")),
                endpoint=sub.endpoint,
                raw_message_delivery=sub.raw_message_delivery or None,
                subscription_role_arn=sub.subscription_role_arn,
            )
            keep_logical_id(self, subscription, f"Subscription{index}")
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=alarm_source,
            )
        )
        if not config.notification_emails and not config.subscriptions:
            Annotations.of(self).add_warning_v2(
                "snapset:no-subscription",
                "the report topic has no subscription, so run reports and alarms reach nobody: "
                "add notification_emails or subscriptions to context.snapset in cdk.json",
            )

    def only_publisher(self, role: iam.IRole) -> None:
        """Let `role` publish and refuse every other principal but AWS services."""
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="LambdaPublishes",
                principals=[iam.ArnPrincipal(role.role_arn)],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
            )
        )
        # Only the role and the AWS services the policy above lets in may publish: an IAM
        # principal of this account with sns:Publish in its own policy is still refused.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlySnapsetPublishes",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "ArnNotEquals": {"aws:PrincipalArn": role.role_arn},
                    "Bool": {"aws:PrincipalIsAWSService": "false"},
                },
            )
        )
