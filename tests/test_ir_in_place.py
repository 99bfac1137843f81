"""The onnx-ir passes edit the model they are given: only the rewritten convolutions, their
weights and the nodes a rewrite adds or removes change; every other node, value and tensor is the
object it was, with its meta, so references others hold stay good."""

from __future__ import annotations

import ctypes
import gc
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE_DIR, depthwise_model, loop_model, random_inputs, run
from onnx_diagwise import DiagwiseError, adapters, inspect, revert, rewrite

ir = pytest.importorskip("onnx_ir")
from onnx_diagwise.passes import DiagonalwisePass, RevertPass  # noqa: E402

SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))


def _weight_as_input() -> onnx.ModelProto:
    """The weight is a graph input: the rewrite inserts its run-time expansion."""
    model = depthwise_model(channels=8)
    weight = next(t for t in model.graph.initializer if t.name == "w")
    model.graph.initializer.remove(weight)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.dims)))
    return model


def _function() -> onnx.ModelProto:
    """The depthwise Conv and its Constant weight in a model-local function."""
    inner = depthwise_model(channels=8, weight_source="Constant", bias=False)
    function = helper.make_function("local", "DwBlock", ["x"], ["y"], list(inner.graph.node),
                                    opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("DwBlock", ["r"], ["y"], domain="local", name="call")],
                              "g", list(inner.graph.input),
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])


BUILT = {"weight_as_input": _weight_as_input, "function": _function, "loop": loop_model,
         "identity_weight": lambda: depthwise_model(channels=8, weight_source="Identity"),
         "constant_weight": lambda: depthwise_model(channels=8, weight_source="Constant")}
CASES = ([pytest.param(lambda p=path: onnx.load(p), g, id=f"{path.stem}-{g}") for path in SAMPLES
          for g in (8, "toeplitz")]
         + [pytest.param(build, 4, id=name) for name, build in BUILT.items()])


def _graphs(model):
    """Every graph and function of MODEL with a path naming it."""
    def walk(graph, path):
        yield path, graph
        for node in graph:
            for attr in node.attributes.values():
                if attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.GRAPH:
                    yield from walk(attr.value, f"{path}/{node.name}.{attr.name}")
                elif attr.type == ir.AttributeType.GRAPHS:
                    for i, sub in enumerate(attr.value):
                        yield from walk(sub, f"{path}/{node.name}.{attr.name}[{i}]")

    yield from walk(model.graph, "main")
    for key, function in model.functions.items():
        yield from walk(function, f"function {key}")


def _objects(model) -> tuple[dict, dict]:
    """Every node and value of MODEL by (graph path, name)."""
    nodes, values = {}, {}
    for path, graph in _graphs(model):
        for value in graph.inputs:
            values[path, value.name] = value
        for name, value in getattr(graph, "initializers", {}).items():
            values[path, name] = value
        for node in graph:
            nodes[path, node.name] = node
            values.update(((path, v.name), v) for v in node.outputs if v.name)
    return nodes, values


def _hold(model) -> tuple[dict, dict, dict, dict]:
    """MODEL's nodes and values, each value tagged in its meta, each initializer's tensor, each shape."""
    nodes, values = _objects(model)
    for key, value in values.items():
        value.meta["held"] = key
    tensors = {key: value.const_value for key, value in values.items() if value.const_value is not None}
    return nodes, values, tensors, {key: value.shape for key, value in values.items()}


def _check_kept(model, held, changed_weights: set[str], report=None) -> None:
    """Every node and value of MODEL that was there before is the same object, its meta kept,
    but for the Convs REPORT lowered or restored (new nodes under the old names) and the values
    they make (new objects that carry the old ones' meta); only CHANGED_WEIGHTS hold new tensors."""
    nodes_before, values_before, tensors_before, shapes_before = held
    nodes_after, values_after = _objects(model)
    for value in values_after.values():  # removed nodes read nothing any more
        assert all(use.node.graph is not None for use in value.uses()), value
    replaced = {n.name for n in (report.nodes if report else ())
                if n.lowering and n.action in ("rewritten", "reverted")}
    for key in nodes_before.keys() & nodes_after.keys():
        assert (nodes_after[key] is nodes_before[key]) != (key[1] in replaced), key
    for key in values_before.keys() & values_after.keys():
        before, after = values_before[key], values_after[key]
        assert after.meta.get("held") == key, key
        producer = before.producer()
        if producer is None or nodes_after.get((key[0], producer.name)) is producer:
            assert after is before, key
            if key[1] not in changed_weights:  # a shape is replaced only by a different one
                assert after.shape is shapes_before[key] or after.shape != shapes_before[key], key
    for key, tensor in tensors_before.items():
        if key in values_after and key[1] not in changed_weights:
            assert values_after[key].const_value is tensor, key


