"""The command line as a user runs it: exit codes, messages, files.  It runs in this process
(helpers.cli); in a process of its own where only a process shows it (its exit status)."""

import json
import subprocess
from pathlib import Path

import onnx
import pytest

from helpers import SAMPLE, assert_same_outputs, cli, cli_process, depthwise_model, digest, scaled_outputs

def test_rewrite_sample(tmp_path):
    out = tmp_path / "out.onnx"
    before = digest(SAMPLE)
    r = cli("rewrite", SAMPLE, out, "-v")
    assert r.returncode == 0, r.stderr
    assert "Depthwise convs" in r.stdout and "rewritten" in r.stdout
    assert "2 grouped Conv node(s): 2 rewritten, 0 skipped" in r.stdout
    assert digest(SAMPLE) == before
    assert_same_outputs(onnx.load(SAMPLE), onnx.load(out))
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]  # no temporary files left


def test_rewrite_json_and_quiet(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    r = cli("rewrite", SAMPLE, out, "-g", "full", "-q", "--json", report)
    assert r.returncode == 0 and r.stdout == ""
    data = json.loads(report.read_text())
    assert data["policy"] == "full" and data["summary"]["rewritten"] == 2
    assert data["before"]["depthwise_convs"] == 2 and data["after"]["depthwise_convs"] == 0
    assert data["file_bytes_after"] == out.stat().st_size
    assert {n["group_size"] for n in data["nodes"]} == {96, 144}


def test_inspect_table_and_json_stdout():
    r = cli("inspect", SAMPLE, "-g", "16")
    assert r.returncode == 0
    assert "2 grouped Conv node(s): 2 to rewrite, 0 skipped" in r.stdout
    r = cli("inspect", SAMPLE, "--json", "-")
    data = json.loads(r.stdout)
    assert data["after"] is None and data["summary"]["planned"] == 2
    assert [n["action"] for n in data["nodes"]] == ["rewrite", "rewrite"]


def test_version_and_help():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("onnx-diagwise 0.")
    r = cli("rewrite", "--help")
    assert r.returncode == 0 and "Example" in r.stdout and "--group-size" in r.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _invalid_model(tmp_path: Path) -> Path:
    model = depthwise_model(channels=4)
    model.graph.node[0].input[0] = "undefined_value"
    return _write(tmp_path / "invalid.onnx", model.SerializeToString())


def _opset_99(tmp_path: Path) -> Path:
    model = depthwise_model(channels=4)
    model.opset_import[0].version = 99
    return _write(tmp_path / "opset99.onnx", model.SerializeToString())


BAD_INPUTS = {
    "missing": (lambda t: t / "nope.onnx", "does not exist"),
    "directory": (lambda t: t, "is a directory"),
    "empty": (lambda t: _write(t / "empty.onnx", b""), "is empty"),
    "text": (lambda t: _write(t / "text.onnx", b"this is not a model\n" * 10), "is not an ONNX model"),
    "truncated": (lambda t: _write(t / "cut.onnx", SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 2]),
                  "is not an ONNX model"),
    "invalid": (_invalid_model, "is not a valid ONNX model"),
    "opset": (_opset_99, "opset 99"),
}


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, expected: str) -> None:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["rewrite", "inspect"])
def test_bad_input_files(tmp_path, case, command):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path)
    out = tmp_path / "out.onnx"
    r = cli(command, path, *([out] if command == "rewrite" else []))
    assert_one_line_error(r, 2, expected)
    assert not out.exists()


