"""AWS's public SSM parameters (`/aws/service/...`) that a template reads, stood in locally.

moto ships a few public trees (latest AMIs, regions) and refuses PutParameter under `/aws/`,
so a template parameter such as Powertools' layer ARN would fail its stack. The control API
(`POST /_localaws/public-parameters`) stores one the way AWS publishes it, read-only to callers.
"""

from __future__ import annotations

from moto.core.utils import utcnow
from moto.ssm.models import Parameter, ssm_backends


def put_public_parameter(account_id: str, region: str, name: str, value: str) -> None:
    """Publish `name` as AWS would: a plain String parameter, version 1."""
    if not name.startswith("/aws/"):
        raise ValueError(f"{name!r} is not a public parameter (they start with /aws/)")
    backend = ssm_backends[account_id][region]
    backend._parameters[name] = [
        Parameter(  # type: ignore[abstract]  # moto's loaders build it the same way
            account_id=account_id,
            name=name,
            value=value,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=utcnow(),
            version=1,
            data_type="text",
        )
    ]
