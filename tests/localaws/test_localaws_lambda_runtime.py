"""The local execution environments: what the function sees, warm reuse, timeout and memory.

A toy function (standard library only) stands for the deployed code, so these run in seconds;
tests/e2e/test_function_runtime_e2e.py runs the deployed asset itself.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localaws.lambda_runtime import FunctionConfiguration, LambdaRuntime, LogSink

TOY = """
import json, os, sys, time

STARTED = time.monotonic()
CALLS = []


def handler(event, context):
    CALLS.append(context.aws_request_id)
    print(json.dumps({"message": "called", "request_id": context.aws_request_id}))
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("allocate_mb"):
        block = bytearray(event["allocate_mb"] * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])
    if event.get("raise"):
        raise ValueError(event["raise"])
    if event.get("import"):
        __import__(event["import"])
    return {
        "calls": len(CALLS),
        "pid": os.getpid(),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "env": {k: os.environ.get(k) for k in ("SNAPSET_X", "LAMBDA_TASK_ROOT", "HOME")},
        "path": sys.path[:2],
        "cwd": os.getcwd(),
    }
"""


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    (code / "toy").mkdir(parents=True)
    (code / "toy" / "__init__.py").write_text("")
    (code / "toy" / "app.py").write_text(TOY)
    return code


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LambdaRuntime]:
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "layer_module.py").write_text("VALUE = 'from the layer'\n")
    runtime = LambdaRuntime([layer], LogSink(keep=100, echo=None))
    yield runtime
    runtime.close()


def function(timeout: int = 30, memory: int = 128) -> FunctionConfiguration:
    return FunctionConfiguration(
        name="toy",
        arn="arn:aws:lambda:us-east-1:123456789012:function:toy",
        handler="toy.app.handler",
        timeout=timeout,
        memory=memory,
        env={},
    )


def env(**extra: str) -> dict[str, str]:
    return {"_HANDLER": "toy.app.handler", "SNAPSET_X": "deployed", **extra}


def invoke(runtime: LambdaRuntime, code_dir: Path, payload: Any, **kwargs: Any) -> Any:
    config = kwargs.pop("config", function())
    return runtime.invoke(
        config, code_dir, payload, source="test", env=kwargs.pop("env", env()),
        remaining_ms=kwargs.pop("remaining_ms", 5000),
    )  # fmt: skip


def test_the_function_sees_its_code_its_layers_and_its_environment_only(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    invocation = invoke(runtime, code_dir, {})
    assert invocation.ok, invocation.error
    result = invocation.result
    assert result["path"] == [str(code_dir), str(runtime.layers[0])]
    assert result["cwd"] == str(code_dir)
    assert result["env"] == {
        "SNAPSET_X": "deployed",
        "LAMBDA_TASK_ROOT": str(code_dir),
        "HOME": None,
    }
    assert result["function_name"] == "toy"
    assert result["memory"] == 128
    assert 0 < result["remaining_ms"] <= 5000
    assert invoke(runtime, code_dir, {"import": "layer_module"}).ok
    # what this process has (pytest, the repo) the function does not
    for outsider in ("pytest", "localaws", "snapset"):
        denied = invoke(runtime, code_dir, {"import": outsider})
        assert denied.error is not None
        assert denied.error.error_type == "ModuleNotFoundError", outsider
        assert f"No module named '{outsider}'" in denied.error.message


def test_a_warm_environment_serves_the_next_invocation_and_a_new_config_starts_cold(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    first, second = invoke(runtime, code_dir, {}), invoke(runtime, code_dir, {})
    assert (first.cold, second.cold) == (True, False)
    assert second.result["pid"] == first.result["pid"]
    assert second.result["calls"] == 2
    other = invoke(runtime, code_dir, {}, env=env(SNAPSET_X="changed"))
    assert other.cold
    assert other.result["env"]["SNAPSET_X"] == "changed"
    assert other.result["pid"] != first.result["pid"]


def test_concurrent_invocations_get_their_own_environments(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    invoke(runtime, code_dir, {})  # one warm environment
    results: list[Any] = []

    def call() -> None:
        results.append(invoke(runtime, code_dir, {"sleep": 1.0}))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.ok for r in results)
    assert len({r.result["pid"] for r in results}) == 3


def test_an_unhandled_error_is_returned_with_its_type_and_the_log_has_its_traceback(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    failed = invoke(runtime, code_dir, {"raise": "bad input"})
    assert failed.error is not None
    assert (failed.error.error_type, failed.error.message) == ("ValueError", "bad input")
    assert any("ValueError: bad input" in line for line in failed.error.stack_trace)
    logs = list(runtime.sink.lines)
    assert json.loads(logs[0])["request_id"] == failed.request_id  # stdout is a log line
    assert any("Traceback" in line for line in logs)
    assert invoke(runtime, code_dir, {}).result["calls"] == 2  # the environment survives


def test_a_missing_handler_module_fails_every_invocation_as_lambda_reports_it(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    (code_dir / "toy" / "app.py").unlink()
    for _ in range(2):
        failed = invoke(runtime, code_dir, {})
        assert failed.cold  # a failed init runs again, in a new environment
        assert failed.error is not None
        assert failed.error.error_type == "Runtime.ImportModuleError"
        assert failed.error.message == (
            "Unable to import module 'toy.app': No module named 'toy.app'"
        )


def test_an_invocation_past_the_functions_timeout_is_killed(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    short = function(timeout=1)
    first = invoke(runtime, code_dir, {}, config=short)
    assert first.ok
    timed_out = invoke(runtime, code_dir, {"sleep": 30}, config=short)
    assert timed_out.error is not None
    assert timed_out.error.error_type == "Sandbox.Timedout"
    assert timed_out.error.message == "Task timed out after 1.00 seconds"
    assert timed_out.seconds < 10
    after = invoke(runtime, code_dir, {}, config=short)
    assert after.cold  # the killed environment is not reused
    assert after.result["pid"] != first.result["pid"]


def test_an_environment_past_the_functions_memory_fails_and_is_not_reused(
    runtime: LambdaRuntime, code_dir: Path
) -> None:
    small = function(memory=64)
    fine = invoke(runtime, code_dir, {}, config=small)
    assert fine.ok
    assert 0 < fine.max_rss_mb < 64
    over = invoke(runtime, code_dir, {"allocate_mb": 96}, config=small)
    assert over.error is not None
    assert over.error.error_type == "Runtime.OutOfMemory"
    assert over.max_rss_mb > 64
    assert invoke(runtime, code_dir, {}, config=small).cold


def test_an_environment_that_died_idle_is_replaced(runtime: LambdaRuntime, code_dir: Path) -> None:
    first = invoke(runtime, code_dir, {})
    os.kill(first.result["pid"], signal.SIGKILL)
    [worker] = runtime._all  # the signal is delivered: the environment is gone
    worker.process.wait(timeout=10)
    again = invoke(runtime, code_dir, {})
    assert again.ok, again.error
    assert again.cold
    assert again.result["pid"] != first.result["pid"]
