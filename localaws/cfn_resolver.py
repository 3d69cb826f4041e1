"""CloudFormation's intrinsic functions, resolved against the deployed stack.

resolver = Resolver(aws, template, deployment.physical_ids, stack_name=..., stack_id=...,
                    account=...)
resolver.resolve({"Fn::GetAtt": ["Topic", "TopicName"]})
dependency_order(template, logical_ids)   # each resource after those it refers to
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from localaws.process import LocalAws
from localaws.synth import DeployError

__all__ = ["PARTITION", "Resolver", "dependency_order"]

PARTITION = "aws"
_URL_SUFFIX = "amazonaws.com"


class Resolver:
    """Resolves CloudFormation intrinsics against the deployed stack.

    Used for the resources `deploy` creates itself and to compare deployed values with the
    template. Supports Ref, Fn::GetAtt (the attributes Snapset's template uses), Fn::Join,
    Fn::Sub, Fn::Select, Fn::Split, Fn::If, Fn::Equals/And/Or/Not and Condition; anything else
    raises `DeployError` rather than guessing.

    `physical_ids` is read, not copied: given the deployment's own map, the resources created
    after the stack (the substitutes) resolve too.
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
        self.physical_ids = physical_ids
        self.attributes: dict[tuple[str, str], str] = {}
        self.pseudo = {
            "AWS::AccountId": account,
            "AWS::Region": aws.region,
            "AWS::Partition": PARTITION,
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
                return f"arn:{PARTITION}:kms:{region}:{account}:key/{physical}"
            if attribute == "KeyId":
                return physical
        elif rtype == "AWS::DynamoDB::Table" and attribute == "Arn":
            table = self.aws.client("dynamodb").describe_table(TableName=physical)["Table"]
            return str(table["TableArn"])
        elif rtype == "AWS::Logs::LogGroup" and attribute == "Arn":
            return f"arn:{PARTITION}:logs:{region}:{account}:log-group:{physical}:*"
        elif rtype == "AWS::S3::Bucket":
            if attribute == "Arn":
                return f"arn:{PARTITION}:s3:::{physical}"
            if attribute == "DomainName":
                return f"{physical}.s3.amazonaws.com"
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


def dependency_order(template: Mapping[str, Any], logical_ids: list[str]) -> list[str]:
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
