"""Property tests of the pure retention decision: managed_sets + select_sets_to_delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapset.policy import TAG_INSTANCE_ID, TAG_POLICY, TAG_TRIGGER_ID, Retention
from snapset.retention import (
    SnapshotRecord,
    SnapshotSet,
    is_managed,
    managed_sets,
    select_sets_to_delete,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY, INSTANCE = "nightly", "i-0aaaaaaaaaaaaaaaa"
CURRENT = "t-current"
# Mostly completed: a pending or failed set shields everything older, which hides the rules.
STATES = st.sampled_from(["completed"] * 15 + ["pending", "error", "recoverable"])
# Few distinct times, so sets often share a StartTime.
TIMES = st.integers(min_value=0, max_value=40 * 4).map(lambda q: NOW - timedelta(hours=6 * q))


@dataclass(frozen=True)
class World:
    records: tuple[SnapshotRecord, ...]
    foreign_ids: frozenset[str]
    protected_ids: frozenset[str]
    retention: Retention
    current: str


def _tags(trigger: str) -> dict[str, str]:
    return {TAG_POLICY: POLICY, TAG_TRIGGER_ID: trigger, TAG_INSTANCE_ID: INSTANCE}


FOREIGN_TAGS = st.sampled_from(
    [
        {TAG_POLICY: POLICY},
        {TAG_POLICY: POLICY, TAG_INSTANCE_ID: INSTANCE},
        {TAG_POLICY: POLICY, TAG_TRIGGER_ID: "", TAG_INSTANCE_ID: INSTANCE},
        {TAG_POLICY: "weekly", TAG_TRIGGER_ID: "t-0", TAG_INSTANCE_ID: INSTANCE},
        {TAG_POLICY: POLICY, TAG_TRIGGER_ID: "t-0", TAG_INSTANCE_ID: "i-0bbbbbbbbbbbbbbbb"},
        {TAG_POLICY: POLICY.upper(), TAG_TRIGGER_ID: "t-1", TAG_INSTANCE_ID: INSTANCE},
        {TAG_TRIGGER_ID: "t-1", TAG_INSTANCE_ID: INSTANCE},
        {},
    ]
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n_sets = draw(st.integers(min_value=0, max_value=12))
    records: list[SnapshotRecord] = []
    counter = 0
    triggers = [f"t-{i}" for i in range(n_sets)]
    if draw(st.booleans()):
        triggers.append(CURRENT)
    for trigger in triggers:
        time = draw(TIMES)
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            counter += 1
            owner = draw(st.sampled_from(["111111111111"] * 5 + ["999999999999"]))
            records.append(
                SnapshotRecord(f"snap-{counter}", draw(STATES), time, _tags(trigger), owner)
            )
    foreign: set[str] = set()
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        counter += 1
        sid = f"snap-{counter}"
        foreign.add(sid)
        records.append(SnapshotRecord(sid, draw(STATES), draw(TIMES), draw(FOREIGN_TAGS)))
    all_ids = [r.snapshot_id for r in records]
    protected = draw(st.sets(st.sampled_from(all_ids), max_size=4)) if all_ids else set()
    count = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=5)))
    max_age: int | None
    if count is None:
        max_age = draw(st.integers(min_value=1, max_value=30))
    else:
        max_age = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=30)))
    return World(
        records=tuple(draw(st.permutations(records))),
        foreign_ids=frozenset(foreign),
        protected_ids=frozenset(protected),
        retention=Retention(count=count, max_age_days=max_age),
        current=draw(st.sampled_from([CURRENT, "t-0", "t-none"])),
    )


def decide(
    world: World, account_id: str | None = None
) -> tuple[list[SnapshotSet], tuple[SnapshotSet, ...]]:
    sets = managed_sets(world.records, POLICY, INSTANCE, account_id)
    doomed = select_sets_to_delete(sets, world.retention, NOW, world.current, world.protected_ids)
    return sets, doomed


PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(worlds(), st.sampled_from([None, "111111111111"]))
def test_selection_invariants(world: World, account_id: str | None) -> None:
    sets, doomed = decide(world, account_id)
    others = [s for s in sets if s.trigger_id != world.current]
    deleted = {sid for s in doomed for sid in s.snapshot_ids}

    # whole sets only, each once, and only sets that exist
    assert len({s.trigger_id for s in doomed}) == len(doomed)
    assert all(s in others for s in doomed)
    # never a foreign snapshot, nor another account's when the account is known
    assert not deleted & world.foreign_ids
    by_id = {r.snapshot_id: r for r in world.records}
    assert all(is_managed(by_id[sid], POLICY, INSTANCE, account_id) for sid in deleted)
    # never the current set
    assert all(s.trigger_id != world.current for s in doomed)
    # the newest completed set (every one tied for newest) survives
    completed = [s for s in others if s.completed]
    if completed:
        newest = max(s.start_time for s in completed)
        assert all(not (s.completed and s.start_time == newest) for s in doomed)
    for s in doomed:
        # no newer (or equally new) other set is pending or failed
        assert not any(
            u.unsettled and u.trigger_id != s.trigger_id and u.start_time >= s.start_time
            for u in others
        )
        # no protected snapshot, nothing in flight
        assert not set(s.snapshot_ids) & world.protected_ids
        assert s.deletable_state
        # the rules let it go
        r = world.retention
        if r.count is not None:
            assert sum(c.start_time > s.start_time for c in completed) >= r.count
        if r.max_age_days is not None:
            assert NOW - s.start_time > timedelta(days=r.max_age_days)


@PROPERTY_SETTINGS
@given(worlds())
def test_protection_only_ever_removes_sets_from_deletion(world: World) -> None:
    """Checking protections after the rules (as apply_retention does) is sound."""
    sets = managed_sets(world.records, POLICY, INSTANCE)
    unprotected = select_sets_to_delete(sets, world.retention, NOW, world.current)
    protected = select_sets_to_delete(
        sets, world.retention, NOW, world.current, world.protected_ids
    )
    assert set(protected) <= set(unprotected)
    assert {s for s in unprotected if not set(s.snapshot_ids) & world.protected_ids} == set(
        protected
    )


@PROPERTY_SETTINGS
@given(worlds())
def test_every_kept_set_has_a_reason(world: World) -> None:
    """Retention does its job: a set it keeps is kept by one of the documented rules."""
    sets, doomed = decide(world)
    others = [s for s in sets if s.trigger_id != world.current]
    completed = [s for s in others if s.completed]
    newest = max((s.start_time for s in completed), default=None)
    r = world.retention
    for s in others:
        if s in doomed:
            continue
        newer_completed = sum(c.start_time > s.start_time for c in completed)
        reasons = [
            s.completed and s.start_time == newest,
            any(
                u.unsettled and u.trigger_id != s.trigger_id and u.start_time >= s.start_time
                for u in others
            ),
            not s.deletable_state,
            bool(set(s.snapshot_ids) & world.protected_ids),
            r.count is not None and newer_completed < r.count,
            r.max_age_days is not None and NOW - s.start_time <= timedelta(days=r.max_age_days),
        ]
        assert any(reasons), s


@PROPERTY_SETTINGS
@given(worlds())
def test_the_decision_does_not_depend_on_listing_order(world: World) -> None:
    _, doomed = decide(world)
    reversed_sets = managed_sets(reversed(world.records), POLICY, INSTANCE)
    again = select_sets_to_delete(
        reversed_sets, world.retention, NOW, world.current, world.protected_ids
    )
    assert {s.trigger_id for s in again} == {s.trigger_id for s in doomed}
