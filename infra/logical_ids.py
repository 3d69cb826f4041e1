"""Stable logical ids across construct refactors.

Until the constructs were split by concern, every resource stood directly under the top-level
construct. CloudFormation replaces a resource whose logical id changes: it creates the new one,
then deletes the old one. `keep_logical_id` gives a resource the id CDK computed for it at its old
place, whatever construct now holds it. It is used where a replacement would lose something:

- state: the KMS key, the topic, the table, the dead-letter queues and the log group (keys,
  records, messages, logs);
- what is attached to a kept resource: a queue policy, the topic policy and an event invoke
  config are settings of their queue, topic or function, so deleting the old resource undoes what
  the new one has just set; SNS answers a repeated Subscribe with the existing subscription, so
  deleting the old one unsubscribes the endpoint (an email endpoint must also confirm again);
- the function: a new one gets a new name and drops the asynchronous events the old one still
  retries.
"""

from __future__ import annotations

import hashlib
import re

from aws_cdk import CfnElement, Stack
from constructs import Construct, IConstruct

# CDK's makeUniqueId (aws-cdk-lib/core/lib/private/uniqueid.ts): "Default" is dropped from the
# path, "Resource" only from the readable part; an 8-hex md5 of the path makes it unique.
_HIDDEN = "Default"
_HIDDEN_FROM_HUMAN = "Resource"
_HASH_LEN = 8
_MAX_HUMAN_LEN = 240


def cdk_logical_id(path: list[str]) -> str:
    """The logical id CDK gives a resource at this stack-relative construct path."""
    components = [c for c in path if c != _HIDDEN]
    digest = hashlib.md5("/".join(components).encode(), usedforsecurity=False).hexdigest()
    human: list[str] = []
    for component in components:
        if not human or not human[-1].endswith(component):
            human.append(component)
    readable = "".join(re.sub(r"[^A-Za-z0-9]", "", c) for c in human if c != _HIDDEN_FROM_HUMAN)[
        :_MAX_HUMAN_LEN
    ]
    return readable + digest[:_HASH_LEN].upper()


def keep_logical_id(owner: Construct, resource: IConstruct, *legacy_path: str) -> None:
    """Give `resource` (created inside `owner`) the logical id it had at `legacy_path` directly
    under `owner`'s parent (e.g. `"Topic"`, or `"Topic", "ops@example.com"`)."""
    parent = owner.node.scope
    assert parent is not None
    stack = Stack.of(owner)
    scopes = parent.node.scopes
    path = [s.node.id for s in scopes[scopes.index(stack) + 1 :]]
    cfn = resource.node.default_child
    assert isinstance(cfn, CfnElement), resource.node.path
    cfn.override_logical_id(cdk_logical_id([*path, *legacy_path, "Resource"]))
