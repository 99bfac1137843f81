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


def test_passes_compose_in_a_pass_manager():
    import onnx_ir.passes.common as common

    from onnx_diagwise.passes import DiagonalwisePass, RevertPass

    proto = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    model = ir.serde.deserialize_model(proto)
    rewrite_pass = DiagonalwisePass(group_size=8)
    manager = ir.passes.PassManager([rewrite_pass, common.RemoveUnusedNodesPass()])
    result = manager(model)
    assert result.modified and result.model is model and len(rewrite_pass.report.rewritten) == 13
    np.testing.assert_allclose(outputs(ir.serde.serialize_model(model))[0], outputs(proto)[0], rtol=1e-5, atol=1e-5)
    assert not DiagonalwisePass(group_size=8)(model).modified  # already rewritten: nothing to do
    back = ir.passes.PassManager([RevertPass()])(model)
    assert back.modified and ir.serde.serialize_model(model).SerializeToString() == ir.serde.serialize_model(
        ir.serde.deserialize_model(proto)).SerializeToString()


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


def test_import_onnx_diagwise_imports_none_of_them():
    code = ("import sys, onnx_diagwise; "
            "print([m for m in ('onnx_ir', 'onnx_graphsurgeon', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ir_model_with_external_data_stays_lazy(tmp_path):
    """ir.load keeps a .data file's tensors as memory-mapped references; the pass reads only the
    depthwise weights, and every tensor it did not change comes back as the same lazy object."""
    from onnx_diagwise.passes import DiagonalwisePass

    proto = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    path = tmp_path / "m.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data",
              size_threshold=0)
    model = ir.load(path)
    before = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert all(isinstance(t, ir.ExternalTensor) for t in before.values())
    read = []
    original_numpy = ir.ExternalTensor.numpy
    ir.ExternalTensor.numpy = lambda self: read.append(self.name) or original_numpy(self)
    try:
        rewrite_pass = DiagonalwisePass(group_size=8)
        assert rewrite_pass(model).modified
    finally:
        ir.ExternalTensor.numpy = original_numpy
    assert not read  # onnx_ir's own reader never ran: the pass read the file directly, weight by weight
    rewritten = {n.name for n in rewrite_pass.report.rewritten}
    depthwise_weights = {n.input[1] for n in proto.graph.node if n.name in rewritten}
    after = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert set(after) == set(before)
    for name, tensor in after.items():
        if name in depthwise_weights:
            assert not isinstance(tensor, ir.ExternalTensor)  # the new block-diagonal weight, in memory
        else:
            assert tensor is before[name]  # untouched: the same lazy reference, base directory and all
    reference = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")  # onnx.save moved PROTO's data out
    np.testing.assert_allclose(outputs(_loaded(model, tmp_path))[0], outputs(reference)[0], rtol=1e-5, atol=1e-5)


def _loaded(model, tmp_path) -> onnx.ModelProto:
    out = tmp_path / "out.onnx"
    ir.save(model, out, external_data="out.onnx.data")
    return onnx.load(out)


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
