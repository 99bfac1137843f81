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
from onnx_diagwise import revert, rewrite

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
