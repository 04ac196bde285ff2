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
from test_default_quantization import images, quantize, run


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
                                                "shape_inference": True}
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
