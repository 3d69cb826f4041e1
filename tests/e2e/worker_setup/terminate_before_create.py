"""Runs inside the function's execution environment (see localaws/lambda_bootstrap.py).

Terminates the instance named by `E2E_TERMINATE_BEFORE_CREATE` once, just before the handler's
CreateSnapshots for it is sent (a hook on the handler's own botocore session), with the test's
credentials (`E2E_ADMIN_CREDENTIALS`: key, secret, token), not the function role's: the role
may not terminate instances. `E2E_TERMINATED_MARK` is a file created when it has.
"""

import os
from pathlib import Path
from typing import Any

import boto3

_victim = os.environ["E2E_TERMINATE_BEFORE_CREATE"]
_mark = Path(os.environ["E2E_TERMINATED_MARK"])
_key, _secret, _token = os.environ["E2E_ADMIN_CREDENTIALS"].split(",")
_ec2 = boto3.client(
    "ec2", aws_access_key_id=_key, aws_secret_access_key=_secret, aws_session_token=_token or None
)


def _terminate_first(params: dict[str, Any], **_: Any) -> None:
    if params["InstanceSpecification"]["InstanceId"] == _victim and not _mark.exists():
        _ec2.terminate_instances(InstanceIds=[_victim])
        _mark.touch()


handler_module.session().events.register(  # type: ignore[name-defined]  # noqa: F821
    "provide-client-params.ec2.CreateSnapshots", _terminate_first
)
