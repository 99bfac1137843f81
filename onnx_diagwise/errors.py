"""Error types that map to the CLI's exit codes."""


class DiagwiseError(Exception):
    """Bad input or usage: a file, model, node or flag the user must fix (exit 2)."""


class CheckFailed(Exception):
    """The rewritten model failed a check against the original (exit 1)."""