def _proto(model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def _same_model(model, proto: onnx.ModelProto) -> bool:
    """MODEL is PROTO (compared through onnx-ir's serializer, which writes its own field order)."""
    return _proto(model).SerializeToString() == _proto(ir.serde.deserialize_model(proto)).SerializeToString()


def _same_outputs(proto: onnx.ModelProto, original: onnx.ModelProto) -> None:
    for cond in (True, False):
        feeds = random_inputs(original, cond=cond)
        for got, want in zip(run(proto, feeds), run(original, feeds)):
            # fp16 accumulates in its own precision: a tolerance that scales with the output
            tol = 2e-3 * max(1.0, float(np.abs(want).max())) if want.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def _changed_weights(before: onnx.ModelProto, after: onnx.ModelProto) -> set[str]:
    """The initializers the library's own rewrite of BEFORE changed in place."""
    def tensors(model):
        found = {}
        for graph in [model.graph] + [a.g for n in _all_nodes(model.graph) for a in n.attribute if a.HasField("g")]:
            found.update((t.name, t) for t in graph.initializer)
        return found

    old, new = tensors(before), tensors(after)
    return {name for name in old.keys() & new.keys() if old[name] != new[name]}


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


@pytest.mark.parametrize("build,group_size", CASES)
def test_rewrite_pass_edits_the_model_it_is_given(build, group_size):
    original = build()
    expected = rewrite(original, group_size=group_size)
    model = ir.serde.deserialize_model(original)
    held = _hold(model)
    graph = model.graph
    rewrite_pass = DiagonalwisePass(group_size=group_size)
    result = rewrite_pass(model)
    assert result.model is model and model.graph is graph
    assert result.modified == expected.report.modified
    _check_kept(model, held, _changed_weights(original, expected.model), rewrite_pass.report)
    assert _same_model(model, expected.model)  # what the library gives for the ModelProto, exactly
    _same_outputs(_proto(model), original)


@pytest.mark.parametrize("build,group_size", CASES)
def test_revert_pass_edits_the_model_it_is_given(build, group_size):
    original = build()
    rewritten = rewrite(original, group_size=group_size).model
    model = ir.serde.deserialize_model(rewritten)
    held = _hold(model)
    revert_pass = RevertPass()
    assert revert_pass(model).modified == (rewritten != original)
    _check_kept(model, held, _changed_weights(rewritten, revert(rewritten).model), revert_pass.report)
    assert _same_model(model, original)
    _same_outputs(_proto(model), original)


def test_held_references_stay_good():
    """The graph input, the activation the depthwise Conv reads, the Conv itself and an
    unrelated initializer are the objects a caller held before the pass, their meta kept."""
    model = ir.serde.deserialize_model(onnx.load(SAMPLE_DIR / "mobilenetv2_block.onnx"))
    x = model.graph.inputs[0]
    conv = next(n for n in model.graph if n.op_type == "Conv" and n.attributes["group"].value > 1)
    activation, weight = conv.inputs[0], conv.inputs[1]
    other_name = next(name for name in model.graph.initializers if name != weight.name)
    other = model.graph.initializers[other_name]
    other_tensor = other.const_value
    for value in (x, activation, weight, other):
        value.meta["mine"] = value.name
    conv.meta["mine"] = "conv"
    assert DiagonalwisePass(group_size=8)(model).modified
    assert model.graph.inputs[0] is x and x.meta["mine"] == x.name
    assert conv.graph is model.graph and conv.meta["mine"] == "conv" and conv.attributes["group"].value > 1
    assert conv.inputs[0] is activation and activation.meta["mine"] == activation.name
    assert conv.inputs[1] is weight and weight.meta["mine"] == weight.name and weight.shape[1] == 8
    assert model.graph.initializers[other_name] is other and other.const_value is other_tensor


def test_lowered_conv_output_keeps_its_meta_and_readers():
    """A lowering replaces the Conv: the value it made is made by the group's last node now,
    and keeps its readers (the graph output too), its shape and its meta."""
    model = ir.serde.deserialize_model(depthwise_model(channels=8, kernel=(7, 7), spatial=(12, 12), pads=(3,) * 4))
    [y] = model.graph.outputs
    conv = y.producer()
    y.meta["mine"], y.metadata_props["mine"], y.doc_string = "meta", "props", "doc"
    assert DiagonalwisePass(group_size="toeplitz")(model).modified
    [after] = model.graph.outputs
    assert conv.graph is None and after is not y and not y.uses()
    assert after.name == "y" and after.shape == y.shape and after.type == y.type
    assert (after.meta["mine"], after.metadata_props["mine"], after.doc_string) == ("meta", "props", "doc")
    assert after.producer().graph is model.graph


def _lazy_copy(proto: onnx.ModelProto, tmp_path, name: str):
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{name}.onnx.data",
              size_threshold=0)
    model = ir.load(path)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    return model


