"""Deploy the synthesized template into the local AWS, as `cdk deploy` would.

    synth = synthesize()                  # localaws.synth: app.py with cdk.json's context
    deployment = deploy(aws, synth)       # bootstrap staging, assets, CreateStack, substitutions
    for sub in deployment.substitutions:  # what moto's CloudFormation could not do, and what
        print(sub)                        # was done instead (never skipped silently)

Deployment follows the default stack synthesizer's contract: the `/cdk-bootstrap/hnb659fds/version`
SSM parameter and the `cdk-hnb659fds-assets-ACCOUNT-REGION` bucket are staged (what
`cdk bootstrap` creates), every file asset of the asset manifest is published there (directories
zipped, as cdk-assets does), then the template goes to CloudFormation's `CreateStack`.

moto 5.2.5's CloudFormation skips resource types it has no model for (with a warning in the server
log) and drops some properties of types it does model. `deploy` finds both by reading the stack
back, creates the nearest equivalent of every skipped resource through the service APIs, fixes
what an API can fix (`localaws.substitutes`), and lists all of it in `Deployment.substitutions`.
Intrinsics are resolved by `localaws.cfn_resolver`, against `Deployment.physical_ids`: the one
map of logical to physical ids, the stack's resources and the substituted ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from localaws.cfn_resolver import PARTITION, Resolver, dependency_order
from localaws.process import LocalAws
from localaws.substitutes import CHECKS, SUBSTITUTES, Substitution
from localaws.synth import DeployError, Synthesized, bootstrap_version, synthesize

__all__ = [
    "BOOTSTRAP_QUALIFIER",
    "BOOTSTRAP_VERSION_PARAMETER",
    "Deployment",
    "deploy",
    "publish_assets",
    "stage_bootstrap",
]

BOOTSTRAP_QUALIFIER = "hnb659fds"
BOOTSTRAP_VERSION_PARAMETER = f"/cdk-bootstrap/{BOOTSTRAP_QUALIFIER}/version"
# CloudFormation takes a TemplateBody up to 51,200 bytes; larger ones go through S3 (as the CLI).
_MAX_TEMPLATE_BODY = 51_200


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


def _account(aws: LocalAws) -> str:
    return str(aws.client("sts").get_caller_identity()["Account"])


def _expand(text: str, account: str, region: str) -> str:
    return (
        text.replace("${AWS::AccountId}", account)
        .replace("${AWS::Region}", region)
        .replace("${AWS::Partition}", PARTITION)
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


_SSM_PARAMETER_TYPE = "AWS::SSM::Parameter::Value<String>"


def stage_public_parameters(aws: LocalAws, template: Mapping[str, Any], account: str) -> list[str]:
    """Publish stand-ins for the AWS public SSM parameters (`/aws/...`) the template reads.

    Only the Lambda's Powertools layer reads one; local Lambda applies no layers (see the
    substitution list), so the stand-in is a well-formed layer ARN that names itself as one.
    Returns the parameters published.
    """
    published = []
    for spec in template.get("Parameters", {}).values():
        name = str(spec.get("Default", ""))
        if spec.get("Type") == _SSM_PARAMETER_TYPE and name.startswith("/aws/"):
            stand_in = f"arn:aws:lambda:{aws.region}:{account}:layer:localaws-public-parameter:1"
            aws.put_public_parameter(name, stand_in, account)
            published.append(name)
    return published


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
    stage_public_parameters(aws, synth.template, account)
    if len(body.encode()) <= _MAX_TEMPLATE_BODY:
        kwargs["TemplateBody"] = body
    else:  # as the CLI: the template asset, already published to the assets bucket
        bucket = f"cdk-{BOOTSTRAP_QUALIFIER}-assets-{account}-{aws.region}"
        key = f"{synth.artifact_id}-template-{int(time.time())}.json"
        aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode())
        # The S3 URL AWS itself takes (path style): moto reads the object by the URL's parts
        # and takes the host of any URL that is neither AWS's nor localhost's for the bucket.
        kwargs["TemplateURL"] = f"https://s3.{aws.region}.amazonaws.com/{bucket}/{key}"
    stack_id = cfn.create_stack(**kwargs)["StackId"]
    stack = _wait(cfn, name, timeout)
    stack_resources = _stack_resources(cfn, name)  # what the local CloudFormation created
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    parameters = {
        p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", ""))
        for p in stack.get("Parameters", [])
    }
    template = synth.template
    # deployment.physical_ids is the one map: the substitutes add to it, the resolver reads it
    deployment = Deployment(aws, name, stack_id, template, dict(stack_resources), outputs)
    resolver = Resolver(
        aws, template, deployment.physical_ids, stack_name=name, stack_id=stack_id,
        account=account, parameters=parameters,
    )  # fmt: skip
    deployment.resolver = resolver

    resources: dict[str, Any] = template["Resources"]
    missing = []
    for logical_id, resource in resources.items():
        if logical_id in stack_resources:
            continue
        condition = resource.get("Condition")
        if (
            condition
            and resource["Type"] != "AWS::CDK::Metadata"
            and not resolver.condition(condition)
        ):
            continue  # CloudFormation would not create it either
        missing.append(logical_id)
    for logical_id in dependency_order(template, missing):
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
        if check is not None and logical_id in stack_resources:
            props = resource.get("Properties", {})
            deployment.substitutions += check(deployment, logical_id, props)
    deployment.seconds = time.monotonic() - started
    return deployment
