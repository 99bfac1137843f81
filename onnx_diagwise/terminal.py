"""What the command line prints, and how: help in click's plain layout with words never broken;
rich consoles COLUMNS wide off a terminal; lines of text never re-wrapped; spinners and progress
bars on a terminal only; the library's log lines and errors on stderr.

Imports stay light (typer, the standard library): rich is loaded on first print, so `-h` and
`--version` load neither rich nor onnx.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from typer._click.formatting import HelpFormatter
from typer.core import TyperCommand, TyperGroup

from .errors import DiagwiseError


def _wrap(text: str, width: int, indent: str = "") -> str:
    """TEXT's paragraphs wrapped at spaces only (click's wrapper breaks words at hyphens and splits
    words longer than the line); a paragraph after a line holding '\\b' keeps its lines."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
        if paragraph.startswith("\b"):
            paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()[1:]))
        else:
            paragraphs.append(textwrap.fill(" ".join(paragraph.split()), max(width, 20), initial_indent=indent,
                                            subsequent_indent=indent, break_long_words=False,
                                            break_on_hyphens=False))
    return "\n\n".join(paragraphs)


class _HelpFormatter(HelpFormatter):
    """click's plain help layout (option names whole, descriptions beside or below them) with
    words never broken."""

    def write_text(self, text: str) -> None:
        self.write(_wrap(text, self.width, " " * self.current_indent) + "\n")

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(max(len(first) for first, _ in rows), col_max) + col_spacing
        if self.width - first_col < 40:  # narrow: each description below its option, indented
            first_col, col_spacing = 6, 7
        indent = " " * self.current_indent
        for first, second in rows:
            self.write(indent + first)
            if not second:
                self.write("\n")
                continue
            lines = _wrap(second, self.width - first_col - self.current_indent).splitlines()
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)) + lines.pop(0) + "\n")
            else:
                self.write("\n")
            for line in lines:
                self.write(indent + " " * first_col + line + "\n")


class Context(typer.Context):
    formatter_class = _HelpFormatter


def _bool_help(option):
    """The -h option with a bool default: typer then skips its coercion, which imports pydantic
    (0.1 s of every subcommand's help)."""
    if option is not None:
        option.default = False
    return option


class Group(TyperGroup):
    context_class = Context

    def get_help_option(self, ctx):
        return _bool_help(super().get_help_option(ctx))


class Command(TyperCommand):
    context_class = Context

    def get_help_option(self, ctx):
        return _bool_help(super().get_help_option(ctx))


_consoles: dict[bool, Any] = {}


def console(stderr: bool = False):
    """The rich console for stdout or stderr, made on first use.  Off a terminal (pipes, CI logs) it is
    COLUMNS wide (200 if unset): rich would otherwise assume 80."""
    if stderr not in _consoles:
        from rich.console import Console

        width = None
        if not (sys.stderr if stderr else sys.stdout).isatty():
            try:
                width = int(os.environ.get("COLUMNS") or 200)
            except ValueError:
                width = 200
        _consoles[stderr] = Console(stderr=stderr, highlight=False, width=width)
    return _consoles[stderr]


def show(items, stderr: bool = False) -> None:
    """Print a render view: tables as rich draws them, lines of text never re-wrapped."""
    from rich.text import Text

    for item in items:
        console(stderr).print(item, soft_wrap=isinstance(item, Text))


def say(text: str, stderr: bool = False) -> None:
    """One line of plain text, never re-wrapped (paths stay whole)."""
    from rich.text import Text

    console(stderr).print(Text(text), soft_wrap=True)


def warn(text: str) -> None:
    from rich.text import Text

    console(True).print(Text("warning: ", style="yellow") + Text(text), soft_wrap=True)


def error(label: str, message: str) -> None:
    """LABEL: MESSAGE in red on stderr; a FAILED line of a failed check marked as validate marks it."""
    from rich.text import Text

    first, *rest = message.splitlines() or [""]
    console(True).print(Text(f"{label}:", style="red") + Text(f" {first}"), soft_wrap=True)
    for line in rest:
        status, sep, tail = line.partition(" | ")
        text = Text(status, style="red") + Text(sep + tail) if status == "FAILED" and sep else Text(line)
        console(True).print(text, soft_wrap=True)


def log_details(verbose: bool) -> None:
    """-v: the library's detail lines (e.g. which CUDA libraries were loaded) on stderr."""
    logger = logging.getLogger("onnx_diagwise")
    if not logger.handlers:
        logger.addHandler(_StderrHandler())
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


class _StderrHandler(logging.Handler):
    """Library log lines on the error console: warnings marked as such, details as they are."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            warn(record.getMessage())
        else:
            say(record.getMessage(), stderr=True)


def check_folder(path: Path | None, flag: str = "--json") -> None:
    """Refuse PATH, given to FLAG, before any work when its folder does not exist ('-' is stdout)."""
    if path is not None and str(path) != "-":
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise DiagwiseError(f"{flag}: directory '{parent}' does not exist")


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """DATA as JSON at PATH, or on stdout for '-'; nothing for None."""
    if path is None:
        return
    text = json.dumps(data, indent=2)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        path.write_text(text + "\n")
    except OSError as exc:
        raise DiagwiseError(f"cannot write --json '{path}': {exc.strerror or exc}") from None


@contextmanager
def working(text: str, quiet: bool = False):
    """A spinner on stderr while something that can take a while runs, only on a terminal; yields
    a function that changes its text."""
    if quiet or not console(True).is_terminal:
        yield lambda new_text: None
        return
    with console(True).status(text) as status:
        yield lambda new_text: status.update(new_text)


@contextmanager
def progress_bar(quiet: bool):
    """A rich progress bar for tuning (layers done / total, current layer, elapsed), on a terminal only."""
    if quiet or not console(True).is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console(True), transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, current: str) -> None:
            bar.update(task, completed=done, total=total, description=current)

        yield update
