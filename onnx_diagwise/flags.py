"""How the command line spells what the library names: parameters become flags.

The library's messages name its parameters (min_channels, InputOptions.shapes, check=False) and
say which ones they name (DiagwiseError.parameters, Leave/NodeDecision.parameters, Text); here
those, and only those, are spelled as this command line's flags."""

from __future__ import annotations

from typing import Any, Iterable

PARAMETER_FLAGS = {"warn_growth": "--warn-growth", "warmup": "--warmup", "iterations": "--iterations",
                   "seconds": "--seconds", "batch": "--batch", "min_channels": "--min-channels",
                   "opt_level": "--opt-level", "threads": "--threads", "min_speedup": "--min-speedup",
                   "time_budget": "--time-budget", "check_n": "--check-n", "seed": "--seed", "atol": "--atol",
                   "rtol": "--rtol", "group_size": "--group-size", "include": "--include", "exclude": "--exclude",
                   "node_group_sizes": "--node-group-size", "InputOptions.shapes": "--overwrite-input-shape",
                   "InputOptions.dims": "--dim", "plan": "--plan", "plan_lenient": "--plan-lenient",
                   "check=False": "--no-check", "dynamic=False": "--skip-dynamic"}


def spelled(text: str, parameters) -> str:
    """TEXT with each library parameter it says it names (PARAMETERS) spelled as this command's flag."""
    for name in parameters:
        flag = PARAMETER_FLAGS.get(name)
        if flag is not None:
            text = _whole_word(text, name, flag)
    return text


def _whole_word(text: str, word: str, replacement: str) -> str:
    """TEXT with WORD replaced where it stands alone (not inside a longer name or flag)."""
    out, start = [], 0
    while (at := text.find(word, start)) >= 0:
        before = text[at - 1] if at else " "
        after = text[at + len(word)] if at + len(word) < len(text) else " "
        alone = not (before.isalnum() or before in "_-.") and not (after.isalnum() or after in "_")
        out.append(text[start:at] + (replacement if alone else word))
        start = at + len(word)
    return "".join(out) + text[start:]


def flag_option(name: str, value: Any = None) -> str:
    """How a failed check's advice names an option here (validation.advice's SPELL)."""
    if name == "atol":
        return " ".join(f"--atol {output}={tolerance}" for output, tolerance in value.items())
    if name == "InputOptions.data":
        return "--input-data NAME:FILE.npy or --inputs FILE.npz"
    if name == "check":
        return "--no-check"
    return PARAMETER_FLAGS.get(name, name)
