"""Per-module summary of a finished `mutmut run`, as the Markdown table of benchmarks/results/mutation.md.

    .venv/bin/mutmut run --max-children 2 && .venv/bin/python scripts/mutation_summary.py
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    lines = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    counts: dict[str, Counter] = defaultdict(Counter)
    for line in lines:
        name, _, status = line.strip().rpartition(": ")
        if name:
            counts[name.split(".")[1]][status] += 1
    print("| module | mutants | killed | timeout | survived | no tests | not run | score |")
    print("|---|---|---|---|---|---|---|---|")
    for module, c in sorted(counts.items()):
        detected = c["killed"] + c["timeout"]
        judged = detected + c["survived"] + c["no tests"]
        score = f"{detected / judged:.0%}" if judged else "-"
        print(f"| {module} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | "
              f"{c['no tests']} | {c['not checked']} | {score} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
