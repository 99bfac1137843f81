"""Time grows with the size of the graph no faster than n log n: inspect and rewrite of a graph 8x
larger take well under 64x (quadratic) as long.  Ratios of minima, so a busy machine shifts both."""

from __future__ import annotations

import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper, shape_inference

from onnx_diagwise import inspect, rewrite


def chain(nodes: int, channels: int = 4):
    """NODES nodes: depthwise Conv (its own weight) -> Relu -> Identity -> Neg, repeated, with the
    shape of every value declared."""
    body, weights, previous = [], [], "x"
    for i in range(nodes // 4):
        weights.append(numpy_helper.from_array(np.full((channels, 1, 3, 3), 0.1, np.float32), f"w{i}"))
        body += [helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], group=channels, pads=[1, 1, 1, 1], name=f"dw{i}"),
                 helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
                 helper.make_node("Identity", [f"r{i}"], [f"i{i}"], name=f"id{i}"),
                 helper.make_node("Neg", [f"i{i}"], [f"n{i}"], name=f"neg{i}")]
        previous = f"n{i}"
    graph = helper.make_graph(body, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, channels, 8, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return shape_inference.infer_shapes(model)  # every value declared, as exporters and onnx-ir write them


def _seconds(call, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def test_inspect_rewrite_and_revert_scale_like_n_log_n():
    from onnx_diagwise import revert

    small, large = chain(2000), chain(16000)
    lowered = {id(m): rewrite(m, group_size="toeplitz").model for m in (small, large)}
    for name, work in (("inspect", lambda m: inspect(m).nodes),
                       ("rewrite", lambda m: rewrite(m, group_size=2).report.nodes),
                       ("lower", lambda m: rewrite(m, group_size="toeplitz").report.rewritten),
                       ("revert", lambda m: revert(lowered[id(m)]).report.rewritten)):
        ratio = _seconds(lambda: work(large), 2) / _seconds(lambda: work(small), 2)
        # n log n: 8 x 1.27 = 10; quadratic: 64.  Name lookups by scan, and an insert that looked
        # for its node's position, each gave about 30 to 50.
        assert ratio < 24, f"{name}: 8x the nodes took {ratio:.1f}x the time"
        assert len(work(small)) == 500


def test_long_tables_are_plain_columns_laid_out_in_linear_time():
    from rich.table import Table

    from onnx_diagwise.render import MAX_BORDERED_ROWS, grid

    rows = [{"node": f"n{i}", "C": str(i)} for i in range(4 * MAX_BORDERED_ROWS)]
    short = grid(None, ["node", "C"], rows[:10], 200)
    assert any(isinstance(part, Table) for part in short)
    long = grid(None, ["node", "C"], rows, 200)
    assert not any(isinstance(part, Table) for part in long) and len(long) == len(rows) + 1
    small, large = (_seconds(lambda n=n: grid(None, ["node", "C"], rows[:n] * 1, 200)) for n in (400, 800))
    assert large / small < 4  # twice the rows: about twice the time
