"""Synthesize the Snapset CDK app and deploy its template into the local AWS, as `cdk deploy` would.

    synth = synthesize()                  # the project's app.py with cdk.json's context
    deployment = deploy(aws, synth)       # bootstrap staging, assets, CreateStack, substitutions
    for sub in deployment.substitutions:  # what moto's CloudFormation could not do, and what
        print(sub)                        # was done instead (never skipped silently)

Synthesis runs in-process (`app.build_app` on a `cdk.App` given cdk.json's `context`): one jsii
process and no CLI round trip (about 4 s against about 10 s for `npx cdk synth`), and it builds
exactly the stack `cdk synth` builds, cdk-nag validation included. The cloud assembly goes to a
temporary directory; the template and the asset contents are read from it into memory.

Deployment follows the default stack synthesizer's contract: the `/cdk-bootstrap/hnb659fds/version`
SSM parameter and the `cdk-hnb659fds-assets-ACCOUNT-REGION` bucket are staged (what
`cdk bootstrap` creates), every file asset of the asset manifest is published there (directories
zipped, as cdk-assets does), then the template goes to CloudFormation's `CreateStack`.

moto 5.2.5's CloudFormation skips resource types it has no model for (with a warning in the server
log) and drops some properties of types it does model. `deploy` finds both by reading the stack
back, creates the nearest equivalent of every skipped resource through the service APIs, fixes
what an API can fix, and lists all of it in `Deployment.substitutions`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from localaws.process import LocalAws

__all__ = [
    "BOOTSTRAP_QUALIFIER",
    "BOOTSTRAP_VERSION_PARAMETER",
    "DeployError",
    "Deployment",
    "FileAsset",
    "Resolver",
    "Substitution",
    "Synthesized",
    "deploy",
    "synthesize",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP_QUALIFIER = "hnb659fds"
BOOTSTRAP_VERSION_PARAMETER = f"/cdk-bootstrap/{BOOTSTRAP_QUALIFIER}/version"
# The version the pinned CDK CLI's `cdk bootstrap` writes (read from its template when installed).
DEFAULT_BOOTSTRAP_VERSION = "30"
_BOOTSTRAP_TEMPLATE = "node_modules/aws-cdk/lib/api/bootstrap/bootstrap-template.yaml"
# CloudFormation takes a TemplateBody up to 51,200 bytes; larger ones go through S3 (as the CLI).
_MAX_TEMPLATE_BODY = 51_200
_PARTITION = "aws"
# What the CDK CLI adds to the context of `cdk synth` (metadata, version reporting, bundling), so
# the in-process template is the CLI's.
CLI_CONTEXT = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:version-reporting": True,
    "aws:cdk:bundling-stacks": ["**"],
}
_URL_SUFFIX = "amazonaws.com"


class DeployError(RuntimeError):
    """Synthesis or deployment failed, or the template needs something the local AWS lacks."""


# --- synthesis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileAsset:
    """One file asset of the asset manifest, with its content ready to publish."""

    asset_hash: str
    bucket_name: str  # with ${AWS::AccountId} / ${AWS::Region} placeholders, as in the manifest
    object_key: str
    data: bytes
    packaging: str


@dataclass(frozen=True)
class Synthesized:
    stack_name: str
    artifact_id: str
    template: dict[str, Any]
    assets: tuple[FileAsset, ...]
    seconds: float

    @property
    def template_body(self) -> str:
        return json.dumps(self.template)


def _zip_directory(directory: Path) -> bytes:
    """Zip a staged asset directory deterministically (sorted entries, fixed timestamps)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), (1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _read_assembly(outdir: Path, stack_name: str) -> tuple[str, dict[str, Any], list[FileAsset]]:
    manifest = json.loads((outdir / "manifest.json").read_text())
    artifacts: dict[str, Any] = manifest.get("artifacts", {})
    stacks = {
        artifact_id: a
        for artifact_id, a in artifacts.items()
        if a.get("type") == "aws:cloudformation:stack"
        and a.get("properties", {}).get("stackName", artifact_id) == stack_name
    }
    if len(stacks) != 1:
        raise DeployError(f"the cloud assembly has no single stack named {stack_name!r}")
    artifact_id, stack = next(iter(stacks.items()))
    template = json.loads((outdir / stack["properties"]["templateFile"]).read_text())
    assets: list[FileAsset] = []
    for dependency in stack.get("dependencies", []):
        dep = artifacts.get(dependency, {})
        if dep.get("type") != "cdk:asset-manifest":
            continue
        asset_manifest = json.loads((outdir / dep["properties"]["file"]).read_text())
        if asset_manifest.get("dockerImages"):
            raise DeployError("the stack has Docker image assets; the local AWS has no Docker")
        for asset_hash, asset in asset_manifest.get("files", {}).items():
            source = outdir / asset["source"]["path"]
            packaging = asset["source"].get("packaging", "file")
            data = _zip_directory(source) if packaging == "zip" else source.read_bytes()
            for destination in asset["destinations"].values():
                assets.append(
                    FileAsset(
                        asset_hash, destination["bucketName"], destination["objectKey"], data,
                        packaging,
                    )
                )  # fmt: skip
    return artifact_id, template, assets


@functools.cache
def synthesize(project_root: Path = PROJECT_ROOT, stack_name: str | None = None) -> Synthesized:
    """Synthesize the project's CDK app in-process with cdk.json's context (cached per process)."""
    started = time.monotonic()
    # Node 20 is past jsii's support window; its banner would bury the demo's output.
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
    for path in (project_root / "lambdas", project_root):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    # deploy is development tooling, not Lambda runtime code: the CDK ban does not apply here
    import aws_cdk as cdk  # noqa: PLC0415 - heavy (starts jsii); only when synthesizing

    from app import build_app  # noqa: PLC0415

    context = {
        **json.loads((project_root / "cdk.json").read_text()).get("context", {}),
        **CLI_CONTEXT,
    }
    name = stack_name or context.get("snapset:stack_name") or "Snapset"
    with tempfile.TemporaryDirectory(prefix="snapset-cdk-out-") as outdir:
        app = cdk.App(context=context, outdir=outdir)
        try:
            build_app(app)
            app.synth()
        except Exception as exc:
            raise DeployError(f"synthesis failed: {exc}") from exc
        artifact_id, template, assets = _read_assembly(Path(outdir), name)
    return Synthesized(name, artifact_id, template, tuple(assets), time.monotonic() - started)


def bootstrap_version(project_root: Path = PROJECT_ROOT) -> str:
    """The bootstrap version the pinned CLI's `cdk bootstrap` would write."""
    try:
        text = (project_root / _BOOTSTRAP_TEMPLATE).read_text()
    except OSError:
        return DEFAULT_BOOTSTRAP_VERSION
    match = re.search(
        r"CdkBootstrapVersion:\s+Type: AWS::SSM::Parameter.*?Value: '(\d+)'", text, re.S
    )
    return match.group(1) if match else DEFAULT_BOOTSTRAP_VERSION


# --- intrinsic functions -------------------------------------------------------------------


class Resolver:
    """Resolves CloudFormation intrinsics against the deployed stack.

    Used for the resources `deploy` creates itself and to compare deployed values with the
    template. Supports Ref, Fn::GetAtt (the attributes Snapset's template uses), Fn::Join,
    Fn::Sub, Fn::Select, Fn::Split, Fn::If, Fn::Equals/And/Or/Not and Condition; anything else
    raises `DeployError` rather than guessing.
    """

    def __init__(
        self,
        aws: LocalAws,
        template: Mapping[str, Any],
        physical_ids: Mapping[str, str],
        *,
        stack_name: str,
        stack_id: str,
        account: str,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.aws = aws
        self.template = template
        self.physical_ids = dict(physical_ids)
        self.attributes: dict[tuple[str, str], str] = {}
        self.pseudo = {
            "AWS::AccountId": account,
            "AWS::Region": aws.region,
            "AWS::Partition": _PARTITION,
            "AWS::URLSuffix": _URL_SUFFIX,
            "AWS::StackName": stack_name,
            "AWS::StackId": stack_id,
        }
        self.parameters = dict(parameters or {})

    @property
    def account(self) -> str:
        return self.pseudo["AWS::AccountId"]

    def resource_type(self, logical_id: str) -> str:
        resource_type: str = self.template["Resources"][logical_id]["Type"]
        return resource_type

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical_ids:
            return self.physical_ids[name]
        raise DeployError(f"cannot resolve Ref {name}: not deployed")

    def get_att(self, logical_id: str, attribute: str) -> str:
        key = (logical_id, attribute)
        if key not in self.attributes:
            self.attributes[key] = self._get_att(logical_id, attribute)
        return self.attributes[key]

    def _get_att(self, logical_id: str, attribute: str) -> str:
        physical = self.ref(logical_id)
        rtype = self.resource_type(logical_id)
        region, account = self.aws.region, self.account
        if rtype == "AWS::SQS::Queue":
            if attribute == "Arn":
                attrs = self.aws.client("sqs").get_queue_attributes(
                    QueueUrl=physical, AttributeNames=["QueueArn"]
                )["Attributes"]
                return str(attrs["QueueArn"])
            if attribute == "QueueName":
                return physical.rsplit("/", 1)[-1]
            if attribute == "QueueUrl":
                return physical
        elif rtype == "AWS::SNS::Topic":
            if attribute == "TopicArn":
                return physical
            if attribute == "TopicName":
                return physical.rsplit(":", 1)[-1]
        elif rtype == "AWS::IAM::Role" and attribute in ("Arn", "RoleId"):
            return str(self.aws.client("iam").get_role(RoleName=physical)["Role"][attribute])
        elif rtype == "AWS::Lambda::Function" and attribute == "Arn":
            config = self.aws.client("lambda").get_function_configuration(FunctionName=physical)
            return str(config["FunctionArn"])
        elif rtype == "AWS::KMS::Key":
            if attribute == "Arn":
                return f"arn:{_PARTITION}:kms:{region}:{account}:key/{physical}"
            if attribute == "KeyId":
                return physical
        elif rtype == "AWS::DynamoDB::Table" and attribute == "Arn":
            table = self.aws.client("dynamodb").describe_table(TableName=physical)["Table"]
            return str(table["TableArn"])
        elif rtype == "AWS::Logs::LogGroup" and attribute == "Arn":
            return f"arn:{_PARTITION}:logs:{region}:{account}:log-group:{physical}:*"
        elif rtype == "AWS::Events::Rule" and attribute == "Arn":
            return str(self.aws.client("events").describe_rule(Name=physical)["Arn"])
        raise DeployError(f"cannot resolve Fn::GetAtt {logical_id}.{attribute} ({rtype})")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()  # fmt: skip
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::Join":
                separator, items = arg
                return separator.join(str(i) for i in self.resolve(items))
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Select":
                index, items = self.resolve(arg)
                return items[int(index)]
            if key == "Fn::Split":
                separator, text = self.resolve(arg)
                return text.split(separator)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::Equals":
                left, right = self.resolve(arg)
                return left == right
            if key == "Fn::And":
                return all(self.resolve(arg))
            if key == "Fn::Or":
                return any(self.resolve(arg))
            if key == "Fn::Not":
                return not self.resolve(arg)[0]
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise DeployError(f"intrinsic {key} is not supported by the local deployer")
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return re.sub(r"\$\{([^}]+)\}", replace, text)


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


_NO_VALUE: Any = _NoValue()


# --- substitutions ---------------------------------------------------------------------------

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


@dataclass
class Deployment:
    """The deployed stack: physical ids (the substituted resources' too) and substitutions."""

    aws: LocalAws
    stack_name: str
    stack_id: str
    template: dict[str, Any]
    physical_ids: dict[str, str]
    outputs: dict[str, str]
    substitutions: list[Substitution] = field(default_factory=list)
    resolver: Resolver | None = None
    seconds: float = 0.0

    def logical_ids(self, resource_type: str) -> list[str]:
        return [k for k, v in self.template["Resources"].items() if v["Type"] == resource_type]

    def physical_id(self, logical_id: str) -> str:
        return self.physical_ids[logical_id]

    def _single(self, resource_type: str) -> str:
        ids = self.logical_ids(resource_type)
        if len(ids) != 1:
            raise DeployError(f"expected one {resource_type} in the stack, found {len(ids)}")
        return self.physical_ids[ids[0]]

    @property
    def function_name(self) -> str:
        return self.outputs.get("FunctionName") or self._single("AWS::Lambda::Function")

    @property
    def topic_arn(self) -> str:
        return self.outputs.get("TopicArn") or self._single("AWS::SNS::Topic")

    @property
    def idempotency_table(self) -> str:
        return self._single("AWS::DynamoDB::Table")

    def function_configuration(self) -> dict[str, Any]:
        config: dict[str, Any] = self.aws.client("lambda").get_function_configuration(
            FunctionName=self.function_name
        )
        return config

    def template_function_environment(self) -> dict[str, str]:
        """The function's environment as the template defines it, intrinsics resolved."""
        logical_id = self.logical_ids("AWS::Lambda::Function")[0]
        props = self.template["Resources"][logical_id]["Properties"]
        variables = self.res.resolve(props.get("Environment", {}).get("Variables", {}))
        return {k: str(v) for k, v in variables.items()}

    @property
    def res(self) -> Resolver:
        if self.resolver is None:
            raise DeployError("deployment has no resolver")
        return self.resolver

    def substitution_lines(self) -> list[str]:
        return [str(s) for s in self.substitutions]


def _generated_name(stack_name: str, logical_id: str, limit: int) -> str:
    return f"{stack_name}-{logical_id}"[:limit]


_Handler = Callable[[Deployment, str, dict[str, Any]], Substitution]


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
    dep.res.physical_ids[logical_id] = kwargs["Name"]
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
    "AWS::SNS::Subscription": _subscription,
    "AWS::CloudWatch::Alarm": _alarm,
    "AWS::CDK::Metadata": _cdk_metadata,
}


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, list):
        for v in value:
            yield from _references(v)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                yield arg
            elif key == "Fn::GetAtt":
                yield arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                for name in re.findall(r"\$\{([^}!][^}]*)\}", text):
                    yield name.split(".", 1)[0]
                if not isinstance(arg, str):
                    yield from _references(arg[1])
            else:
                yield from _references(arg)


