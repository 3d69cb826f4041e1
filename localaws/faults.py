"""Fault injection: per-API token-bucket throttling, 5xx errors and added latency.

Pure Python (no moto import), so the client side (`LocalAws.set_faults`) can share the
dataclasses with the server.  The server asks `FaultInjector.decide(service, action)` once per
AWS request and renders the returned `Decision` with `error_response(...)`.

Semantics (also in README.md):

* A rule's ``api`` is ``"service:Action"``, ``"service:*"`` or ``"*"`` (case-insensitive).
  Every rule that matches a request applies, in the order given.
* Latency: the ``latency_ms`` of all matching rules add up and are slept before the call.
* Throttle: each rule has its own token bucket (starts full with ``capacity`` tokens, refills
  continuously at ``refill_per_second``, one token per call).  A call finding a matching
  bucket with less than one token is throttled with the service's throttling error.
* Error: ``fail_next`` makes the next N matching (non-throttled) calls fail; after that
  each call fails with ``probability``.  With a ``seed`` the sequence of decisions is
  deterministic for a given sequence of calls.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Decision",
    "ErrorFault",
    "FaultConfig",
    "FaultInjector",
    "FaultRule",
    "Throttle",
    "TokenBucket",
    "throttling_error",
]


@dataclass(frozen=True)
class Throttle:
    """Token bucket: ``capacity`` burst, ``refill_per_second`` sustained rate."""

    capacity: float
    refill_per_second: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.refill_per_second < 0:
            raise ValueError("throttle needs capacity >= 1 and refill_per_second >= 0")


@dataclass(frozen=True)
class ErrorFault:
    """Server errors: the next ``fail_next`` calls fail, then each with ``probability``."""

    probability: float = 0.0
    fail_next: int = 0
    code: str = "InternalError"
    status: int = 500
    message: str = "We encountered an internal error. Please try again."

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or self.fail_next < 0:
            raise ValueError("error fault needs 0 <= probability <= 1 and fail_next >= 0")
        if not 400 <= self.status <= 599:
            raise ValueError("error fault status must be an HTTP error status")


@dataclass(frozen=True)
class FaultRule:
    api: str = "*"
    latency_ms: float = 0.0
    throttle: Throttle | None = None
    error: ErrorFault | None = None

    def matches(self, service: str, action: str | None) -> bool:
        pattern = self.api.strip().lower()
        if pattern == "*":
            return True
        svc, _, act = pattern.partition(":")
        if svc != service.lower():
            return False
        if act in ("", "*"):
            return True
        return action is not None and act == action.lower()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        unknown = set(data) - {"api", "latency_ms", "throttle", "error"}
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        throttle = data.get("throttle")
        error = data.get("error")
        return cls(
            api=str(data.get("api", "*")),
            latency_ms=float(data.get("latency_ms", 0.0)),
            throttle=Throttle(**throttle) if throttle else None,
            error=ErrorFault(**error) if error else None,
        )


@dataclass(frozen=True)
class FaultConfig:
    rules: tuple[FaultRule, ...] = ()
    seed: int | None = None
    # CreateSnapshots: snapshots of these volumes end in state "error" on completion.
    snapshot_error_volumes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [asdict(r) for r in self.rules],
            "seed": self.seed,
            "snapshot_error_volumes": list(self.snapshot_error_volumes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        unknown = set(data) - {"rules", "seed", "snapshot_error_volumes"}
        if unknown:
            raise ValueError(f"unknown fault config fields: {sorted(unknown)}")
        seed = data.get("seed")
        return cls(
            rules=tuple(FaultRule.from_dict(r) for r in data.get("rules") or ()),
            seed=None if seed is None else int(seed),
            snapshot_error_volumes=tuple(str(v) for v in data.get("snapshot_error_volumes") or ()),
        )


# Elapsed times are differences of large floats: a whole token may come out a hair short.
_EPSILON = 1e-9


class TokenBucket:
    def __init__(self, throttle: Throttle, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(throttle.capacity)
        self.rate = float(throttle.refill_per_second)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()

    def try_take(self) -> bool:
        now = self._clock()
        elapsed = max(now - self._last, 0.0)  # a clock reset never takes tokens away
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._last = now
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(self._tokens - 1.0, 0.0)
            return True
        return False


@dataclass
class Decision:
    latency_s: float = 0.0
    throttled: bool = False
    error: ErrorFault | None = None

    @property
    def fails(self) -> bool:
        return self.throttled or self.error is not None


@dataclass
class _RuleState:
    rule: FaultRule
    rng: random.Random
    bucket: TokenBucket | None
    fail_next: int
    stats: dict[str, int] = field(default_factory=lambda: {"calls": 0, "throttled": 0, "errors": 0})
    # When each call a bucket let through was let through (the injector's clock), so a
    # benchmark can tell the rate a client reached from the time it spent around the calls.
    admitted_at: list[float] = field(default_factory=list)


class FaultInjector:
    """Thread-safe holder of the current fault configuration and its mutable state."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._states: list[_RuleState] = []

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        states = []
        for index, rule in enumerate(config.rules):
            # A str seed is hashed with SHA-512 by random.seed: stable across processes.
            seed = None if config.seed is None else f"{config.seed}:{index}"
            rng = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
            bucket = TokenBucket(rule.throttle, self._clock) if rule.throttle else None
            fail_next = rule.error.fail_next if rule.error else 0
            states.append(_RuleState(rule, rng, bucket, fail_next))
        with self._lock:
            self._config = config
            self._states = states

    def reset(self) -> None:
        self.configure(FaultConfig())

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"api": s.rule.api, **s.stats, "admitted_at": list(s.admitted_at)}
                for s in self._states
            ]

    def decide(self, service: str, action: str | None) -> Decision:
        decision = Decision()
        with self._lock:
            matching = [s for s in self._states if s.rule.matches(service, action)]
            for state in matching:
                state.stats["calls"] += 1
                decision.latency_s += state.rule.latency_ms / 1000.0
            for state in matching:
                if state.bucket is not None and not state.bucket.try_take():
                    state.stats["throttled"] += 1
                    decision.throttled = True
                    return decision
            for state in matching:
                err = state.rule.error
                if err is None:
                    continue
                if state.fail_next > 0:
                    state.fail_next -= 1
                    failed = True
                else:
                    failed = err.probability > 0 and state.rng.random() < err.probability
                if failed:
                    state.stats["errors"] += 1
                    decision.error = err
                    return decision
            now = self._clock()
            for state in matching:
                if state.bucket is not None:
                    state.admitted_at.append(now)
        return decision


