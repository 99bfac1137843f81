"""Tables for people; the CLI prints these, the API returns the data behind them.

Every view is a list of things to print: a bordered table when it fits the width whole, and
otherwise plain aligned columns, one line per row, that leave out the least useful columns until
the line fits.  Nothing is ever broken inside a word or a name: text wraps at spaces only, and a
name longer than the width runs past it (the terminal wraps it, whole).
"""

from __future__ import annotations

import textwrap
from typing import Any, Callable, Iterable, Sequence

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from .plan import parse_choice
from .report import ModelStats, RewriteReport, human_bytes as size

Cell = str | Text
Row = dict[str, Cell]
GAP = "  "  # between plain columns


def count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _dims(values: list[int] | None) -> str:
    return "x".join(map(str, values)) if values else "-"


def wrapped(text: str, width: int | None, indent: str = "", style: str = "") -> list[Text]:
    """TEXT wrapped at spaces to WIDTH, one Text per line; a word longer than the width keeps its own line."""
    if width is None:
        return [Text(indent + text, style=style)]
    lines = textwrap.wrap(text, max(width, 20), initial_indent=indent, subsequent_indent=indent,
                          break_long_words=False, break_on_hyphens=False)
    return [Text(line, style=style) for line in lines or [""]]


# Past this many rows a bordered table is slow to lay out (rich measures every cell) and no easier
# to read than plain columns.
MAX_BORDERED_ROWS = 200


def _natural_width(headers: Sequence[str], rows: Sequence[Row]) -> int:
    """The width of the bordered table of ROWS: each column as wide as its widest cell (single-line
    cells), one space of padding each side, and a border between columns and at both ends."""
    widths = [max([len(h), *(len(str(row.get(h, ""))) for row in rows)]) for h in headers]
    return sum(widths) + 3 * len(widths) + 1


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def grid(title: str | None, headers: Sequence[str], rows: Sequence[Row], width: int | None, *,
         right: Iterable[str] = (), plain: Sequence[str] | None = None, labels: dict[str, str] | None = None,
         drop: Sequence[str] = (), notes: Sequence[str] = (), caption: str | None = None) -> list[RenderableType]:
    """ROWS ({key: cell}) as a bordered table of HEADERS if it fits WIDTH; otherwise plain columns
    PLAIN (keys, default HEADERS, in that order; headed by LABELS or the key), leaving out the
    columns of DROP, in order, until a line fits, with NOTES (wrapped) below."""
    right = set(right)
    head = wrapped(title, width, style="italic") if title else []
    tail = wrapped(caption, width) if caption else []
    if len(rows) <= MAX_BORDERED_ROWS and (width is None or _natural_width(headers, rows) <= width):
        table = Table(title_justify="left")
        for header in headers:
            table.add_column(header, justify="right" if header in right else "left")
        for row in rows:
            table.add_row(*(_text(row.get(h, "")) for h in headers))
        return [*head, table, *tail]
    width = width or 10**6
    columns, labels = list(plain or headers), {c: (labels or {}).get(c, c) for c in (plain or headers)}
    cells = [{c: _text(row.get(c, "")) for c in columns} for row in rows]
    widths = {c: max([len(labels[c]), *(len(r[c]) for r in cells)]) for c in columns}
    for column in drop:
        if sum(widths[c] for c in columns) + len(GAP) * (len(columns) - 1) <= width:
            break
        if column in columns:
            columns.remove(column)
    header = GAP.join(labels[c].rjust(widths[c]) if c in right else labels[c].ljust(widths[c]) for c in columns)
    lines = [Text(header.rstrip(), style="bold")]
    for row in cells:
        line = Text()
        for i, c in enumerate(columns):
            cell, pad = row[c], " " * (widths[c] - len(row[c]))
            last = i == len(columns) - 1
            line.append_text(Text(pad) + cell if c in right else cell + Text("" if last else pad))
            if not last:
                line.append(GAP)
        lines.append(line)
    return [*head, *lines, *(line for note in notes for line in wrapped(note, width)), *tail]


def _action(n) -> str:
    """What the summary line calls it too: a block-diagonal layer left alone is 'already block-diagonal'."""
    return "already block-diagonal" if n.action == "skipped" and n.block_diagonal else n.action