def _dependency_order(template: Mapping[str, Any], logical_ids: list[str]) -> list[str]:
    """Order the resources to create so that each comes after those it refers to."""
    pending = set(logical_ids)
    ordered: list[str] = []
    while pending:
        ready = []
        for logical_id in sorted(pending):
            resource = template["Resources"][logical_id]
            depends = resource.get("DependsOn", [])
            refs = set(_references(resource.get("Properties", {})))
            refs |= {depends} if isinstance(depends, str) else set(depends)
            if not refs & pending - {logical_id}:
                ready.append(logical_id)
        if not ready:
            raise DeployError(f"circular references between {sorted(pending)}")
        ordered += ready
        pending -= set(ready)
    return ordered


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
            "(moto's CloudFormation drops it); the router runs the handler in-process with the "
            "aws-lambda-powertools of this environment",
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


_Check = Callable[[Deployment, str, dict[str, Any]], list[Substitution]]
CHECKS: dict[str, _Check] = {
    "AWS::KMS::Key": _check_kms_key,
    "AWS::DynamoDB::Table": _check_table,
    "AWS::Lambda::Function": _check_function,
    "AWS::Events::Rule": _check_rule,
}


# --- deploy ----------------------------------------------------------------------------------


def _account(aws: LocalAws) -> str:
    return str(aws.client("sts").get_caller_identity()["Account"])


