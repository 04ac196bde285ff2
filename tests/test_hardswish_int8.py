"""Hard-swish in int8 (``quantization.hardswish``): what ONNX Runtime runs, the numbers, and when it stays float."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from aaq.quantization.hardswish import shift_levels
from aaq.quantization.prepare import prepare_model
from aaq.quantization.qdq import apply_plan
from helpers import MINMAX, all_outputs, optimized_op_types, quantize, run
from models import ModelBuilder, add_hardswish, conv_hardswish_conv, feature_maps

INTEGER_PATH = ["QuantizeLinear", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConv", "DequantizeLinear"]


def affine_hardswish(scale: float = 1.7, shift: float | None = None) -> onnx.ModelProto:
    """Conv -> hard-swish -> Mul(scale) [-> Add(shift)] -> Flatten -> Gemm: a scalar affine no conv folds."""
    mb = ModelBuilder(1)
    x = mb.add_input("x", ["N", 16, 8, 8])
    h = add_hardswish(mb, mb.add_conv(x, 16, 8, name="conv1"))
    h = mb.add_node("Mul", [h, mb.add_initializer(np.array([scale], np.float32), "s")], "affine_scale")
    if shift is not None:
        h = mb.add_node("Add", [h, mb.add_initializer(np.array([shift], np.float32), "b")], "affine_shift")
    h = mb.add_node("Flatten", [h], "flatten", axis=1)
    mb.add_output(mb.add_gemm(h, 512, 10, name="fc"), ["N", 10])
    return mb.build(13)


def test_the_int8_hardswish_is_x_times_clip_x_plus_3_over_6_to_the_gates_rounding() -> None:
    """The Clip is the gate quantizer's saturation and the /6 its dequantization scale: exact but for 1/255."""
    model, x = conv_hardswish_conv(bias=-1.0), feature_maps()
    state, algorithm = quantize(model, x)
    (unit,) = state.plan.int8_hardswish
    assert algorithm.summary["int8_hardswish"] == [unit.name]
    mul = next(n for n in state.model.graph.node if n.op_type == "Mul")
    dequantized, gate = mul.input
    values = all_outputs(state.model, x, [dequantized, mul.output[0]])  # read out: no fusion, float semantics
    xs, product = values[dequantized], values[mul.output[0]]
    # the input quantizer's grid starts at -3 (hard-swish is 0 below): both ends of the clip are reached
    assert xs.min() == pytest.approx(-3, abs=0.02) and (xs > 3).any() and ((xs > -3) & (xs < 3)).any()
    exact = xs * np.clip(xs + 3, 0, 6) / 6
    assert np.all(np.abs(product - exact) <= np.abs(xs) * 0.5 / 255 + 1e-5)
    assert np.all(product[xs <= -3] == 0) and np.allclose(product[xs >= 3], xs[xs >= 3], rtol=1e-6)


def test_the_output_grid_spans_the_activations_own_range_with_twice_the_symmetric_resolution() -> None:
    """Hard-swish never goes below -0.375: its output quantizer starts there (its own zero point), not at -high,
    and the int8 model is closer to float than with the symmetric grid of the same high end."""
    model, x = conv_hardswish_conv(bias=-1.0), feature_maps()
    state, _ = quantize(model, x, activations=MINMAX)
    (unit,) = state.plan.int8_hardswish
    grid = state.plan.quantizers[unit.output]
    assert not grid.symmetric and -0.375 - grid.scale < grid.low <= -0.375
    product = all_outputs(model, x, [unit.output])[unit.output]  # the float activation, as the grid sees it
    assert grid.high >= product.max() and grid.scale < 0.55 * product.max() / 127
    symmetric = dataclasses.replace(grid, scale=grid.high / 127, zero_point=128, low=-128 * grid.high / 127,
                                    high=grid.high, symmetric=True)
    with_symmetric = dataclasses.replace(state.plan, quantizers={**state.plan.quantizers, unit.output: symmetric})
    assert with_symmetric.int8_hardswish == (unit,)
    f = run(model, x)
    errors = [np.square(run(apply_plan(model, p), x) - f).mean() for p in (state.plan, with_symmetric)]
    assert errors[0] < 0.9 * errors[1], errors


def test_a_positive_scale_after_the_hardswish_goes_into_the_gate() -> None:
    model, x = affine_hardswish(scale=1.7), feature_maps()
    state, _ = quantize(model, x)
    (unit,) = state.plan.int8_hardswish
    assert unit.nodes[1:] == ("affine_scale",) and unit.scale == pytest.approx(1.7)
    assert "QLinearMul" in optimized_op_types(state.model) and "Mul" not in optimized_op_types(state.model)
    mul = next(n for n in state.model.graph.node if n.op_type == "Mul")
    values = all_outputs(state.model, x, [mul.input[0], mul.output[0]])
    xs, product = values[mul.input[0]], values[mul.output[0]]
    exact = 1.7 * xs * np.clip(xs + 3, 0, 6) / 6
    assert np.all(np.abs(product - exact) <= 1.7 * np.abs(xs) * 0.5 / 255 + 1e-5)
    f, q = run(model, x), run(state.model, x)
    assert np.abs(f - q).max() < 0.05 * np.abs(f).max()