NODE_HEADERS = ("node", "form", "C", "M", "kernel", "stride", "dilation", "dtype", "weight", "G", "action", "reason")


def as_given(text: str, parameters: Sequence[str] = ()) -> str:
    """Text as the library words it (a front end passes its own WORDS, which spells PARAMETERS)."""
    return text


def nodes_table(report: RewriteReport, title: str, width: int | None = None,
                words: Callable[[str, Sequence[str]], str] = as_given) -> list[RenderableType]:
    """Every grouped Conv with its decision (reasons put in WORDS: the command line names its flags).
    At narrow widths one line per node, the name last, and the reason of each node left alone as a
    numbered note below (a rewritten node's reason is its G, shown)."""
    reasons: dict[str, int] = {}
    rows = []
    for n in report.nodes:
        style = "green" if n.action in ("rewrite", "rewritten", "reverted") else "yellow"
        action = _action(n)
        row: Row = {"node": n.name if n.graph == "main" else f"{n.name} ({n.graph})", "form": n.form or "-",
                    "C": str(n.channels or "-"), "M": str(n.multiplier or "-"), "kernel": _dims(n.kernel),
                    "stride": _dims(n.strides), "dilation": _dims(n.dilations), "dtype": n.dtype or "-",
                    "weight": n.weight_source or "-", "G": n.form_label or "-",
                    "action": Text(action, style=style), "reason": words(n.reason, n.parameters)}
        row["why"] = Text(action, style=style)
        if style == "yellow" and n.reason:
            row["why"].append(f" [{reasons.setdefault(row['reason'], len(reasons) + 1)}]")
        rows.append(row)
    plain = ["C", "M", "kernel", "stride", "dilation", "form", "dtype", "weight", "G", "why", "node"]
    notes = [f"[{number}] {reason}" for reason, number in reasons.items()]
    return grid(title, NODE_HEADERS, rows, width, right=("C", "M", "G"), plain=plain, labels={"why": "action"},
                drop=("weight", "dilation", "stride", "dtype", "form", "M", "kernel"), notes=notes)


def summary_line(report: RewriteReport) -> str:
    if not report.nodes:
        return ("no block-diagonal convolutions to revert" if report.policy == "revert"
                else "no depthwise or grouped convolutions found")
    verb = ("reverted" if report.policy == "revert" else "rewritten") if report.after is not None \
        else "to rewrite"
    already = sum(1 for n in report.skipped if n.block_diagonal)
    line = (f"{len(report.nodes)} grouped Conv node(s): {len(report.rewritten)} {verb}, "
            + (f"{already} already block-diagonal, " if already else "")
            + f"{len(report.skipped) - already} skipped")
    known = [n for n in report.rewritten if n.flops_before is not None]
    if known:
        before = sum(n.flops_before for n in known)
        after = sum(n.flops_after for n in known)
        line += f"; FLOPs per sample of those layers {count(before)} -> {count(after)}"
    return line


def _row(table: Table, label: str, before: str, after: str, changed: bool) -> None:
    table.add_row(label, before, f"[bold cyan]{after}[/bold cyan]" if changed else after)


