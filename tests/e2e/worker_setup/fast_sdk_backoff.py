"""Runs inside the function's execution environment (see localaws/lambda_bootstrap.py).

botocore's own retry sleeps (up to 20 s between attempts) divided by 50: the attempts, their
number and the errors stay real, only the waiting is shortened. The handler's retry budget is
not touched.
"""

from typing import Any

from botocore.retries.standard import ExponentialBackoff

SDK_BACKOFF_DIVISOR = 50
_original = ExponentialBackoff.delay_amount


def _shorter(self: ExponentialBackoff, context: Any) -> float:
    return float(_original(self, context)) / SDK_BACKOFF_DIVISOR


ExponentialBackoff.delay_amount = _shorter  # type: ignore[method-assign]
