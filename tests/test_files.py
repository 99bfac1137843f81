"""Each command's whole job in the library (onnx_diagwise.files), as the command line runs it."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest

import onnx_diagwise
from helpers import SAMPLE, SAMPLE_DIR, digest
from onnx_diagwise import (CheckFailed, CheckOptions, DiagwiseError, InputOptions, TuneOptions, bench_file,
                           inspect_file, revert_file, rewrite_file, tune_file, validate_file)
from onnx_diagwise.errors import UnsizedDims
from onnx_diagwise.runtime import RuntimeConfig

CONFORMER = SAMPLE_DIR / "conformer_conv1d.onnx"  # input [N, T, 144]: the time dim is symbolic


def test_rewrite_file_checks_and_writes(tmp_path):
    before = digest(SAMPLE)
    written = rewrite_file(SAMPLE, tmp_path / "out.onnx", group_size=8)
    assert written.modified and written.validation.passed and written.data_path is None
    assert written.file_bytes_after == (tmp_path / "out.onnx").stat().st_size
    assert written.to_dict(SAMPLE)["check"]["passed"] and digest(SAMPLE) == before
    back = revert_file(tmp_path / "out.onnx", tmp_path / "back.onnx")
    assert back.modified and back.validation.passed
    assert [n.action for n in back.report.nodes] == ["reverted"] * len(back.report.nodes)


def test_no_check_means_no_validation(tmp_path):
    written = rewrite_file(SAMPLE, tmp_path / "out.onnx", check=False)
    assert written.validation is None and written.input_shapes is None and written.modified
    unchanged = rewrite_file(SAMPLE, tmp_path / "same.onnx", group_size=1)
    assert not unchanged.modified and unchanged.validation is None  # nothing to check
    assert unchanged.report.warnings and "nothing rewritten" in unchanged.report.warnings[0]


def test_a_failed_check_raises_with_the_report_and_writes_nothing(tmp_path, monkeypatch):
    from onnx_diagwise import files

    real = files.api._rewrite

    def planted(*args, **kwargs):  # a rewrite whose first expanded weight is off by 1%
        result = real(*args, **kwargs)
        first = next(n.name for n in result.report.nodes if n.action == "rewritten")
        weight = next(node.input[1] for node in result.model.graph.node if node.name == first)
        tensor = next(t for t in result.model.graph.initializer if t.name == weight)
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * np.float32(1.01),
                                                     tensor.name))
        return result

    monkeypatch.setattr(files.api, "_rewrite", planted)
    with pytest.raises(CheckFailed) as caught:
        rewrite_file(SAMPLE, tmp_path / "out.onnx", check=CheckOptions(runtime=RuntimeConfig("cpu")))
    assert caught.value.validation is not None and not caught.value.validation.passed
    assert not (tmp_path / "out.onnx").exists() and list(tmp_path.iterdir()) == []


def test_no_function_shadows_its_module():
    for name in ("tuning", "reverter", "files", "dims", "validation", "bench", "api"):
        module = importlib.import_module(f"onnx_diagwise.{name}")
        assert module.__name__ == f"onnx_diagwise.{name}"
    assert callable(onnx_diagwise.tune) and callable(onnx_diagwise.revert)


def test_inspect_file_counts_the_flops_at_the_sizes_it_reports():
    found = inspect_file(CONFORMER, 8, inputs=InputOptions(batch=2, dims={"T": 50}))
    assert found.input_shapes.shapes == {"input": [2, 50, 144]}
    assert found.report.rewritten and all(n.flops_before and n.flops_after > n.flops_before
                                          for n in found.report.rewritten)
    data = found.to_dict()
    assert list(data)[:2] == ["model", "input_shapes"] and data["model"] == str(CONFORMER)
    assert data["input_shapes"]["shapes"] == {"input": [2, 50, 144]} and data["summary"]["planned"] == 1
    wider = inspect_file(CONFORMER, 8, inputs=InputOptions(batch=4, dims={"T": 50})).report.rewritten[0]
    assert wider.flops_before == found.report.rewritten[0].flops_before  # FLOPs are per sample


def test_inspect_file_works_when_the_dims_cannot_be_sized(monkeypatch, caplog):
    from onnx_diagwise import files

    def unsized(model, options, config=None):
        raise UnsizedDims("symbolic dims 'input' dim 1 ('T') got no size", "InputOptions.shapes")

    monkeypatch.setattr(files, "with_input_shapes", unsized)
    with caplog.at_level("INFO", logger="onnx_diagwise"):
        found = inspect_file(CONFORMER, "full")
    assert found.input_shapes is None and found.to_dict()["input_shapes"] is None
    assert [n.action for n in found.report.nodes] == ["rewrite"] and found.report.nodes[0].flops_before is None
    assert "FLOPs not counted: symbolic dims 'input' dim 1 ('T') got no size" in caplog.text


def test_validate_file_compares_with_the_sizes_it_reports(tmp_path):
    rewritten = tmp_path / "r.onnx"
    rewrite_file(SAMPLE, rewritten, group_size=8, check=False)
    result = validate_file(SAMPLE, rewritten, CheckOptions(runs=2, inputs=InputOptions(batch=3)), seed=4)
    assert result.report.passed and result.report.runs == 2
    assert result.input_shapes.shapes == {"input": [3, 16, 56, 56]}
    data = result.to_dict()
    assert list(data)[:4] == ["original", "candidate", "input_shapes", "passed"]
    assert (data["original"], data["candidate"]) == (str(SAMPLE), str(rewritten))
    assert validate_file(SAMPLE, rewritten).report.runs == 3  # validate's default, not the check's one run
    with pytest.raises(DiagwiseError, match="does not exist"):
        validate_file(SAMPLE, tmp_path / "missing.onnx")


def test_bench_file_names_each_model_by_its_path(tmp_path):
    result = bench_file([SAMPLE, SAMPLE], inputs=InputOptions(batch=2), warmup=0, iterations=2)
    assert [m.name for m in result.report.models] == [str(SAMPLE)] * 2 and result.report.batch == 2
    assert result.report.environment["rounds"] == 2 and result.report.profiles == []
    data = result.to_dict()
    assert list(data)[0] == "input_shapes" and data["input_shapes"]["shapes"] == {"input": [2, 16, 56, 56]}
    with pytest.raises(DiagwiseError, match="does not exist"):
        bench_file([SAMPLE, tmp_path / "missing.onnx"], iterations=1)


class _KeepEveryLayer:
    """A timer under which the original form of every layer is the fastest."""

    def layer(self, signature, models):
        return {spec: 1.0 if spec == "1" else 2.0 for spec in models}

    def models(self, models):
        return [1.0 for _ in models]

    def context(self):
        return {"provider": "fake", "device": "test device"}


def test_tune_file_sizes_the_inputs_once_and_reports_them():
    options = TuneOptions(inputs=InputOptions(batch=2, dims={"T": 40}), timer=_KeepEveryLayer(), use_cache=False)
    result = tune_file(CONFORMER, options)
    assert result.input_shapes.shapes == {"input": [2, 40, 144]}
    assert [layer.rewritten for layer in result.report.layers] == [False]
    assert result.report.layers[0].input_shape == [2, 144, 40]  # the layer measured at the sizes reported
    data = result.to_dict()
    assert list(data)[:2] == ["model", "input_shapes"] and data["model"] == str(CONFORMER)


def test_validate_file_default_seed_is_zero():
    def scales(**seed):  # the outputs' magnitudes on the input set drawn with that seed
        return [o.scale for o in validate_file(SAMPLE, SAMPLE, CheckOptions(runs=1), **seed).report.outputs]

    assert scales() == scales(seed=0) != scales(seed=1)


def test_validate_file_applies_the_tolerances_given(tmp_path):
    from helpers import scaled_outputs

    off = tmp_path / "off.onnx"
    onnx.save(scaled_outputs(onnx.load(SAMPLE), 1.001), off)  # every output 0.1% off
    assert not validate_file(SAMPLE, off, CheckOptions(runs=1)).report.passed
    for tolerances in ({"atol": 1.0}, {"rtol": 0.01}):
        report = validate_file(SAMPLE, off, CheckOptions(runs=1, **tolerances)).report
        assert report.passed, tolerances
        assert all(getattr(o, name) == value for o in report.outputs for name, value in tolerances.items())


def _sizing_configs(monkeypatch):
    """The runtime configs the inputs' symbolic dims are tried on."""
    from onnx_diagwise import dims

    seen, real = [], dims.create_session

    def create(model, config, *args, **kwargs):
        seen.append(config)
        return real(model, config, *args, **kwargs)

    monkeypatch.setattr(dims, "create_session", create)
    return seen


