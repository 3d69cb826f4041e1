"""Synthesize the Snapset CDK app in-process, as `cdk synth` would.

    synth = synthesize()      # the project's app.py with cdk.json's context (cached)
    synth.template            # the stack's template
    synth.assets              # the asset manifest's files, contents in memory

Synthesis runs in-process (`app.build_app` on a `cdk.App` given cdk.json's `context`): one jsii
process and no CLI round trip (about 4 s against about 10 s for `npx cdk synth`), and it builds
exactly the stack `cdk synth` builds, cdk-nag validation included. The cloud assembly goes to a
temporary directory; the template and the asset contents are read from it into memory.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLI_CONTEXT",
    "PROJECT_ROOT",
    "DeployError",
    "FileAsset",
    "Synthesized",
    "bootstrap_version",
    "synthesize",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The version the pinned CDK CLI's `cdk bootstrap` writes (read from its template when installed).
DEFAULT_BOOTSTRAP_VERSION = "30"
_BOOTSTRAP_TEMPLATE = "node_modules/aws-cdk/lib/api/bootstrap/bootstrap-template.yaml"
# What the CDK CLI adds to the context of `cdk synth` (metadata, version reporting, bundling), so
# the in-process template is the CLI's.
CLI_CONTEXT = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:version-reporting": True,
    "aws:cdk:bundling-stacks": ["**"],
}


class DeployError(RuntimeError):
    """Synthesis or deployment failed, or the template needs something the local AWS lacks."""


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
    # synthesis is development tooling, not Lambda runtime code: the CDK ban does not apply here
    import aws_cdk as cdk  # noqa: PLC0415 - heavy (starts jsii); only when synthesizing

    from app import build_app  # noqa: PLC0415
    from infra.config import CDK_JSON, read_cdk_context  # noqa: PLC0415 - the project's own reader

    context = {**read_cdk_context(project_root / CDK_JSON), **CLI_CONTEXT}
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
