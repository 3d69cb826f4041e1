"""The function's code asset holds the runtime package and nothing else: no CLI, no local AWS,
no tests, no CDK code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.infra_support import Synth, synth

RUNTIME_PACKAGE = Path(__file__).resolve().parents[2] / "lambdas" / "snapset"


@pytest.fixture(scope="module")
def app() -> Synth:
    return synth(nag=False)


def asset_files(app: Synth) -> set[str]:
    [function] = app.resources("AWS::Lambda::Function").values()
    # The code's S3 key is the asset's hash; cdk stages the directory as asset.<hash>.
    key = function["Properties"]["Code"]["S3Key"]
    asset = app.outdir / f"asset.{key.removesuffix('.zip')}"
    assert asset.is_dir(), asset
    return {p.relative_to(asset).as_posix() for p in asset.rglob("*") if p.is_file()}


def test_the_asset_is_the_runtime_package_alone(app: Synth) -> None:
    files = asset_files(app)
    expected = {
        f"snapset/{p.relative_to(RUNTIME_PACKAGE).as_posix()}"
        for p in RUNTIME_PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert files == expected
    assert "snapset/handler.py" in files


@pytest.mark.parametrize("outsider", ["snapset_cli", "localaws", "tests", "infra", "cli"])
def test_nothing_but_the_runtime_ships(app: Synth, outsider: str) -> None:
    assert not any(f.split("/", 1)[0] == outsider for f in asset_files(app))