@pytest.fixture
def read_by_onnx_ir(monkeypatch) -> list[str]:
    """The names of the external tensors onnx-ir's own reader loads."""
    read = []
    original = ir.ExternalTensor.numpy
    monkeypatch.setattr(ir.ExternalTensor, "numpy", lambda self: read.append(self.name) or original(self))
    return read


@pytest.mark.parametrize("make_pass", [lambda: DiagonalwisePass(group_size=8), RevertPass], ids=["rewrite", "revert"])
def test_lazy_external_tensors_stay_lazy(tmp_path, read_by_onnx_ir, make_pass):
    """ir.load keeps a .data file's tensors as memory-mapped references: the pass reads only the
    depthwise weights (itself, weight by weight), and every tensor it did not change is the same
    lazy object, its value the same Value."""
    original = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    start = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    if make_pass is RevertPass:
        start = rewrite(start, group_size=8).model
    expected = revert(start) if make_pass is RevertPass else rewrite(start, group_size=8)
    changed = _changed_weights(start, expected.model)
    assert changed
    model = _lazy_copy(start, tmp_path, "m")  # onnx.save moves START's data out
    held = _hold(model)
    assert make_pass()(model).modified
    assert not read_by_onnx_ir
    _check_kept(model, held, changed)
    for name, value in model.graph.initializers.items():
        assert isinstance(value.const_value, ir.ExternalTensor) == (name not in changed), name
    saved = tmp_path / "out.onnx"
    ir.save(model, saved, external_data="out.onnx.data")
    _same_outputs(onnx.load(saved), original)


def test_pass_manager_composition_keeps_the_model():
    """Inside a PassManager beside onnx-ir's own passes: the rewrite, a second one that finds
    nothing to do, the revert; the model comes back as it was, and what a caller held is still
    the model's."""
    import onnx_ir.passes.common as common

    original = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    model = ir.serde.deserialize_model(original)
    held = _hold(model)
    rewrite_pass = DiagonalwisePass(group_size=8)
    result = ir.passes.PassManager([rewrite_pass, common.RemoveUnusedNodesPass()])(model)
    rewritten = {n.name for n in rewrite_pass.report.rewritten}
    assert result.modified and result.model is model and len(rewritten) == 13
    _same_outputs(_proto(model), original)
    again = DiagonalwisePass(group_size=8)
    assert not again(model).modified and not again.report.rewritten  # already rewritten: nothing to do
    assert ir.passes.PassManager([RevertPass()])(model).modified
    _check_kept(model, held, {n.input[1] for n in original.graph.node if n.name in rewritten})
    assert _same_model(model, original)


