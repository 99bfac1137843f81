"""PNG charts of benchmark results (matplotlib is an optional extra)."""

from __future__ import annotations

from pathlib import Path

from .errors import DiagwiseError


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DiagwiseError("--plot needs matplotlib: pip install 'onnx-diagwise[plot]'") from None
    return plt


def plot_bench(report, path: Path) -> None:
    """Median latency per model (p10-p90 whiskers) and, when profiled, per depthwise node."""
    plt = require_matplotlib()
    rows = report.depthwise_nodes()
    panels = 2 if rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 2, 4.5), squeeze=False)
    ax = axes[0][0]
    names = [Path(m.name).name for m in report.models]
    medians = [m.median_ms for m in report.models]
    errors = [[m.median_ms - m.p10_ms for m in report.models], [m.p90_ms - m.median_ms for m in report.models]]
    bars = ax.bar(range(len(names)), medians, yerr=errors, capsize=4, color="#4c72b0")
    for bar, m in zip(bars, report.models):
        ax.annotate(f"{m.speedup:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("median latency (ms), p10-p90")
    env = report.environment
    ax.set_title(f"{env['provider']}, batch {report.batch}", fontsize=10)
    if rows:
        ax = axes[0][1]
        width = 0.8 / len(report.profiles)
        for k, profile in enumerate(report.profiles):
            values = [row["times_us"][k] or 0.0 for row in rows]
            ax.bar([i + k * width for i in range(len(rows))], values, width, label=Path(profile.model).name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r["source"] or r["node"] for r in rows],
                      rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("kernel time per run (us)")
        ax.set_title("depthwise nodes: original vs rewritten", fontsize=10)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_tuning(report, path: Path) -> None:
    """Speedup of every candidate form (G or lowering) over the original, per depthwise layer."""
    from .plan import parse_choice

    plt = require_matplotlib()
    layers = [layer for layer in report.layers if layer.original_ms]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(layers) + 3), 4.5))
    # G values in order, then the lowerings by name
    forms = sorted({spec for layer in layers for spec in layer.times_ms},
                   key=lambda spec: (not spec.isdigit(), int(spec) if spec.isdigit() else 0, spec))
    width = 0.8 / max(1, len(forms))
    for k, spec in enumerate(forms):
        values = [layer.original_ms / layer.times_ms[spec] if spec in layer.times_ms else 0.0 for layer in layers]
        ax.bar([i + k * width for i in range(len(layers))], values, width, label=parse_choice(spec).label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], [layer.node for layer in layers],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup over depthwise (>1 = faster)")
    ax.set_title(f"per-layer tuning, {report.context.get('provider')}", fontsize=10)
    ax.legend(fontsize=7, ncol=4)
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise DiagwiseError(f"cannot write --plot '{path}': {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
