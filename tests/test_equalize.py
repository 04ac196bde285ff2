"""Cross-layer equalization: same float outputs, matched per-channel weight ranges, less quantization error."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from aaq.quantization.equalize import equalize
from aaq.quantization.prepare import prepare_model
from helpers import images, quantize, run
from models import ModelBuilder


def _imbalanced_chain(seed: int = 0, clip: bool = False) -> onnx.ModelProto:
    """conv -> Relu -> depthwise conv -> LeakyRelu -> conv -> PRelu -> conv, with channel ranges 100x apart."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 3, 8, 8])
    x = mb.add_conv(x, 3, 8, name="c1")
    mb.initializers[0].CopyFrom(onnx.numpy_helper.from_array(
        onnx.numpy_helper.to_array(mb.initializers[0]) * np.geomspace(0.02, 2.0, 8).reshape(8, 1, 1, 1).astype(
            np.float32), mb.initializers[0].name))
    x = mb.add_node("Clip", [x, mb.add_initializer(np.array(0, np.float32), "c"),
                             mb.add_initializer(np.array(6, np.float32), "c")]) if clip else mb.add_relu(x)
    x = mb.add_node("LeakyRelu", [mb.add_conv(x, 8, 8, name="dw", group=8)], alpha=0.1)
    x = mb.add_conv(x, 8, 8, name="c3", kernel=1)
    slope = mb.add_initializer(np.full((8, 1, 1), 0.25, np.float32), "slope")
    y = mb.add_conv(mb.add_node("PRelu", [x, slope]), 8, 4, name="c4")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 4, 8, 8])
    return mb.build()


def _weight(model: onnx.ModelProto, node: str) -> np.ndarray:
    index = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    return onnx.numpy_helper.to_array(inits[index[node].input[1]])


def test_equalized_model_computes_the_same_to_1e5_relative() -> None:
    model = _imbalanced_chain()
    result = equalize(model)
    assert result.pairs == [("c1", "dw"), ("dw", "c3"), ("c3", "c4")]
    x = images(16)
    before, after = run(model, x), run(result.model, x)
    assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
    assert not np.array_equal(_weight(model, "c1"), _weight(result.model, "c1"))


def test_the_first_pair_gets_matching_per_channel_ranges() -> None:
    model = _imbalanced_chain()
    result = equalize(model)
    r1 = np.abs(_weight(result.model, "c1")).reshape(8, -1).max(axis=1)
    spread_before = np.abs(_weight(model, "c1")).reshape(8, -1).max(axis=1)
    assert spread_before.max() / spread_before.min() > 50
    assert r1.max() / r1.min() < spread_before.max() / spread_before.min() / 5


def test_clip_chain_is_left_alone_with_the_reason() -> None:
    result = equalize(_imbalanced_chain(clip=True))
    assert ("c1", "dw") not in result.pairs
    assert "Clip" in result.skipped["c1"]


def test_quantized_error_drops_with_equalization() -> None:
    model, x = _imbalanced_chain(), images(64)
    reference = run(model, x)
    errors = {}
    for cle in (False, True):
        state, algo = quantize(model, x, cross_layer_equalization=cle, bias_correction=False)
        errors[cle] = float(np.mean((run(state.model, x) - reference) ** 2))
    assert errors[True] < 0.7 * errors[False], errors
    assert algo.summary["cross_layer_equalization"]["pairs"]


def test_no_equalizable_pair_is_a_note_not_an_error() -> None:
    mb = ModelBuilder(1)
    x = mb.add_input("x", ["N", 3, 8, 8])
    y = mb.add_relu(mb.add_conv(x, 3, 4, name="only"))
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 4, 8, 8])
    _, algo = quantize(mb.build(), images(16), cross_layer_equalization=True)
    record = algo.summary["cross_layer_equalization"]
    assert record["pairs"] == [] and "changed nothing" in record["note"]


def _bn_chain(kernel2: int = 1, seed: int = 0) -> onnx.ModelProto:
    """conv -> BatchNorm (channels 0-3 with a high beta over a small gamma) -> Relu -> conv (1x1: no padding)."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 3, 8, 8])
    x = mb.add_conv(x, 3, 8, name="c1")
    beta = np.array([4.0, 3.0, 5.0, 2.5, 0.0, 0.1, -1.0, 0.2], np.float32)
    gamma = np.array([0.5, 0.4, 0.8, 0.3, 1.0, 1.0, 0.5, 1.0], np.float32)
    x = mb.add_node("BatchNormalization", [x, mb.add_initializer(gamma, "gamma"), mb.add_initializer(beta, "beta"),
                                           mb.add_initializer(np.zeros(8, np.float32), "mean"),
                                           mb.add_initializer(np.ones(8, np.float32), "var")], "bn")
    x = mb.add_relu(x)
    y = mb.add_conv(x, 8, 4, kernel=kernel2, name="c2")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 4, 8, 8])
    return mb.build()


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _with_output(model: onnx.ModelProto, op: str, which: str = "output") -> onnx.ModelProto:
    """The model with the first ``op`` node's input or output as one more graph output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.op_type == op)
    name = node.output[0] if which == "output" else node.input[0]
    out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def test_high_bias_is_absorbed_into_the_next_conv_and_the_outputs_stay_the_same() -> None:
    model = _bn_chain()
    prepared = prepare_model(model)
    assert set(prepared.bn_moments) == {"c1"}
    x = (0.1 * images(16)).astype(np.float32)  # small inputs: the pre-activation stays near beta
    pre = _outputs(_with_output(model, "Relu", "input"), x)[1]
    c = np.maximum(0.0, prepared.bn_moments["c1"][0] - 3 * prepared.bn_moments["c1"][1])
    assert (pre >= c.reshape(1, -1, 1, 1)).all(axis=(0, 2, 3))[c > 0].all()  # the ReLU is not crossed
    plain = equalize(prepared.model, prepared.bn_moments, absorb_high_bias=False)
    absorbed = equalize(prepared.model, prepared.bn_moments)
    assert plain.absorbed == {} and absorbed.absorbed == {"c1": 4}
    before = run(model, x)
    for result in (plain, absorbed):
        after = _outputs(result.model, x)[0]
        assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
    # what it buys: the high channels' range between the convs shrinks by c (in equalized units)
    wide, narrow = (_outputs(_with_output(r.model, "Relu"), x)[-1] for r in (plain, absorbed))
    assert (narrow[:, :4].max(axis=(0, 2, 3)) < 0.6 * wide[:, :4].max(axis=(0, 2, 3))).all()
    np.testing.assert_allclose(narrow[:, 4:], wide[:, 4:], rtol=1e-5, atol=1e-6)


def test_no_absorption_into_a_padded_conv_or_without_a_folded_batchnorm() -> None:
    padded = prepare_model(_bn_chain(kernel2=3))
    assert equalize(padded.model, padded.bn_moments).absorbed == {}
    unfolded = prepare_model(_bn_chain())
    assert equalize(unfolded.model, {}).absorbed == {}
