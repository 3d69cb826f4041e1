"""IAM at run time: the function's role credentials, and moto's access control made usable.

moto 5.2.5 checks identity policies on every request once its access control is on
(`POST /moto-api/reset-auth`, or the `INITIAL_NO_AUTH_ACTION_COUNT` environment variable), but
for most services (EC2, SNS, DynamoDB, Lambda, ...) it does not know which resource a request
is on and matches each statement's `Resource` against the literal `"*"`: a statement scoped to
ARNs never applies, so a least-privilege role is refused nearly everything. `install()` makes a
statement's `Resource` apply to such requests (as if it matched), so roles are enforced at the
level of their actions. SQS, S3, IAM and STS requests, where moto knows the resource, are
matched as moto matches them. moto names the action after the operation (`lambda:Invoke`);
where IAM names it otherwise (`lambda:InvokeFunction`) the IAM name is checked.

`assume_role_as_service` is what the Lambda service does with a function's execution role: it
checks the role's trust policy names the service principal and asks STS for credentials, with
no caller identity (moto's own AssumeRole, called by an IAM user, fails on a trust policy whose
principal is a service).
"""

from __future__ import annotations

import json
from typing import Any

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import JsonRESTError
from moto.iam.access_control import (
    AssumedRoleAccessKey,
    IAMPolicy,
    IAMPolicyStatement,
    IAMRequest,
    IAMRequestBase,
    PermissionResult,
)
from moto.iam.exceptions import NotFoundException as IAMNotFoundException
from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

__all__ = [
    "IAM_ACTIONS",
    "AssumeRoleRefused",
    "assume_role_as_service",
    "enforced",
    "install",
    "session_permits",
]

_INSTALLED = "_localaws_iam"


class AssumeRoleRefused(ValueError):
    pass


def _signature_not_checked(self: Any) -> None:
    """moto recalculates SigV4 signatures wrongly for REST GET requests (Lambda, Scheduler):
    the caller is known by its access key (and session token), its signature is not checked."""


# Operations whose IAM action is not named like the operation: moto checks `service:Operation`.
IAM_ACTIONS = {
    "lambda:Invoke": "lambda:InvokeFunction",
    "lambda:InvokeWithResponseStream": "lambda:InvokeFunction",
    "lambda:GetLayerVersionByArn": "lambda:GetLayerVersion",
}


class LambdaAccessDenied(JsonRESTError):
    """Lambda's refusal, in Lambda's JSON error format (moto answers every service in XML,
    which botocore cannot parse for a REST-JSON service: the error code became `403`)."""

    code = 403

    def __init__(self, user_arn: str, action: str) -> None:
        super().__init__(
            "AccessDeniedException", f"User: {user_arn} is not authorized to perform: {action}"
        )


class SsmAccessDenied(JsonRESTError):
    """SSM's refusal in its JSON protocol's format: `AccessDeniedException`, HTTP 400 (moto's XML
    `AccessDenied` came out of botocore's JSON parser with the code `403`)."""

    code = 400

    def __init__(self, user_arn: str, action: str) -> None:
        super().__init__(
            "AccessDeniedException", f"User: {user_arn} is not authorized to perform: {action}"
        )


_JSON_REFUSALS: dict[str, type[JsonRESTError]] = {
    "lambda": LambdaAccessDenied,
    "ssm": SsmAccessDenied,
}


def install() -> None:
    """Match a statement's `Resource` against requests whose resource moto does not know;
    identify callers by their access key without checking the signature; check the IAM
    action of operations named otherwise (`IAM_ACTIONS`); refuse Lambda and SSM calls in their
    JSON error format (`AccessDeniedException`)."""
    if getattr(IAMPolicyStatement, _INSTALLED, False):
        return
    IAMRequestBase.check_signature = _signature_not_checked  # type: ignore[method-assign]
    moto_init = IAMRequestBase.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        moto_init(self, *args, **kwargs)
        self._action = IAM_ACTIONS.get(self._action, self._action)

    IAMRequestBase.__init__ = init  # type: ignore[method-assign]
    moto_denied = IAMRequest._raise_access_denied

    def raise_access_denied(self: Any) -> None:
        refusal = _JSON_REFUSALS.get(self._service)
        if refusal is not None:
            raise refusal(self._access_key.arn, self._action)
        moto_denied(self)

    IAMRequest._raise_access_denied = raise_access_denied  # type: ignore[method-assign]
    moto_matches = IAMPolicyStatement._check_element_matches

    def check_element_matches(self: Any, statement_element: Any, value: str) -> bool:
        if statement_element == "Resource" and value == "*":
            return True  # moto passes "*" when it cannot name the request's resource
        return bool(moto_matches(self, statement_element, value))

    IAMPolicyStatement._check_element_matches = check_element_matches  # type: ignore[method-assign]
    setattr(IAMPolicyStatement, _INSTALLED, True)


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _trusts(document: Any, service: str) -> bool:
    policy = json.loads(document) if isinstance(document, str) else document
    statements = policy.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        principal = statement.get("Principal") or {}
        services = _names(principal.get("Service")) if isinstance(principal, dict) else []
        if (
            statement.get("Effect") == "Allow"
            and service in services
            and "sts:AssumeRole" in _names(statement.get("Action"))
        ):
            return True
    return False


def assume_role_as_service(
    role_arn: str, service: str, session_name: str, region: str
) -> dict[str, str]:
    """Temporary credentials of `role_arn` for `service` (e.g. `lambda.amazonaws.com`)."""
    parts = role_arn.split(":")
    if len(parts) != 6 or parts[2] != "iam":
        raise AssumeRoleRefused(f"not a role ARN: {role_arn}")
    partition, account_id = parts[1], parts[4]
    try:
        role = iam_backends[account_id][partition].get_role_by_arn(role_arn)
    except IAMNotFoundException as exc:
        raise AssumeRoleRefused(f"no role {role_arn}") from exc
    if not _trusts(role.assume_role_policy_document, service):
        raise AssumeRoleRefused(f"the trust policy of {role_arn} does not let {service} assume it")
    assumed = sts_backends[account_id][partition].assume_role(
        region_name=region,
        role_session_name=session_name,
        role_arn=role_arn,
        policy="",
        duration=43200,
        external_id="",
    )
    return {
        "access_key_id": assumed.access_key_id,
        "secret_access_key": assumed.secret_access_key,
        "session_token": assumed.session_token,
    }


def enforced() -> bool:
    """Whether moto's access control checks requests now (`/moto-api/reset-auth`)."""
    return ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT


def session_permits(credentials: dict[str, str], account_id: str, action: str) -> bool:
    """Whether an assumed role's session may call `action`, as moto's access control decides
    for a request (identity policies, `Resource` matched as for requests moto cannot name the
    resource of: see `install`). For a service's own calls that are no request to the server
    (a Distributed Map starting its child executions)."""
    key = AssumedRoleAccessKey(
        account_id=account_id,
        partition="aws",
        access_key_id=credentials["access_key_id"],
        headers={"X-Amz-Security-Token": credentials["session_token"]},
    )
    permitted = False
    for policy in key.collect_policies():
        result = IAMPolicy(policy).is_action_permitted(action, "*")
        if result == PermissionResult.DENIED:
            return False
        permitted = permitted or result == PermissionResult.PERMITTED
    return permitted
