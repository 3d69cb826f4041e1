"""The progress bar (stderr, terminals only, thread-safe) and the `demo` passthrough."""

from __future__ import annotations

import io
import re
import sys
import threading
import types
from pathlib import Path

import pytest

from snapset_cli import main as cli
from snapset_cli.progress import Progress
from tests.cli.conftest import FakeTty, Fleet, write_json


def test_run_draws_progress_on_a_terminal(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr, stdout = FakeTty(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", stdout)
    payload = write_json(tmp_path / "p.json", fleet.policy())

    assert cli.main(["run", "--payload", payload]) == 0

    drawn = stderr.getvalue()
    assert drawn.startswith("\rsnapshotting web: ")
    assert drawn.endswith("\n")
    final = drawn.rstrip("\n").rsplit("\r", 1)[-1]
    assert final.startswith("snapshotting web: 3 done, 0 running ")
    assert "\r" not in stdout.getvalue()  # the report stays clean JSON


def test_plan_draws_a_bar_with_its_total(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = FakeTty()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    policy = write_json(tmp_path / "p.json", fleet.policy())

    assert cli.main(["plan", "--policy", policy]) == 0

    final = stderr.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert final.startswith(f"planning web [{'#' * 24}] 3/3 ")


def test_no_progress_when_piped(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not sys.stderr.isatty()
    payload = write_json(tmp_path / "p.json", fleet.policy())
    assert cli.main(["run", "--payload", payload]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flag", ["--no-progress", "-v"])
def test_no_progress_when_asked_or_verbose(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    stderr = FakeTty()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    payload = write_json(tmp_path / "p.json", fleet.policy())
    assert cli.main(["run", "--payload", payload, flag]) == 0
    assert "snapshotting web" not in stderr.getvalue()


def test_progress_counts_from_many_threads() -> None:
    stream = FakeTty()
    progress = Progress(stream, "work", total=400, min_interval=0.0)
    counted = progress.wrap(lambda n: n, is_failure=lambda n: n % 10 == 0)

    def worker(start: int) -> None:
        for n in range(start, start + 50):
            counted(n)

    threads = [threading.Thread(target=worker, args=(i * 50,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress.close()

    assert (progress.done, progress.failed, progress.running) == (400, 40, 0)
    lines = stream.getvalue().rstrip("\n").split("\r")[1:]
    assert len(lines) == 801  # one draw per start and per finish, then the final one
    # Every draw is whole (no torn writes) and the done count never goes back.
    shape = re.compile(r"^work \[[#-]{24}\] (\d+)/400(, \d+ failed)? \d+:\d\d *$")
    done = [int(m.group(1)) for line in lines if (m := shape.match(line))]
    assert len(done) == len(lines)
    assert done == sorted(done)
    assert lines[-1].startswith(f"work [{'#' * 24}] 400/400, 40 failed ")


def test_progress_counts_an_exception_as_a_failure() -> None:
    progress = Progress(FakeTty(), "work", total=1)

    def boom(_: int) -> int:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        progress.wrap(boom, is_failure=lambda _: False)(1)
    assert (progress.done, progress.failed, progress.running) == (1, 1, 0)


def test_progress_is_throttled() -> None:
    now = [0.0]
    stream = FakeTty()
    progress = Progress(stream, "work", total=100, min_interval=1.0, clock=lambda: now[0])
    counted = progress.wrap(lambda n: n, is_failure=lambda _: False)
    for n in range(100):
        counted(n)
    now[0] = 61.0
    progress.close()
    draws = stream.getvalue().rstrip("\n").split("\r")[1:]
    assert len(draws) == 2  # the first update, then the final state
    assert draws[-1] == f"work [{'#' * 24}] 100/100 1:01"


# --- demo -------------------------------------------------------------------------------------


def test_demo_passes_its_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str] | None] = []

    def fake_main(argv: list[str] | None = None) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setitem(sys.modules, "snapset_cli.demo", types.SimpleNamespace(main=fake_main))

    assert cli.main(["demo", "--keep", "-v", "--region", "x"]) == 3
    assert cli.main(["-v", "demo", "--", "--help"]) == 3
    assert seen == [["--keep", "-v", "--region", "x"], ["--help"]]


def test_demo_argparse_exit_becomes_a_return_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_main(argv: list[str] | None = None) -> int:
        raise SystemExit(0)

    monkeypatch.setitem(sys.modules, "snapset_cli.demo", types.SimpleNamespace(main=fake_main))
    assert cli.main(["demo", "--help"]) == 0


def test_demo_not_available_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "snapset_cli.demo", None)  # makes the import fail
    assert cli.main(["demo"]) == 2
    assert "the local demo is not available: snapset_cli.demo cannot be imported" in (
        capsys.readouterr().err
    )


# --- usage ------------------------------------------------------------------------------------


def test_help_and_usage_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "snapset plan --policy FILE|NAME" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["plan"]) == 2
    assert "the following arguments are required: --policy" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("snapset ")