def test_any_edit_of_the_proto_view_is_carried(tmp_path):
    """Whatever an edit changes in the view is carried, however the IR holds it: a tensor's bytes
    under the same shape (an in-memory, a numpy and an external tensor), an attribute's value, an
    attribute removed; everything else keeps its object, attributes and lazy tensors included."""
    from types import SimpleNamespace

    from onnx_diagwise.passes import _edit_in_place

    leaky = helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky")
    leaky.attribute.append(helper.make_attribute_ref("alpha", onnx.AttributeProto.FLOAT))
    function = helper.make_function("local", "Leaky", ["x"], ["y"], [leaky], attributes=["alpha"],
                                    opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["t"], name="add_a"), helper.make_node("Mul", ["b", "c"], ["u"], name="mul"),
         helper.make_node("Add", ["t", "u"], ["v"], name="add"),
         helper.make_node("LeakyRelu", ["v"], ["w"], name="relu_a", alpha=0.5),
         helper.make_node("LeakyRelu", ["w"], ["z"], name="relu_b", alpha=0.25),
         helper.make_node("Leaky", ["z"], ["y"], domain="local", name="call", alpha=0.1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.full((2, 3), k, np.float32), name) for k, name in enumerate("abc")])
    model = ir.serde.deserialize_model(helper.make_model(
        graph, functions=[function], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]))
    initializers = model.graph.initializers
    initializers["b"].const_value = ir.Tensor(np.full((2, 3), 1, np.float32), name="b")
    (tmp_path / "c.bin").write_bytes(np.full((2, 3), 2, np.float32).tobytes())
    initializers["c"].const_value = ir.ExternalTensor("c.bin", 0, 24, ir.DataType.FLOAT, shape=ir.Shape([2, 3]),
                                                      name="c", base_dir=tmp_path)
    nodes, values, tensors = list(model.graph), dict(initializers), {k: v.const_value for k, v in initializers.items()}
    relu_a, relu_b, call = (n for n in model.graph if n.name in ("relu_a", "relu_b", "call"))
    [leaky] = model.functions[("local", "Leaky", "")]
    alphas = [n.attributes["alpha"] for n in (relu_a, call, leaky)]  # the last one refers to the function's

    def edit(proto):
        for tensor in proto.graph.initializer:
            if tensor.name in "ab":
                tensor.CopyFrom(numpy_helper.from_array(np.full((2, 3), 7, np.float32), tensor.name))
        relu_a, relu_b = (n for n in proto.graph.node if n.op_type == "LeakyRelu")
        relu_a.attribute[0].f = 0.75
        del relu_b.attribute[:]
        return SimpleNamespace(report=SimpleNamespace(modified=True))

    view = ir.serde.serialize_model(model)
    for tensor in view.graph.initializer:  # what the edit sees: c as a reference
        if tensor.name == "c":
            assert tensor.data_location == TensorProto.EXTERNAL
    edit(view)
    _edit_in_place(model, edit)
    assert _proto(model) == view
    assert all(a is b for a, b in zip(model.graph, nodes)) and len(list(model.graph)) == len(nodes)
    assert all(initializers[k] is v for k, v in values.items())
    for name in "ab":
        assert initializers[name].const_value is not tensors[name]
        assert initializers[name].const_value.numpy().tolist() == [[7.0] * 3] * 2
    assert initializers["c"].const_value is tensors["c"]
    assert relu_a.attributes["alpha"] is not alphas[0] and relu_a.attributes["alpha"].value == 0.75
    assert "alpha" not in relu_b.attributes
    assert call.attributes["alpha"] is alphas[1] and leaky.attributes["alpha"] is alphas[2]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
def test_the_model_keeps_nothing_of_the_proto_view():
    """The new weights are messages of their own: a part of the proto view would keep all of it,
    a second copy of every weight, alive as long as the model."""
    def resident_mib() -> float:
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)  # freed heap back to the system: what stays resident is alive
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    model = depthwise_model(channels=8)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2**24, np.float32), "unread"))  # 64 MiB
    model = ir.serde.deserialize_model(model)
    before = resident_mib()
    assert DiagonalwisePass(group_size=4)(model).modified
    assert resident_mib() - before < 32


def test_unknown_option_refused_when_made():
    with pytest.raises(TypeError):
        DiagonalwisePass(group_size=8, grup="x")


@pytest.mark.parametrize("make_pass", [lambda: DiagonalwisePass(group_size=8), RevertPass], ids=["rewrite", "revert"])
def test_a_pass_has_no_report_before_its_first_call(make_pass):
    assert make_pass().report is None


def test_nodes_an_edit_adds_to_an_empty_graph_are_carried_whole():
    """A node the edit adds is carried with its domain, overload, name, doc string, metadata and
    every output, also into a graph that had no node at all."""
    from types import SimpleNamespace

    from onnx_diagwise.passes import _edit_in_place

    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])])
    model = ir.serde.deserialize_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]))

    def edit(proto):
        node = helper.make_node("Pair", ["x"], ["p", "q"], domain="local", name="pair", doc_string="two halves")
        node.overload = "v2"
        node.metadata_props.add(key="origin", value="edit")
        proto.graph.node.append(node)
        return SimpleNamespace(report=SimpleNamespace(modified=True))

    view = ir.serde.serialize_model(model)
    edit(view)
    _edit_in_place(model, edit)
    [pair] = list(model.graph)
    assert (pair.domain, pair.op_type, pair.overload, pair.name, pair.doc_string) == (
        "local", "Pair", "v2", "pair", "two halves")
    assert [v.name for v in pair.outputs] == ["p", "q"] and pair.inputs[0] is model.graph.inputs[0]
    assert pair.metadata_props == {"origin": "edit"}
    assert _proto(model) == view


