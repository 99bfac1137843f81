"""Output at 80 and 60 columns: no word or name broken, one line per node, help whole."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE, cli
from onnx_diagwise import Selection, rewrite

WIDTHS = (80, 60)
BOX = "│┃┏┓┗┛┡┩┢┪└┘├┤┬┴┼━─╇╈╋┳┻"


def tokens(text: str) -> list[str]:
    return [t.strip(BOX) for t in text.split() if t.strip(BOX)]


def _seventeen(path) -> list[str]:
    """17 depthwise Convs named as exporters name them: 5 with C=16, then 12 with C=32, of which the
    first 6 are already block-diagonal (inspected with --min-channels 24: 5 skipped, 6 already
    block-diagonal, 6 to rewrite)."""
    rng = np.random.default_rng(0)
    nodes, inits, names, x = [], [], [], "image"
    for i in range(17):
        c = 16 if i < 5 else 32
        if i == 5:
            inits.append(numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "widen"))
            nodes.append(helper.make_node("Conv", [x, "widen"], ["wide"], name="/backbone/widen/Conv"))
            x = "wide"
        name = f"/backbone/stage{i // 4}/block{i % 4}/dw/Conv"
        inits.append(numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}"], name=name, group=c, kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        names.append(name)
        x = f"y{i}"
    graph = helper.make_graph(nodes, "seventeen", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                 [1, 16, 16, 16])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = rewrite(model, group_size=32, selection=Selection(include=r"stage1/block[1-3]|stage2/block[0-2]")).model
    onnx.save(model, path)
    return names


@pytest.fixture(scope="module")
def seventeen(tmp_path_factory):
    path = tmp_path_factory.mktemp("narrow") / "seventeen.onnx"
    return path, _seventeen(path)


def assert_readable(narrow: str, wide: str, width: int, names: list[str], extra=(), pattern: str = r"\[\d+\]",
                    once: bool = True) -> None:
    """No token of NARROW is a piece of one: each is a token of WIDE (the same output at 1000 columns),
    of EXTRA, or matches PATTERN (note markers); each name stands whole on exactly one line (ONCE, else
    on some); a line passes WIDTH only where it holds a name or path longer than the rest allows."""
    known = set(tokens(wide)) | set(extra)
    broken = [t for t in tokens(narrow) if t not in known and not re.fullmatch(pattern, t)]
    assert not broken, broken
    lines = narrow.splitlines()
    for name in names:
        count = sum(name in [t.rstrip(",") for t in line.split()] for line in lines)
        assert count == 1 if once else count >= 1, (name, narrow)
    whole = set(names) | set(extra)
    for line in lines:
        assert len(line) <= width or whole & {t.rstrip(",") for t in line.split()}, line


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_fits_one_line_per_node(seventeen, width):
    path, names = seventeen
    args = ("inspect", path, "--min-channels", "24")
    wide, narrow = cli(*args, columns=1000), cli(*args, columns=width)
    assert narrow.returncode == 0, narrow.stderr
    assert_readable(narrow.stdout, wide.stdout, width, names)
    assert len(narrow.stdout.splitlines()) <= 25, narrow.stdout
    assert "17 grouped Conv node(s): 6 to rewrite, 6 already block-diagonal, 5 skipped" in " ".join(
        narrow.stdout.split())
    rows = [line for line in narrow.stdout.splitlines() if line.split() and line.split()[-1] in names]
    assert sum("already block-diagonal" in row for row in rows) == 6  # as the summary calls them
    assert sum(re.search(r"skipped \[\d\]", row) is not None for row in rows) == 5
    assert "is below --min-channels 24" in narrow.stdout  # the reason, once, as a note
    assert "┃" in wide.stdout and "┃" not in narrow.stdout  # the bordered table where it fits whole


@pytest.mark.parametrize("width", WIDTHS)
def test_rewrite_verbose_fits(seventeen, width, tmp_path):
    path, names = seventeen
    args = ("rewrite", path, tmp_path / "out.onnx", "-v", "--min-channels", "24")
    wide, narrow = cli(*args, columns=1000), cli(*args, columns=width)
    assert narrow.returncode == 0, narrow.stderr
    elapsed = r"\[\d+\]|[\d.]+"  # the elapsed time differs between runs
    assert_readable(narrow.stdout, wide.stdout, width, names, extra=[str(tmp_path / "out.onnx")], pattern=elapsed)
    table = narrow.stdout.split("onnx-diagwise rewrite")[0]
    assert len(table.splitlines()) <= 22, table  # 17 nodes, a title, a header, notes
    assert f"saved {tmp_path / 'out.onnx'}," in narrow.stdout  # the path whole


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_fits_with_long_paths(tmp_path, width):
    long_dir = tmp_path / "a_folder_with_a_rather_long_name_for_models"
    long_dir.mkdir()
    first, second = long_dir / "mobilenetv2_block_original.onnx", long_dir / "mobilenetv2_block_rewritten.onnx"
    first.write_bytes(SAMPLE.read_bytes())
    onnx.save(rewrite(onnx.load(SAMPLE)).model, second)
    args = ("bench", first, second, "-n", "3", "--warmup", "0", "--profile")
    wide, narrow = cli(*args, columns=1000), cli(*args, columns=width)
    assert narrow.returncode == 0, narrow.stderr
    timings = r"[\d.]+(x|-[\d.]+)?|#\d:?"  # timings differ between runs; profiles numbered when narrow
    assert_readable(narrow.stdout, wide.stdout, width, [str(first), str(second)], pattern=timings, once=False)
    assert "#1" in narrow.stdout and f"#2: {second}" in narrow.stdout  # profiles headed by number, with a legend


@pytest.mark.parametrize("width", WIDTHS)
def test_tune_fits(width, tmp_path):
    args = ("tune", SAMPLE, "--no-cache", "--time-budget", "20")
    narrow = cli(*args, columns=width)
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    for node in ("dwconv_5", "dwconv_14"):
        [row] = [line for line in lines if node in line.split()]
        assert re.search(r"(keep|rewrite) \[\d\]", row), row
    notes = [line for line in lines if re.match(r"\[\d\] ", line)]
    assert notes and all(len(line) <= width for line in lines), narrow.stdout
    assert "Per-layer tuning on CPUExecutionProvider" in " ".join(narrow.stdout.split())


COMMANDS = [[], ["inspect"], ["rewrite"], ["revert"], ["validate"], ["bench"], ["tune"], ["cache"], ["cache", "info"],
            ["cache", "clear"]]


def _reference_help(path: list[str]) -> tuple[str, list[str]]:
    """The help of PATH laid out 10,000 columns wide (nothing wraps), and its option names."""
    from onnx_diagwise.cli import app
    from onnx_diagwise.terminal import Context
    from typer.main import get_command

    command = get_command(app)
    for name in path:
        command = command.commands[name]
    ctx = Context(command, info_name=" ".join(["onnx-diagwise", *path]), terminal_width=10_000,
                   max_content_width=10_000, help_option_names=["-h", "--help"])
    names = [opt for param in command.params for opt in [*param.opts, *param.secondary_opts] if opt.startswith("-")]
    return command.get_help(ctx), names


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_help_keeps_every_word_and_option_name_whole(path, width):
    reference, names = _reference_help(path)
    r = cli(*path, "-h", columns=width)
    assert r.returncode == 0, r.stderr
    words, known = tokens(r.stdout), set(tokens(reference))
    # A command list shortens each summary to whole words and "...".
    broken = [t for t in words if t not in known and not (t.endswith("...") and t[:-3] in known)]
    assert not broken, broken
    for name in names:
        assert name in [w.rstrip(",") for w in words], (name, r.stdout)
    assert all(len(line) <= width for line in r.stdout.splitlines() if len(line.split()) > 1), r.stdout