def _expand(text: str, account: str, region: str) -> str:
    return (
        text.replace("${AWS::AccountId}", account)
        .replace("${AWS::Region}", region)
        .replace("${AWS::Partition}", _PARTITION)
    )


def stage_bootstrap(aws: LocalAws, account: str, version: str | None = None) -> str:
    """What `cdk bootstrap` leaves for the default synthesizer: version parameter, asset bucket."""
    aws.client("ssm").put_parameter(
        Name=BOOTSTRAP_VERSION_PARAMETER,
        Value=version or bootstrap_version(),
        Type="String",
        Overwrite=True,
    )
    bucket = f"cdk-{BOOTSTRAP_QUALIFIER}-assets-{account}-{aws.region}"
    s3 = aws.client("s3")
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return bucket


def publish_assets(aws: LocalAws, synth: Synthesized, account: str) -> list[str]:
    s3 = aws.client("s3")
    published = []
    for asset in synth.assets:
        bucket = _expand(asset.bucket_name, account, aws.region)
        key = _expand(asset.object_key, account, aws.region)
        s3.put_object(Bucket=bucket, Key=key, Body=asset.data)
        published.append(f"s3://{bucket}/{key}")
    return published


def _wait(cfn: Any, stack_name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack: dict[str, Any] = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            if status != "CREATE_COMPLETE":
                events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
                reasons = [
                    f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                    for e in events
                    if e.get("ResourceStatusReason")
                ]
                raise DeployError(f"stack {stack_name} ended {status}: {'; '.join(reasons[:5])}")
            return stack
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack_name} still {status} after {timeout} s")
        time.sleep(0.05)