def test_external_references_an_edit_writes_are_read_from_the_models_folder(tmp_path):
    """An initializer the edit points at other external bytes, and one it adds as an external
    reference, are read from the folder of the model's own external data, wherever the caller runs."""
    from types import SimpleNamespace

    from onnx_diagwise.passes import _edit_in_place

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.full((2, 3), 1, np.float32), "c")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    (tmp_path / "extra.bin").write_bytes(np.concatenate([np.full(6, 9, np.float32),
                                                         np.full(6, 5, np.float32)]).tobytes())
    model = ir.load(path)

    def external(tensor, offset):
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", "extra.bin"), ("offset", str(offset)), ("length", "24")):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def edit(proto):
        [c] = proto.graph.initializer
        external(c, 0)
        d = external(TensorProto(name="d", data_type=TensorProto.FLOAT, dims=[2, 3]), 24)
        proto.graph.initializer.append(d)
        return SimpleNamespace(report=SimpleNamespace(modified=True))

    _edit_in_place(model, edit)
    values = {name: value.const_value.numpy().tolist() for name, value in model.graph.initializers.items()}
    assert values == {"c": [[9.0] * 3] * 2, "d": [[5.0] * 3] * 2}


# --- onnx_diagwise.adapters: the model types export pipelines hand us come back as that type ---
# (an onnx_ir.Model, an onnx_graphsurgeon.Graph, a torch.onnx.ONNXProgram; a ModelProto and a path
# come back as a ModelProto; the lazy external tensors of an onnx_ir model are kept, not read)

# Stands in for torch.onnx.ONNXProgram (importing torch takes seconds): what the adapter relies on,
# the class's module and name, `.model`, `.exported_program` and the constructor cls(model, program).
TorchProgram = type("ONNXProgram", (), {
    "__module__": "torch.onnx._internal.exporter._onnx_program",
    "__init__": lambda self, model, exported_program: self.__dict__.update(model=model,
                                                                           exported_program=exported_program)})


def _rewritten_weight(model: onnx.ModelProto) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))


def test_a_model_proto_and_a_path_come_back_as_a_new_model_proto_leaving_the_input_alone(tmp_path, monkeypatch):
    original = depthwise_model(channels=8)
    proto, saved = depthwise_model(channels=8), original.SerializeToString()
    onnx.save(original, tmp_path / "m.onnx")
    by_proto = rewrite(proto, group_size=4)
    assert isinstance(by_proto.model, onnx.ModelProto) and by_proto.model is not proto
    assert proto.SerializeToString() == saved  # copied first: the caller's model is not rewritten
    assert _rewritten_weight(by_proto.model).shape == (8, 4, 3, 3)
    monkeypatch.chdir(tmp_path)  # a relative path
    by_path = rewrite("m.onnx", group_size=4)
    assert isinstance(by_path.model, onnx.ModelProto)
    assert by_path.model.SerializeToString() == by_proto.model.SerializeToString()
    rewritten = by_proto.model.SerializeToString()
    reverted = revert(by_proto.model)
    assert isinstance(reverted.model, onnx.ModelProto) and reverted.model is not by_proto.model
    assert by_proto.model.SerializeToString() == rewritten and reverted.model.SerializeToString() == saved
    onnx.save(by_proto.model, tmp_path / "r.onnx")
    assert revert("r.onnx").model.SerializeToString() == saved
    assert [(n.name, n.action) for n in inspect("m.onnx").nodes] == [("dw", "rewrite")]


def test_to_proto_gives_each_type_s_folder_and_way_back(tmp_path, monkeypatch):
    """The folder external data is read from: a path's own folder (made absolute), an onnx_ir
    model's tensors' folder, none for a ModelProto, a graphsurgeon graph or an IR model without
    external data; a ModelProto or a path comes back as the very ModelProto the rewrite made."""
    proto = depthwise_model(channels=8)
    got, back, folder = adapters.to_proto(proto)
    assert got is proto and folder is None and back(proto) is proto
    (tmp_path / "sub").mkdir()
    onnx.save(proto, tmp_path / "sub" / "m.onnx")
    monkeypatch.chdir(tmp_path)
    got, back, folder = adapters.to_proto(os.path.join("sub", "m.onnx"))
    assert got == os.path.join("sub", "m.onnx") and folder == str(tmp_path / "sub") and back(proto) is proto
    got, back, folder = adapters.to_proto(ir.serde.deserialize_model(proto))
    assert folder is None and got == ir.serde.serialize_model(ir.serde.deserialize_model(proto))
    assert isinstance(back(got), ir.Model)
    lazy = _lazy_copy(depthwise_model(channels=8), tmp_path / "sub", "lazy")
    assert adapters.to_proto(lazy)[2] == str(tmp_path / "sub")
    gs = pytest.importorskip("onnx_graphsurgeon")
    got, back, folder = adapters.to_proto(gs.import_onnx(proto))
    assert folder is None and isinstance(got, onnx.ModelProto) and isinstance(back(got), gs.Graph)
    assert [n.name for n in got.graph.node] == ["dw"]


