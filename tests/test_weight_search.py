"""Weight-range search by output error: the gram statistic is exact, and the searched ranges lower layer error."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.graph import prefix_model
from aaq.quantization.qdq import apply_plan
from aaq.quantization.weight_search import gram_requests, waves
from aaq.state import model_digest
from aaq.statistics.collector import collect_statistics
from aaq.statistics.requests import StatisticRequest, StatisticsNeeds
from helpers import FakeEngine, all_outputs, images, quantize, run
from models import ModelBuilder


def _heavy_tailed_convs(seed: int = 0) -> onnx.ModelProto:
    """conv(3->8, stride 2) -> Relu -> conv(8->8) -> y, weights with a few large outliers per channel."""
    mb = ModelBuilder(seed)
    rng = np.random.default_rng(seed)
    x = mb.add_input("x", ["N", 3, 8, 8])
    x = mb.add_relu(mb.add_node("Conv", [x, mb.add_initializer(rng.standard_t(2, (8, 3, 3, 3)).astype(np.float32))],
                                "c1", pads=[1, 1, 1, 1], strides=[2, 2]))
    w2 = rng.laplace(0, 0.1, (8, 8, 3, 3)).astype(np.float32)
    w2[:, :, 1, 1] *= 12.0
    y = mb.add_node("Conv", [x, mb.add_initializer(w2)], "c2", pads=[1, 1, 1, 1])
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 8, 4, 4])
    return mb.build()


def test_conv_gram_equals_the_direct_patch_sum() -> None:
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 4, 5, 5])
    mb.nodes.append(helper.make_node("Identity", [x], ["y"], name="id"))
    mb.add_output("y", ["N", 4, 5, 5])
    model, data = mb.build(), images(6)[:, :, :5, :5].repeat(2, axis=1)[:, :4]
    patch = (3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 2)  # 3x3, stride 2, pad 1, 2 groups
    request = StatisticRequest("y", "gram", "sum", patch=patch)
    got = collect_statistics(FakeEngine(data, batch_size=4), model, [request], 6, progress=False)[request]
    padded = np.pad(data, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 18, 18))
    for n in range(6):
        for i in range(0, 5, 2):
            for j in range(0, 5, 2):
                window = padded[n, :, i:i + 3, j:j + 3]
                for g in range(2):
                    v = window[2 * g:2 * g + 2].reshape(-1).astype(np.float64)
                    expected[g] += np.outer(v, v)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_matmul_gram_is_xtx_over_rows() -> None:
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 3, 5])
    mb.nodes.append(helper.make_node("Identity", [x], ["y"], name="id"))
    mb.add_output("y", ["N", 3, 5])
    data = np.random.default_rng(1).normal(0, 1, (7, 3, 5)).astype(np.float32)
    request = StatisticRequest("y", "gram", "sum")
    got = collect_statistics(FakeEngine(data, batch_size=3), mb.build(), [request], 7, progress=False)[request]
    rows = data.reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(got[0], rows.T @ rows, rtol=1e-5)


def _layer_error(model: onnx.ModelProto, quantized: onnx.ModelProto, x: np.ndarray) -> float:
    """Mean square error of the quantized model's output."""
    reference = all_outputs(model, x, ["y"])["y"]
    return float(np.mean((run(quantized, x) - reference) ** 2))


def test_searched_ranges_lower_the_output_error_and_clip_some_channels() -> None:
    """4-bit weights, where weight rounding dominates the error (at 8 bits on this model min/max is already best)."""
    model, x = _heavy_tailed_convs(), images(64)
    weights = {"bits": 4, "reduce_range": False, "granularity": "perchannel",
               "range_estimator": {"max": {"type": "abs_max", "outlier_prob": 0.0001}}}
    errors = {}
    for enabled in (False, True):
        state, algo = quantize(model, x, bias_correction=False, weights=weights,
                               weight_range_search={"enabled": enabled, "num_samples": 32, "time_budget": 60,
                                                    "margin": 0.0})  # the search itself, no margin
        errors[enabled] = _layer_error(model, state.model, x)
    record = algo.summary["weight_range_search"]
    assert set(record["layers"]) == {"c1", "c2"}
    assert sum(r["clipped_channels"] for r in record["layers"].values()) > 0
    assert errors[True] < 0.9 * errors[False], errors
    assert all(r["error_reduction"] >= 0 for r in record["layers"].values())