def _stack_resources(cfn: Any, stack_name: str) -> dict[str, str]:
    out = {}
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name):
        for summary in page["StackResourceSummaries"]:
            # moto lists the resources it skipped with an empty logical id; leave them out
            if summary.get("LogicalResourceId"):
                out[summary["LogicalResourceId"]] = summary.get("PhysicalResourceId", "")
    return out


def deploy(
    aws: LocalAws,
    synth: Synthesized | None = None,
    *,
    stack_name: str | None = None,
    timeout: float = 60.0,
) -> Deployment:
    """Deploy a synthesized stack into the local AWS and complete what CloudFormation skipped."""
    synth = synth or synthesize()
    started = time.monotonic()
    name = stack_name or synth.stack_name
    account = _account(aws)
    stage_bootstrap(aws, account)
    publish_assets(aws, synth, account)
    cfn = aws.client("cloudformation")
    body = synth.template_body
    kwargs: dict[str, Any] = {
        "StackName": name,
        "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        "Tags": [],
    }
    if len(body.encode()) <= _MAX_TEMPLATE_BODY:
        kwargs["TemplateBody"] = body
    else:  # as the CLI: the template asset, already published to the assets bucket
        bucket = f"cdk-{BOOTSTRAP_QUALIFIER}-assets-{account}-{aws.region}"
        key = f"{synth.artifact_id}-template-{int(time.time())}.json"
        aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode())
        kwargs["TemplateURL"] = f"{aws.endpoint_url}/{bucket}/{key}"
    stack_id = cfn.create_stack(**kwargs)["StackId"]
    stack = _wait(cfn, name, timeout)
    physical_ids = _stack_resources(cfn, name)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    parameters = {
        p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", ""))
        for p in stack.get("Parameters", [])
    }
    template = synth.template
    resolver = Resolver(
        aws, template, physical_ids, stack_name=name, stack_id=stack_id, account=account,
        parameters=parameters,
    )  # fmt: skip
    deployment = Deployment(aws, name, stack_id, template, dict(physical_ids), outputs)
    deployment.resolver = resolver

    resources: dict[str, Any] = template["Resources"]
    missing = []
    for logical_id, resource in resources.items():
        if logical_id in physical_ids:
            continue
        condition = resource.get("Condition")
        if (
            condition
            and resource["Type"] != "AWS::CDK::Metadata"
            and not resolver.condition(condition)
        ):
            continue  # CloudFormation would not create it either
        missing.append(logical_id)
    for logical_id in _dependency_order(template, missing):
        resource = resources[logical_id]
        handler = SUBSTITUTES.get(resource["Type"])
        if handler is None:
            raise DeployError(
                f"{logical_id} ({resource['Type']}) was not created by the local CloudFormation "
                "and deploy has no substitute for it"
            )
        props = resolver.resolve(resource.get("Properties", {}))
        deployment.substitutions.append(handler(deployment, logical_id, props))
    for logical_id, resource in resources.items():
        check = CHECKS.get(resource["Type"])
        if check is not None and logical_id in physical_ids:
            props = resource.get("Properties", {})
            deployment.substitutions += check(deployment, logical_id, props)
    deployment.seconds = time.monotonic() - started
    return deployment