def test_an_onnx_ir_model_comes_back_as_a_new_onnx_ir_model():
    original = depthwise_model(channels=8)
    model = ir.serde.deserialize_model(original)
    result = rewrite(model, group_size=4)
    assert isinstance(result.model, ir.Model) and result.model is not model
    assert _same_model(result.model, rewrite(original, group_size=4).model)
    assert _same_model(model, original)  # the input is left as it was
    assert [(n.name, n.action) for n in result.report.nodes] == [("dw", "rewritten")]
    reverted = revert(result.model)
    assert isinstance(reverted.model, ir.Model) and _same_model(reverted.model, original)
    assert [(n.name, n.action) for n in inspect(model).nodes] == [("dw", "rewrite")]


def test_a_graphsurgeon_graph_comes_back_as_a_graph_even_with_an_untyped_output():
    """Edited graphs often leave an output without a dtype: exported without graphsurgeon's type
    check, not refused."""
    gs = pytest.importorskip("onnx_graphsurgeon")
    original = depthwise_model(channels=8)
    graph = gs.import_onnx(original)
    graph.outputs[0].dtype = None
    result = rewrite(graph, group_size=4)
    assert isinstance(result.model, gs.Graph) and result.model is not graph
    assert [(n.name, n.action) for n in result.report.nodes] == [("dw", "rewritten")]
    assert result.model.tensors()["w"].values.shape == (8, 4, 3, 3)
    assert graph.tensors()["w"].values.shape == (8, 1, 3, 3) and graph.nodes[0].attrs["group"] == 8
    reverted = revert(result.model)
    assert isinstance(reverted.model, gs.Graph) and [n.action for n in reverted.report.nodes] == ["reverted"]
    np.testing.assert_array_equal(reverted.model.tensors()["w"].values, _rewritten_weight(original))
    assert [(n.name, n.action) for n in inspect(graph).nodes] == [("dw", "rewrite")]


def test_a_torch_onnx_program_comes_back_as_a_program_of_its_class_with_the_same_exported_program():
    original = depthwise_model(channels=8)
    exported = object()
    program = TorchProgram(ir.serde.deserialize_model(original), exported)
    result = rewrite(program, group_size=4)
    assert type(result.model) is TorchProgram and result.model is not program
    assert result.model.exported_program is exported
    assert isinstance(result.model.model, ir.Model) and result.model.model is not program.model
    assert _same_model(result.model.model, rewrite(original, group_size=4).model)
    assert _same_model(program.model, original)  # the input is left as it was
    assert [(n.name, n.action) for n in result.report.nodes] == [("dw", "rewritten")]
    reverted = revert(result.model)
    assert type(reverted.model) is TorchProgram and reverted.model.exported_program is exported
    assert _same_model(reverted.model.model, original)
    assert [(n.name, n.action) for n in inspect(program).nodes] == [("dw", "rewrite")]


def _unsupported():
    """Objects of other types, some with a supported type's module or name: (object, what the error names)."""
    gs = pytest.importorskip("onnx_graphsurgeon")
    model = ir.serde.deserialize_model(depthwise_model(channels=8))
    return [(model.graph, "onnx_ir.Graph"),  # onnx_ir's, but not a Model
            (gs.import_onnx(depthwise_model(channels=8)).nodes[0], "onnx_graphsurgeon.ir.node.Node"),
            (type("Model", (), {"__module__": "onnx"})(), "onnx.Model"),
            (type("Graph", (), {"__module__": "onnx.onnx_ml_pb2"})(), "onnx.onnx_ml_pb2.Graph"),
            (type("ONNXProgram", (), {"__module__": "torchvision"})(), "torchvision.ONNXProgram"),
            (type("ExportedProgram", (), {"__module__": "torch.onnx._internal"})(),
             "torch.onnx._internal.ExportedProgram"),
            (3.5, "builtins.float")]


@pytest.mark.parametrize("entry", [rewrite, revert, inspect], ids=["rewrite", "revert", "inspect"])
def test_other_types_are_refused_naming_their_module_and_class(entry):
    for obj, got in _unsupported():
        with pytest.raises(DiagwiseError) as raised:
            entry(obj)
        assert str(raised.value) == ("expected an onnx.ModelProto, a path, an onnx_ir.Model, an onnx_graphsurgeon.Graph"
                                     f" or a torch.onnx.ONNXProgram; got {got}"), got


def _external_w_and_b(folder, name: str = "m"):
    """depthwise_model(8) saved in FOLDER with its weight and bias as external data, loaded lazily."""
    folder.mkdir(parents=True, exist_ok=True)
    return _lazy_copy(depthwise_model(channels=8), folder, name)


