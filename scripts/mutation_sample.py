"""A seeded random sample of the mutants a mutmut run has not checked yet, N per module, as mutant
names for `mutmut run NAME...`: when the whole run does not fit the time there is, the sample's
kill rate estimates each module's score over the unchecked rest (see mutation_summary.py).

    .venv/bin/mutmut run --max-children 2 $(.venv/bin/python scripts/mutation_sample.py 50)

A second sample of what is still unchecked takes another SEED (the default is 0).
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def unchecked_by_module(root: Path = Path("mutants")) -> dict[str, list[str]]:
    unchecked: dict[str, list[str]] = defaultdict(list)
    for meta in sorted(root.rglob("*.py.meta")):
        for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if exit_code is None:
                unchecked[name.split(".")[1]].append(name)
    return unchecked


def main() -> int:
    per_module = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for module, names in sorted(unchecked_by_module().items()):
        for name in sorted(rng.sample(sorted(names), min(per_module, len(names)))):
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
