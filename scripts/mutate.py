"""Mutation testing of Snapset's safety-critical modules against the fast tests (`make mutate`).

mutmut (3.x) names a mutant by its file's path with `src/` stripped, so it needs the package at
`src/snapset`; Snapset keeps it at `lambdas/snapset`. This script copies what the fast tests need
into a work directory in that layout (`src/snapset`, `localaws`, `tests/{unit,retention}`, a
pyproject.toml whose pytest settings are the repo's own but import `snapset` from `src`), runs
`mutmut run` there, then prints one line per module, `MODULE killed/total`, and every survivor:
its diff and, when `mutation/survivors.txt` explains it, why it is left alive.

`mutation/survivors.txt` holds one line per explained survivor, `NAME | MUTATED LINE | REASON`:
the mutant's name, the line as the mutant has it (stripped; so a renumbered mutant is reported
as stale rather than silently explained), and a one-line reason. The exit status is 1 when some
survivor is unexplained, or an explanation is stale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "retention",
    "protections",
    "retention_preview",
    "idempotency",
    "snapshots",
    "report",
    "pacing",
    "fanout",
    "consistency",
    "copies",
)
# The fast tests (no e2e): tests/unit, tests/retention, and the plan preview's own tests in
# tests/cli, the only ones that reach retention's explain_retention and preview_retention.
FAST_TESTS = (
    "tests/unit",
    "tests/retention",
    "tests/cli/test_cli_plan.py",
    "tests/cli/test_cli_plan_overview.py",
)
SURVIVORS_FILE = ROOT / "mutation" / "survivors.txt"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "snapset-mutate"
# Exit codes of mutmut's test runs (mutmut.stats.status_by_exit_code): a failing test kills the
# mutant; a test run that hangs until mutmut's CPU limit is a kill by timeout.
KILLED = {1, 3}
TIMED_OUT = {-24, 24, 152, 255, 36}
SURVIVED = 0
NO_TESTS = {5, 33}


def _copy_tree(work: Path) -> None:
    """The package at src/snapset, the local AWS and CLI the tests import, and the tests."""
    for stale in ("src", "localaws", "cli", "tests"):
        shutil.rmtree(work / stale, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "lambdas" / "snapset", work / "src" / "snapset", ignore=ignore)
    shutil.copytree(ROOT / "localaws", work / "localaws", ignore=ignore)
    shutil.copytree(ROOT / "cli", work / "cli", ignore=ignore)
    (work / "tests").mkdir()
    shutil.copy2(ROOT / "tests" / "conftest.py", work / "tests" / "conftest.py")
    for name in ("fixtures", "corpus", "unit", "retention", "cli"):
        shutil.copytree(ROOT / "tests" / name, work / "tests" / name, ignore=ignore)
    # cheap tests first, so that a mutant dies on the cheapest test that fails (-x)
    shutil.copy2(Path(__file__).with_name("mutate_order.py"), work / "conftest.py")


def _toml(table: str, values: Mapping[str, object]) -> str:
    # JSON strings, numbers, booleans and arrays of them are TOML values too.
    lines = [f"[{table}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _write_config(work: Path, modules: list[str], tests: list[str]) -> None:
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]
    # `snapset` comes from mutmut's mutants/src, never from lambdas/ (mutmut refuses to run when
    # tests import the package under another name than its path gives).
    pytest_options = {**pytest_options, "pythonpath": ["cli", "."], "testpaths": tests}
    mutmut_options = {
        "source_paths": ["src"],
        "only_mutate": [f"src/snapset/{module}.py" for module in modules],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:xdist", "-q"],
        "pytest_add_cli_args_test_selection": tests,
        "also_copy": ["localaws", "cli", "conftest.py"],
        # each test run in a fresh fork of a server that only collected the tests: two pytest
        # sessions in one process share moto patches and module state, and the second fails
        "process_isolation": "forkserver",
    }
    (work / "pyproject.toml").write_text(
        _toml("tool.pytest.ini_options", pytest_options)
        + "\n"
        + _toml("tool.mutmut", mutmut_options)
    )


@dataclass(frozen=True)
class Explanation:
    mutated_line: str
    reason: str


def read_explanations(path: Path = SURVIVORS_FILE) -> dict[str, Explanation]:
    """`NAME | MUTATED LINE | REASON` lines; blank lines and `#` comments are skipped. The
    mutated line may hold ` | ` itself (a union type): the name ends at the first separator,
    the reason starts after the last."""
    explained: dict[str, Explanation] = {}
    if not path.exists():
        return explained
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(" | ")
        mutated, _, reason = rest.rpartition(" | ")
        parts = [name.strip(), mutated.strip(), reason.strip()]
        if not all(parts):
            raise SystemExit(f"{path}:{number}: expected 'NAME | MUTATED LINE | REASON'")
        explained[parts[0]] = Explanation(parts[1], parts[2])
    return explained


def _mutmut(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    mutmut = Path(sys.executable).parent / "mutmut"
    return subprocess.run(  # noqa: S603 - our own venv's mutmut, fixed arguments
        [str(mutmut), *args], cwd=work, capture_output=True, text=True, check=False
    )


def _exit_codes(work: Path, module: str) -> dict[str, int | None]:
    meta = work / "mutants" / "src" / "snapset" / f"{module}.py.meta"
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def _mutated_lines(diff: str) -> list[str]:
    return [
        line[1:].strip()
        for line in diff.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]


def _merged_exit_codes(works: list[Path], module: str) -> dict[str, int | None]:
    """The first work dir's results, overlaid with what later ones (runs of some mutants
    against other tests) decided: killed or survived, not unchecked or untested."""
    codes = _exit_codes(works[0], module)
    for other in works[1:]:
        codes |= {
            name: code
            for name, code in _exit_codes(other, module).items()
            if name in codes and code is not None and code not in NO_TESTS
        }
    return codes


def report(works: list[Path], modules: list[str]) -> int:
    """Print `MODULE killed/total` per module, then the survivors; 1 if any is unexplained."""
    explained = read_explanations()
    survivors: list[str] = []
    for module in modules:
        codes = _merged_exit_codes(works, module)
        killed = sum(1 for code in codes.values() if code in KILLED or code in TIMED_OUT)
        timeouts = sum(1 for code in codes.values() if code in TIMED_OUT)
        unchecked = sum(1 for code in codes.values() if code is None)
        alive = sorted(
            name
            for name, code in codes.items()
            if code is not None and code not in KILLED | TIMED_OUT
        )
        untested = sum(1 for name in alive if codes[name] in NO_TESTS)
        notes = [f"{timeouts} by timeout"] if timeouts else []
        notes += [f"{untested} reached by no fast test"] if untested else []
        notes += [f"{unchecked} not run yet"] if unchecked else []
        suffix = f"  ({', '.join(notes)})" if notes else ""
        print(f"{module} {killed}/{len(codes)}{suffix}")
        survivors += alive
    unexplained = 0
    if survivors:
        print(f"\nsurvivors ({len(survivors)}):")
    for name in survivors:
        diff = _mutmut(works[0], "show", name).stdout
        lines = _mutated_lines(diff)
        why = explained.get(name)
        if why is None:
            unexplained += 1
            print(f"\n{name}: UNEXPLAINED\n{diff.rstrip()}")
        elif why.mutated_line not in lines:
            unexplained += 1
            print(f"\n{name}: STALE explanation (for '{why.mutated_line}')\n{diff.rstrip()}")
        else:
            print(f"{name}: explained: {why.reason}  [{why.mutated_line}]")
    print(f"\n{len(survivors) - unexplained} survivor(s) explained, {unexplained} not")
    return 1 if unexplained else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--max-children", type=int, default=2, help="mutmut workers (default 2)")
    parser.add_argument(
        "--keep", action="store_true", help="reuse the work dir's earlier results (mutmut's cache)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="print the work dir's results, run nothing"
    )
    parser.add_argument("--tests", nargs="+", default=list(FAST_TESTS), help="the test selection")
    parser.add_argument("--only", nargs="+", default=[], help="mutant name globs to run")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=[], help="overlay these work dirs' results"
    )
    args = parser.parse_args(argv)
    modules = list(args.modules) or list(MODULES)
    if unknown := set(modules) - set(MODULES):
        parser.error(f"not a mutated module: {', '.join(sorted(unknown))}")
    work: Path = args.workdir
    if not args.report_only:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        _copy_tree(work)
        _write_config(work, modules, args.tests)
        started = time.monotonic()
        print(f"mutmut over {', '.join(modules)} in {work} ...", flush=True)
        log = work / "mutmut-run.log"
        with log.open("w") as out:
            mutmut = Path(sys.executable).parent / "mutmut"
            command = [str(mutmut), "run", "--max-children", str(args.max_children), *args.only]
            code = subprocess.call(command, cwd=work, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        print(f"mutmut run: exit {code} in {time.monotonic() - started:.0f} s (log: {log})")
        if code != 0:
            print(log.read_text()[-3000:])
            return 2
    return report([work, *args.merge], modules)


if __name__ == "__main__":
    sys.exit(main())