def test_an_onnx_ir_model_keeps_the_lazy_tensors_it_did_not_change(tmp_path, read_by_onnx_ir):
    model = _external_w_and_b(tmp_path / "model")
    tensors = {name: value.const_value for name, value in model.graph.initializers.items()}
    result = rewrite(model, group_size=4).model
    assert result.graph.initializers["b"].const_value is tensors["b"]  # the very object, never read
    new_w = result.graph.initializers["w"].const_value
    assert not isinstance(new_w, ir.ExternalTensor) and new_w.numpy().shape == (8, 4, 3, 3)
    assert all(value.const_value is tensors[name] for name, value in model.graph.initializers.items())
    reverted = revert(result).model
    assert reverted.graph.initializers["b"].const_value is tensors["b"]
    np.testing.assert_array_equal(reverted.graph.initializers["w"].const_value.numpy(),
                                  _rewritten_weight(depthwise_model(channels=8)))
    assert not read_by_onnx_ir  # the library reads the weight itself; the bias is never read
    unchanged = rewrite(model, group_size=1).model  # nothing rewritten: every tensor is the one it was
    assert all(unchanged.graph.initializers[name].const_value is tensor for name, tensor in tensors.items())


def test_the_way_back_keeps_a_lazy_tensor_only_where_its_reference_is_unchanged(tmp_path):
    """The model that comes back holds the original tensor object for a reference the edit left
    alone; a reference it moved, and an external tensor it added, are new tensors with their own
    references."""
    model = _external_w_and_b(tmp_path)
    w, b = (model.graph.initializers[name].const_value for name in ("w", "b"))
    proto, back, folder = adapters._ir_to_proto(model)
    assert folder == str(tmp_path)
    tensors = {t.name: t for t in proto.graph.initializer}
    assert [e.value for e in tensors["b"].external_data if e.key == "offset"] == [str(b.offset)]
    offset = next(e for e in tensors["b"].external_data if e.key == "offset")
    offset.value = str(b.offset + 4)  # the bias now starts one float further
    tensors["b"].dims[0] = 7
    for e in tensors["b"].external_data:
        if e.key == "length":
            e.value = "28"
    added = proto.graph.initializer.add()
    added.CopyFrom(tensors["w"])
    added.name = "w2"
    new = back(proto)
    assert isinstance(new, ir.Model)
    assert new.graph.initializers["w"].const_value is w
    moved = new.graph.initializers["b"].const_value
    assert moved is not b and isinstance(moved, ir.ExternalTensor)
    assert (moved.location, moved.offset, moved.length) == (b.location, b.offset + 4, 28)
    copy = new.graph.initializers["w2"].const_value
    assert copy is not w and isinstance(copy, ir.ExternalTensor)
    assert (copy.location, copy.offset, copy.length) == (w.location, w.offset, w.length)
    again = back(proto)  # each call gives a model of its own
    assert again is not new and again.graph.initializers["w"].const_value is w


def test_an_onnx_ir_model_whose_external_tensors_live_in_two_folders_is_refused_naming_both(tmp_path):
    model = _external_w_and_b(tmp_path / "one")
    other = _external_w_and_b(tmp_path / "two")
    model.graph.initializers["b"].const_value = other.graph.initializers["b"].const_value
    with pytest.raises(DiagwiseError) as raised:
        rewrite(model, group_size=4)
    assert str(raised.value) == (f"the model's external tensors live in 2 different folders ({tmp_path / 'one'}, "
                                 f"{tmp_path / 'two'}); save it with its data in one folder first")
    third = _external_w_and_b(tmp_path / "three")
    model.graph.initializers["w"].const_value = third.graph.initializers["w"].const_value
    with pytest.raises(DiagwiseError) as raised:
        adapters.to_proto(model)
    assert str(raised.value) == (f"the model's external tensors live in 2 different folders ({tmp_path / 'three'}, "
                                 f"{tmp_path / 'two'}); save it with its data in one folder first")


def _without_base_dir(model, name: str):
    """MODEL's initializer NAME made an external tensor with no base directory (its bytes in
    NAME.bin, where only the working directory would find them)."""
    value = model.graph.initializers[name]
    array = value.const_value.numpy()
    value.const_value = ir.ExternalTensor(f"{name}.bin", 0, array.nbytes, ir.DataType.FLOAT,
                                          shape=ir.Shape(array.shape), name=name, base_dir="")
    return array


