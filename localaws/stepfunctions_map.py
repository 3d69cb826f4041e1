"""Distributed Map on moto's ASL interpreter: tolerated failures enforced, `ItemBatcher`.

moto 5.2.5's interpreter (LocalStack's) parses `ToleratedFailureCount`/`Percentage` but never
applies them: a Map whose items fail succeeds, the failed items' results `null`. Its parser
also refuses `ItemBatcher` and an integer `ToleratedFailurePercentage` (`10`; it takes
`10.0`). `install()`:

* rewrites a definition before the parser reads it (the state machine keeps the one it was
  given): an integer `ToleratedFailurePercentage` becomes a float, `ItemBatcher` is taken out
  and kept with the parsed Map, with which tolerance fields the Map named;
* batches a Distributed Map's items (after its `ItemSelector`, applied to each item):
  `MaxItemsPerBatch` and/or `MaxInputBytesPerBatch` (the JSON of `{"Items": [...]}`); each
  child gets `{"Items": [...], "BatchInput": ...}` (`BatchInput` only if given);
* after a Distributed Map's items ran, fails the Map with
  `States.ExceedToleratedFailureThreshold` when the failed items (a failed batch counts all of
  its items; timed-out items count too) exceed `ToleratedFailureCount` or their share exceeds
  `ToleratedFailurePercentage` (either, if both are given); neither given: any failure;
* before a Distributed Map starts its children, asks `start_refusal` whether the execution's
  role may (`states:StartExecution`, see `localaws.stepfunctions`); if not, the Map fails
  with `States.Runtime` and the refusal as the cause.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from moto.stepfunctions.parser.api import HistoryEventType, MapRunFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
    StatesErrorName,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
    distributed_iteration_component,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (
    distributed_item_processor_worker,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.state_map import StateMap
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.program_state import ProgramEnded, ProgramStopped
from moto.stepfunctions.parser.asl.eval.states import ItemData, MapData
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

__all__ = ["batches", "exceeds_tolerance", "install", "rewrite_definition"]

_INSTALLED = "_localaws_map"
_EXTRAS = "_localaws_map_extras"  # on a parsed Map's iteration component
_FAILED = "_localaws_failed_items"  # on a MapRunRecord
_BATCHED = "_localaws_batched"  # on a MapRunRecord
StartRefusal = Callable[[Any], str | None]
_TOLERANCE_FIELDS = (
    "ToleratedFailureCount",
    "ToleratedFailureCountPath",
    "ToleratedFailurePercentage",
    "ToleratedFailurePercentagePath",
)
_BATCHER_FIELDS = {"MaxItemsPerBatch", "MaxInputBytesPerBatch", "BatchInput"}


class UnsupportedDefinition(ValueError):
    pass


# --- the definition -----------------------------------------------------------------------


def _map_states(states: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Map state of a `States` object, nested ones too."""
    if not isinstance(states, dict):
        return
    for name, state in states.items():
        if not isinstance(state, dict):
            continue
        if state.get("Type") == "Map":
            yield name, state
            for inner in ("ItemProcessor", "Iterator"):
                yield from _map_states((state.get(inner) or {}).get("States"))
        if state.get("Type") == "Parallel":
            for branch in state.get("Branches") or []:
                if isinstance(branch, dict):
                    yield from _map_states(branch.get("States"))


