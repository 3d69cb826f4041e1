"""What the local CloudFormation does not do, and what is done instead.

moto 5.2.5's CloudFormation skips resource types it has no model for (with a warning in the server
log) and drops some properties of types it does model. `deploy` finds both by reading the stack
back; `SUBSTITUTES` create the nearest equivalent of every skipped resource through the service
APIs, `CHECKS` compare what moto created with the template and fix what an API can fix. Each
returns its `Substitution` records, listed in `Deployment.substitutions`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from localaws.synth import DeployError

if TYPE_CHECKING:
    from localaws.deploy import Deployment

__all__ = [
    "CHECKS",
    "FIXED",
    "NOT_APPLIED",
    "NOT_CREATED",
    "SUBSTITUTED",
    "SUBSTITUTES",
    "Substitution",
]

SUBSTITUTED = "substituted"  # not created by CloudFormation; created through the service API
FIXED = "fixed"  # created, a property was dropped or broken; set again through the service API
NOT_APPLIED = "not applied"  # created, a property has no local equivalent; how it is covered
NOT_CREATED = "not created"  # nothing to create locally, and why


@dataclass(frozen=True)
class Substitution:
    """Something of the template the local CloudFormation did not do, and what was done."""

    logical_id: str
    resource_type: str
    action: str  # SUBSTITUTED, FIXED, NOT_APPLIED or NOT_CREATED
    subject: str  # the API used, or the property concerned
    detail: str

    def key(self) -> tuple[str, str, str, str]:
        return (self.logical_id, self.resource_type, self.action, self.subject)

    def __str__(self) -> str:
        return (
            f"{self.action:<11} {self.resource_type} {self.logical_id}: {self.subject} "
            f"- {self.detail}"
        )


def _generated_name(stack_name: str, logical_id: str, limit: int) -> str:
    return f"{stack_name}-{logical_id}"[:limit]


_Handler = Callable[["Deployment", str, dict[str, Any]], Substitution]


def _only(props: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(props) - allowed)
    if unknown:
        raise DeployError(f"{where}: properties {unknown} have no local substitute")
    return dict(props)


def _schedule(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    allowed = {
        "Name", "GroupName", "Description", "ScheduleExpression", "ScheduleExpressionTimezone",
        "FlexibleTimeWindow", "State", "Target", "StartDate", "EndDate", "KmsKeyArn",
        "ActionAfterCompletion",
    }  # fmt: skip
    kwargs = _only(props, allowed, f"{logical_id} (AWS::Scheduler::Schedule)")
    kwargs.setdefault("Name", _generated_name(dep.stack_name, logical_id, 64))
    created = dep.aws.client("scheduler").create_schedule(**kwargs)
    group = kwargs.get("GroupName", "default")
    dep.physical_ids[logical_id] = kwargs["Name"]
    dep.res.attributes[(logical_id, "Arn")] = created["ScheduleArn"]
    return Substitution(
        logical_id, "AWS::Scheduler::Schedule", SUBSTITUTED, "scheduler:CreateSchedule",
        f"schedule {group}/{kwargs['Name']}, same expression, target, input, retry policy and "
        "dead-letter queue; the local Scheduler never fires it: the router delivers its input",
    )  # fmt: skip


def _event_invoke_config(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    allowed = {
        "FunctionName", "Qualifier", "MaximumRetryAttempts", "MaximumEventAgeInSeconds",
        "DestinationConfig",
    }  # fmt: skip
    kwargs = _only(props, allowed, f"{logical_id} (AWS::Lambda::EventInvokeConfig)")
    dep.aws.client("lambda").put_function_event_invoke_config(**kwargs)
    dep.physical_ids[logical_id] = f"{kwargs['FunctionName']}:{kwargs.get('Qualifier', '$LATEST')}"
    return Substitution(
        logical_id, "AWS::Lambda::EventInvokeConfig", SUBSTITUTED,
        "lambda:PutFunctionEventInvokeConfig",
        f"retries {kwargs.get('MaximumRetryAttempts')}, max age "
        f"{kwargs.get('MaximumEventAgeInSeconds')} s, on-failure destination stored; the router "
        "does not retry a failed invocation by itself: callers redeliver",
    )  # fmt: skip


def _topic_policy(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    props = _only(props, {"PolicyDocument", "Topics"}, f"{logical_id} (AWS::SNS::TopicPolicy)")
    sns = dep.aws.client("sns")
    for topic_arn in props["Topics"]:
        sns.set_topic_attributes(
            TopicArn=topic_arn,
            AttributeName="Policy",
            AttributeValue=json.dumps(props["PolicyDocument"]),
        )
    dep.physical_ids[logical_id] = ",".join(props["Topics"])
    return Substitution(
        logical_id, "AWS::SNS::TopicPolicy", SUBSTITUTED, "sns:SetTopicAttributes(Policy)",
        "policy stored on the topic; the local SNS does not enforce it",
    )  # fmt: skip


def _queue_policy(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    props = _only(props, {"PolicyDocument", "Queues"}, f"{logical_id} (AWS::SQS::QueuePolicy)")
    sqs = dep.aws.client("sqs")
    for queue_url in props["Queues"]:
        sqs.set_queue_attributes(
            QueueUrl=queue_url, Attributes={"Policy": json.dumps(props["PolicyDocument"])}
        )
    dep.physical_ids[logical_id] = ",".join(props["Queues"])
    return Substitution(
        logical_id, "AWS::SQS::QueuePolicy", SUBSTITUTED, "sqs:SetQueueAttributes(Policy)",
        "policy stored on the queue; the local SQS does not enforce it",
    )  # fmt: skip


def _ssl_only(statement: Mapping[str, Any]) -> bool:
    condition = statement.get("Condition", {})
    return statement.get("Effect") == "Deny" and condition == {
        "Bool": {"aws:SecureTransport": "false"}
    }


def _bucket_policy(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    props = _only(props, {"Bucket", "PolicyDocument"}, f"{logical_id} (AWS::S3::BucketPolicy)")
    document = dict(props["PolicyDocument"])
    statements = document["Statement"]
    # moto evaluates bucket policies, and the local endpoint is plain http: an SSL-only
    # statement would refuse every request, the function's too.
    document["Statement"] = [st for st in statements if not _ssl_only(st)]
    dropped = len(statements) - len(document["Statement"])
    if document["Statement"]:
        dep.aws.client("s3").put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(document))
    dep.physical_ids[logical_id] = props["Bucket"]
    return Substitution(
        logical_id, "AWS::S3::BucketPolicy", SUBSTITUTED, "s3:PutBucketPolicy",
        f"stored without its {dropped} SSL-only statement(s): the local S3 evaluates bucket "
        "policies and its endpoint is http, so they would refuse every request",
    )  # fmt: skip


_SUBSCRIPTION_JSON_ATTRIBUTES = ("FilterPolicy", "RedrivePolicy", "DeliveryPolicy")


def _subscription(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    allowed = {
        "TopicArn", "Protocol", "Endpoint", "RawMessageDelivery", "FilterPolicy",
        "FilterPolicyScope", "RedrivePolicy", "DeliveryPolicy", "SubscriptionRoleArn", "Region",
    }  # fmt: skip
    props = _only(props, allowed, f"{logical_id} (AWS::SNS::Subscription)")
    attributes: dict[str, str] = {}
    for name in ("RawMessageDelivery", "FilterPolicyScope", "SubscriptionRoleArn"):
        if name in props:
            attributes[name] = (
                str(props[name]).lower() if name == "RawMessageDelivery" else str(props[name])
            )
    for name in _SUBSCRIPTION_JSON_ATTRIBUTES:
        if name in props:
            attributes[name] = json.dumps(props[name])
    kwargs: dict[str, Any] = {
        "TopicArn": props["TopicArn"],
        "Protocol": props["Protocol"],
        "ReturnSubscriptionArn": True,
    }
    if "Endpoint" in props:
        kwargs["Endpoint"] = props["Endpoint"]
    if attributes:
        kwargs["Attributes"] = attributes
    arn = dep.aws.client("sns").subscribe(**kwargs)["SubscriptionArn"]
    dep.physical_ids[logical_id] = arn
    return Substitution(
        logical_id, "AWS::SNS::Subscription", SUBSTITUTED, "sns:Subscribe",
        f"{props['Protocol']} subscription {props.get('Endpoint', '')} (nothing is sent locally)",
    )  # fmt: skip


def _alarm(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:
    allowed = {
        "AlarmName", "AlarmDescription", "ActionsEnabled", "AlarmActions", "OKActions",
        "InsufficientDataActions", "MetricName", "Namespace", "Statistic", "ExtendedStatistic",
        "Dimensions", "Period", "Unit", "EvaluationPeriods", "DatapointsToAlarm", "Threshold",
        "ComparisonOperator", "TreatMissingData", "EvaluateLowSampleCountPercentile", "Metrics",
        "ThresholdMetricId",
    }  # fmt: skip
    kwargs = _only(props, allowed, f"{logical_id} (AWS::CloudWatch::Alarm)")
    kwargs.setdefault("AlarmName", _generated_name(dep.stack_name, logical_id, 255))
    dep.aws.client("cloudwatch").put_metric_alarm(**kwargs)
    dep.physical_ids[logical_id] = kwargs["AlarmName"]
    return Substitution(
        logical_id, "AWS::CloudWatch::Alarm", SUBSTITUTED, "cloudwatch:PutMetricAlarm",
        f"alarm on {kwargs.get('Namespace')}/{kwargs.get('MetricName')}; never evaluated locally",
    )  # fmt: skip


def _cdk_metadata(dep: Deployment, logical_id: str, props: dict[str, Any]) -> Substitution:  # noqa: ARG001
    return Substitution(
        logical_id, "AWS::CDK::Metadata", NOT_CREATED, "-",
        "the CDK's usage-reporting resource; CloudFormation itself keeps it, it is no AWS "
        "service resource",
    )  # fmt: skip


SUBSTITUTES: dict[str, _Handler] = {
    "AWS::Scheduler::Schedule": _schedule,
    "AWS::Lambda::EventInvokeConfig": _event_invoke_config,
    "AWS::SNS::TopicPolicy": _topic_policy,
    "AWS::SQS::QueuePolicy": _queue_policy,
    "AWS::S3::BucketPolicy": _bucket_policy,
    "AWS::SNS::Subscription": _subscription,
    "AWS::CloudWatch::Alarm": _alarm,
    "AWS::CDK::Metadata": _cdk_metadata,
}


# --- checks and fixes of resources moto created --------------------------------------------


def _check_kms_key(dep: Deployment, logical_id: str, props: dict[str, Any]) -> list[Substitution]:
    if "KeyPolicy" not in props:
        return []
    kms = dep.aws.client("kms", max_attempts=1)
    key_id = dep.physical_ids[logical_id]
    try:
        kms.describe_key(KeyId=key_id)
        return []
    except ClientError:
        pass
    kms.put_key_policy(
        KeyId=key_id, PolicyName="default", Policy=json.dumps(dep.res.resolve(props["KeyPolicy"]))
    )
    kms.describe_key(KeyId=key_id)  # raises if the fix did not take
    return [
        Substitution(
            logical_id,
            "AWS::KMS::Key",
            FIXED,
            "KeyPolicy",
            "moto's CloudFormation stores the key policy as an object, so DescribeKey fails "
            "with HTTP 500; put again as JSON with kms:PutKeyPolicy",
        )
    ]


def _check_table(dep: Deployment, logical_id: str, props: dict[str, Any]) -> list[Substitution]:
    ddb = dep.aws.client("dynamodb")
    table = dep.physical_ids[logical_id]
    out = []
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        status = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if status.get("TimeToLiveStatus") != "ENABLED":
            ddb.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )
            out.append(
                Substitution(
                    logical_id,
                    "AWS::DynamoDB::Table",
                    FIXED,
                    "TimeToLiveSpecification",
                    f"dropped by moto's CloudFormation; enabled on {ttl['AttributeName']!r} with "
                    "dynamodb:UpdateTimeToLive",
                )
            )
    pitr = props.get("PointInTimeRecoverySpecification", {})
    if pitr.get("PointInTimeRecoveryEnabled"):
        backups = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        if backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] != "ENABLED":
            ddb.update_continuous_backups(
                TableName=table,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
            out.append(
                Substitution(
                    logical_id,
                    "AWS::DynamoDB::Table",
                    FIXED,
                    "PointInTimeRecoverySpecification",
                    "dropped by moto's CloudFormation; enabled with "
                    "dynamodb:UpdateContinuousBackups",
                )
            )
    sse = props.get("SSESpecification", {})
    if sse.get("SSEEnabled"):
        description = ddb.describe_table(TableName=table)["Table"].get("SSEDescription")
        if not description:
            out.append(
                Substitution(
                    logical_id,
                    "AWS::DynamoDB::Table",
                    NOT_APPLIED,
                    "SSESpecification",
                    "moto keeps the CloudFormation SSESpecification under a key its DescribeTable "
                    "does not read; nothing is encrypted locally either way",
                )
            )
    return out


def _check_bucket(dep: Deployment, logical_id: str, props: dict[str, Any]) -> list[Substitution]:
    """Put back what moto's CloudFormation drops of a bucket: its lifecycle rules, public access
    block, ownership controls and the S3 Bucket Key of its default encryption."""
    s3 = dep.aws.client("s3")
    bucket = dep.physical_ids[logical_id]
    props = dep.res.resolve(props)
    out = []

    def fixed(subject: str, detail: str) -> None:
        out.append(Substitution(logical_id, "AWS::S3::Bucket", FIXED, subject, detail))

    def missing(call: Callable[..., Any], absent: str) -> bool:
        try:
            call(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == absent:
                return True
            raise
        return False

    lifecycle = props.get("LifecycleConfiguration")
    if lifecycle and missing(s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration"):
        rules = []
        for rule in lifecycle["Rules"]:
            rules.append(
                {
                    "ID": rule["Id"],
                    "Filter": {"Prefix": rule.get("Prefix", "")},
                    "Status": rule["Status"],
                    "Expiration": {"Days": rule["ExpirationInDays"]},
                    "AbortIncompleteMultipartUpload": rule["AbortIncompleteMultipartUpload"],
                }
            )
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": rules}
        )
        fixed(
            "LifecycleConfiguration",
            "dropped by moto's CloudFormation; put with s3:PutBucketLifecycleConfiguration "
            "(the local S3 never expires objects)",
        )
    block = props.get("PublicAccessBlockConfiguration")
    if block and missing(s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration"):
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=block)
        fixed("PublicAccessBlockConfiguration", "dropped; put with s3:PutPublicAccessBlock")
    ownership = props.get("OwnershipControls")
    if ownership and missing(s3.get_bucket_ownership_controls, "OwnershipControlsNotFoundError"):
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=ownership)
        fixed("OwnershipControls", "dropped; put with s3:PutBucketOwnershipControls")
    encryption = props.get("BucketEncryption")
    if encryption:
        [wanted] = encryption["ServerSideEncryptionConfiguration"]
        got = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        [rule] = got["Rules"]
        if rule.get("BucketKeyEnabled", False) != wanted.get("BucketKeyEnabled", False):
            default = wanted["ServerSideEncryptionByDefault"]
            s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [
                        {
                            "ApplyServerSideEncryptionByDefault": {
                                "SSEAlgorithm": default["SSEAlgorithm"],
                                "KMSMasterKeyID": default["KMSMasterKeyID"],
                            },
                            "BucketKeyEnabled": wanted["BucketKeyEnabled"],
                        }
                    ]
                },
            )
            fixed("BucketEncryption", "BucketKeyEnabled dropped; put with s3:PutBucketEncryption")
    return out


def _check_function(dep: Deployment, logical_id: str, props: dict[str, Any]) -> list[Substitution]:
    config = dep.aws.client("lambda").get_function_configuration(
        FunctionName=dep.physical_ids[logical_id]
    )
    wanted_env = {
        k: str(v)
        for k, v in dep.res.resolve(props.get("Environment", {}).get("Variables", {})).items()
    }
    got_env = config.get("Environment", {}).get("Variables", {})
    if got_env != wanted_env:
        raise DeployError(f"{logical_id}: deployed environment {got_env} != template {wanted_env}")
    for name in ("Handler", "Runtime", "Timeout", "MemorySize"):
        if name in props and config.get(name) != props[name]:
            raise DeployError(
                f"{logical_id}: deployed {name} {config.get(name)!r} != {props[name]!r}"
            )
    out = []

    def not_applied(subject: str, detail: str) -> None:
        out.append(Substitution(logical_id, "AWS::Lambda::Function", NOT_APPLIED, subject, detail))

    layers = [str(layer) for layer in dep.res.resolve(props.get("Layers", []))]
    deployed_layers = [layer["Arn"] for layer in config.get("Layers", [])]
    if layers != deployed_layers:
        not_applied(
            "Layers",
            f"{', '.join(layers)} is published by another account and does not exist locally "
            "(moto's CloudFormation drops it); the local runtime puts a stand-in on the worker's "
            "path instead: lambdas/requirements.txt built with pip (localaws.lambda_layer)",
        )
    architectures = props.get("Architectures", ["x86_64"])
    if config.get("Architectures", ["x86_64"]) != architectures:
        not_applied(
            "Architectures",
            f"{architectures} deployed as {config.get('Architectures')} by moto's CloudFormation; "
            "irrelevant in-process",
        )
    mode = props.get("TracingConfig", {}).get("Mode", "PassThrough")
    if config.get("TracingConfig", {}).get("Mode", "PassThrough") != mode:
        not_applied(
            "TracingConfig",
            f"{mode} tracing dropped by moto's CloudFormation and there is no X-Ray locally; the "
            "router invokes with POWERTOOLS_TRACE_DISABLED=true",
        )
    if "LoggingConfig" in props and "LoggingConfig" not in config:
        not_applied(
            "LoggingConfig",
            "dropped by moto's CloudFormation; the router keeps the function's log lines "
            "(Router.lambda_logs) instead of writing them to the log group",
        )
    return out


def _check_rule(dep: Deployment, logical_id: str, props: dict[str, Any]) -> list[Substitution]:
    targets = dep.aws.client("events").list_targets_by_rule(Rule=dep.physical_ids[logical_id])
    if len(targets["Targets"]) != len(props.get("Targets", [])):
        raise DeployError(f"{logical_id}: deployed targets differ from the template's")
    return []


_Check = Callable[["Deployment", str, dict[str, Any]], list[Substitution]]
CHECKS: dict[str, _Check] = {
    "AWS::KMS::Key": _check_kms_key,
    "AWS::DynamoDB::Table": _check_table,
    "AWS::S3::Bucket": _check_bucket,
    "AWS::Lambda::Function": _check_function,
    "AWS::Events::Rule": _check_rule,
}