def test_validate_file_sizes_the_inputs_on_the_runtime_checked(monkeypatch):
    seen = _sizing_configs(monkeypatch)
    runtime = RuntimeConfig("cpu", threads=1)
    result = validate_file(CONFORMER, CONFORMER, CheckOptions(runtime=runtime, runs=1))
    assert result.report.passed and result.input_shapes.sources["T"] == "tried"
    assert seen and all(config == runtime for config in seen)


def test_bench_file_sizes_the_inputs_on_the_runtime_timed(monkeypatch):
    seen = _sizing_configs(monkeypatch)
    runtime = RuntimeConfig("cpu", threads=1)
    result = bench_file([CONFORMER], runtime, warmup=0, iterations=1)
    assert result.input_shapes.sources["T"] == "tried"
    assert seen and all(config == runtime for config in seen)


def test_bench_file_needs_at_least_one_model():
    with pytest.raises(DiagwiseError, match="^bench needs at least one model$"):
        bench_file([])


def test_bench_file_reads_every_model_before_sizing_the_inputs(monkeypatch, tmp_path):
    from onnx_diagwise import files

    def unsized(model, options, config=None):
        raise UnsizedDims("symbolic dims 'input' dim 1 ('T') got no size", "InputOptions.shapes")

    monkeypatch.setattr(files, "with_input_shapes", unsized)
    with pytest.raises(DiagwiseError, match="missing.onnx' does not exist"):
        bench_file([CONFORMER, tmp_path / "missing.onnx"], iterations=1)


