"""What makes a quantized model fast in ONNX Runtime: structural properties of the optimized graphs.

Timings are in the docstrings where each choice is made (``layers.slower_in_int8``,
``clamps.consumer_clamp``, ``simplify``); these tests check the graph properties the
choices rely on, on tiny models built in code, with ORT's portable optimization
level (no hardware-specific NCHWc nodes).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from aaq.quantization.graph import GraphIndex
from aaq.quantization.layers import find_layout
from aaq.quantization.prepare import prepare_model
from models import ModelBuilder, conv_hardswish_conv, dw_hardswish_block, feature_maps
from helpers import MINMAX, quantize, run


def optimized(model: onnx.ModelProto) -> onnx.GraphProto:
    """The graph ONNX Runtime really runs (``ORT_ENABLE_EXTENDED``: QDQ fusions, no NCHWc)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def readers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if tensor in n.input]


def qdq_pairs(graph: onnx.GraphProto) -> list[str]:
    """QuantizeLinear nodes read by a DequantizeLinear: a round trip ORT left in the graph."""
    return [q.name for q in graph.node if q.op_type == "QuantizeLinear"
            and any(r.op_type == "DequantizeLinear" for r in readers(graph, q.output[0]))]


def test_conv_hardswish_conv_runs_in_integer_kernels_from_the_first_quantizer_to_the_last() -> None:
    """The decomposed hard-swish left 4 float ops and 2 DequantizeLinear (one per reader of x) between the
    convs; as ``HardSwish`` it was one float op between a DequantizeLinear and a QuantizeLinear; in int8
    (``quantization.hardswish``) nothing between the convs is float."""
    model, x = conv_hardswish_conv(), feature_maps()
    state, algorithm = quantize(model, x)
    assert algorithm.summary["preparation"]["opset"] == 14
    assert "HardSwish" not in ops(state.model.graph)
    graph = optimized(state.model)
    assert ops(graph) == ["QuantizeLinear", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConv",
                          "DequantizeLinear"]
    assert qdq_pairs(graph) == []
    first = next(n for n in graph.node if n.op_type == "QLinearConv")
    assert sorted(n.op_type for n in readers(graph, first.output[0])) == ["QLinearAdd", "QLinearMul"]
    f, q = run(model, x), run(state.model, x)
    assert np.abs(f - q).max() < 0.05 * np.abs(f).max()