BAD_FLAGS = {
    "group-size word": (["-g", "big"], "--group-size must be a positive integer"),
    "group-size zero": (["-g", "0"], "--group-size must be a positive integer"),
    "regex": (["--include", "dw("], "--include 'dw(' is not a valid regular expression"),
    "min-channels": (["--min-channels", "-1"], "--min-channels must be >= 0"),
    "pin form": (["--node-group-size", "dw"], "--node-group-size expects NAME=G"),
    "pin divisor": (["--node-group-size", "dwconv_5=5"], "5 does not divide C=96"),
    "pin unknown": (["--node-group-size", "nothere=4"], "'nothere'"),
    "typer int": (["--warn-growth", "lots"], "--warn-growth"),
    "unknown flag": (["--frobnicate"], "No such option: --frobnicate"),
    "warn-growth": (["--warn-growth", "0.5"], "--warn-growth must be > 1"),
    "atol negative": (["--atol", "-1e-3"], "--atol must be >= 0"),
    "atol word": (["--atol", "tight"], "--atol expects a number or NAME=NUMBER"),
    "rtol unknown output": (["--rtol", "nope=1e-3"], "--rtol names 'nope', which is not an output"),
    "check-n": (["--check-n", "0"], "--check-n must be >= 1"),
    "batch": (["--batch", "0"], "--batch must be >= 1"),
    "dim unknown": (["--dim", "height=8"], "no dim named 'height'"),
    "shape fixed dim": (["--overwrite-input-shape", "input:1,4,56,56"], "dim 1 is fixed at"),
    "threads": (["--threads", "0"], "--threads must be >= 1"),
    "provider": (["--provider", "tpu"], "unknown provider 'tpu'"),
}


def test_bad_numbers_on_other_commands(tmp_path):
    cases = [
        (["validate", SAMPLE, SAMPLE, "--seed", "-1"], "--seed must be >= 0"),
        (["validate", SAMPLE, SAMPLE, "--atol", "-1"], "--atol must be >= 0"),
        (["bench", SAMPLE, "--warmup", "-1"], "--warmup must be >= 0"),
        (["bench", SAMPLE, "--seconds", "0"], "--seconds must be > 0"),
        (["tune", SAMPLE, "--no-cache", "--min-speedup", "-0.1"], "--min-speedup must be >= 0"),
        (["tune", SAMPLE, "--no-cache", "--time-budget", "0"], "--time-budget must be > 0"),
        (["inspect", SAMPLE, "--dim", "T=3"], "no dim named 'T'"),
    ]
    for args, expected in cases:
        assert_one_line_error(cli(*args), 2, expected)


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags(tmp_path, case):
    flags, expected = BAD_FLAGS[case]
    out = tmp_path / "out.onnx"
    before = digest(SAMPLE)
    r = cli("rewrite", SAMPLE, out, *flags)
    assert_one_line_error(r, 2, expected)
    assert not out.exists() and digest(SAMPLE) == before