def test_revert_file_tells_each_step_and_reports_the_sizes_checked(tmp_path):
    from onnx_diagwise import SaveOptions

    rewritten, back, steps = tmp_path / "r.onnx", tmp_path / "back.onnx", []
    rewrite_file(SAMPLE, rewritten, group_size=8, check=False)
    written = revert_file(rewritten, back, save=SaveOptions(step=steps.append))
    assert steps == [f"loading {rewritten}", "sizing the inputs", "reverting", f"saving {back}",
                     "checking the reverted model"]
    assert written.modified and written.input_shapes.shapes == {"input": [1, 16, 56, 56]}
    unchecked = revert_file(rewritten, tmp_path / "unchecked.onnx", check=False)
    assert unchecked.input_shapes is None and unchecked.to_dict(rewritten)["input_shapes"] is None


def test_rewrite_file_tells_each_step(tmp_path):
    from onnx_diagwise import SaveOptions

    out, steps = tmp_path / "out.onnx", []
    rewrite_file(SAMPLE, out, group_size=8, save=SaveOptions(step=steps.append))
    assert steps == [f"loading {SAMPLE}", "sizing the inputs", "rewriting", f"saving {out}",
                     "checking the rewritten model"]


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_input_data_named_like_the_outputs_own_is_left_alone(tmp_path, command):
    """An input whose external data bears the name of an earlier write of OUT: the write replaces
    OUT's earlier data files, never the input's."""
    model = tmp_path / "in.onnx"
    data = "out.onnx.0123456789abcdef.data"
    onnx.save_model(onnx.load(SAMPLE), model, save_as_external_data=True, location=data, size_threshold=0)
    before = (tmp_path / data).read_bytes()
    written = command(model, tmp_path / "out.onnx", check=False)
    assert (tmp_path / data).read_bytes() == before and written.data_path.name != data
    onnx.checker.check_model(str(model), full_check=True)


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_external_data_as_asked(tmp_path, command):
    from onnx_diagwise import SaveOptions

    split = command(SAMPLE, tmp_path / "split.onnx", check=False, save=SaveOptions(external_data=True))
    assert split.data_path is not None and split.data_path.exists()
    assert split.file_bytes_after == (tmp_path / "split.onnx").stat().st_size + split.data_path.stat().st_size
    whole = command(tmp_path / "split.onnx", tmp_path / "whole.onnx", check=False,
                    save=SaveOptions(external_data=False))
    assert whole.data_path is None and whole.file_bytes_before == split.file_bytes_after
    kept = command(tmp_path / "split.onnx", tmp_path / "kept.onnx", check=False)  # as the input had it
    assert kept.data_path is not None and kept.data_path.exists()


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_a_sizing_error_says_the_check_needs_the_sizes(monkeypatch, tmp_path, command):
    from onnx_diagwise import files

    def unsized(model, options, config=None):
        raise UnsizedDims("symbolic dims 'input' dim 1 ('T') got no size", "InputOptions.shapes",
                          example={"input": [1, 8, 144]})

    monkeypatch.setattr(files, "with_input_shapes", unsized)
    with pytest.raises(UnsizedDims) as caught:
        command(CONFORMER, tmp_path / "out.onnx")
    assert str(caught.value) == ("symbolic dims 'input' dim 1 ('T') got no size "
                                 "(the check runs the model; check=False skips it)")
    assert caught.value.parameters == ("InputOptions.shapes", "check=False")
    assert caught.value.example == {"input": [1, 8, 144]} and list(tmp_path.iterdir()) == []


