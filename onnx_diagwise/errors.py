"""Error types that map to the CLI's exit codes."""


class DiagwiseError(Exception):
    """Bad input or usage: a file, model, node or flag the user must fix (exit 2)."""


class UnsizedDims(DiagwiseError):
    """Symbolic input dims that no size tried could run the model with (the user must size them)."""


class RuntimeMissing(DiagwiseError):
    """onnxruntime is not installed (commands that only read models work without it)."""


class CheckFailed(Exception):
    """The rewritten model failed a check against the original (exit 1); .validation says how."""

    def __init__(self, message: str, validation=None):
        super().__init__(message)
        self.validation = validation
