"""cdk-nag acknowledgments: every one is made here, with a reason that must be true."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge a cdk-nag finding on `scope` (and its children) for `reason`."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))