# --- Service-specific error responses --------------------------------------------------------

# service -> (throttling code, HTTP status, message); botocore retries all of these codes
# as throttling errors.  Services not listed get ``Throttling`` (query protocol) or
# ``ThrottlingException`` (JSON protocols), HTTP 400.
_THROTTLING: dict[str, tuple[str, int, str]] = {
    "ec2": ("RequestLimitExceeded", 503, "Request limit exceeded."),
    "sns": ("Throttled", 429, "Rate exceeded"),
    "sqs": ("RequestThrottled", 400, "Request is throttled."),
    "lambda": ("TooManyRequestsException", 429, "Rate exceeded"),
    "scheduler": ("ThrottlingException", 429, "Rate exceeded"),
    "s3": ("SlowDown", 503, "Please reduce your request rate."),
}


def throttling_error(service: str, protocol: str) -> tuple[str, int, str]:
    if service in _THROTTLING:
        return _THROTTLING[service]
    code = "Throttling" if protocol == "query" else "ThrottlingException"
    return code, 400, "Rate exceeded"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def error_response(
    protocol: str, service: str, *, code: str, status: int, message: str, request_id: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of an AWS error in the wire format of ``protocol``.

    protocol: ``ec2`` (EC2 query), ``query``, ``json`` (X-Amz-Target), ``rest-json``,
    ``rest-xml``.
    """
    msg = _xml_escape(message)
    headers = [("x-amzn-RequestId", request_id)]
    if protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{msg}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        headers.append(("Content-Type", "text/xml"))
    elif protocol == "query":
        fault = "Sender" if status < 500 else "Receiver"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<ErrorResponse><Error><Type>{fault}</Type><Code>{code}</Code>"
            f"<Message>{msg}</Message></Error><RequestId>{request_id}</RequestId>"
            "</ErrorResponse>"
        )
        headers.append(("Content-Type", "text/xml"))
    elif protocol == "rest-xml":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{msg}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        headers.append(("Content-Type", "application/xml"))
    else:
        body = json.dumps({"__type": code, "message": message, "Message": message})
        headers.append(("x-amzn-ErrorType", code))
        headers.append(("Content-Type", "application/x-amz-json-1.1"))
        if service == "sqs":  # awsQueryCompatible: botocore reads the code from this header
            fault = "Sender" if status < 500 else "Receiver"
            headers.append(("x-amzn-query-error", f"{code};{fault}"))
    return status, headers, body.encode("utf-8")


def rules_from(rules: Sequence[FaultRule | Mapping[str, Any]]) -> tuple[FaultRule, ...]:
    return tuple(r if isinstance(r, FaultRule) else FaultRule.from_dict(r) for r in rules)