def test_a_shift_after_the_hardswish_is_whole_steps_of_the_output_grid_with_no_bias() -> None:
    """``+ b`` moves the product quantizer's zero point by ``b`` in steps: no op, and no error common to every
    element (what a second rounding on the same step would give)."""
    model, x = affine_hardswish(scale=1.7, shift=0.4), feature_maps()
    state, _ = quantize(model, x)
    (unit,) = state.plan.int8_hardswish
    output = state.plan.quantizers[unit.output]
    assert unit.nodes[1:] == ("affine_scale", "affine_shift") and unit.levels != 0
    assert unit.levels * output.scale == pytest.approx(0.4, rel=1e-6)
    assert "Add" not in optimized_op_types(state.model)[3:]  # only the +3 (QLinearAdd) before the QLinearMul
    mul = next(n for n in state.model.graph.node if n.op_type == "Mul")
    dequantize = next(n for n in state.model.graph.node
                      if n.op_type == "DequantizeLinear" and n.input[0] in
                      {q.output[0] for q in state.model.graph.node if q.input and q.input[0] == mul.output[0]})
    values = all_outputs(state.model, x, [mul.input[0], dequantize.output[0]])
    xs, got = values[mul.input[0]], values[dequantize.output[0]]
    exact = 1.7 * xs * np.clip(xs + 3, 0, 6) / 6 + 0.4
    on_grid = np.clip(np.round(exact / output.scale) + output.zero_point, 0, 255)
    on_grid = (on_grid - output.zero_point) * output.scale
    error = got - on_grid  # only the gate's rounding is left: at most one step, and no common offset
    assert np.abs(error).max() <= output.scale + 1e-6 and abs(error.mean()) < 0.05 * output.scale
    f, q = run(model, x), run(state.model, x)
    assert np.abs(f - q).max() < 0.05 * np.abs(f).max()
    # an edit of the output grid (a shared concat scale, say) breaks the whole steps: the activation goes float
    edited = dataclasses.replace(state.plan, quantizers={**state.plan.quantizers, unit.output: dataclasses.replace(
        output, scale=output.scale * 1.01)})
    assert edited.int8_hardswish == () and "HardSwish" in {n.op_type for n in apply_plan(model, edited).graph.node}


def test_a_shift_is_held_on_a_step_never_finer_than_the_observed_one() -> None:
    """A finer step would clip the top of the observed range: 13.6 steps become 13 coarser ones, not 14."""
    k, step = shift_levels(0.136, 0.01, 100)
    assert k == 13 and step == pytest.approx(0.136 / 13) and step > 0.01
    k, step = shift_levels(-0.136, 0.01, 100)
    assert k == -13 and step == pytest.approx(0.136 / 13)
    assert shift_levels(0.137, 0.01, 100) is None  # 13 steps would be 5.4 % coarser
    assert shift_levels(0.009, 0.01, 100) is None and shift_levels(0.136, 0.01, 250) is None


def test_a_shift_under_one_step_keeps_the_hardswish_float() -> None:
    model, x = affine_hardswish(scale=1.7, shift=1e-5), feature_maps()
    state, algorithm = quantize(model, x)
    assert [u.name for u in state.plan.hardswish] == [] and algorithm.summary["int8_hardswish"] == []
    assert "HardSwish" in {n.op_type for n in state.model.graph.node}


@pytest.mark.parametrize("case", ["negative scale", "graph output"])
def test_without_a_quantizer_feeding_every_reader_the_hardswish_stays_float(case: str) -> None:
    if case == "negative scale":
        model, x = affine_hardswish(scale=-0.5), feature_maps()
    else:
        model, x = conv_hardswish_conv(), feature_maps()
        model.graph.output.append(onnx.helper.make_tensor_value_info(model.graph.node[-2].output[0],
                                                                     onnx.TensorProto.FLOAT, ["N", 32, 8, 8]))
    state, algorithm = quantize(model, x)
    assert state.plan.hardswish == () and algorithm.summary["int8_hardswish"] == []
    assert "HardSwish" in {n.op_type for n in state.model.graph.node}
    assert "hard-swish" not in algorithm.summary["headline"]


def test_reverting_either_neighbour_puts_the_hardswish_back_in_float() -> None:
    model, x = conv_hardswish_conv(), feature_maps()
    state, _ = quantize(model, x)
    plan = state.plan
    for layer in ("conv1", "conv2"):
        reverted = plan.with_reverted([plan.group_of(layer).id])
        assert reverted.int8_hardswish == ()
        unit = plan.hardswish[0]
        assert reverted.describe()["hardswish"] == [{"nodes": [unit.name], "input": unit.input,
                                                     "output": unit.output, "int8": False}]
        qdq = apply_plan(model, reverted)
        kinds = optimized_op_types(qdq)
        assert "QLinearMul" not in kinds and "QLinearAdd" not in kinds
        assert np.abs(run(qdq, x) - run(model, x)).max() < 0.05 * np.abs(run(model, x)).max()
    assert plan.describe()["hardswish"][0]["int8"] is True


def test_below_opset_14_hardsigmoid_times_x_runs_in_int8() -> None:
    """Per-tensor weights keep opset 13: the hard-swish is x * HardSigmoid(x), rewritten the same way."""
    model, x = conv_hardswish_conv(), feature_maps()
    state, algorithm = quantize(model, x, weights={"granularity": "pertensor"})
    assert algorithm.summary["preparation"]["opset"] == 13
    (unit,) = state.plan.int8_hardswish
    nodes = {n.name: n.op_type for n in state.plan.model.graph.node}
    assert [nodes[name] for name in unit.nodes] == ["HardSigmoid", "Mul"]
    assert optimized_op_types(state.model) == INTEGER_PATH
    f, q = run(model, x), run(state.model, x)
    assert np.abs(f - q).max() < 0.05 * np.abs(f).max()
