"""Helpers for the infra tests: the shipped example config and a one-shot synth.

No AWS account, credentials or Docker are needed.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from app import build_app

ROOT = Path(__file__).resolve().parents[2]
ENV_KEYS = ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION")


def cdk_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())
    return data


def example_config() -> dict[str, Any]:
    """The `snapset` context shipped in cdk.json (a deep copy, safe to modify)."""
    return copy.deepcopy(cdk_json()["context"]["snapset"])


@dataclass
class Synth:
    app: cdk.App
    stack: cdk.Stack
    template: Template
    raw: dict[str, Any]
    outdir: Path

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.template.find_resources(type_)
        return found

    def only(self, type_: str) -> dict[str, Any]:
        found = self.resources(type_)
        assert len(found) == 1, f"expected one {type_}, got {sorted(found)}"
        return next(iter(found.values()))


def synth(snapset: dict[str, Any] | None = None, *, nag: bool = True) -> Synth:
    """Build the app exactly as `cdk synth` does (cdk.json context, feature flags, cdk-nag)."""
    context = copy.deepcopy(cdk_json()["context"])
    if snapset is not None:
        context["snapset"] = snapset
    # As the CLI does without --debug: no construct stack traces (they make cdk-nag's report slow).
    context["aws:cdk:disable-stack-trace"] = True
    outdir = Path(tempfile.mkdtemp(prefix="snapset-cdk-"))
    app = cdk.App(context=context, outdir=str(outdir))
    # Env-agnostic like a credential-less `cdk synth`, whatever the developer's shell exports.
    saved = {k: os.environ.pop(k) for k in ENV_KEYS if k in os.environ}
    try:
        build_app(app, nag=nag)
        app.synth()
    finally:
        os.environ.update(saved)
    stack = next(c for c in app.node.children if isinstance(c, cdk.Stack))
    raw = json.loads((outdir / stack.template_file).read_text())
    return Synth(app, stack, Template.from_json(raw), raw, outdir)
