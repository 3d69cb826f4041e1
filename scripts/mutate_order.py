"""Test order for mutmut's runs: scripts/mutate.py installs this as the work dir's root conftest.

mutmut runs a mutant's tests with `-x`, so a mutant dies on the first test that fails. Running the
cheap tests first (no in-process moto: pure and Stubber tests), then the moto tests, then
Hypothesis' property tests, makes most mutants die in a second instead of after every moto
fixture. The order within each group is pytest's own.
"""

from __future__ import annotations

import pytest

MOTO_FIXTURES = frozenset({"aws", "fleet"})


def _cost(item: pytest.Item) -> int:
    if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
        return 2
    return 1 if MOTO_FIXTURES.intersection(getattr(item, "fixturenames", ())) else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_cost)