def test_tune_file_sizes_the_inputs_once_on_the_provider_tuned(monkeypatch):
    seen = _sizing_configs(monkeypatch)
    runtime = RuntimeConfig("cpu", threads=1)
    options = TuneOptions(runtime, InputOptions(batch=2), timer=_KeepEveryLayer(), use_cache=False)
    result = tune_file(CONFORMER, options)
    assert seen == [runtime] and result.input_shapes.sources["T"] == "tried"
    batch, time, channels = result.input_shapes.shapes["input"]
    assert result.report.layers[0].input_shape == [batch, channels, time]  # measured at the sizes reported


def test_tune_file_measures_only_the_layers_selected():
    from onnx_diagwise.plan import Selection

    options = TuneOptions(inputs=InputOptions(batch=2, dims={"T": 40}), timer=_KeepEveryLayer(), use_cache=False)
    assert tune_file(CONFORMER, options).report.layers[0].times_ms
    [left] = tune_file(CONFORMER, options, Selection(exclude=".")).report.layers
    assert left.times_ms == {} and left.decision == "kept original: name matches exclude '.'"


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_the_check_runs_as_check_options_say(tmp_path, command):
    source = SAMPLE
    if command is revert_file:  # something for it to change
        source = tmp_path / "r.onnx"
        rewrite_file(SAMPLE, source, group_size=8, check=False)
    check = CheckOptions(runtime=RuntimeConfig("cpu", threads=1), inputs=InputOptions(batch=2), runs=2, atol=1.0,
                         rtol=0.5)
    written = command(source, tmp_path / "out.onnx", group_size=8, check=check) if command is rewrite_file else \
        command(source, tmp_path / "out.onnx", check=check)
    report = written.validation
    assert report.passed and report.runs == 2 and report.config["threads"] == 1
    assert [(o.shape[0], o.atol, o.rtol) for o in report.outputs] == [(2, 1.0, 0.5)] * len(report.outputs)
    assert written.input_shapes.shapes == {"input": [2, 16, 56, 56]}


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_symbolic_dims_are_sized_once_on_the_runtime_checked(monkeypatch, tmp_path, command):
    source = CONFORMER
    if command is revert_file:
        source = tmp_path / "r.onnx"
        rewrite_file(CONFORMER, source, group_size=8, check=False)
    seen = _sizing_configs(monkeypatch)
    runtime = RuntimeConfig("cpu", threads=1)
    written = command(source, tmp_path / "out.onnx", check=CheckOptions(runtime=runtime))
    assert written.modified and written.validation.passed and written.input_shapes.sources["T"] == "tried"
    assert seen == [runtime]  # one trial session, on the check's runtime; the check reuses the sizes


def test_rewrite_file_counts_the_flops_at_the_sizes_checked(tmp_path):
    written = rewrite_file(CONFORMER, tmp_path / "out.onnx", group_size=8,
                           check=CheckOptions(inputs=InputOptions(batch=2, dims={"T": 50})))
    assert written.input_shapes.shapes == {"input": [2, 50, 144]}
    [node] = written.report.rewritten
    assert node.flops_before and node.flops_after > node.flops_before


def test_rewrite_file_rewrites_only_what_is_selected(tmp_path):
    from onnx_diagwise.plan import Selection

    written = rewrite_file(SAMPLE, tmp_path / "out.onnx", group_size=8, selection=Selection(exclude="."), check=False)
    assert not written.modified and written.report.rewritten == []


