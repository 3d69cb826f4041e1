"""The server process never outlives its owner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from localaws import LocalAws

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie nobody reaped yet (e.g. PID 1 in a container) is not running
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_server_is_gone_after_the_with_block() -> None:
    with LocalAws() as aws:
        pid, port = aws.pid, aws.port
        assert pid is not None
        assert port is not None
        assert aws.health()["pid"] == pid
        assert os.getpgid(pid) == pid  # its own process group
        assert aws.client("sts").get_caller_identity()["Account"]
    assert not _alive(pid)
    assert not _port_open(port)
    assert aws.pid is None


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=repr)
def test_server_is_gone_after_an_exception_or_ctrl_c(error: BaseException) -> None:
    aws = LocalAws()
    pids: list[int | None] = []

    def failing_block() -> None:
        with aws:
            pids.append(aws.pid)
            raise error

    with pytest.raises(type(error)):
        failing_block()
    assert pids[0] is not None
    assert not _alive(pids[0])


def test_stop_kills_a_server_that_ignores_sigterm() -> None:
    aws = LocalAws(stop_timeout=0.5).start()
    pid = aws.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process does not act on SIGTERM
    start = time.monotonic()
    aws.stop()
    assert not _alive(pid)
    assert time.monotonic() - start < 3


def _run_owner(script: str) -> int:
    """Run `script` in a separate Python that starts a LocalAws; return the server's pid."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    return int(proc.stdout.strip().splitlines()[-1])


def test_atexit_guard_when_stop_is_never_called() -> None:
    pid = _run_owner(
        """
        from localaws import LocalAws
        aws = LocalAws().start()
        print(aws.pid, flush=True)
        """
    )
    assert _wait_gone(pid)


def test_server_exits_when_its_owner_is_killed() -> None:
    pid = _run_owner(
        """
        import os, signal
        from localaws import LocalAws
        aws = LocalAws().start()
        print(aws.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no __exit__, no atexit
        """
    )
    assert _wait_gone(pid), "server outlived its SIGKILLed owner"


def test_start_failure_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    aws = LocalAws(startup_timeout=0.01)
    with pytest.raises(Exception, match="did not start"):
        aws.start()
    assert aws.pid is None


def test_public_parameters_are_published_through_the_control_api(aws: LocalAws) -> None:
    name = "/aws/service/powertools/python/arm64/python3.14/9.9.9"
    ssm = aws.client("ssm")
    with pytest.raises(ClientError, match="reserved parameter name"):
        ssm.put_parameter(Name=name, Value="x", Type="String")
    account = aws.client("sts").get_caller_identity()["Account"]
    aws.put_public_parameter(name, "arn:aws:lambda:us-east-1:1:layer:x:1", account)
    assert (
        ssm.get_parameter(Name=name)["Parameter"]["Value"] == "arn:aws:lambda:us-east-1:1:layer:x:1"
    )
