"""Histogram range estimators: kl and percentile thresholds, the streaming histogram, DefaultQuantization with them."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from aaq.algorithms.base import run_algorithm
from aaq.algorithms.default import DefaultQuantization
from aaq.errors import SpecError
from aaq.pipeline import Pipeline
from aaq.quantization.presets import resolve_config
from aaq.quantization.thresholds import histogram_range, kl_bounds, kl_threshold, percentile_bounds
from aaq.state import PipelineState
from helpers import MINMAX, TINY, FakeEngine, quantize, run
from models import ModelBuilder

ort.set_default_logger_severity(3)


def reference_kl(hist: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT's search written out window by window: the divergence of every threshold candidate."""
    hist = hist.astype(np.float64)
    out = []
    for end in range(levels, len(hist) + 1):
        p = hist[:end].copy()
        p[-1] += hist[end:].sum()
        cuts = np.arange(levels + 1) * end // levels
        q = np.zeros(end)
        for a, b in zip(cuts[:-1], cuts[1:]):
            occupied = p[a:b] > 0
            if occupied.any():
                q[a:b][occupied] = hist[a:b].sum() / occupied.sum()
        if q.sum() == 0:
            out.append(np.inf)
            continue
        keep = p > 0
        pn, qn = p[keep] / p.sum(), q[keep] / q.sum()
        qn = np.where(qn > 0, qn, 1e-4)
        out.append(float(np.sum(pn * np.log(pn / qn))))
    return np.array(out)


def test_the_kl_search_equals_the_window_by_window_reference() -> None:
    from aaq.quantization.thresholds import _divergences  # noqa: PLC2701  (same package's helper, under test)

    rng = np.random.default_rng(0)
    values = np.concatenate([np.abs(rng.standard_t(3, 50_000)), rng.uniform(30, 40, 5)])
    hist = np.histogram(values, 600, (0, values.max()))[0]
    hist[100:110] = 0  # empty bins inside the window
    for levels in (128, 256):
        fast = _divergences(hist.astype(np.float64), 0, np.arange(levels, 601), levels)
        np.testing.assert_allclose(fast, reference_kl(hist, levels), rtol=1e-7, atol=1e-9)


def test_kl_clips_rare_outliers_near_the_bulk_bound() -> None:
    """Uniform bulk on [0, 1] (signed: [-1, 1]) and 0.01 % outliers up to 6: the threshold lands on the bulk edge."""
    rng = np.random.default_rng(1)
    unsigned = np.concatenate([rng.uniform(0, 1, 200_000), rng.uniform(4, 6, 20)])
    hist = np.histogram(unsigned, 2048, (0, unsigned.max()))[0]
    for levels in (128, 256):
        threshold = kl_threshold(hist, (0.0, unsigned.max()), levels)
        assert 1.0 <= threshold <= 1.07, (levels, threshold)
        assert threshold < unsigned.max() / 5
    signed = np.concatenate([rng.uniform(-1, 2, 200_000), [-4.0, -3.5, 5.0, 6.0]])
    hist = np.histogram(signed, 2048, (signed.min(), signed.max()))[0]
    lo, hi = kl_bounds(hist, (signed.min(), signed.max()), 256)
    assert -1.3 <= lo <= -1.0 and 2.0 <= hi <= 2.3, (lo, hi)  # a flat bulk pins both edges loosely; outliers at -4, 6


def test_kl_on_a_gaussian_keeps_about_four_sigma() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([np.abs(rng.normal(0, 1, 500_000)), rng.uniform(20, 40, 50)])
    threshold = kl_threshold(np.histogram(values, 2048, (0, values.max()))[0], (0.0, values.max()), 128)
    assert 3.5 < threshold < 5.0  # TensorRT's int8 thresholds of a unit Gaussian, far below the max of ~40


