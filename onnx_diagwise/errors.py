"""Error types that map to the CLI's exit codes."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of EXC's message (onnxruntime's run to many lines); DEFAULT, else the
    exception's type name, when it has none."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


class DiagwiseError(Exception):
    """Bad input or usage: a file, model, node or flag the user must fix (exit 2).

    PARAMETERS are the library parameters the message names (as whole words), so that a front
    end can spell each its own way (the command line: as its flags)."""

    def __init__(self, message: str, *parameters: str):
        super().__init__(message)
        self.parameters = parameters


class UnsizedDims(DiagwiseError):
    """Symbolic input dims that no size tried could run the model with (the user must size them);
    EXAMPLE is a {input: shape} a user could start from."""

    def __init__(self, message: str, *parameters: str, example: dict | None = None):
        super().__init__(message, *parameters)
        self.example = example or {}


class RuntimeMissing(DiagwiseError):
    """onnxruntime is not installed (commands that only read models work without it)."""


class CheckFailed(Exception):
    """The rewritten model failed a check against the original (exit 1); .validation says how,
    .headline what was not done."""

    def __init__(self, message: str, validation=None, headline: str | None = None):
        super().__init__(message)
        self.validation = validation
        self.headline = headline
