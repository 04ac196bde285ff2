"""apply_plan's QDQ models, checked by numbers: tolerances from scales, scales, zero points, fusion."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from aaq.quantization.qdq import apply_plan
from models import ModelBuilder, conv_net, mlp
from helpers import MINMAX, optimized_op_types, images, quantize, run


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def weight_dq(model: onnx.ModelProto, layer: str) -> onnx.NodeProto:
    node = next(n for n in model.graph.node if n.name == layer)
    return producers(model)[node.input[1]]


def single_gemm(seed: int = 0) -> onnx.ModelProto:
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 32])
    y = mb.add_gemm(x, 32, 8, name="fc")
    mb.add_output(y, ["N", 8])
    return mb.build()


def test_one_layer_error_is_within_the_bound_its_scales_give() -> None:
    """|dy_c| <= sum|x| s_w[c]/2 + sum|w_c| s_x/2 + K s_x s_w[c]/4 + s_y/2, per sample and channel."""
    model = single_gemm()
    x = np.random.default_rng(0).normal(0, 1, (64, 32)).astype(np.float32)
    state, _ = quantize(model, x, bias_correction=False, activations=MINMAX)  # no clipping
    plan = state.plan
    s_x, s_y = plan.quantizers["x"].scale, plan.quantizers["fc_out"].scale
    s_w = plan.layer("fc").weight.scale
    w = initializers(model)[plan.layer("fc").layer.weight]
    bound = (np.abs(x).sum(1, keepdims=True) * s_w / 2 + np.abs(w).sum(1) * s_x / 2 + 32 * s_x * s_w / 4
             + s_y / 2)
    error = np.abs(run(state.model, x) - run(model, x))
    assert (error <= bound * 1.001 + 1e-6).all()
    assert error.max() > 0  # it is quantized


@pytest.mark.parametrize("preset", ["performance", "mixed"])
def test_conv_net_outputs_are_within_a_few_output_steps(preset: str) -> None:
    model, x = conv_net(), images(128)
    state, _ = quantize(model, x, preset=preset, activations=MINMAX)
    f, q = run(model, x), run(state.model, x)
    step = state.plan.quantizers["fc_out"].scale
    assert np.abs(f - q).max() < 12 * step
    assert np.abs(f - q).mean() < 3 * step
    assert np.abs(f - q).max() < 0.05 * np.abs(f).max()


@pytest.mark.parametrize("reduce_range, levels", [(False, 127), (True, 63)])
def test_weights_have_one_scale_per_output_channel_equal_to_absmax_over_the_levels(reduce_range: bool,
                                                                                    levels: int) -> None:
    model = conv_net()
    state, _ = quantize(model, images(16), weights={"reduce_range": reduce_range})
    weights = initializers(model)
    qdq = initializers(state.model)
    for layer, axis in (("conv1", 0), ("conv2", 0), ("fc", 0)):
        w = weights[state.plan.layer(layer).layer.weight]
        node = weight_dq(state.model, layer)
        assert node.op_type == "DequantizeLinear"
        assert helper.get_attribute_value(node.attribute[0]) == axis
        scale, zero_point, values = qdq[node.input[1]], qdq[node.input[2]], qdq[node.input[0]]
        absmax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
        assert scale.shape == (w.shape[0],)
        np.testing.assert_allclose(scale, absmax / levels, rtol=1e-6)
        assert zero_point.dtype == np.int8 and not zero_point.any()
        assert values.dtype == np.int8 and np.abs(values).max() == levels


def test_matmul_weights_are_per_column() -> None:
    model = mlp()
    x = np.random.default_rng(0).normal(0, 1, (32, 16)).astype(np.float32)
    state, _ = quantize(model, x, weights={"reduce_range": False})
    node = weight_dq(state.model, "mm1")
    w = initializers(model)[state.plan.layer("mm1").layer.weight]
    assert helper.get_attribute_value(node.attribute[0]) == 1
    np.testing.assert_allclose(initializers(state.model)[node.input[1]], np.abs(w).max(axis=0) / 127, rtol=1e-6)


def test_pertensor_weights_have_one_scale() -> None:
    state, _ = quantize(conv_net(), images(16), weights={"granularity": "pertensor"})
    node = weight_dq(state.model, "conv1")
    assert not node.attribute and initializers(state.model)[node.input[1]].shape == ()


@pytest.mark.parametrize("preset, signed_zero_point", [("performance", 128), ("mixed", None)])
def test_activation_zero_points_per_preset(preset: str, signed_zero_point: int | None) -> None:
    model, x = conv_net(), images(64)
    state, _ = quantize(model, x, preset=preset, activations=MINMAX)
    signed, relu = state.plan.quantizers["x"], state.plan.quantizers["relu3_out"]
    qdq = initializers(state.model)
    q_node = next(n for n in state.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert qdq[q_node.input[2]].dtype == np.uint8 and int(qdq[q_node.input[2]]) == signed.zero_point
    assert relu.zero_point == 0  # non-negative: the whole uint8 grid above zero
    if signed_zero_point is not None:  # symmetric: [-M, M] around 128
        assert signed.zero_point == 128
        assert signed.scale == pytest.approx(np.abs(x).max() / 127, rel=1e-6)
    else:  # asymmetric: [min, max] with zero exactly representable
        lo, hi = x.min(), x.max()
        assert signed.scale == pytest.approx((hi - lo) / 255, rel=1e-6)
        assert signed.zero_point == round(-lo / signed.scale)
        assert signed.zero_point != 128


def test_ignored_layers_carry_no_qdq() -> None:
    model = conv_net()
    state, _ = quantize(model, images(16), ignored={"scope": ["conv2"]})
    conv2 = next(n for n in state.model.graph.node if n.name == "conv2")
    original = next(n for n in model.graph.node if n.name == "conv2")
    assert list(conv2.input) == list(original.input)
    assert list(conv2.output) == list(original.output)
    readers = [n for n in state.model.graph.node if set(n.input) & set(conv2.output)]
    assert all(n.op_type != "QuantizeLinear" for n in readers)


def test_ignored_operations_and_patterns() -> None:
    state, algorithm = quantize(conv_net(), images(16), ignored={"operations": ["Gemm"], "patterns": ["conv[2]"]})
    assert [layer.name for layer in state.plan.layers] == ["conv1"]
    assert set(algorithm.summary["ignored"]) == {"fc", "conv2"}


def test_input_model_bytes_are_unchanged_and_the_result_checks() -> None:
    model = conv_net()
    before = model.SerializeToString()
    state, _ = quantize(model, images(16))
    again = apply_plan(model, state.plan)
    assert model.SerializeToString() == before
    onnx.checker.check_model(again, full_check=True)
    assert again.SerializeToString() == state.model.SerializeToString()  # a pure function


def test_a_plan_is_refused_for_another_model() -> None:
    from aaq.errors import ModelError

    state, _ = quantize(conv_net(), images(8))
    with pytest.raises(ModelError, match="another model"):
        apply_plan(conv_net(seed=1), state.plan)


@pytest.mark.parametrize("build, shape, fused, float_ops", [
    (conv_net, (16, 3, 8, 8), {"QLinearConv": 2, "QGemm": 1}, {"Conv", "FusedConv", "Gemm"}),
    (mlp, (16, 16), {"QLinearMatMul": 2, "QGemm": 1}, {"MatMul", "Gemm"}),
], ids=["conv_net", "mlp"])
def test_onnxruntime_fuses_every_layer_into_an_integer_kernel(build, shape, fused, float_ops) -> None:
    x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    state, _ = quantize(build(), x)
    ops = optimized_op_types(state.model)
    assert {op: ops.count(op) for op in fused} == fused
    assert not float_ops & set(ops)


def test_a_graph_output_keeps_its_name_behind_an_output_quantizer() -> None:
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 3, 8, 8])
    y = mb.add_conv(x, 3, 4, name="conv")
    mb.add_output(y, ["N", 4, 8, 8])
    model = mb.build()
    state, _ = quantize(model, images(16), activations=MINMAX)
    assert state.plan.quantizers["conv_out"].site.graph_output
    assert [o.name for o in state.model.graph.output] == ["conv_out"]
    assert producers(state.model)["conv_out"].op_type == "DequantizeLinear"
    assert "QLinearConv" in optimized_op_types(state.model)
    np.testing.assert_allclose(run(state.model, images(16)), run(model, images(16)), atol=0.1)


def _per_sample(x: np.ndarray, fn) -> np.ndarray:
    return np.array([fn(sample.ravel()) for sample in x])


@pytest.mark.parametrize("preset, estimator, expected_lo, expected_hi", [
    ("performance", {"preset": "quantile"},
     lambda x: _per_sample(x, lambda s: np.quantile(s, 1e-4)).min(),
     lambda x: _per_sample(x, lambda s: np.quantile(np.abs(s), 1 - 1e-4)).mean()),
    ("performance", {"preset": "minmax", "max": {"aggregator": "mean"}},
     lambda x: x.min(), lambda x: _per_sample(x, lambda s: np.abs(s).max()).mean()),
    ("performance", {"preset": "minmax", "max": {"type": "abs_quantile", "outlier_prob": 0.01, "aggregator": "median"}},
     lambda x: x.min(), lambda x: np.median(_per_sample(x, lambda s: np.quantile(np.abs(s), 0.99)))),
    ("mixed", {"preset": "minmax", "min": {"type": "quantile", "aggregator": "median", "outlier_prob": 0.05}},
     lambda x: np.median(_per_sample(x, lambda s: np.quantile(s, 0.05))), lambda x: x.max()),
    ("mixed", {"preset": "quantile", "max": {"aggregator": "max"}},
     lambda x: _per_sample(x, lambda s: np.quantile(s, 1e-4)).mean(),
     lambda x: _per_sample(x, lambda s: np.quantile(s, 1 - 1e-4)).max()),
], ids=["quantile-preset", "POT-mean-max", "abs-quantile-median", "mixed-min-quantile", "mixed-quantile-max"])
def test_range_estimator_params_set_the_activation_range(preset, estimator, expected_lo, expected_hi) -> None:
    x = images(40, seed=4)
    state, _ = quantize(conv_net(), x, preset=preset, activations={"range_estimator": estimator})
    q = state.plan.quantizers["x"]
    lo, hi = expected_lo(x), expected_hi(x)
    if preset == "performance":  # signed symmetric: [-M, M] around 128
        assert q.zero_point == 128 and q.scale == pytest.approx(hi / 127, rel=1e-5)
    else:
        assert q.scale == pytest.approx((hi - lo) / 255, rel=1e-5)
        assert q.zero_point == round(-lo / q.scale)


def test_weight_abs_quantile_clips_each_channel() -> None:
    model = conv_net()
    state, _ = quantize(model, images(8), weights={"reduce_range": False,
                                                   "range_estimator": {"max": {"type": "abs_quantile",
                                                                              "outlier_prob": 0.1}}})
    w = initializers(model)[state.plan.layer("conv2").layer.weight]
    expected = np.quantile(np.abs(w).reshape(w.shape[0], -1), 0.9, axis=1) / 127
    np.testing.assert_allclose(state.plan.layer("conv2").weight.scale, expected, rtol=1e-6)
    assert (np.abs(state.plan.layer("conv2").weight.values) == 127).sum() > w.shape[0]  # clipped values saturate


def test_stat_subset_size_limits_the_calibration_samples() -> None:
    x = images(64, seed=5)
    x[40:] *= 10  # samples past the subset would widen every range
    state, _ = quantize(conv_net(), x, stat_subset_size=40, activations=MINMAX)
    assert state.plan.quantizers["x"].scale == pytest.approx(np.abs(x[:40]).max() / 127, rel=1e-6)


def test_quantize_activation_matmul_quantizes_both_operands() -> None:
    mb = ModelBuilder(0)
    a, b = mb.add_input("a", ["N", 4, 8]), mb.add_input("b", ["N", 8, 4])
    mb.add_output(mb.add_node("MatMul", [a, b], "attn"), ["N", 4, 4])
    model = mb.build()
    rng = np.random.default_rng(0)
    engine_inputs = {"a": rng.normal(0, 1, (16, 4, 8)).astype(np.float32),
                     "b": rng.normal(0, 1, (16, 8, 4)).astype(np.float32)}
    from aaq.algorithms.base import run_algorithm
    from aaq.algorithms.default import DefaultQuantization
    from aaq.errors import ModelError
    from aaq.state import PipelineState
    from helpers import FakeEngine

    def go(**params):
        algorithm = DefaultQuantization(DefaultQuantization.Params(**params))
        return run_algorithm(algorithm, PipelineState(model, model), FakeEngine(engine_inputs), progress=False)

    with pytest.raises(ModelError, match="both operands are activations"):
        go()
    state = go(quantize_activation_matmul=True)
    assert set(state.plan.quantizers) == {"a", "b"}
    assert "MatMulIntegerToFloat" in optimized_op_types(state.model)