def test_percentile_equals_numpy_within_one_bin() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_t(2, 300_000)
    magnitude = np.abs(x)
    bins = 2048
    width = magnitude.max() / bins
    hist = np.histogram(magnitude, bins, (0, magnitude.max()))[0]
    for p in (99.0, 99.9, 99.999):
        _, upper = percentile_bounds(hist, (0.0, magnitude.max()), None, p)
        assert abs(upper - np.percentile(magnitude, p)) <= width, p
    width = (x.max() - x.min()) / bins
    hist = np.histogram(x, bins, (x.min(), x.max()))[0]
    lower, upper = percentile_bounds(hist, (x.min(), x.max()), 0.05, 99.95)
    assert abs(lower - np.percentile(x, 0.05)) <= width
    assert abs(upper - np.percentile(x, 99.95)) <= width


def outlier_model():
    """x[N,64] -> MatMul -> Relu -> MatMul -> Tanh -> Gemm -> y[N,8]: the Tanh saturates what outliers become."""
    mb = ModelBuilder(3)
    x = mb.add_input("x", ["N", 64])
    h = mb.add_relu(mb.add_matmul(x, 64, 64, name="mm1"))
    h = mb.add_node("Tanh", [mb.add_matmul(h, 64, 64, name="mm2", scale=0.05)])
    y = mb.add_gemm(h, 64, 8, name="fc")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 8])
    return mb.build()