def test_below_opset_14_the_hardswish_is_x_times_hardsigmoid() -> None:
    model, x = conv_hardswish_conv(form="sixth"), feature_maps(8)
    prepared = prepare_model(model, min_opset=10)
    kinds = ops(prepared.model.graph)
    assert "HardSwish" not in kinds and kinds.count("HardSigmoid") == 1 and kinds.count("Mul") == 1
    np.testing.assert_allclose(run(prepared.model, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_the_output_quantizer_before_a_hardswish_spends_no_levels_below_minus_3() -> None:
    """hard-swish is 0 below -3: the grid covers [-3, max], not the symmetric [-M, M] of the raw conv output."""
    model, x = conv_hardswish_conv(bias=-6.0), feature_maps()
    state, _ = quantize(model, x, activations=MINMAX)  # the max error bound below assumes nothing clipped
    site = next(q for q in state.plan.quantizers.values() if q.site.output and q.site.clamp is not None)
    assert site.site.clamp == (-3.0, float("inf"))
    assert -3.0 - site.scale <= site.low < -2.9 and site.zero_point not in (0, 128)
    f = run(model, x)
    assert np.abs(f - run(state.model, x)).max() < 0.05 * np.abs(f).max()


def test_a_small_depthwise_conv_stays_float_between_integer_convs() -> None:
    """ORT's int8 depthwise kernel is 2-9x slower than float below 64 channels or off multiples of 16."""
    model, x = dw_hardswish_block(24), feature_maps()
    state, algorithm = quantize(model, x)
    assert [layer.name for layer in state.plan.layers] == ["expand", "project"]
    assert "depthwise conv with 24 channels" in algorithm.summary["not_quantized"]["dw"]
    kinds = ops(optimized(state.model))
    assert kinds.count("QLinearConv") == 2 and kinds.count("Conv") == 1
    f = run(model, x)
    assert np.abs(f - run(state.model, x)).max() < 0.05 * np.abs(f).max()


def test_a_large_depthwise_conv_is_quantized() -> None:
    state, _ = quantize(dw_hardswish_block(64), feature_maps())
    assert [layer.name for layer in state.plan.layers] == ["expand", "dw", "project"]
    assert ops(optimized(state.model)).count("QLinearConv") == 3


def test_a_float_layer_between_a_dequantize_and_a_quantize_is_quantized_per_channel() -> None:
    """ORT would quantize its float weights itself (per tensor) and run it in int8: aaq does it, per channel."""
    state, _ = quantize(dw_hardswish_block(24, dw_relu=True), feature_maps())
    assert [layer.name for layer in state.plan.layers] == ["expand", "dw", "project"]
    assert state.plan.layer("dw").weight.scale.shape == (24,)
    kinds = ops(optimized(state.model))
    assert kinds.count("QLinearConv") == 3 and "Conv" not in kinds


def squeeze_excitation() -> onnx.ModelProto:
    """x -> Conv 1x1 (16->32) -> Relu -> GAP -> Conv(32->8) -> Relu -> Conv(8->32) -> HardSigmoid -> Mul -> Conv -> y"""
    mb = ModelBuilder(5)
    x = mb.add_input("x", ["N", 16, 8, 8])
    h = mb.add_relu(mb.add_conv(x, 16, 32, kernel=1, name="expand"))
    gate = mb.add_node("GlobalAveragePool", [h], "gap")
    gate = mb.add_relu(mb.add_conv(gate, 32, 8, kernel=1, name="se1"))
    gate = mb.add_node("HardSigmoid", [mb.add_conv(gate, 8, 32, kernel=1, name="se2")], "gate", alpha=0.2, beta=0.5)
    y = mb.add_conv(mb.add_node("Mul", [h, gate], "scale"), 32, 16, kernel=1, name="project")
    mb.add_output(y, ["N", 16, 8, 8])
    return mb.build()


def test_the_convs_of_a_squeeze_excitation_block_stay_float() -> None:
    """On a 1x1 image int8 saves nothing and brings a Q, a DQ and two NHWC transposes per block."""
    model, x = squeeze_excitation(), feature_maps()
    state, algorithm = quantize(model, x, activations=MINMAX)  # the max error bound below assumes nothing clipped
    assert [layer.name for layer in state.plan.layers] == ["expand", "project"]
    assert all("1x1 image" in algorithm.summary["not_quantized"][name] for name in ("se1", "se2"))
    graph = optimized(state.model)
    assert ops(graph).count("QLinearConv") == 2
    f = run(model, x)
    assert np.abs(f - run(state.model, x)).max() < 0.05 * np.abs(f).max()


def test_without_latency_awareness_every_conv_is_a_layer() -> None:
    prepared = prepare_model(squeeze_excitation())
    layout = find_layout(prepared.model, ["Conv"], shapes=prepared.shapes)
    assert [layer.name for layer in layout.layers] == ["expand", "se1", "se2", "project"]
    layout = find_layout(prepared.model, ["Conv"], shapes=prepared.shapes, latency_aware=True)
    assert [layer.name for layer in layout.layers] == ["expand", "project"]


def test_a_float_bias_fuses_like_an_int32_bias_behind_a_dequantize() -> None:
    """ORT 1.32 quantizes a float bias itself (WeightBiasQuantization): same QLinearConv, same speed (measured)."""
    model, x = dw_hardswish_block(64), feature_maps()
    state, _ = quantize(model, x)
    index = GraphIndex(state.model.graph)
    convs = [n for n in state.model.graph.node if n.op_type == "Conv"]
    assert all(index.is_initializer(n.input[2]) for n in convs)  # float initializers, no DequantizeLinear
    assert not [n for n in optimized(state.model).node if n.op_type in ("Conv", "FusedConv")]


def test_clip_and_hardsigmoid_readers_clamp_the_output_quantizer() -> None:
    from aaq.quantization.clamps import consumer_clamp

    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 4])
    low, high = mb.add_initializer(np.array(0.0, np.float32), "c"), mb.add_initializer(np.array(6.0, np.float32), "c")
    mb.add_node("Clip", [x, low, high], "relu6")
    mb.add_node("HardSigmoid", [x], "hsig", alpha=0.25, beta=0.5)
    mb.add_node("Clip", [x, "", high], "upper")
    mb.add_node("Sigmoid", [x], "sigmoid")
    index = GraphIndex(helper.make_graph(mb.nodes, "g", mb.inputs, [], mb.initializers))
    clamps = {name: consumer_clamp(index.nodes[name], index) for name in ("relu6", "hsig", "upper", "sigmoid")}
    assert clamps == {"relu6": (0.0, 6.0), "hsig": (-2.0, 2.0), "upper": (float("-inf"), 6.0), "sigmoid": None}
