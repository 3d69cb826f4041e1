"""EventBridge's side of a delivery: does a rule's pattern match an event, and what does its
target receive.

    event_matches(pattern, event)                          # EventBridge's matching rules
    apply_target_input(target, event, rule_arn, rule_name) # Input, InputPath, InputTransformer

moto 5.2.5 does not implement EventBridge `TestEventPattern` (the backend raises
NotImplementedError), so patterns are matched here by `event_matches`: EventBridge's
documented matching for exact values, `prefix`, `suffix`, `anything-but`, `numeric`, `exists`,
`equals-ignore-case`, `wildcard`, `cidr` and `$or`. Anything else raises `UnsupportedPattern`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "UnsupportedPattern",
    "apply_target_input",
    "as_payload",
    "event_matches",
    "json_path",
]

EVENT_JSON = "aws.events.event.json"
RULE_ARN = "aws.events.rule-arn"
RULE_NAME = "aws.events.rule-name"
INGESTION_TIME = "aws.events.event.ingestion-time"


class UnsupportedPattern(ValueError):
    """An event pattern or input path this local EventBridge does not implement."""


# --- event patterns --------------------------------------------------------------------------

_MISSING: Any = object()


def event_matches(pattern: Mapping[str, Any] | None, event: Mapping[str, Any]) -> bool:
    """Whether an EventBridge event pattern matches an event (EventBridge's rules)."""
    if not pattern:
        return True
    return _match_object(pattern, event)


def _match_object(pattern: Mapping[str, Any], value: Any) -> bool:
    for key, rule in pattern.items():
        if key == "$or":
            if not isinstance(rule, list) or not rule:
                raise UnsupportedPattern(f"$or must be a non-empty list, got {rule!r}")
            if not any(_match_object(alternative, value) for alternative in rule):
                return False
            continue
        field_value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
        if isinstance(rule, Mapping):
            # a missing (or non-object) field matches like an empty object: only filters such
            # as `exists: false` can match inside it
            if not _match_object(rule, field_value if isinstance(field_value, Mapping) else {}):
                return False
        elif isinstance(rule, list):
            if not _match_values(rule, field_value):
                return False
        else:
            raise UnsupportedPattern(f"pattern value for {key!r} must be a list or an object")
    return True


def _match_values(filters: Sequence[Any], value: Any) -> bool:
    """A field matches if any filter matches it (or, for an array, any of its elements)."""
    for f in filters:
        if isinstance(f, Mapping):
            if _match_named(f, value):
                return True
        elif value is not _MISSING:
            items = value if isinstance(value, list) else [value]
            if any(_same(f, item) for item in items):
                return True
    return False


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    return bool(expected == actual and type(expected) is type(actual))


def _match_named(f: Mapping[str, Any], value: Any) -> bool:
    if len(f) != 1:
        raise UnsupportedPattern(f"a filter object must have one key, got {dict(f)!r}")
    (name, arg), = f.items()  # fmt: skip
    if name == "exists":
        return (value is not _MISSING) is bool(arg)
    if value is _MISSING:
        return False  # every other filter needs the field to be there
    items = value if isinstance(value, list) else [value]
    return any(_match_named_one(name, arg, item) for item in items)


def _match_named_one(name: str, arg: Any, item: Any) -> bool:
    if name == "prefix":
        if isinstance(arg, Mapping) and "equals-ignore-case" in arg:
            return isinstance(item, str) and item.lower().startswith(
                str(arg["equals-ignore-case"]).lower()
            )
        return isinstance(item, str) and item.startswith(str(arg))
    if name == "suffix":
        if isinstance(arg, Mapping) and "equals-ignore-case" in arg:
            return isinstance(item, str) and item.lower().endswith(
                str(arg["equals-ignore-case"]).lower()
            )
        return isinstance(item, str) and item.endswith(str(arg))
    if name == "equals-ignore-case":
        return isinstance(item, str) and item.lower() == str(arg).lower()
    if name == "anything-but":
        if isinstance(arg, Mapping):
            (inner, inner_arg), = arg.items()  # fmt: skip
            if inner not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
                raise UnsupportedPattern(f"anything-but {{{inner!r}: ...}} is not supported")
            values = inner_arg if isinstance(inner_arg, list) else [inner_arg]
            return not any(_match_named_one(inner, v, item) for v in values)
        values = arg if isinstance(arg, list) else [arg]
        return not any(_same(v, item) for v in values)
    if name == "numeric":
        if isinstance(item, bool) or not isinstance(item, int | float):
            return False
        ops: dict[str, Callable[[float, float], bool]] = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            "=": lambda a, b: a == b,
            ">=": lambda a, b: a >= b,
            ">": lambda a, b: a > b,
        }
        pairs = list(zip(arg[::2], arg[1::2], strict=True))
        return all(ops[op](float(item), float(bound)) for op, bound in pairs)
    if name == "wildcard":
        if not isinstance(item, str):
            return False
        regex = "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", arg))
        return re.fullmatch(regex, item) is not None
    if name == "cidr":
        try:
            return ipaddress.ip_address(item) in ipaddress.ip_network(arg)
        except ValueError:
            return False
    raise UnsupportedPattern(f"filter {name!r} is not supported by the local event router")