def outlier_data(n: int, seed: int) -> np.ndarray:
    """Unit Gaussian inputs, 0.02 % of the values planted at +-30..60 (they widen every min/max range)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 64)).astype(np.float32)
    planted = rng.random(x.shape) < 2e-4
    x[planted] = rng.choice([-1, 1], planted.sum()) * rng.uniform(30, 60, planted.sum())
    return x


@pytest.mark.parametrize("preset", ["performance", "mixed"])
@pytest.mark.parametrize("estimator", [{"preset": "kl"}, {"preset": "percentile", "percentile": 99.9}],
                         ids=["kl", "percentile"])
def test_histogram_estimators_bring_outputs_closer_to_float_than_minmax(preset, estimator) -> None:
    model, calibration, held_out = outlier_model(), outlier_data(300, 0), outlier_data(1000, 1)
    reference = run(model, held_out)
    minmax, _ = quantize(model, calibration, preset=preset, activations=MINMAX)
    engine = FakeEngine(calibration, 16)
    algorithm = DefaultQuantization(DefaultQuantization.Params(preset=preset,
                                                               activations={"range_estimator": estimator}))
    state = run_algorithm(algorithm, PipelineState(float_model=model, model=model), engine, progress=False)
    assert len(engine.calls) == 2  # the observed ranges, then every histogram at once
    assert sorted(engine.calls[1]) == ["relu2_out", "tanh4_out", "x"]
    # mean absolute error over held-out samples (planted outliers included): 0.045-0.049 vs 0.114-0.125
    error = np.abs(run(state.model, held_out) - reference).mean()
    minmax_error = np.abs(run(minmax.model, held_out) - reference).mean()
    assert error < 0.5 * minmax_error, (error, minmax_error)
    assert state.plan.quantizers["x"].high < minmax.plan.quantizers["x"].high / 3  # the outliers are clipped
    # the output quantizer keeps the full observed range
    assert state.plan.quantizers["fc_out"].scale == minmax.plan.quantizers["fc_out"].scale
    assert algorithm.summary["range_estimator"] == estimator["preset"]


def test_the_first_pass_comes_from_the_cache() -> None:
    """After a minmax-estimator run on the same samples only the histograms are collected."""
    model, x = outlier_model(), outlier_data(100, 2)
    engine = FakeEngine(x, 32)
    state = PipelineState(float_model=model, model=model)
    minmax = DefaultQuantization(DefaultQuantization.Params(activations=MINMAX))
    state = run_algorithm(minmax, state, engine, progress=False)
    kl = DefaultQuantization(DefaultQuantization.Params(activations={"range_estimator": {"preset": "kl"}}))
    run_algorithm(kl, state, engine, progress=False)
    assert len(engine.calls) == 2


def test_symmetric_ranges_use_256_levels_for_unsigned_and_128_for_signed_tensors() -> None:
    config = resolve_config("performance", {}, {"range_estimator": {"preset": "kl"}})
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.uniform(0, 1, 100_000), [5.0]])
    for lo, levels in ((0.0, 256), (-1.0, 128)):
        request = config.activations.histogram_request("t", lo, 5.0)
        assert request.reducer == "abs_histogram" and request.bounds == (0.0, 5.0)
        hist = np.histogram(values, request.bins, request.bounds)[0]
        got = histogram_range(config.activations, lo, 5.0, request, hist)
        assert got == (lo, kl_threshold(hist, request.bounds, levels))
    assert config.activations.histogram_request("t", 0.0, 0.0) is None  # a constant tensor: nothing to clip


def tiny_spec(range_estimator: dict) -> dict:
    """The tiny sample quantized by DefaultQuantization with ``range_estimator``."""
    return {"model": {"path": str(TINY / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(TINY / "data.npz"), "inputs": {"x": "x"}, "labels": "y"},
                       "metrics": [{"name": "top1", "type": "accuracy"}]},
            "compression": {"algorithms": [{"name": "DefaultQuantization", "params": {
                "activations": {"range_estimator": range_estimator}}}]}}


def test_a_histogram_estimator_refuses_min_max_statistics() -> None:
    with pytest.raises(ValueError, match="takes no max.type"):
        resolve_config("performance", {}, {"range_estimator": {"preset": "kl", "max": {"type": "abs_quantile"}}})
    with pytest.raises(SpecError, match=r"range_estimator\.min\.aggregator: must be null with preset 'percentile'"):
        Pipeline(tiny_spec({"preset": "percentile", "min": {"aggregator": "mean"}}))


@pytest.mark.parametrize("activations", [{"range_estimator": {"preset": "kl"}},
                                         {"range_estimator": {"preset": "percentile"}},
                                         {"range_estimator": {"preset": "auto"}}], ids=["kl", "percentile", "auto"])
def test_pot_tuning_grid_from_a_histogram_base_goes_back_to_the_minmax_estimator(activations) -> None:
    from aaq.accuracy.alternatives import merge_params, tuning_stages

    base = {"preset": "performance", "bias_correction": True, "use_fast_bias": True, "activations": activations}
    ranges = tuning_stages(base)[0]
    presets = [o["activations"]["range_estimator"]["preset"] for o in ranges]
    base_preset = activations["range_estimator"]["preset"]
    # the observed-range grid, then the histogram percentile unless the base is that one already; from auto,
    # both of its candidates (it chose one by output error, the metric may prefer the other)
    tail = {"kl": ["percentile"], "percentile": [], "auto": ["minmax", "percentile"]}[base_preset]
    assert set(presets[:2]) == {"minmax"} and presets[2:] == tail
    for overrides in ranges:  # every candidate resolves
        merged = merge_params(base, overrides)
        resolve_config(merged["preset"], {}, merged["activations"])


def test_percentile_drops_a_rare_outlier_and_keeps_every_ordinary_value() -> None:
    """percentile (99.999 of every value): one planted value in 200 x 1024 sets min/max's range (the default)
    alone; percentile ignores it, and unlike a mean of per-sample extremes it clips no ordinary value."""
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 1024])
    mb.add_output(mb.add_gemm(x, 1024, 8, name="fc"), ["N", 8])
    model = mb.build()
    data = np.random.default_rng(3).normal(0, 1, (200, 1024)).astype(np.float32)
    ordinary = np.abs(data).max()
    data[17, 5] = 50.0
    percentile, algorithm = quantize(model, data, activations={"range_estimator": {"preset": "percentile"}})
    minmax, minmax_algorithm = quantize(model, data, activations=MINMAX)
    pot_mean, _ = quantize(model, data, activations={"range_estimator": {"preset": "minmax",
                                                                          "max": {"aggregator": "mean"}}})
    assert algorithm.summary["range_estimator"] == "percentile"
    assert minmax_algorithm.summary["range_estimator"] == "minmax"
    high = {k: s.plan.quantizers["x"].high for k, s in (("percentile", percentile), ("minmax", minmax), ("mean", pot_mean))}
    assert high["minmax"] == pytest.approx(50.0)
    assert 0.9 * ordinary < high["percentile"] < 0.2 * high["minmax"]
    assert high["mean"] < 0.85 * ordinary  # each sample's max is below the set's: ordinary values clipped
    held_out = np.random.default_rng(4).normal(0, 1, (200, 1024)).astype(np.float32)
    reference = run(model, held_out)
    errors = {k: np.abs(run(s.model, held_out) - reference).mean()
              for k, s in (("percentile", percentile), ("minmax", minmax))}
    assert errors["percentile"] < 0.5 * errors["minmax"], errors


def _gemm_1024() -> onnx.ModelProto:
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 1024])
    mb.add_output(mb.add_gemm(x, 1024, 8, name="fc"), ["N", 8])
    return mb.build()


@pytest.mark.parametrize("planted, percentile, expected", [
    (50.0, 99.999, "percentile"),  # one rare outlier: its range costs every ordinary value resolution
    (None, 90.0, "minmax"),  # a percentile that clips 10 % of the values: the observed range is closer
], ids=["outlier", "over-clipping percentile"])
def test_auto_keeps_the_candidate_whose_model_is_closer_to_float_and_builds_exactly_that_model(
        planted, percentile, expected) -> None:
    """auto (the default) measures both full-INT8 models on calibration samples and keeps the closer one: the
    model it returns is byte for byte the one the chosen estimator gives alone."""
    model = _gemm_1024()
    data = np.random.default_rng(3).normal(0, 1, (200, 1024)).astype(np.float32)
    if planted is not None:
        data[17, 5] = planted
    estimator = {"percentile": percentile}
    auto, algorithm = quantize(model, data, activations={"range_estimator": estimator})  # preset: the default
    alone = {name: quantize(model, data, activations={"range_estimator": {**estimator, "preset": name}})[0]
             for name in ("minmax", "percentile")}
    choice = algorithm.summary["range_choice"]
    assert algorithm.summary["range_estimator"] == "auto" and choice["chosen"] == expected
    other = ({"minmax", "percentile"} - {expected}).pop()
    assert choice["output_error"][expected] < choice["output_error"][other]
    assert choice["samples"] == 64  # auto_samples, at most stat_subset_size
    assert auto.model.SerializeToString() == alone[expected].model.SerializeToString()
    assert "activation ranges " + expected + " (auto)" in algorithm.summary["headline"]
    held_out = np.random.default_rng(4).normal(0, 1, (100, 1024)).astype(np.float32)
    reference = run(model, held_out)  # the choice holds on ordinary data it did not see
    errors = {k: np.square(run(s.model, held_out) - reference).mean() for k, s in alone.items()}
    assert errors[expected] < errors[other], errors


def test_auto_takes_no_min_max_statistics_and_compares_on_at_most_stat_subset_size_samples() -> None:
    with pytest.raises(ValueError, match="takes no max.aggregator"):
        resolve_config("performance", {}, {"range_estimator": {"preset": "auto", "max": {"aggregator": "mean"}}})
    with pytest.raises(SpecError, match=r"range_estimator\.min\.type: must be null with preset 'auto'"):
        Pipeline(tiny_spec({"min": {"type": "quantile"}}))
    data = np.random.default_rng(5).normal(0, 1, (40, 1024)).astype(np.float32)
    _, algorithm = quantize(_gemm_1024(), data, stat_subset_size=24)
    assert algorithm.summary["range_choice"]["samples"] == 24
