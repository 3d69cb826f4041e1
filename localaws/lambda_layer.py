"""Stand-ins for what Lambda puts beside the function's code: its layers and the runtime's boto3.

The deployed function gets Powertools (with pydantic) from the Powertools layer and boto3 from
the Python runtime; its code asset holds the runtime package alone. The local execution
environments (`lambda_runtime`) get the same from two directories built here with pip:

- the layer: `lambdas/requirements.txt`, the pins the stack takes the layer's version from;
- the runtime: boto3 at the version the project pins (`pyproject.toml`) with the venv's
  botocore, as the runtime ships one pair.

Each is built once per content of its requirements (a hash in its name) under the venv, with a
file lock, so parallel test workers share one build. pip reaches the package index only the
first time; then its cache and the built directory serve.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

__all__ = ["LayerError", "layer_directories"]

ROOT = Path(__file__).resolve().parent.parent
LAYER_REQUIREMENTS = ROOT / "lambdas" / "requirements.txt"
PYPROJECT = ROOT / "pyproject.toml"


class LayerError(RuntimeError):
    """A stand-in could not be built."""


def _runtime_requirements(pyproject: Path) -> str:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"boto3\s*==", d)]
    if len(pins) != 1:
        raise LayerError(f"{pyproject}: expected one boto3==VERSION in project.dependencies")
    # The runtime ships a boto3 and its botocore together; the venv's pair is the one tested.
    return f"{pins[0]}\nbotocore=={importlib.metadata.version('botocore')}\n"


def _requirement_lines(text: str) -> str:
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return "".join(f"{line}\n" for line in lines if line)


def _build(name: str, requirements: str, cache: Path) -> Path:
    digest = hashlib.sha256(f"{sys.version_info[:2]}\n{requirements}".encode()).hexdigest()[:16]
    target = cache / f"{name}-{digest}"
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test worker may be building it
        if (target / ".complete").exists():
            return target
        building = cache / f"{target.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        (cache / f"{name}.txt").write_text(requirements)
        result = subprocess.run(  # noqa: S603  # pip, with our requirements
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-compile", "--only-binary=:all:", "--target", str(building),
                "-r", str(cache / f"{name}.txt"),
            ],
            check=False,
            capture_output=True,
            text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise LayerError(f"pip could not build the {name} stand-in:\n{result.stderr[-2000:]}")
        (building / ".complete").write_text(requirements)
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    return target


def layer_directories(
    layer_requirements: Path = LAYER_REQUIREMENTS,
    pyproject: Path = PYPROJECT,
    cache: Path | None = None,
) -> list[Path]:
    """The directories a local execution environment puts after the function's code on
    `sys.path`, in Lambda's order: the layer (`/opt/python`), then the runtime's boto3."""
    cache = cache or Path(sys.prefix) / "localaws-lambda"
    return [
        _build("layer", _requirement_lines(layer_requirements.read_text()), cache),
        _build("runtime", _runtime_requirements(pyproject), cache),
    ]