def compare_table(before: ModelStats, after: ModelStats, file_before: int | None,
                  file_after: int | None, elapsed: float | None, title: str = "onnx-diagwise rewrite") -> Table:
    """onnxsim-style before/after table (three short columns: it fits 60 columns)."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("Original model", justify="right")
    table.add_column("Written model", justify="right")
    rows = [
        ("Depthwise convs", before.depthwise_convs, after.depthwise_convs, str),
        ("Block-diagonal convs", before.block_diagonal_convs, after.block_diagonal_convs, str),
        ("Other grouped convs", before.grouped_convs, after.grouped_convs, str),
        ("All convs", before.convs, after.convs, str),
        ("Parameters", before.parameters, after.parameters, count),
        ("Weights", before.weight_bytes, after.weight_bytes, size),
        ("File size", file_before, file_after, size),
    ]
    for label, a, b, fmt in rows:
        _row(table, label, fmt(a) if a is not None else "?", fmt(b) if b is not None else "?", a != b)
    ops = sorted(set(before.op_counts) | set(after.op_counts))
    for op in ops:
        a, b = before.op_counts.get(op, 0), after.op_counts.get(op, 0)
        _row(table, f"  {op}", str(a), str(b), a != b)
    if elapsed is not None:
        table.add_row("Elapsed", "", f"{elapsed:.2f} s")
    return table


def validation_lines(report) -> list[Text]:
    """One coloured Polygraphy-style line per output."""
    lines = []
    for o in report.outputs:
        status = Text("PASSED" if o.passed else "FAILED", style="green" if o.passed else "red")
        lines.append(status + Text(f" | output '{o.name}' | {o.message}"))
    return lines


BENCH_HEADERS = ("model", "median ms", "p10 ms", "p90 ms", "mean ms", "samples/s", "speedup", "95% interval")


def bench_table(report, width: int | None = None) -> list[RenderableType]:
    env = report.environment
    title = (f"{env['provider']} on {env['device']}, batch {report.batch}, {env['rounds']} interleaved rounds "
             f"after {env['warmup']} warm-up, iobinding {'on' if env['iobinding'] else 'off'}")
    rows = []
    for m in report.models:
        low, high = m.speedup_ci95 or (m.speedup, m.speedup)
        # Coloured only when the interval excludes 1: otherwise the difference is noise.
        colour = "green" if low > 1 else "red" if high < 1 else ""
        rows.append({"model": m.name, "median ms": f"{m.median_ms:.3f}", "p10 ms": f"{m.p10_ms:.3f}",
                     "p90 ms": f"{m.p90_ms:.3f}", "mean ms": f"{m.mean_ms:.3f}", "samples/s": f"{m.throughput:.1f}",
                     "speedup": Text(f"{m.speedup:.2f}x", style=colour),
                     "95% interval": f"{low:.2f}-{high:.2f}" if m.speedup_ci95 else "-"})
    plain = [*BENCH_HEADERS[1:], "model"]
    return grid(title, BENCH_HEADERS, rows, width, right=BENCH_HEADERS[1:], plain=plain,
                drop=("mean ms", "p10 ms", "p90 ms", "samples/s", "95% interval"))


def _numbered(report, width: int | None) -> tuple[list[str], list[str]]:
    """Column headers for the profiled models: their names when short, else #1, #2, ... with a legend."""
    names = [p.model for p in report.profiles]
    if width is None or sum(len(n) + 3 for n in names) + 24 <= width:
        return names, []
    return [f"#{i + 1}" for i in range(len(names))], [f"#{i + 1}: {n}" for i, n in enumerate(names)]


def op_type_table(report, width: int | None = None) -> list[RenderableType]:
    headers, legend = _numbered(report, width)
    rows = []
    ops = list(dict.fromkeys(op for p in report.profiles for op in p.by_op_type_us))
    for op in ops:
        rows.append({"op type": op, **{h: f"{p.by_op_type_us.get(op, 0.0):.1f}"
                                       for h, p in zip(headers, report.profiles)}})
    return [*grid("Kernel time per op type (us per run, onnxruntime profiler)", ["op type", *headers], rows, width,
                  right=headers, plain=[*headers, "op type"]), *(Text(line) for line in legend)]  # paths whole


def depthwise_time_table(report, width: int | None = None) -> list[RenderableType]:
    headers, _ = _numbered(report, width)
    rows = []
    for row in report.depthwise_nodes():
        cells = {h: "-" if t is None else f"{group} / {t:.1f}"
                 for h, group, t in zip(headers, row["groups"], row["times_us"])}
        rows.append({"node": row["source"] or row["node"], **cells})
    return grid("Depthwise Conv nodes of the first model, per model: group / kernel us per run",
                ["node", *headers], rows, width, right=headers, plain=[*headers, "node"])  # legend: op_type_table's


TUNE_HEADERS = ("node", "C", "kernel", "input shape", "original ms", "best", "best ms", "speedup", "decision")