def test_bad_output_paths(tmp_path):
    a_file = _write(tmp_path / "file.txt", b"x")
    cases = [
        (tmp_path / "missing_dir" / "out.onnx", "output directory"),
        (a_file / "out.onnx", "is not a directory"),
        (tmp_path, "is a directory"),
    ]
    for out, expected in cases:
        assert_one_line_error(cli("rewrite", SAMPLE, out), 2, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_output_equal_to_input_is_refused(tmp_path):
    model = _write(tmp_path / "m.onnx", SAMPLE.read_bytes())
    before = digest(model)
    assert_one_line_error(cli("rewrite", model, model), 2, "is the input model")
    (tmp_path / "sub").mkdir()
    assert_one_line_error(cli("rewrite", "m.onnx", "sub/../m.onnx", cwd=tmp_path), 2, "is the input model")
    assert digest(model) == before


def test_existing_output_is_replaced_only_on_success(tmp_path):
    out = _write(tmp_path / "out.onnx", b"previous content")
    assert_one_line_error(cli("rewrite", SAMPLE, out, "-g", "nope"), 2, "--group-size")
    assert out.read_bytes() == b"previous content"
    assert cli("rewrite", SAMPLE, out).returncode == 0
    onnx.checker.check_model(onnx.load(out))


def test_skip_dynamic_flag(tmp_path):
    from onnx import helper

    model = depthwise_model(channels=8, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    src, out = _write(tmp_path / "dyn.onnx", model.SerializeToString()), tmp_path / "out.onnx"
    r = cli("rewrite", src, out, "-g", "4", "--skip-dynamic", "--json", "-")
    assert r.returncode == 0, r.stderr
    [node] = json.loads(r.stdout)["nodes"]  # the library's report: its code, and the parameter its text names
    assert (node["action"], node["code"], node["parameters"]) == ("skipped", "dynamic-left", ["dynamic=False"])
    r = cli("rewrite", src, out, "-g", "4", "--skip-dynamic", "-v")  # people read the flag
    assert "dynamic weights left alone (--skip-dynamic)" in " ".join(r.stdout.split())
    r = cli("rewrite", src, out, "-g", "4", "--json", "-")
    [node] = json.loads(r.stdout)["nodes"]
    assert node["action"] == "rewritten" and node["form"] == "dynamic"
    assert json.loads(r.stdout)["check"]["passed"] is True


def _plain_conv(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


NOOPS = {
    "no depthwise": (lambda tmp: ["rewrite", _plain_conv(tmp)], "nothing rewritten: the model has no depthwise"),
    "include": (lambda tmp: ["rewrite", SAMPLE, "--include", "^nomatch$"], "--include '^nomatch$' matches no"),
    "group size 1": (lambda tmp: ["rewrite", SAMPLE, "-g", "1"], "--group-size 1 keeps every layer depthwise"),
    "revert": (lambda tmp: ["revert", SAMPLE], "no block-diagonal convolutions to revert"),
}


@pytest.mark.parametrize("case", sorted(NOOPS))
def test_no_silent_noops(tmp_path, case):
    make, expected = NOOPS[case]
    out = tmp_path / "out.onnx"
    r = cli(*make(tmp_path), out)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and expected in lines[0], r.stderr
    assert out.exists()  # the copy is written, as asked


def test_library_errors_name_parameters_and_the_cli_names_flags():
    from onnx_diagwise import DiagwiseError, Selection, inspect
    from onnx_diagwise.flags import spelled
    from onnx_diagwise.reasons import Reason

    with pytest.raises(DiagwiseError, match="^min_channels must be >= 0; got -1$") as raised:
        inspect(SAMPLE, selection=Selection(min_channels=-1))
    assert raised.value.parameters == ("min_channels",)  # the library says which parameters it names
    assert spelled(str(raised.value), raised.value.parameters) == "--min-channels must be >= 0; got -1"
    [left, _] = inspect(SAMPLE, selection=Selection(min_channels=100)).nodes
    assert (left.code, left.parameters) == (Reason.FEW_CHANNELS, ("min_channels",))  # reasons in tables
    assert spelled(left.reason, left.parameters) == "C=96 is below --min-channels 100"
    assert spelled("give iterations or seconds, not both", ("iterations", "seconds")) == \
        "give --iterations or --seconds, not both"
    assert spelled("weight 'seconds_w' is shared", ("seconds",)) == "weight 'seconds_w' is shared"  # whole words
    assert spelled("iterations must be >= 1", ()) == "iterations must be >= 1"  # only the parameters named
    assert_one_line_error(cli("inspect", SAMPLE, "--min-channels", "-1"), 2, "--min-channels must be >= 0")


def test_a_flag_is_named_with_its_two_dashes_once():
    from onnx_diagwise.flags import spelled

    r = cli("rewrite", SAMPLE, "out.onnx", "--atol", "-1e-3")
    assert r.returncode == 2 and r.stderr.strip() == "error: --atol must be >= 0; got '-1e-3'", r.stderr
    r = cli("validate", SAMPLE, SAMPLE, "--rtol", "y=-1")
    assert r.stderr.strip() == "error: --rtol must be >= 0; got 'y=-1'", r.stderr
    assert spelled("--atol must be >= 0; got -1", ("atol",)) == "--atol must be >= 0; got -1"
    assert spelled("atol must be >= 0; got -1", ("atol",)) == "--atol must be >= 0; got -1"


def test_a_failed_check_names_the_flags_that_help(tmp_path, monkeypatch, capsys):
    import onnx_diagwise.rewriter as rewriter_module
    from onnx_diagwise.cli import main

    real = rewriter_module.expand

    def off(conv, group_size):  # channel 0 reads its neighbour
        w = real(conv, group_size)
        w[0, 1], w[0, 0] = w[0, 0], 0
        return w

    monkeypatch.setattr(rewriter_module, "expand", off)
    assert main(["rewrite", str(SAMPLE), str(tmp_path / "out.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("check failed: the rewritten model differs from the original")
    assert lines[1].startswith("FAILED | output 'Add_19_out' | ") and "noise floor" in lines[1]
    assert "x the runtime's own noise floor" in lines[2] and lines[2].endswith("likely a real difference")
    assert lines[3].startswith("what to do: run the check on real inputs (--input-data NAME:FILE.npy or --inputs "
                               "FILE.npz); or allow differences of this size (--atol Add_19_out=")
    assert lines[3].endswith("; or skip the check (--no-check)") and len(lines) == 4
    assert not (tmp_path / "out.onnx").exists()


def test_every_command_takes_quiet_and_verbose(tmp_path):
    for command in (["cache", "info"], ["cache", "clear"]):
        quiet, verbose = (cli(*command, "--cache-dir", tmp_path, flag) for flag in ("-q", "-v"))
        assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
        assert quiet.stdout == "" and verbose.stdout.strip()


def test_inspect_offers_only_the_group_sizes_it_takes():
    r = cli("inspect", "-h", columns=80)
    assert "--group-size N|paper|full" in r.stdout and "'auto' (measure" not in r.stdout
    for g in ("8", "paper", "full"):
        assert cli("inspect", SAMPLE, "-g", g).returncode == 0
    assert_one_line_error(cli("inspect", SAMPLE, "-g", "auto"), 2, "use tune")
    assert "--group-size N|paper|full|auto" in cli("rewrite", "-h", columns=80).stdout


def test_rows_of_block_diagonal_layers_say_so_as_the_summary_does(tmp_path):
    out = tmp_path / "out.onnx"
    assert cli("rewrite", SAMPLE, out, "-q").returncode == 0
    for columns in (200, 60):
        r = cli("inspect", out, columns=columns)
        rows = [line for line in r.stdout.splitlines() if "dwconv_" in line]
        assert len(rows) == 2 and all("already block-diagonal" in row for row in rows), r.stdout
        assert "2 already block-diagonal, 0 skipped" in " ".join(r.stdout.split())


def test_the_growth_warning_never_calls_2_0x_more_than_2x():
    from onnx_diagwise.api import _growth_warnings

    assert _growth_warnings(100, 204, 2.0) == []  # 2.04x reads 2.0x: not more than 2x
    (growth,) = _growth_warnings(100, 206, 2.0)
    assert growth.startswith("weights grew 2.1x (100 B -> 206 B), more than the 2x threshold")


def test_the_process_exits_with_the_code_and_prints_the_one_line(tmp_path):
    """What main returns is the process's exit status, and stderr holds the one line and nothing
    else (onnxruntime's own log lines, written below Python, would show only here)."""
    out = tmp_path / "out.onnx"
    ok = cli_process("rewrite", SAMPLE, out, "-q", "-g", "4")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "") and out.exists()
    assert_one_line_error(cli_process("rewrite", SAMPLE, tmp_path / "x.onnx", "-g", "big"), 2,
                          "error: --group-size must be a positive integer")
    assert_one_line_error(cli_process("inspect", SAMPLE, "--frobnicate"), 2, "No such option: --frobnicate")
    onnx.save(scaled_outputs(onnx.load(SAMPLE), 0.99), tmp_path / "scaled.onnx")
    failed = cli_process("validate", SAMPLE, tmp_path / "scaled.onnx", "--check-n", "1")
    assert failed.returncode == 1 and failed.stdout.startswith("FAILED | output ") and failed.stderr == ""


def test_a_plot_into_a_missing_folder_is_refused_by_its_own_flag(tmp_path):
    r = cli("bench", SAMPLE, "-n", "1", "--plot", tmp_path / "missing" / "plot.png")
    assert_one_line_error(r, 2, f"error: --plot: directory '{tmp_path / 'missing'}' does not exist")


# --- How main() maps what goes wrong to one line and an exit code (onnx_diagwise.cli.main) ---

from onnx_diagwise import cli as cli_module  # noqa: E402
from onnx_diagwise.errors import CheckFailed, DiagwiseError  # noqa: E402


def _raising(exc):
    def app(*args, **kwargs):
        raise exc
    return app


FAILURES = {
    "library error": (DiagwiseError("bad --thing", "thing"), 2, "error: bad --thing"),
    "check failed": (CheckFailed("outputs differ"), 1, "check failed: outputs differ"),
    "check failed, headline only": (CheckFailed("outputs differ", None, "not written"), 1,
                                    "check failed: outputs differ"),
    "out of memory": (MemoryError(), 2, "error: out of memory"),
    "bug": (RuntimeError("boom"), 3, "internal error: RuntimeError: boom (set ONNX_DIAGWISE_DEBUG=1 for a traceback)"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_each_failure_is_one_line_on_stderr_with_its_exit_code(monkeypatch, case):
    exc, code, line = FAILURES[case]
    monkeypatch.setattr(cli_module, "app", _raising(exc))
    r = cli("inspect", SAMPLE)
    assert r.returncode == code and r.stdout == ""
    assert r.stderr.strip().splitlines() == [line]


@pytest.mark.parametrize("exc, line", [("abort", "aborted"), ("interrupt", "interrupted")])
def test_an_interrupted_run_says_so_on_stderr_and_exits_130(monkeypatch, exc, line):
    import typer

    monkeypatch.setattr(cli_module, "app", _raising(typer.Abort() if exc == "abort" else KeyboardInterrupt()))
    r = cli("inspect", SAMPLE)
    assert (r.returncode, r.stdout, r.stderr.strip()) == (130, "", line)


def test_the_debug_variable_lets_a_bug_raise_its_traceback(monkeypatch):
    monkeypatch.setattr(cli_module, "app", _raising(RuntimeError("boom")))
    monkeypatch.setenv("ONNX_DIAGWISE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli_module.main(["inspect", str(SAMPLE)])


@pytest.mark.parametrize("args, command", [(["rewrite", "--bogus"], "onnx-diagwise rewrite"),
                                           (["--bogus"], "onnx-diagwise"),
                                           (["cache", "info", "--bogus"], "onnx-diagwise cache info")])
def test_a_usage_error_points_at_the_commands_help(args, command):
    r = cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: No such option: --bogus") and line.endswith(f"(see '{command} --help')"), line


def test_no_arguments_prints_the_help_and_exits_2():
    r = cli()
    assert r.returncode == 2 and "Usage: onnx-diagwise" in r.stdout + r.stderr
    assert "rewrite" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert "error" not in r.stderr and "(see" not in r.stderr  # the help, not a usage error


def test_verbose_rewrite_lists_every_node_and_plain_does_not(tmp_path):
    verbose = cli("rewrite", SAMPLE, tmp_path / "v.onnx", "-v", "--no-check")
    plain = cli("rewrite", SAMPLE, tmp_path / "p.onnx", "--no-check")
    assert verbose.returncode == plain.returncode == 0
    assert "Depthwise and grouped convolutions" in verbose.stdout
    assert "Depthwise and grouped convolutions" not in plain.stdout


def test_rewrite_output_fits_a_narrow_terminal(tmp_path):
    r = cli("rewrite", SAMPLE, tmp_path / "out.onnx", "-v", "--no-check", columns=60)
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines() if str(tmp_path) not in line) <= 60, r.stdout


def test_unsized_dims_error_gives_one_flag_per_input_to_paste(monkeypatch):
    from onnx_diagwise.errors import UnsizedDims

    example = {"x": [1, 3, 64, 64], "my input": [1, 8]}
    exc = UnsizedDims(f"size them: InputOptions.shapes={example}", "InputOptions.shapes", example=example)
    monkeypatch.setattr(cli_module, "app", _raising(exc))
    r = cli("rewrite", SAMPLE, "out.onnx")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: size them: --overwrite-input-shape x:1,3,64,64 "
                                "--overwrite-input-shape 'my input:1,8'")


def test_a_usage_error_raised_outside_any_command_points_at_the_main_help(monkeypatch):
    import typer

    monkeypatch.setattr(cli_module, "app", _raising(typer.BadParameter("bad value")))  # no context attached
    r = cli("inspect", SAMPLE)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.strip() == "error: Invalid value: bad value (see 'onnx-diagwise --help')"


def test_verbose_rewrite_names_flags_in_each_nodes_reason(tmp_path):
    r = cli("rewrite", SAMPLE, tmp_path / "out.onnx", "-v", "--no-check", "--min-channels", "100")
    assert r.returncode == 0, r.stderr
    assert "C=96 is below --min-channels 100" in r.stdout and "min_channels" not in r.stdout
