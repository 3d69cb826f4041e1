"""The deployed asset, not the repository, is what runs: the router fetches the function's zip
from where CloudFormation's Lambda got it and runs it with the layer stand-ins alone."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localaws import LocalAws
from localaws.deploy import Deployment
from localaws.router import Router

pytestmark = pytest.mark.e2e

REPO_PACKAGE = Path(__file__).resolve().parents[2] / "lambdas" / "snapset"
PAYLOAD = {"policy": "nightly-app", "instance_ids": ["i-0123456789abcdef0"], "dry_run": True}


@pytest.fixture
def own_router(local_aws: LocalAws, deployment: Deployment) -> Iterator[Router]:
    """A router of its own, whose copy of the deployed code a test may break."""
    routed = Router(local_aws, deployment)
    yield routed
    routed.close()


def test_the_code_that_runs_is_the_deployed_zip(own_router: Router) -> None:
    code = own_router.function_code()
    assert code != REPO_PACKAGE.parent
    deployed = sorted(p.relative_to(code).as_posix() for p in code.rglob("*.py"))
    assert deployed == sorted(
        f"snapset/{p.relative_to(REPO_PACKAGE).as_posix()}"
        for p in REPO_PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    )
    invocation = own_router.invoke(PAYLOAD)
    assert invocation.ok, invocation.error
    assert invocation.cold
    assert 0 < invocation.max_rss_mb < 256  # the deployed memory
    assert invocation.result["dry_run"] is True
    logged = [json.loads(line) for line in own_router.lambda_logs if line.startswith("{")]
    assert any(entry.get("cold_start") is True for entry in logged)


def test_a_module_the_asset_leaves_out_fails_the_invocation(own_router: Router) -> None:
    (own_router.function_code() / "snapset" / "notify.py").unlink()  # still in the repo
    failed = own_router.invoke(PAYLOAD)
    assert failed.error is not None
    assert failed.error.error_type == "Runtime.ImportModuleError"
    assert "No module named 'snapset.notify'" in failed.error.message


def test_an_import_only_the_dev_venv_has_fails_the_invocation(own_router: Router) -> None:
    assert "moto" in sys.modules or __import__("moto")  # this process has it
    notify = own_router.function_code() / "snapset" / "notify.py"
    notify.write_text(notify.read_text() + "\nimport moto  # a dev-only dependency\n")
    failed = own_router.invoke(PAYLOAD)
    assert failed.error is not None
    assert failed.error.error_type == "Runtime.ImportModuleError"
    assert "No module named 'moto'" in failed.error.message


def test_the_repository_copy_is_never_read(own_router: Router) -> None:
    """A deployed copy that differs from the repository runs as deployed."""
    handler = own_router.function_code() / "snapset" / "handler.py"
    handler.write_text(
        handler.read_text() + "\n\ndef handler(event, context):\n    return {'deployed': True}\n"
    )
    assert own_router.invoke(PAYLOAD).result == {"deployed": True}
