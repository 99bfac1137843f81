"""Export pipelines: onnx_ir models, onnx-graphsurgeon graphs and torch.onnx programs go in, the
same type comes out, with the numbers and the report of the ModelProto path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from helpers import SAMPLE_DIR
from onnx_diagwise import inspect, revert, rewrite
from onnx_diagwise.runtime import RuntimeConfig, create_session

ir = pytest.importorskip("onnx_ir")
gs = pytest.importorskip("onnx_graphsurgeon")
SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))


def outputs(model: onnx.ModelProto) -> list[np.ndarray]:
    session = create_session(model, RuntimeConfig("cpu"))
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if i == 0 else 16) for i, d in enumerate(value.shape)]
        kind = value.type
        feeds[value.name] = (np.asarray(rng.random(shape) < 0.5) if "bool" in kind else
                             rng.uniform(-1, 1, shape).astype(np.float16 if "float16" in kind else np.float32))
    return session.run(None, feeds)


def decisions(report) -> list[tuple]:
    return [(n.name, n.action, n.reason, n.group_size) for n in report.nodes]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_every_type_gives_the_same_rewrite(path):
    proto = onnx.load(path)
    by_path = rewrite(path)
    by_proto = rewrite(proto)
    by_ir = rewrite(ir.serde.deserialize_model(proto))
    by_gs = rewrite(gs.import_onnx(proto))
    assert isinstance(by_ir.model, ir.Model) and isinstance(by_gs.model, gs.Graph)
    assert isinstance(by_proto.model, onnx.ModelProto) and isinstance(by_path.model, onnx.ModelProto)
    expected = decisions(by_proto.report)
    assert decisions(by_path.report) == decisions(by_ir.report) == decisions(by_gs.report) == expected
    serialized = by_proto.model.SerializeToString()
    assert by_path.model.SerializeToString() == serialized
    # onnx_ir writes its own field order: compare through the same serializer
    assert ir.serde.serialize_model(by_ir.model).SerializeToString() == ir.serde.serialize_model(
        ir.serde.deserialize_model(by_proto.model)).SerializeToString()
    from_gs = gs.export_onnx(by_gs.model)  # the same weights; the node order may differ (onnxruntime's sums too)
    gs_tensors = gs.import_onnx(from_gs).tensors()  # the main graph's
    for tensor in by_proto.model.graph.initializer:
        if tensor.name in gs_tensors:  # those read only inside subgraphs are listed there
            np.testing.assert_array_equal(gs_tensors[tensor.name].values, onnx.numpy_helper.to_array(tensor))
    for got, want in zip(outputs(from_gs), outputs(by_proto.model)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert decisions(inspect(gs.import_onnx(proto))) == decisions(inspect(proto))


def test_graphsurgeon_keeps_names_opsets_and_metadata():
    proto = onnx.load(SAMPLE_DIR / "mobilenetv2_block.onnx")
    graph = gs.import_onnx(proto)
    result = rewrite(graph, group_size=8)
    exported = gs.export_onnx(result.model)
    assert exported.graph.name == proto.graph.name
    assert [n.name for n in exported.graph.node] == [n.name for n in proto.graph.node]
    assert {(o.domain, o.version) for o in exported.opset_import} == {(o.domain, o.version) for o in proto.opset_import}
    assert [n.action for n in revert(result.model).report.nodes] == ["reverted"] * 2
    assert graph is not result.model  # the input is not modified
    assert [n.op for n in graph.nodes] == [n.op_type for n in proto.graph.node]


def test_torch_dynamo_program_in_program_out():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    module = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU()).eval()
    program = torch.onnx.export(module, (torch.randn(1, 16, 12, 12),), dynamo=True, verbose=False)
    result = rewrite(program, group_size=8)
    assert type(result.model) is type(program)
    assert [n.action for n in result.report.nodes] == ["rewritten"]
    x = torch.randn(1, 16, 12, 12)
    np.testing.assert_allclose(result.model(x)[0].numpy(), module(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_pass_on_a_dynamo_program_keeps_what_the_exporter_recorded():
    """The exporter's program keeps its model: every node and value is the object it was, the
    graph input's meta still names its FX node and the rewritten Convs keep their metadata."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from onnx_diagwise.passes import DiagonalwisePass

    net = _torch_network(torch)
    x = torch.randn(2, 3, 32, 32)
    program = torch.onnx.export(net, (x,), dynamo=True, verbose=False)
    model = program.model
    nodes = list(model.graph)
    values = {v.name: v for v in [*model.graph.inputs, *model.graph.initializers.values()]
              + [v for n in nodes for v in n.outputs]}
    x_value, fx_node = model.graph.inputs[0], model.graph.inputs[0].meta["node"]
    convs = {n.name: dict(n.metadata_props) for n in nodes if n.op_type == "Conv"}
    rewrite_pass = DiagonalwisePass(group_size=8)
    assert rewrite_pass(model).modified and len(rewrite_pass.report.rewritten) == 5
    assert list(model.graph) == nodes and all(a is b for a, b in zip(model.graph, nodes))
    after = {v.name: v for v in [*model.graph.inputs, *model.graph.initializers.values()]
             + [v for n in model.graph for v in n.outputs]}
    assert after.keys() == values.keys() and all(after[name] is value for name, value in values.items())
    assert model.graph.inputs[0] is x_value and x_value.meta["node"] is fx_node
    assert {n.name: dict(n.metadata_props) for n in model.graph if n.op_type == "Conv"} == convs
    np.testing.assert_allclose(program(x)[0].numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_import_onnx_diagwise_imports_none_of_them():
    code = ("import sys, onnx_diagwise; "
            "print([m for m in ('onnx_ir', 'onnx_graphsurgeon', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _torch_network(torch):
    """A MobileNetV2-style network: stem, inverted residual blocks (one with depth multiplier 2,
    one strided, one 5x5), BatchNorm, ReLU6, a residual, a 1-D depthwise tail and a classifier."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c, expand, kernel, stride, multiplier=1):
            super().__init__()
            hidden = c * expand
            self.body = nn.Sequential(
                nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, hidden * multiplier, kernel, stride, kernel // 2, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden * multiplier), nn.ReLU6(),
                nn.Conv2d(hidden * multiplier, c, 1, bias=False), nn.BatchNorm2d(c))
            self.residual = stride == 1

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), Block(16, 4, 3, 1),
                                          Block(16, 2, 3, 1, multiplier=2), Block(16, 6, 3, 2), Block(16, 4, 5, 1))
            self.tail = nn.Conv1d(16, 16, 7, padding=3, groups=16)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            y = self.features(x).flatten(2)
            return self.head(self.tail(y).mean(-1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them matters
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_exported_torch_network_every_type_gives_the_same_rewrite(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    net = _torch_network(torch)
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "net.onnx"
    program = torch.onnx.export(net, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"])
    proto = onnx.load(path)
    by_proto = rewrite(proto, group_size=8)
    assert len(by_proto.report.rewritten) == 5  # four 2-D depthwise convs and the 1-D one
    results = {"path": rewrite(path, group_size=8), "ir": rewrite(ir.serde.deserialize_model(proto), group_size=8),
               "graphsurgeon": rewrite(gs.import_onnx(proto), group_size=8)}
    if dynamo:
        results["program"] = rewrite(program, group_size=8)
        assert type(results["program"].model) is type(program)
    for kind, result in results.items():
        assert decisions(result.report) == decisions(by_proto.report), kind
    assert results["path"].model.SerializeToString() == by_proto.model.SerializeToString()
    assert ir.serde.serialize_model(results["ir"].model).SerializeToString() == ir.serde.serialize_model(
        ir.serde.deserialize_model(by_proto.model)).SerializeToString()
    want = net(x).detach().numpy()
    feeds = {"x": x.numpy()}
    for model in (by_proto.model, gs.export_onnx(results["graphsurgeon"].model)):
        got = create_session(model, RuntimeConfig("cpu")).run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if dynamo:
        np.testing.assert_allclose(results["program"].model(x)[0].numpy(), want, rtol=1e-4, atol=1e-5)
    back = revert(by_proto.model)
    assert [n.name for n in back.report.rewritten] == [n.name for n in by_proto.report.rewritten]
