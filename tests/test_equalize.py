"""Cross-layer equalization: same float outputs, matched per-channel weight ranges, less quantization error."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.equalize import equalize
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
