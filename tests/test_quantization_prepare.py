"""Model preparation (opset, BatchNorm folding, constants, names, shape inference) and the ignored scope."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from aaq.errors import ModelError, SpecError
from aaq.quantization.ignored import resolve_ignored
from aaq.quantization.prepare import prepare_model
from models import ModelBuilder, conv_net
from helpers import images, quantize, run


def conv_bn_net(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> BatchNorm -> Relu -> Conv -> BatchNorm -> GlobalAveragePool -> Flatten -> Gemm -> y"""
    mb = ModelBuilder(seed)
    rng = np.random.default_rng(seed + 10)
    x = mb.add_input("x", ["N", 3, 8, 8])
    for i, (cin, cout) in enumerate([(3, 8), (8, 8)]):
        x = mb.add_conv(x, cin, cout, name=f"conv{i}", bias=i == 0)
        params = [rng.uniform(0.5, 2.0, cout), rng.normal(0, 0.5, cout), rng.normal(0, 0.5, cout),
                  rng.uniform(0.2, 3.0, cout)]
        names = [mb.add_initializer(p.astype(np.float32), "bn") for p in params]
        x = mb.add_node("BatchNormalization", [x, *names], f"bn{i}", epsilon=1e-3)
        if i == 0:
            x = mb.add_relu(x)
    x = mb.add_node("Flatten", [mb.add_node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    y = mb.add_gemm(x, 8, 4, name="fc")
    mb.add_output(y, ["N", 4])
    return mb.build(opset)


def test_an_opset_11_model_with_batchnorm_quantizes_and_runs() -> None:
    model, x = conv_bn_net(), images(64)
    before = model.SerializeToString()
    state, algorithm = quantize(model, x)
    qdq = state.model
    onnx.checker.check_model(qdq, full_check=True)
    assert next(o.version for o in qdq.opset_import if o.domain == "") >= 13
    assert not [n for n in qdq.graph.node if n.op_type == "BatchNormalization"]
    assert any(n.op_type == "DequantizeLinear" and n.attribute for n in qdq.graph.node)  # per-channel axis
    f, q = run(model, x), run(qdq, x)
    assert np.abs(f - q).max() < 0.05 * np.abs(f).max()
    assert algorithm.summary["preparation"] == {"opset_from": 11, "opset": 13, "folded_batchnorms": ["bn0", "bn1"],
                                                "simplified": {}, "shape_inference": True}
    assert model.SerializeToString() == before


def test_preparation_keeps_what_the_model_computes_and_its_tensor_names() -> None:
    model, x = conv_bn_net(), images(16)
    prepared = prepare_model(model).model
    np.testing.assert_allclose(run(prepared, x), run(model, x), rtol=1e-4, atol=1e-5)
    original = {o for n in model.graph.node for o in n.output}
    assert {o for n in prepared.graph.node for o in n.output} <= original
    conv0 = next(n for n in prepared.graph.node if n.name == "conv0")
    assert conv0.output[0] == "bn0_out"  # the folded conv took over its BatchNorm's output


def test_failing_shape_inference_does_not_stop_quantization(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] made to fail")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    state, algorithm = quantize(conv_bn_net(), images(16))
    assert algorithm.summary["preparation"]["shape_inference"] is False
    assert len(state.plan.layers) == 3


def test_constant_weights_unnamed_nodes_and_identities_are_prepared() -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["wc"], value=w),
             helper.make_node("Identity", ["wc"], ["wi"]),
             helper.make_node("MatMul", ["x", "wi"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    prepared = prepare_model(model).model
    assert [(n.op_type, n.name) for n in prepared.graph.node] == [("MatMul", "MatMul_0")]
    x = np.random.default_rng(1).normal(0, 1, (16, 4)).astype(np.float32)
    state, _ = quantize(model, x)
    assert [layer.name for layer in state.plan.layers] == ["MatMul_0"]


def test_a_model_that_does_not_check_names_why() -> None:
    model = conv_net()
    model.graph.node[1].input[0] = "missing"
    with pytest.raises(ModelError, match="does not pass the ONNX checker"):
        prepare_model(model)


def test_ignored_entries_that_match_nothing_are_reported_together() -> None:
    with pytest.raises(SpecError) as info:
        resolve_ignored(conv_net(), {"scope": ["conv1", "conv_2"], "patterns": ["fcc.*", "(bad"],
                                     "operations": ["Gemm", "Convv"]})
    problems = dict(info.value.problems)
    assert set(problems) == {"ignored.scope[1]", "ignored.patterns[0]", "ignored.patterns[1]",
                             "ignored.operations[1]"}
    assert "nearest: 'conv2'" in problems["ignored.scope[1]"]
    assert "not a regular expression" in problems["ignored.patterns[1]"]
    assert "'Convv'" in problems["ignored.operations[1]"] and "'Conv'" in problems["ignored.operations[1]"]


def test_ignored_resolves_names_patterns_and_types() -> None:
    reasons = resolve_ignored(conv_net(), {"scope": ["fc"], "patterns": ["conv[12]"], "operations": ["Relu"]})
    assert reasons == {"fc": "scope", "conv1": "pattern 'conv[12]'", "conv2": "pattern 'conv[12]'",
                       "relu3": "operation Relu", "relu6": "operation Relu"}


def test_ignoring_a_folded_batchnorm_is_not_an_error() -> None:
    ignored = {"scope": ["bn1"], "operations": ["BatchNormalization"]}
    state, algorithm = quantize(conv_bn_net(), images(16), ignored=ignored)
    assert len(state.plan.layers) == 3
    assert algorithm.summary["ignored"] == {"bn1": "scope", "bn0": "operation BatchNormalization"}


def test_pertensor_weights_need_no_opset_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import version_converter

    def broken(model, version):
        raise RuntimeError("No Adapter For Custom op")

    monkeypatch.setattr(version_converter, "convert_version", broken)
    with pytest.raises(ModelError, match="cannot convert the model from opset 11 to 13: No Adapter.*pertensor"):
        quantize(conv_bn_net(), images(8))
    state, algorithm = quantize(conv_bn_net(), images(32), weights={"granularity": "pertensor"})
    assert algorithm.summary["preparation"]["opset"] == 11
    onnx.checker.check_model(state.model, full_check=True)
    f, q = run(conv_bn_net(), images(32)), run(state.model, images(32))
    assert np.abs(f - q).max() < 0.1 * np.abs(f).max()


def _affine_net(kind: str) -> onnx.ModelProto:
    """Convs with per-channel / scalar affine ops around them, the way PP-LCNet and SE blocks export."""
    mb = ModelBuilder(7)
    rng = np.random.default_rng(8)
    x = mb.add_input("x", ["N", 4, 8, 8])

    def const(shape, low=0.5, high=1.5):
        return mb.add_initializer(rng.uniform(low, high, shape).astype(np.float32), "c")

    if kind == "after_conv":  # Conv -> Mul(per channel, constant first) -> Add(Reshape(bias)) -> Sub -> Div
        h = mb.add_conv(x, 4, 6, name="conv", bias=False)
        h = mb.add_node("Mul", [const((6, 1, 1)), h], "mul")
        shape = mb.add_initializer(np.array([1, 6, 1, 1], np.int64), "shape")
        h = mb.add_node("Add", [h, mb.add_node("Reshape", [const((6,), -1, 1), shape], "reshape")], "add")
        h = mb.add_node("Div", [mb.add_node("Sub", [h, const((1,))], "sub"), const(())], "div")
    elif kind == "before_1x1":  # Mul -> Add (per input channel) -> Conv 1x1, no padding: both fold
        h = mb.add_node("Add", [mb.add_node("Mul", [x, const((1, 4, 1, 1))], "mul"), const((4, 1, 1), -1, 1)], "add")
        h = mb.add_conv(h, 4, 6, kernel=1, name="conv")
    elif kind == "before_padded":  # Add -> Mul -> padded grouped Conv: only the Mul folds
        h = mb.add_node("Mul", [mb.add_node("Add", [x, const((1,), -1, 1)], "add"), const((1, 4, 1, 1))], "mul")
        h = mb.add_conv(h, 4, 8, kernel=3, name="conv", group=2)
    else:  # Mul -> Add -> padded Conv: the shift cannot fold, so nothing does
        h = mb.add_node("Add", [mb.add_node("Mul", [x, const((1,))], "mul"), const((1,), -1, 1)], "add")
        h = mb.add_conv(h, 4, 6, kernel=3, name="conv")
    mb.add_output(h, ["N", None, 8, 8])
    return mb.build(13)


@pytest.mark.parametrize("kind, removed, kept", [
    ("after_conv", {"mul", "add", "reshape", "sub"}, ["Conv"]),
    ("before_1x1", {"mul", "add"}, ["Conv"]),
    ("before_padded", {"mul"}, ["Add", "Conv"]),
    ("shift_before_padded", set(), ["Mul", "Add", "Conv"]),
])
def test_affine_ops_around_convs_fold_exactly(kind: str, removed: set, kept: list) -> None:
    model = _affine_net(kind)
    before = model.SerializeToString()
    x = np.random.default_rng(0).normal(0, 1, (4, 4, 8, 8)).astype(np.float32)
    prepared = prepare_model(model)
    assert set(prepared.simplified) == removed | ({"div"} if kind == "after_conv" else set())
    assert set(prepared.simplified) <= set(prepared.removed_nodes)
    assert [n.op_type for n in prepared.model.graph.node] == kept
    np.testing.assert_allclose(run(prepared.model, x), run(model, x), rtol=1e-4, atol=1e-5)
    assert prepared.model.graph.node[-1].output[0] == model.graph.output[0].name
    assert model.SerializeToString() == before


@pytest.mark.parametrize("form", ["div", "sixth", "div_first"])
def test_a_decomposed_hardswish_becomes_one_op_and_keeps_its_output_name(form: str) -> None:
    from models import conv_hardswish_conv

    model = conv_hardswish_conv(form=form, opset=11)
    x = np.random.default_rng(0).normal(0, 2, (4, 16, 8, 8)).astype(np.float32)
    prepared = prepare_model(model)
    assert prepared.summary()["opset"] == 14
    kinds = [n.op_type for n in prepared.model.graph.node]
    assert kinds == ["Conv", "HardSwish", "Conv"]
    hardswish = prepared.model.graph.node[1]
    original_outputs = {o for n in model.graph.node for o in n.output}
    assert hardswish.output[0] in original_outputs
    assert sorted(prepared.simplified.values()) == (["Add", "Clip", "Div"] if form == "div_first" else ["Add", "Clip", "Mul"])
    np.testing.assert_allclose(run(prepared.model, x), run(model, x), rtol=1e-4, atol=1e-5)


def test_a_hardswish_whose_parts_are_read_elsewhere_is_left_alone() -> None:
    from models import add_hardswish

    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 4])
    y = add_hardswish(mb, x)
    mb.add_output(y, ["N", 4])
    mb.add_output(mb.nodes[1].output[0], ["N", 4])  # the Clip is a graph output too
    prepared = prepare_model(mb.build(13))
    assert [n.op_type for n in prepared.model.graph.node] == ["Add", "Clip", "Mul", "Div"]
    assert prepared.summary()["opset"] == 13