def rewrite_definition(definition: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """The definition as moto's parser accepts it, and per Map state name what it dropped or
    must know: `batcher` (the `ItemBatcher`), `tolerance` (the tolerance fields named)."""
    try:
        document = json.loads(definition)
    except ValueError:
        return definition, {}  # not JSON: the parser says what is wrong with it
    if not isinstance(document, dict):
        return definition, {}
    extras: dict[str, dict[str, Any]] = {}
    for name, state in _map_states(document.get("States")):
        percentage = state.get("ToleratedFailurePercentage")
        if isinstance(percentage, int) and not isinstance(percentage, bool):
            state["ToleratedFailurePercentage"] = float(percentage)
        batcher = state.pop("ItemBatcher", None)
        if batcher is not None:
            _check_batcher(name, batcher)
        extras[name] = {
            "batcher": batcher,
            "tolerance": {f for f in _TOLERANCE_FIELDS if f in state},
        }
    return json.dumps(document), extras


def _check_batcher(name: str, batcher: Any) -> None:
    if not isinstance(batcher, dict):
        raise UnsupportedDefinition(f"Map {name}: ItemBatcher must be an object")
    unknown = set(batcher) - _BATCHER_FIELDS
    if unknown:
        raise UnsupportedDefinition(
            f"Map {name}: localaws supports ItemBatcher's {sorted(_BATCHER_FIELDS)}, not "
            f"{sorted(unknown)}"
        )
    if not {"MaxItemsPerBatch", "MaxInputBytesPerBatch"} & set(batcher):
        raise UnsupportedDefinition(
            f"Map {name}: ItemBatcher needs MaxItemsPerBatch or MaxInputBytesPerBatch"
        )
    for field in ("MaxItemsPerBatch", "MaxInputBytesPerBatch"):
        value = batcher.get(field, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UnsupportedDefinition(f"Map {name}: ItemBatcher.{field} must be an integer >= 1")
    batch_input = batcher.get("BatchInput")
    if batch_input is not None and "$" in json.dumps(batch_input):
        raise UnsupportedDefinition(
            f"Map {name}: localaws takes a static ItemBatcher.BatchInput (no paths)"
        )


def _components(root: Any) -> Iterator[Any]:
    """Every component object reachable from a parsed program."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(
            "moto.stepfunctions.parser.asl.component"
        ):
            yield obj
            stack.extend(vars(obj).values())


def _parse_patch(moto_parse: Any) -> Any:
    def parse(definition: str) -> Any:
        rewritten, extras = rewrite_definition(definition)
        program, tree = moto_parse(rewritten)
        for component in _components(program):
            if isinstance(component, StateMap) and component.name in extras:
                setattr(component.iteration_component, _EXTRAS, extras[component.name])
        return program, tree

    return staticmethod(parse)


# --- batching and tolerance ---------------------------------------------------------------


def batches(items: list[Any], batcher: dict[str, Any]) -> list[dict[str, Any]]:
    """The children's inputs: consecutive items, at most `MaxItemsPerBatch` of them and (with
    `MaxInputBytesPerBatch`) at most that many bytes of `{"Items": [...]}` JSON (an item too
    big alone still gets a batch of its own)."""
    max_items = int(batcher.get("MaxItemsPerBatch", len(items) or 1))
    max_bytes = batcher.get("MaxInputBytesPerBatch")
    out: list[list[Any]] = []
    current: list[Any] = []
    for item in items:
        candidate = [*current, item]
        too_many = len(candidate) > max_items
        too_big = max_bytes is not None and len(
            json.dumps({"Items": candidate}, separators=(",", ":")).encode()
        ) > int(max_bytes)
        if current and (too_many or too_big):
            out.append(current)
            candidate = [item]
        current = candidate
    if current:
        out.append(current)
    extra = {"BatchInput": batcher["BatchInput"]} if "BatchInput" in batcher else {}
    return [{"Items": chunk, **extra} for chunk in out]


def exceeds_tolerance(
    failed: int, total: int, named: set[str], count: int, percentage: float
) -> bool:
    """AWS's rule: with neither field, any failure; else exceeding either one given."""
    if failed <= 0:
        return False
    has_count = bool(named & {"ToleratedFailureCount", "ToleratedFailureCountPath"})
    has_percentage = bool(named & {"ToleratedFailurePercentage", "ToleratedFailurePercentagePath"})
    if not has_count and not has_percentage:
        return True
    if has_count and failed > count:
        return True
    return has_percentage and total > 0 and failed * 100.0 / total > percentage


def _select_items(env: Any, eval_input: Any, items: list[Any]) -> list[Any]:
    """Each item through the Map's ItemSelector, as a child would see it without batching."""
    if eval_input.item_selector is None and eval_input.parameters is None:
        return items
    map_input = env.stack[-1]
    selected = []
    for index, item in enumerate(items):
        frame = env.open_inner_frame()
        try:
            frame.states.context_object.context_object_data["Map"] = MapData(
                Item=ItemData(Index=index, Value=item)
            )
            frame.states.reset(input_value=map_input)
            frame.stack.append(map_input)
            (eval_input.item_selector or eval_input.parameters).eval(frame)
            selected.append(frame.stack.pop())
        finally:
            env.delete_frame(frame)
    return selected


def _fail_map_run(env: Any, error_type: StatesErrorNameType, cause: str) -> None:
    raise FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=error_type),
            event_type=HistoryEventType.MapRunFailed,
            event_details=EventDetails(  # type: ignore[typeddict-item]
                mapRunFailedEventDetails=MapRunFailedEventDetails(
                    error=error_type.to_name(), cause=cause
                )
            ),
        )
    )