def test_searched_plan_is_applied_and_reverts_cleanly() -> None:
    model, x = _heavy_tailed_convs(), images(32)
    state, _ = quantize(model, x, weight_range_search={"enabled": True, "num_samples": 16, "time_budget": 60})
    reverted = state.plan.with_reverted(g.id for g in state.plan.groups)
    np.testing.assert_allclose(run(apply_plan(model, reverted), x), run(model, x), rtol=1e-5, atol=1e-6)


FOUR_BITS = {"bits": 4, "reduce_range": False, "granularity": "perchannel",
             "range_estimator": {"max": {"type": "abs_max", "outlier_prob": 0.0001}}}


def test_each_layer_reads_its_inputs_from_the_prefix_with_the_ranges_searched_so_far() -> None:
    model, x = _heavy_tailed_convs(), images(64)
    search = {"enabled": True, "num_samples": 32, "time_budget": 60, "margin": 0.0}
    state, algo = quantize(model, x, bias_correction=False, weights=FOUR_BITS, weight_range_search=search)
    record = algo.summary["weight_range_search"]
    assert record["passes"] == 2 and not record["layers"]["c1"]["kept_min_max"], record
    plain, _ = quantize(model, x, bias_correction=False, weights=FOUR_BITS)
    searched_c1 = next(layer for layer in state.plan.layers if layer.name == "c1")
    prefix = plain.plan.with_layers([searched_c1])  # c1 searched, c2 still min/max: what c2's pass must read
    quantized = apply_plan(prefix.model, prefix)
    request = gram_requests(prefix, quantized)["c2"]
    cut = prefix_model(quantized, [request.tensor])  # the pass runs only what c2's input needs
    assert "c2" not in {n.name for n in cut.graph.node} and "c1" in {n.name for n in cut.graph.node}
    needs = StatisticsNeeds(cut, model_digest(cut), (request,), 32)
    read = state.statistics.values(needs)[request]  # a KeyError if c2's inputs came from a min/max prefix
    expected = collect_statistics(FakeEngine(x, batch_size=16), quantized, [request], 32, progress=False)[request]
    np.testing.assert_allclose(read, expected, rtol=1e-6)


def test_a_layer_keeps_min_max_unless_the_search_beats_the_margin() -> None:
    model, x = _heavy_tailed_convs(), images(64)
    plain, _ = quantize(model, x, bias_correction=False, weights=FOUR_BITS)
    strict, algo = quantize(model, x, bias_correction=False, weights=FOUR_BITS,
                            weight_range_search={"enabled": True, "num_samples": 32, "time_budget": 60, "margin": 1.0})
    layers = algo.summary["weight_range_search"]["layers"]
    assert layers and all(r["kept_min_max"] and r["error_reduction"] > 0 for r in layers.values()), layers
    for a, b in zip(plain.plan.layers, strict.plan.layers):
        np.testing.assert_array_equal(a.weight.scale, b.weight.scale)


def test_waves_put_independent_layers_together_and_a_consumer_after_them() -> None:
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 3, 8, 8])
    a = mb.add_conv(x, 3, 4, name="a")
    b = mb.add_conv(x, 3, 4, name="b")
    y = mb.add_conv(mb.add_relu(mb.add_node("Add", [a, b])), 4, 4, name="c")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 4, 8, 8])
    state, _ = quantize(mb.build(), images(16))
    assert waves(state.plan, ["c", "b", "a"]) == [["a", "b"], ["c"]]
