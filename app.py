#!/usr/bin/env python3
"""CDK app: read context `snapset` (cdk.json), validate it, build the stack, run cdk-nag.

A configuration mistake stops here, before synthesis, with a message naming the policy and field.
Stack env comes from CDK_DEFAULT_ACCOUNT/REGION when set (no lookups, no credentials needed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The Lambda package (lambdas/snapset) is installed editable in .venv; this keeps a plain
# `python3 app.py` from another interpreter working too.
sys.path.insert(0, str(Path(__file__).resolve().parent / "lambdas"))

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.config import CONTEXT_KEY, ConfigError, load_config
from infra.stack import SnapsetStack


def build_app(app: cdk.App | None = None, *, nag: bool = True) -> cdk.App:
    """Build the Snapset app (raises ConfigError on a bad configuration).

    cdk-nag's AwsSolutions pack runs as a policy validation plugin: any unacknowledged finding
    fails `app.synth()` (and so `cdk synth`).
    """
    app = app or cdk.App()
    config = load_config(app.node.try_get_context(CONTEXT_KEY))
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account and region else None
    stack_name = app.node.try_get_context("snapset:stack_name") or "Snapset"
    SnapsetStack(app, "Snapset", config=config, env=env, stack_name=stack_name)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def main() -> int:
    try:
        app = build_app()
    except ConfigError as exc:
        print(f"snapset: {exc}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
