"""Helpers shared by the local AWS tests (a uniquely named module: `conftest` is ambiguous)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.conftest import FIXTURES, load_event

__all__ = ["FIXTURES", "Instance", "load_event_fixture"]

# The event shapes and the CreateSnapshots reference are the shared ones in tests/fixtures/.
load_event_fixture = load_event


@dataclass(frozen=True)
class Instance:
    instance_id: str
    root_volume_id: str
    data_volume_ids: tuple[str, ...]
    availability_zone: str
