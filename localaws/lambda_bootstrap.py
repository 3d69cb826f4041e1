"""The Lambda runtime's bootstrap in a worker process: one execution environment.

Run as `python -I -S lambda_bootstrap.py --task-root DIR --layer DIR [--layer DIR]
[--setup FILE]`: isolated (-I) and without site-packages (-S), so the handler finds only what
Lambda gives it: the function's code (LAMBDA_TASK_ROOT, the unzipped deployed asset), then the
layers, in order (what `/opt/python` and the runtime's own boto3 hold). The standard library only,
here: this file must not import anything a function could not.

Invocations come on stdin, one JSON object per line: `{"request_id", "payload",
"remaining_ms", "function_name", "function_arn", "memory"}`. Each answer goes to the original
stdout, one JSON line: `{"request_id", "result"}` or `{"request_id", "error": {"errorType",
"errorMessage", "stackTrace"}}`, with `max_rss_kb` (the process's peak resident memory) and
`cold` (the first invocation of this environment) and `init_error` (the handler could not be
imported). The function's own stdout and stderr (its logs, then Lambda's `END RequestId: ID`
line) go to this process's stderr, which the parent forwards to its log sink, as Lambda forwards
them to CloudWatch Logs.

`--setup FILE` runs a Python file in the environment after the handler is imported and before
the first invocation, with `handler_module` bound: test harnesses use it to reach inside a warm
environment (shorten botocore's backoff, hook a client event), as nothing else can.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import resource
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any


class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.function_name = str(request["function_name"])
        self.function_version = "$LATEST"
        self.invoked_function_arn = str(request["function_arn"])
        self.memory_limit_in_mb = int(request["memory"])
        self.aws_request_id = str(request["request_id"])
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + int(request["remaining_ms"]) / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _peak_rss_kb() -> int:
    """This process's peak resident memory, in KiB.

    Linux: VmHWM, which starts afresh at exec (ru_maxrss keeps the forking parent's peak).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes


def _error(exc: BaseException) -> dict[str, Any]:
    # The shape Lambda returns for an unhandled error (Invoke's FunctionError: Unhandled)
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task-root", required=True)
    parser.add_argument("--layer", action="append", default=[])
    parser.add_argument("--setup", action="append", default=[])
    args = parser.parse_args()

    answers = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), encoding="utf-8", line_buffering=True)
    # From here on fd 1 is stderr: whatever the function prints is a log line, never an answer.
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb"), encoding="utf-8", line_buffering=True)
    sys.path[:0] = [args.task_root, *args.layer]
    os.environ["LAMBDA_TASK_ROOT"] = args.task_root
    os.chdir(args.task_root)

    module_name, _, attribute = os.environ["_HANDLER"].rpartition(".")
    init_error: dict[str, Any] | None = None
    handler: Any = None
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, attribute)
    except Exception as exc:  # Lambda reports an init failure on every invocation
        traceback.print_exc()
        init_error = {
            **_error(exc),
            "errorType": "Runtime.ImportModuleError",
            "errorMessage": f"Unable to import module '{module_name}': {exc}",
        }

    if init_error is None:
        for setup in args.setup:  # a harness's own failure ends the worker, loudly
            with open(setup, encoding="utf-8") as source:
                code = compile(source.read(), setup, "exec")
            # the harness file is the test's own code, given by the test
            exec(code, {"handler_module": module, "__name__": "__localaws_setup__"})  # noqa: S102

    cold = True
    for line in sys.stdin:
        request = json.loads(line)
        answer: dict[str, Any] = {"request_id": request["request_id"], "cold": cold}
        cold = False
        if init_error is not None:
            answer["error"] = init_error
        else:
            try:
                answer["result"] = handler(request["payload"], LambdaContext(request))
            except Exception as exc:  # an unhandled error is the invocation's result
                traceback.print_exc()
                answer["error"] = _error(exc)
        sys.stdout.flush()
        # Lambda's END line; the runtime waits for it, so the invocation's logs are all read
        # when it returns.
        sys.stderr.write(f"END RequestId: {request['request_id']}\n")
        sys.stderr.flush()
        answer["max_rss_kb"] = _peak_rss_kb()
        answer["init_error"] = init_error is not None
        try:
            text = json.dumps(answer)
        except (TypeError, ValueError) as exc:  # Lambda's answer to a result it cannot send
            marshal = {
                **_error(exc),
                "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {exc}",
            }
            text = json.dumps({**answer, "result": None, "error": marshal})
        answers.write(text + "\n")


if __name__ == "__main__":
    main()
