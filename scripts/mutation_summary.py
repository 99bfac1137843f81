"""Per-module summary of a `mutmut run`, as the Markdown table of benchmarks/results/mutation.md.

    .venv/bin/mutmut run --max-children 2 && .venv/bin/python scripts/mutation_summary.py

When the whole run did not fit the time there was, a seeded random sample of the unchecked mutants
(scripts/mutation_sample.py) was run by name; `--sample FILE` (its names) then estimates each
module's score over all its mutants: the mutants checked before the sample as they are, the rest at
the sample's kill rate, with a 95% interval (Wilson) for that rate.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

DETECTED = ("killed", "timeout")
JUDGED = ("killed", "timeout", "survived", "no tests")


def statuses() -> dict[str, str]:
    mutmut = Path(sys.executable).with_name("mutmut")
    lines = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    found = {}
    for line in lines:
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status
    return found


def wilson(detected: int, judged: int, z: float = 1.96) -> tuple[float, float]:
    if not judged:
        return 0.0, 1.0
    p = detected / judged
    centre = (p + z * z / (2 * judged)) / (1 + z * z / judged)
    half = z * math.sqrt(p * (1 - p) / judged + z * z / (4 * judged * judged)) / (1 + z * z / judged)
    return max(0.0, centre - half), min(1.0, centre + half)


def count(counter: Counter, kinds: tuple[str, ...]) -> int:
    return sum(counter[kind] for kind in kinds)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=Path, help="the names of the sampled mutants, one per line")
    parser.add_argument("--killed-only", action="store_true",
                        help="count timeouts as not detected (a forked test can also hang on a lock)")
    args = parser.parse_args()
    detected_kinds = ("killed",) if args.killed_only else DETECTED
    sample = set(args.sample.read_text().split()) if args.sample else set()
    full: dict[str, Counter] = defaultdict(Counter)
    sampled: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses().items():
        module = name.split(".")[1]
        (sampled if name in sample else full)[module][status] += 1
    print("| module | mutants | killed | timeout | survived | no tests | not checked | score over checked |"
          + (" sample (detected/judged) | estimated score (95%) |" if sample else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if sample else ""))
    for module in sorted(full.keys() | sampled.keys()):
        c, s = full[module], sampled[module]
        both = c + s
        detected, judged = count(both, detected_kinds), count(both, JUDGED)
        score = f"{detected / judged:.0%}" if judged else "-"
        row = (f"| {module} | {sum(both.values())} | {both['killed']} | {both['timeout']} | {both['survived']} | "
               f"{both['no tests']} | {both['not checked']} | {score} |")
        if sample:
            unchecked = c["not checked"] + sum(s.values())  # the rest when the sample was drawn
            s_detected, s_judged = count(s, detected_kinds), count(s, JUDGED)
            c_detected, c_judged = count(c, detected_kinds), count(c, JUDGED)
            if not unchecked:
                row += f" - | {c_detected / c_judged:.0%} (all checked) |"
            elif s_judged:
                low, high = wilson(s_detected, s_judged)
                total = c_judged + unchecked
                estimate = (c_detected + unchecked * s_detected / s_judged) / total
                row += (f" {s_detected}/{s_judged} | {estimate:.0%} ({(c_detected + unchecked * low) / total:.0%}"
                        f"-{(c_detected + unchecked * high) / total:.0%}) |")
            else:
                row += " - | - |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
