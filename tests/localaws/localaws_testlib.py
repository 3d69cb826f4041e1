"""Helpers shared by the local AWS tests (a uniquely named module: `conftest` is ambiguous)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def load_event_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "events" / f"{name}.json").read_text())
    return data


@dataclass(frozen=True)
class Instance:
    instance_id: str
    root_volume_id: str
    data_volume_ids: tuple[str, ...]
    availability_zone: str