# --- target input ----------------------------------------------------------------------------

_PATH_TOKEN = re.compile(r"\.([A-Za-z0-9_\-$@]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def json_path(document: Any, path: str) -> Any:
    """EventBridge's JSONPath subset: `$`, `$.a.b`, `$.a[0]`, `$['a-b']`. Missing: None."""
    if not path.startswith("$"):
        raise UnsupportedPattern(f"input path must start with $: {path!r}")
    position, value = 1, document
    while position < len(path):
        match = _PATH_TOKEN.match(path, position)
        if match is None:
            raise UnsupportedPattern(f"input path {path!r} is not supported")
        name, index, quoted, dquoted = match.groups()
        key: Any = int(index) if index is not None else (name or quoted or dquoted)
        if isinstance(key, int):
            value = value[key] if isinstance(value, list) and key < len(value) else None
        else:
            value = value.get(key) if isinstance(value, Mapping) else None
        position = match.end()
    return value


def _fill_template(template: str, values: Mapping[str, Any]) -> str:
    """Replace `<name>` placeholders: inside a JSON string the value's text, outside its JSON.

    Scanning tracks JSON string literals so that a placeholder in quotes gets the bare text
    (escaped for the string) and one outside gets a JSON value, as EventBridge does.
    """
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(template):
        c = template[i]
        if c == "<":
            end = template.find(">", i + 1)
            name = template[i + 1 : end] if end > 0 else ""
            if end > 0 and name in values:
                value = values[name]
                if in_string:
                    text = value if isinstance(value, str) else json.dumps(value)
                    out.append("" if value is None else json.dumps(text)[1:-1])
                else:
                    out.append(json.dumps(value))
                i = end + 1
                continue
            if end > 0 and name.startswith("aws.") and re.fullmatch(r"[\w.\-]+", name):
                raise UnsupportedPattern(f"input template variable <{name}> is not supported")
        elif c == '"' and _escaped_backslash(template, i):
            in_string = not in_string
        out.append(c)
        i += 1
    return "".join(out)


def _escaped_backslash(text: str, quote: int) -> bool:
    """Whether the backslashes before a quote are themselves escaped (an even number)."""
    count, j = 0, quote - 1
    while j >= 0 and text[j] == "\\":
        count, j = count + 1, j - 1
    return count % 2 == 0


def as_payload(text: str) -> Any:
    """A JSON text parsed; anything else as the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a non-JSON template or Input is delivered as text


def apply_target_input(
    target: Mapping[str, Any], event: Mapping[str, Any], rule_arn: str, rule_name: str
) -> Any:
    """What EventBridge sends a target: `Input`, `InputPath` or `InputTransformer`, else the
    event itself."""
    if "Input" in target and target["Input"] is not None:
        return as_payload(target["Input"])
    if target.get("InputPath"):
        return json_path(event, target["InputPath"])
    transformer = target.get("InputTransformer")
    if transformer:
        values: dict[str, Any] = {
            name: json_path(event, path)
            for name, path in (transformer.get("InputPathsMap") or {}).items()
        }
        values[EVENT_JSON] = dict(event)
        values[RULE_ARN] = rule_arn
        values[RULE_NAME] = rule_name
        values[INGESTION_TIME] = event.get("time")
        return as_payload(_fill_template(transformer["InputTemplate"], values))
    return dict(event)
