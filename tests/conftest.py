"""Under mutmut only: run a mutant's tests fastest first.

mutmut runs each mutant's covering tests with -x, so the mutant is killed by the first test that
fails; tests in their measured order (new tests, not measured yet, first) find that failure
sooner.  The tests that run, and so the verdicts, stay the same."""

from __future__ import annotations

import json
import os
from pathlib import Path


def pytest_collection_modifyitems(config, items):
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    stats = Path("mutmut-stats.json")  # mutmut runs the tests in mutants/, beside its statistics
    if not stats.exists():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
