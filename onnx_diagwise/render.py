"""Rich tables for people; the CLI prints these, the API returns the data behind them."""

from __future__ import annotations

from rich.table import Table

from .report import ModelStats, RewriteReport, human_bytes as size


def count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _dims(values: list[int] | None) -> str:
    return "x".join(map(str, values)) if values else "-"


def nodes_table(report: RewriteReport, title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("node", "form", "C", "M", "kernel", "stride", "dilation", "dtype", "weight", "G", "action",
                   "reason"):
        table.add_column(column, overflow="fold", justify="right" if column in ("C", "M", "G") else "left")
    for n in report.nodes:
        style = "green" if n.action in ("rewrite", "rewritten", "reverted") else "yellow"
        node = n.name if n.graph == "main" else f"{n.name}\n[dim]{n.graph}[/dim]"
        table.add_row(
            node, n.form or "-", str(n.channels or "-"), str(n.multiplier or "-"), _dims(n.kernel), _dims(n.strides),
            _dims(n.dilations), n.dtype or "-", n.weight_source or "-", str(n.group_size or "-"),
            f"[{style}]{n.action}[/{style}]", n.reason,
        )
    return table


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
    """onnxsim-style before/after table."""
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


def validation_lines(report) -> list[str]:
    """One coloured Polygraphy-style line per output."""
    lines = []
    for o in report.outputs:
        colour = "green" if o.passed else "red"
        status = "PASSED" if o.passed else "FAILED"
        lines.append(f"[{colour}]{status}[/{colour}] | output '{o.name}' | {o.message}")
    return lines


def bench_table(report) -> Table:
    env = report.environment
    title = (f"{env['provider']} on {env['device']}, batch {report.batch}, {env['rounds']} interleaved rounds "
             f"after {env['warmup']} warm-up, iobinding {'on' if env['iobinding'] else 'off'}")
    table = Table(title=title, title_justify="left")
    for column in ("model", "median ms", "p10 ms", "p90 ms", "mean ms", "samples/s", "speedup", "95% interval"):
        table.add_column(column, justify="left" if column == "model" else "right", overflow="fold")
    for m in report.models:
        low, high = m.speedup_ci95 or (m.speedup, m.speedup)
        # Coloured only when the interval excludes 1: otherwise the difference is noise.
        colour = "green" if low > 1 else "red" if high < 1 else "white"
        interval = f"{low:.2f}-{high:.2f}" if m.speedup_ci95 else "-"
        table.add_row(m.name, f"{m.median_ms:.3f}", f"{m.p10_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.mean_ms:.3f}",
                      f"{m.throughput:.1f}", f"[{colour}]{m.speedup:.2f}x[/{colour}]", interval)
    return table


def op_type_table(report) -> Table:
    table = Table(title="Kernel time per op type (us per run, onnxruntime profiler)", title_justify="left")
    table.add_column("op type", overflow="fold")
    for p in report.profiles:
        table.add_column(p.model, justify="right", overflow="fold")
    ops = list(dict.fromkeys(op for p in report.profiles for op in p.by_op_type_us))
    for op in ops:
        table.add_row(op, *[f"{p.by_op_type_us.get(op, 0.0):.1f}" for p in report.profiles])
    return table


def depthwise_time_table(report) -> Table:
    table = Table(title="Depthwise Conv nodes of the first model, per model: group / kernel us per run",
                  title_justify="left")
    table.add_column("node", overflow="fold")
    for p in report.profiles:
        table.add_column(p.model, justify="right", overflow="fold")
    for row in report.depthwise_nodes():
        cells = []
        for group, t in zip(row["groups"], row["times_us"]):
            cells.append("-" if t is None else f"{group} / {t:.1f}")
        label = row["source"] or row["node"]
        table.add_row(label, *cells)
    return table


def tune_table(report) -> Table:
    ctx = report.context
    table = Table(title=f"Per-layer tuning on {ctx.get('provider')} ({ctx.get('device')}), "
                        f"margin {1 + report.min_speedup:.2f}x", title_justify="left")
    for column in ("node", "C", "kernel", "input shape", "original ms", "best G", "best ms", "speedup", "decision"):
        table.add_column(column, overflow="fold",
                         justify="right" if column in ("C", "original ms", "best G", "best ms", "speedup") else "left")
    for layer in report.layers:
        colour = "green" if layer.group_size > 1 else "yellow"
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        table.add_row(layer.node, str(layer.channels), _dims(layer.kernel),
                      _dims(layer.input_shape) if layer.input_shape else "?", fmt(layer.original_ms, ".3f"),
                      str(layer.best_group_size or "-"), fmt(layer.best_ms, ".3f"),
                      "-" if layer.speedup is None else f"{layer.speedup:.2f}x",
                      f"[{colour}]{layer.decision}[/{colour}]" + (" (cached)" if layer.cached else ""))
    if report.end_to_end_speedup is not None:
        table.caption = (f"whole model: original {report.original_ms:.3f} ms, tuned {report.tuned_ms:.3f} ms, "
                         f"{report.end_to_end_speedup:.2f}x")
    return table