def tune_table(report, width: int | None = None,
               words: Callable[[str, Sequence[str]], str] = as_given) -> list[RenderableType]:
    ctx = report.context
    title = (f"Per-layer tuning on {ctx.get('provider')} ({ctx.get('device')}), "
             f"margin {1 + report.min_speedup:.2f}x")
    rows = []
    decisions: dict[str, int] = {}
    for layer in report.layers:
        colour = "green" if layer.rewritten else "yellow"
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        worded = words(layer.decision, layer.parameters)
        decision = worded + (" (cached)" if layer.cached else "")
        # At narrow widths a note per kind of decision: its figures in parentheses are the columns'.
        number = decisions.setdefault(worded.split(" (")[0], len(decisions) + 1)
        rows.append({"node": layer.node, "C": str(layer.channels), "kernel": _dims(layer.kernel),
                     "input shape": _dims(layer.input_shape) if layer.input_shape else "?",
                     "original ms": fmt(layer.original_ms, ".3f"),
                     "best": parse_choice(layer.best).label if layer.best else "-",
                     "best ms": fmt(layer.best_ms, ".3f"),
                     "speedup": "-" if layer.speedup is None else f"{layer.speedup:.2f}x",
                     "decision": Text(decision, style=colour),
                     "why": Text("rewrite" if layer.rewritten else "keep", style=colour) + Text(f" [{number}]")})
    caption = None
    if report.end_to_end_speedup is not None:
        caption = (f"whole model: original {report.original_ms:.3f} ms, tuned {report.tuned_ms:.3f} ms, "
                   f"{report.end_to_end_speedup:.2f}x")
    notes = [f"[{number}] {decision}" for decision, number in decisions.items()]
    plain = ["C", "kernel", "input shape", "original ms", "best", "best ms", "speedup", "why", "node"]
    return grid(title, TUNE_HEADERS, rows, width, right=("C", "original ms", "best", "best ms", "speedup"),
                plain=plain, labels={"why": "decision"}, drop=("input shape", "kernel", "best ms", "original ms"),
                notes=notes, caption=caption)


# What each command prints: the views above in order, as one list.

def inspect_view(result, width: int | None = None,
                 words: Callable[[str, Sequence[str]], str] = as_given) -> list[RenderableType]:
    """inspect: the node table (when there are nodes) and the summary line (files.inspect_file's FileReport)."""
    report = result.report
    title = f"{result.sources['model']}: depthwise and grouped Conv nodes"
    return [*(nodes_table(report, title, width, words) if report.nodes else []),
            *wrapped(summary_line(report), width)]


def written_view(written, width: int | None = None, verbose: bool = False,
                 words: Callable[[str, Sequence[str]], str] = as_given) -> list[RenderableType]:
    """rewrite / revert (a files.FileResult): what auto measured, the node table (VERBOSE), the
    before/after table, the summary, the check, and where the model was saved (one line: paths to copy)."""
    report, tuning = written.report, written.result.tuning
    view: list[RenderableType] = []
    if tuning is not None:
        view += [*tune_table(tuning, width, words), *wrapped(tuning.summary, width)]
    if verbose and report.nodes:
        view += nodes_table(report, "Depthwise and grouped convolutions", width, words)
    command = "revert" if report.policy == "revert" else "rewrite"
    view.append(compare_table(report.before, report.after, written.file_bytes_before, written.file_bytes_after,
                              report.elapsed_s, title=f"onnx-diagwise {command}"))
    view += wrapped(summary_line(report), width)
    if written.validation is not None:
        view += wrapped(f"check: {written.validation.summary()}", width)
    data_note = f" (+ weights in {written.data_path})" if written.data_path else ""
    return [*view, Text(f"saved {written.output}{data_note}, {size(written.file_bytes_after)}")]


def validation_view(report, spell: Callable[[str, Any], str] | None = None) -> list[RenderableType]:
    """validate: a line per output, the summary and, when the check failed, what to do (options
    named by SPELL, as validation.advice)."""
    from .validation import advice, api_option

    view: list[RenderableType] = [*validation_lines(report), Text(report.summary())]
    if not report.passed:
        view += [Text(line) for line in advice(report, skippable=False, spell=spell or api_option)]
    return view


def bench_view(report, width: int | None = None) -> list[RenderableType]:
    """bench: the timings and, when profiled, the kernel times by op type and per depthwise node."""
    view = bench_table(report, width)
    if report.profiles:
        view += op_type_table(report, width)
        if report.depthwise_nodes():
            view += depthwise_time_table(report, width)
    return view


def tune_view(report, width: int | None = None,
              words: Callable[[str, Sequence[str]], str] = as_given) -> list[RenderableType]:
    """tune: the per-layer table and the summary."""
    return [*tune_table(report, width, words), *wrapped(report.summary, width)]