def _map_run_patch(moto_map_run: Any, start_refusal: StartRefusal) -> Any:
    def map_run(self: Any, env: Any, eval_input: Any) -> None:
        extras = getattr(self, _EXTRAS, None) or {}
        record = eval_input.map_run_record
        refusal = start_refusal(env)
        if refusal is not None:  # the role may not start the child executions
            env.stack.pop()
            _fail_map_run(env, StatesErrorNameType.StatesRuntime, refusal)
        setattr(record, _FAILED, 0)
        setattr(record, "_localaws_lock", threading.Lock())  # noqa: B010
        items: list[Any] = env.stack.pop()
        total = len(items)
        batcher = extras.get("batcher")
        if batcher is not None:
            children = batches(_select_items(env, eval_input, items), batcher)
            eval_input = copy.copy(eval_input)
            eval_input.item_selector = None
            eval_input.parameters = None
            setattr(record, _BATCHED, True)
            env.stack.append(children)
        else:
            env.stack.append(items)
        moto_map_run(self, env, eval_input)
        failed = int(getattr(record, _FAILED))
        if exceeds_tolerance(
            failed,
            total,
            set(extras.get("tolerance", ())),
            int(eval_input.tolerated_failure_count),
            float(eval_input.tolerated_failure_percentage),
        ):
            env.stack.pop()  # the outputs moto pushed
            _fail_map_run(
                env,
                StatesErrorNameType.StatesExceedToleratedFailureThreshold,
                f"The number of failed items ({failed} of {total}) exceeded the tolerated "
                f"failure threshold",
            )

    return map_run


def _eval_job_patch(moto_eval_job: Any) -> Any:
    def eval_job(self: Any, env: Any, job: Any) -> None:
        moto_eval_job(self, env, job)
        state = env.program_state()
        if isinstance(state, (ProgramEnded, ProgramStopped)):
            return
        record = self._map_run_record
        weight = 1
        if getattr(record, _BATCHED, False) and isinstance(job.job_input, dict):
            weight = len(job.job_input.get("Items") or []) or 1
        lock = getattr(record, "_localaws_lock", None)
        if lock is None:
            return
        with lock:
            setattr(record, _FAILED, int(getattr(record, _FAILED, 0)) + weight)

    return eval_job


def install(start_refusal: StartRefusal = lambda _env: None) -> None:
    """The parser's rewrite, batching and tolerance (idempotent). `start_refusal(env)` says
    why the execution's role may not start a Distributed Map's child executions (None: it
    may), checked when a Distributed Map starts."""
    if getattr(AmazonStateLanguageParser, _INSTALLED, False):
        return
    AmazonStateLanguageParser.parse = _parse_patch(  # type: ignore[method-assign]
        AmazonStateLanguageParser.parse
    )
    component = distributed_iteration_component.DistributedIterationComponent
    component._map_run = _map_run_patch(  # type: ignore[method-assign]
        component._map_run, start_refusal
    )
    worker = distributed_item_processor_worker.DistributedItemProcessorWorker
    worker._eval_job = _eval_job_patch(worker._eval_job)  # type: ignore[method-assign]
    setattr(AmazonStateLanguageParser, _INSTALLED, True)