def test_an_external_tensor_without_a_base_directory_is_never_read_from_the_working_directory(tmp_path, monkeypatch):
    model = ir.serde.deserialize_model(depthwise_model(channels=8))
    w = _without_base_dir(model, "w")
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    monkeypatch.chdir(tmp_path)
    assert adapters._ir_to_proto(model)[2] is None
    with pytest.raises(DiagwiseError) as raised:
        rewrite(model, group_size=4)
    assert str(raised.value) == ("external data of tensor 'w' ('w.bin') cannot be read: the model came without its "
                                 "folder (pass the model's path, or load it with onnx.load, which reads external data)")


def test_an_external_tensor_without_a_base_directory_beside_others_with_one_is_refused(tmp_path, monkeypatch):
    """A tensor with no base directory has no folder: beside tensors with one, that is two places,
    even when the working directory is their folder."""
    model = _external_w_and_b(tmp_path)
    b = _without_base_dir(model, "b")
    (tmp_path / "b.bin").write_bytes(b.tobytes())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DiagwiseError) as raised:
        rewrite(model, group_size=4)
    assert str(raised.value) == (f"the model's external tensors live in 2 different folders ({tmp_path}, none: a tensor without a base_dir); "
                                 "save it with its data in one folder first")


def test_lazy_tensors_in_subgraphs_are_kept_too(tmp_path):
    """An If's branches hold external initializers of their own: they come back as the same objects."""
    def branch(name: str, value: float):
        return helper.make_graph([helper.make_node("Add", ["y", f"k_{name}"], [f"out_{name}"], name=f"add_{name}")],
                                 name, [], [helper.make_tensor_value_info(f"out_{name}", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(np.full(8, value, np.float32), f"k_{name}")])

    outer = depthwise_model(channels=8)
    outer.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    outer.graph.node.append(helper.make_node("If", ["flag"], ["z"], name="if", then_branch=branch("then", 1.0),
                                             else_branch=branch("else", 2.0)))
    del outer.graph.output[:]
    outer.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    path = tmp_path / "m.onnx"
    onnx.save(outer, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data",
              size_threshold=0)
    model = ir.load(path)
    [if_node] = [n for n in model.graph if n.op_type == "If"]
    held = {key: if_node.attributes[key].value.initializers[f"k_{key[:4]}"].const_value
            for key in ("then_branch", "else_branch")}
    assert all(isinstance(t, ir.ExternalTensor) for t in held.values())
    result = rewrite(model, group_size=4).model
    [if_after] = [n for n in result.graph if n.op_type == "If"]
    for key, tensor in held.items():
        assert if_after.attributes[key].value.initializers[f"k_{key[:4]}"].const_value is tensor, key


def _graphs_attribute() -> onnx.ModelProto:
    """A custom node in a function: an attribute that refers to the function's own, then a list
    of two graphs (a GRAPHS attribute), each with a depthwise Conv and its weight."""
    rng = np.random.default_rng(5)

    def branch(name: str):
        weight = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), f"w_{name}")
        return helper.make_graph([helper.make_node("Conv", ["x", f"w_{name}"], [f"y_{name}"], name=f"dw_{name}",
                                                   group=8, pads=[1, 1, 1, 1])],
                                 name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)],
                                 [weight])

    custom = helper.make_node("Branches", ["x"], ["y"], name="branches", domain="custom")
    alpha = onnx.AttributeProto(name="alpha", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT)
    custom.attribute.extend([alpha, helper.make_attribute("bodies", [branch("first"), branch("second")])])
    function = helper.make_function("local", "Wrap", ["x"], ["y"], [custom], attributes=["alpha"],
                                    opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    graph = helper.make_graph([helper.make_node("Wrap", ["x"], ["y"], name="call", domain="local", alpha=0.5)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1), helper.make_opsetid("custom", 1)])


def test_graphs_in_a_list_attribute_after_a_reference_are_rewritten_and_reverted_in_place():
    """Each graph of a GRAPHS attribute is paired with its own body, also behind an attribute that
    refers to the function's: both Convs are edited, as the library edits the ModelProto."""
    original = _graphs_attribute()
    expected = rewrite(original, group_size=4)
    assert sorted(n.name for n in expected.report.rewritten) == ["dw_first", "dw_second"]
    model = ir.serde.deserialize_model(original)
    bodies = model.functions["local", "Wrap", ""][0].attributes["bodies"].value
    convs = [next(iter(body)) for body in bodies]
    assert DiagonalwisePass(group_size=4)(model).modified
    assert _same_model(model, expected.model)
    assert [body.initializers[f"w_{name}"].shape.dims for body, name in zip(bodies, ("first", "second"))] == \
        [(8, 4, 3, 3)] * 2
    assert [next(iter(body)) for body in bodies] == convs and [c.attributes["group"].value for c in convs] == [2, 2]
    assert RevertPass()(model).modified
    assert _same_model(model, original)