def test_rewrite_file_warns_of_weight_growth_past_the_threshold(tmp_path):
    from onnx_diagwise import SaveOptions

    def warnings(**save):
        report = rewrite_file(SAMPLE, tmp_path / "out.onnx", group_size=8, check=False, save=SaveOptions(**save)).report
        return [str(w) for w in report.warnings if "warn_growth" in str(w)]

    assert warnings(warn_growth=1.05) and not warnings(warn_growth=1000.0)


def test_a_failed_check_says_what_was_not_written(tmp_path, monkeypatch):
    from onnx_diagwise import files
    from helpers import scaled_outputs

    real = files.api._rewrite

    def off(*args, **kwargs):  # a rewrite whose outputs are 1% off
        result = real(*args, **kwargs)
        result.model.CopyFrom(scaled_outputs(result.model, 1.01))
        return result

    monkeypatch.setattr(files.api, "_rewrite", off)
    out = tmp_path / "out.onnx"
    with pytest.raises(CheckFailed) as caught:
        rewrite_file(SAMPLE, out, group_size=8)
    headline = f"the rewritten model differs from the original on CPUExecutionProvider; nothing written to '{out}'"
    assert caught.value.headline == headline and str(caught.value).splitlines()[0] == headline
    assert "FAILED | output" in str(caught.value) and not caught.value.validation.passed


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_a_missing_input_is_named(tmp_path, command):
    with pytest.raises(DiagwiseError, match=f"^input model '{tmp_path / 'missing.onnx'}' does not exist$"):
        command(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_writing_over_the_input_is_refused_before_it_is_read(tmp_path, command):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"")  # not even a model: refused as the output, before anything reads it
    with pytest.raises(DiagwiseError, match="is the input model; writing it would destroy the input"):
        command(broken, broken)


def test_file_result_to_dict(tmp_path):
    from onnx_diagwise import SaveOptions

    split = rewrite_file(SAMPLE, tmp_path / "split.onnx", group_size=8, save=SaveOptions(external_data=True))
    data = split.to_dict(SAMPLE)
    assert (data["input"], data["output"], data["external_data"]) == (
        str(SAMPLE), str(tmp_path / "split.onnx"), str(split.data_path))
    assert (data["file_bytes_before"], data["file_bytes_after"]) == (SAMPLE.stat().st_size, split.file_bytes_after)
    assert data["input_shapes"] == split.input_shapes.to_dict() and data["check"] == split.validation.to_dict()
    assert data["tuning"] is None and data["summary"] == split.report.to_dict()["summary"]
    whole = rewrite_file(SAMPLE, tmp_path / "whole.onnx", group_size=8, check=False).to_dict(SAMPLE)
    assert (whole["external_data"], whole["input_shapes"], whole["check"]) == (None, None, None)


