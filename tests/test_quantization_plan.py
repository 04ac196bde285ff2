"""Layers, quantizer sites and groups; reverting a group is an edit of the plan that leaves float layers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from aaq.quantization.layers import DEFAULT_OPS, find_layout
from aaq.quantization.qdq import apply_plan
from models import ModelBuilder, conv_net
from helpers import images, quantize, run
from helpers import all_outputs


def branchy(seed: int = 0) -> onnx.ModelProto:
    """One tensor read by two convs, summed, then a third conv writing the graph output::

        x ─┬─ Conv a ─┐
           └─ Conv b ─┴─ Add ─ Relu ─ Conv c ─ y
    """
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 3, 8, 8])
    a = mb.add_conv(x, 3, 4, name="a")
    b = mb.add_conv(x, 3, 4, name="b")
    s = mb.add_relu(mb.add_node("Add", [a, b], "add"))
    y = mb.add_conv(s, 4, 4, name="c")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 4, 8, 8])
    return mb.build()


def qdq_nodes_touching(model: onnx.ModelProto, layer: str) -> list[str]:
    """Q/DQ nodes that write an input of ``layer`` or read its output."""
    node = next(n for n in model.graph.node if n.name == layer)
    return [n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and (set(n.output) & set(node.input) or set(n.input) & set(node.output))]


def test_conv_net_sites_sit_where_onnxruntime_fuses() -> None:
    layout = find_layout(conv_net(), DEFAULT_OPS)
    sites = {s.tensor: s for s in layout.sites}
    assert list(sites) == ["x", "relu3_out", "relu6_out", "fc_out"]
    assert sites["relu6_out"].consumers == (("flatten", 0),)  # moved up through Flatten
    assert sites["relu6_out"].repeats == (("flatten_out", ("fc", 0)),)  # and repeated before the Gemm
    assert sites["fc_out"].output and sites["fc_out"].owners == ("fc",)
    assert [(l.name, l.weight_axis) for l in layout.layers] == [("conv1", 0), ("conv2", 0), ("fc", 0)]


def test_a_tensor_feeding_two_convs_makes_one_group() -> None:
    state, _ = quantize(branchy(), images(32))
    groups = {g.layers: g for g in state.plan.groups}
    assert set(groups) == {("a", "b"), ("c",)}
    assert set(groups[("a", "b")].quantizers) == {"x", "a_out", "b_out"}  # input + output quantizers
    assert state.plan.group_of("b").id == groups[("a", "b")].id


def test_quantizing_add_moves_the_outputs_quantizers_into_its_group() -> None:
    state, _ = quantize(branchy(), images(32), quantize_ops=["Conv", "Add"])
    groups = {g.layers: set(g.quantizers) for g in state.plan.groups}
    assert groups == {("a", "b"): {"x"}, ("add",): {"a_out", "b_out"}, ("c",): {"relu5_out", "c_out"}}


def test_reverting_a_group_leaves_its_layers_exactly_float() -> None:
    model, x = branchy(), images(32)
    state, _ = quantize(model, x)
    plan = state.plan
    group = plan.group_of("a")
    reverted = plan.with_reverted([group.id])
    assert reverted is not plan and plan.reverted == frozenset() and reverted.reverted == {group.id}
    assert [g.id for g in reverted.quantized_groups] == [plan.group_of("c").id]
    qdq = apply_plan(model, reverted)
    for layer in ("a", "b"):
        assert qdq_nodes_touching(qdq, layer) == []
        original = next(n for n in model.graph.node if n.name == layer)
        assert list(next(n for n in qdq.graph.node if n.name == layer).input) == list(original.input)
    np.testing.assert_array_equal(all_outputs(qdq, x, ["a_out"])["a_out"],
                                  all_outputs(model, x, ["a_out"])["a_out"])
    assert qdq_nodes_touching(qdq, "c")  # the other group is still quantized


def test_a_reverted_layer_computes_the_float_layer_on_whatever_it_reads() -> None:
    model, x = branchy(), images(32)
    state, _ = quantize(model, x)
    qdq = apply_plan(model, state.plan.with_reverted([state.plan.group_of("c").id]))
    assert qdq_nodes_touching(qdq, "c") == []
    got = all_outputs(qdq, x, ["relu5_out", "y"])
    c = next(n for n in model.graph.node if n.name == "c")
    single = helper.make_model(helper.make_graph(
        [c], "c", [helper.make_tensor_value_info(c.input[0], TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(c.output[0], TensorProto.FLOAT, None)],
        [i for i in model.graph.initializer if i.name in c.input[1:]]),
        opset_imports=model.opset_import)
    np.testing.assert_allclose(got["y"], run(single, got["relu5_out"]), rtol=1e-6, atol=1e-6)


def test_reverting_everything_gives_the_float_model_back() -> None:
    model, x = conv_net(), images(16)
    state, _ = quantize(model, x)
    plan = state.plan.with_reverted(g.id for g in state.plan.groups)
    qdq = apply_plan(model, plan)
    assert not plan.quantized_groups
    assert not [n for n in qdq.graph.node if "Linear" in n.op_type]
    np.testing.assert_array_equal(run(qdq, x), run(model, x))


def test_unknown_group_ids_are_refused() -> None:
    state, _ = quantize(conv_net(), images(8))
    with pytest.raises(KeyError, match="no groups"):
        state.plan.with_reverted([99])


def test_describe_says_what_is_int8_with_which_parameters_and_why_the_rest_is_float() -> None:
    import json

    state, _ = quantize(conv_net(), images(8), ignored={"scope": ["conv2"]})
    plan = state.plan.with_reverted([0])
    described = json.loads(json.dumps(plan.describe({0: "reverted by the search"})))
    assert described["groups"][0]["reverted"] and not described["groups"][1]["reverted"]
    reverted_layers = set(plan.groups[0].layers)
    assert {name: why for name, why in described["float_layers"].items() if name in reverted_layers} == {
        name: "reverted by the search" for name in reverted_layers}
    assert described["float_layers"]["conv2"] == "ignored (scope)"
    by_tensor = {a["tensor"]: a for a in described["activations"]}
    for tensor, quantizer in plan.quantizers.items():
        assert by_tensor[tensor]["scale"] == quantizer.scale and by_tensor[tensor]["zero_point"] == quantizer.zero_point
    layer = next(l for l in described["layers"] if l["name"] == "fc")
    assert layer["int8"] == (plan.group_of("fc").id != 0)
    assert layer["weight"]["scale_range"][0] == float(plan.layer("fc").weight.scale.min())


def test_layer_discovery_rules() -> None:
    """ConvTranspose per-channel on axis 1; activation x activation MatMul only on request; int inputs skipped."""
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 4, 4, 4])
    w = mb.add_initializer(np.random.default_rng(0).normal(0, 1, (4, 2, 3, 3)).astype(np.float32))
    t = mb.add_node("ConvTranspose", [x, w], "deconv", pads=[1, 1, 1, 1])
    m = mb.add_node("MatMul", [t, t], "attn")
    mb.add_output(m, ["N", 2, 4, 4])
    model = mb.build()
    default = find_layout(model, DEFAULT_OPS)
    assert default.layers == () and "both operands are activations" in default.skipped["attn"]
    layout = find_layout(model, ["ConvTranspose", "MatMul"], activation_matmul=True)
    assert [(l.name, l.weight_axis, l.inputs) for l in layout.layers] == [("deconv", 1, (0,)),
                                                                          ("attn", None, (0, 1))]
    typed = find_layout(model, ["ConvTranspose"], elem_types={"x": TensorProto.FLOAT16})
    assert "not float32" in typed.skipped["deconv"]


def test_matmul_followed_by_a_constant_add_has_its_bias_corrected() -> None:
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 16])
    h = mb.add_matmul(x, 16, 8, name="mm")
    b = mb.add_initializer(np.zeros(8, np.float32), "bias")
    y = mb.add_node("Add", [h, b], "add")
    mb.add_output(y, ["N", 8])
    model = mb.build()
    x_data = np.random.default_rng(0).normal(1.0, 1, (64, 16)).astype(np.float32)
    state, _ = quantize(model, x_data, weights={"bits": 4})
    bias = state.plan.layer("mm").bias
    assert bias.slot.node == "add" and bias.original is not None and np.abs(bias.corrected).max() > 0
    add = next(n for n in state.model.graph.node if n.name == "add")
    corrected = numpy_helper.to_array(next(i for i in state.model.graph.initializer if i.name == add.input[1]))
    np.testing.assert_array_equal(corrected, bias.corrected)


def test_a_quantizer_shared_with_float_readers_is_widened_so_the_producer_still_fuses() -> None:
    """conv -> HardSigmoid -> Mul(conv, .) (hard-swish), with Mul quantized: the conv's output has a float
    reader besides Mul's quantizer; ORT fuses the conv only if one Q serves every reader."""
    from helpers import optimized_op_types

    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 3, 8, 8])
    c = mb.add_conv(x, 3, 4, name="conv")
    y = mb.add_node("Mul", [c, mb.add_node("HardSigmoid", [c], "gate", alpha=1 / 6, beta=0.5)], "hswish")
    mb.add_output(y, ["N", 4, 8, 8])
    model = mb.build()
    state, _ = quantize(model, images(32), quantize_ops=["Conv", "Mul"])
    site = state.plan.quantizers["conv_out"].site
    assert set(site.consumers) == {("gate", 0), ("hswish", 0)} and set(site.owners) == {"conv", "hswish"}
    assert [g.layers for g in state.plan.groups] == [("conv", "hswish")]
    assert {"QLinearConv", "QLinearMul"} <= set(optimized_op_types(state.model))