def test_the_result_holds_no_second_copy_of_weights_written_to_external_data(tmp_path):
    from onnx_diagwise import SaveOptions

    split = rewrite_file(SAMPLE, tmp_path / "split.onnx", group_size=8, check=False,
                         save=SaveOptions(external_data=True))
    moved = [t for t in split.result.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert moved and not any(t.HasField("raw_data") for t in moved)


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_a_provider_error_while_sizing_says_check_false_skips_it(monkeypatch, tmp_path, command):
    from onnx_diagwise import files

    def unavailable(model, options, config=None):
        raise DiagwiseError("provider FakeExecutionProvider is not available", "provider")

    monkeypatch.setattr(files, "with_input_shapes", unavailable)
    with pytest.raises(DiagwiseError) as caught:
        command(CONFORMER, tmp_path / "out.onnx")
    assert type(caught.value) is DiagwiseError and caught.value.parameters == ("provider", "check=False")
    assert str(caught.value) == ("provider FakeExecutionProvider is not available "
                                 "(the check runs the model; check=False skips it)")


def test_inspect_file_defaults_to_the_paper_policy_and_applies_the_selection():
    from onnx_diagwise.plan import Selection

    assert inspect_file(CONFORMER).to_dict() == inspect_file(CONFORMER, "paper").to_dict()
    left = inspect_file(CONFORMER, 8, Selection(exclude=".")).report
    assert left.rewritten == [] and [n.action for n in left.nodes] != ["rewrite"]


class _CountingTimer(_KeepEveryLayer):
    def __init__(self):
        self.layers = 0

    def layer(self, signature, models):
        self.layers += 1
        return super().layer(signature, models)


def test_rewrite_file_auto_sizes_the_inputs_and_tunes_even_unchecked(tmp_path):
    from onnx_diagwise import SaveOptions

    out, steps, timer = tmp_path / "out.onnx", [], _CountingTimer()
    written = rewrite_file(CONFORMER, out, "auto", tune_options=TuneOptions(timer=timer, use_cache=False),
                           check=CheckOptions(enabled=False, inputs=InputOptions(batch=2, dims={"T": 40})),
                           save=SaveOptions(step=steps.append))
    assert steps == [f"loading {CONFORMER}", "sizing the inputs", "tuning", f"saving {out}"]
    assert written.input_shapes.shapes == {"input": [2, 40, 144]} and written.validation is None
    assert timer.layers == 1 and written.result.tuning.layers[0].input_shape == [2, 144, 40]
    assert not written.modified and written.to_dict(CONFORMER)["tuning"] == written.result.tuning.to_dict()


def test_rewrite_file_auto_tunes_on_the_check_runtime_by_default(monkeypatch, tmp_path):
    from onnx_diagwise import api

    made = []

    def ort_timer(config, inputs):
        made.append((config, inputs.shapes))
        return _KeepEveryLayer()

    monkeypatch.setattr(api, "OrtTimer", ort_timer)
    monkeypatch.setattr(api, "default_cache_dir", lambda: tmp_path / "cache")
    runtime = RuntimeConfig("cpu", threads=1)
    written = rewrite_file(CONFORMER, tmp_path / "out.onnx", "auto",
                           check=CheckOptions(runtime=runtime, inputs=InputOptions(batch=2, dims={"T": 40})))
    assert made == [(runtime, {"input": [2, 40, 144]})] and not written.modified


def test_rewrite_file_auto_sizing_error_is_the_tunings_own(monkeypatch, tmp_path):
    from onnx_diagwise import files

    def unsized(model, options, config=None):
        raise UnsizedDims("symbolic dims 'input' dim 1 ('T') got no size", "InputOptions.shapes")

    monkeypatch.setattr(files, "with_input_shapes", unsized)
    with pytest.raises(UnsizedDims) as caught:  # tuning needs the sizes, whatever the check
        rewrite_file(CONFORMER, tmp_path / "out.onnx", "auto", tune_options=TuneOptions(timer=_KeepEveryLayer()))
    assert str(caught.value) == "symbolic dims 'input' dim 1 ('T') got no size"
    assert caught.value.parameters == ("InputOptions.shapes",)


@pytest.mark.parametrize("command", [rewrite_file, revert_file])
def test_writing_over_the_inputs_external_data_is_refused(tmp_path, command):
    model = tmp_path / "in.onnx"
    onnx.save_model(onnx.load(SAMPLE), model, save_as_external_data=True, location="weights.bin", size_threshold=0)
    before = (tmp_path / "weights.bin").read_bytes()
    with pytest.raises(DiagwiseError, match="is the input's external data file '.*weights.bin'"):
        command(model, tmp_path / "weights.bin", check=False)
    assert (tmp_path / "weights.bin").read_bytes() == before


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_validate_file_passes_allow_tf32_to_the_check(monkeypatch, allow_tf32):
    """On CUDA (here its sessions run on the CPU): TF32 is off for the check unless allowed."""
    import onnx_diagwise.validation as validation_module
    from onnx_diagwise.runtime import create_session

    seen = []

    def on_cpu(model, config):
        seen.append(dict(config.checked_options))
        return create_session(model, RuntimeConfig("cpu"))

    monkeypatch.setattr(validation_module, "create_session", on_cpu)
    check = CheckOptions(runtime=RuntimeConfig("cuda"), runs=1, inputs=InputOptions(batch=1), allow_tf32=allow_tf32)
    report = validate_file(SAMPLE, SAMPLE, check).report
    assert report.tf32 is allow_tf32 and report.passed
    assert seen and all(options == ({} if allow_tf32 else {"use_tf32": "0"}) for options in seen)
