"""Streaming statistics: reducers x aggregators against numpy, batch-size independence, one pass, histograms."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from aaq.engine import ArrayDataset, Engine
from aaq.errors import ModelError
from aaq.statistics import collector
from aaq.statistics.aggregators import MedianAggregator, make_aggregator
from aaq.statistics.collector import collect_statistics
from aaq.statistics.reducers import reduce_batch
from aaq.statistics.requests import StatisticRequest
from helpers import FakeEngine, all_outputs
from models import conv_net, mlp

ort.set_default_logger_severity(3)


def numpy_statistic(values: np.ndarray, request: StatisticRequest) -> np.ndarray:
    """The request computed sample by sample in plain numpy."""
    per_sample = []
    for sample in values:
        if request.axis is None:
            flat = sample.ravel()[None]
        else:
            flat = np.moveaxis(sample, request.axis - 1 if request.axis > 0 else request.axis, 0)
            flat = flat.reshape(flat.shape[0], -1)
        if request.reducer.startswith("abs_"):
            flat = np.abs(flat)
        if request.reducer == "min":
            v = flat.min(axis=1)
        elif request.reducer in ("max", "abs_max"):
            v = flat.max(axis=1)
        elif request.reducer == "mean":
            v = flat.mean(axis=1)
        else:
            v = np.quantile(flat, request.q, axis=1)
        per_sample.append(v if request.axis is not None else v[0])
    stacked = np.array(per_sample)
    aggregate = {"min": np.min, "max": np.max, "mean": np.mean, "median": np.median}[request.aggregator]
    return aggregate(stacked, axis=0)


REQUESTS = [
    pytest.param(StatisticRequest("relu3_out", reducer, aggregator, q), id=f"{reducer}-{aggregator}")
    for reducer, q in [("min", None), ("max", None), ("abs_max", None), ("quantile", 0.01),
                       ("abs_quantile", 0.99), ("mean", None)]
    for aggregator in ("min", "max", "mean", "median")
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_every_reducer_and_aggregator_equals_numpy_whatever_the_batch_size(request_: StatisticRequest) -> None:
    model = conv_net()
    x = np.random.default_rng(0).normal(0, 1, (23, 3, 8, 8)).astype(np.float32)
    expected = numpy_statistic(all_outputs(model, x, [request_.tensor])[request_.tensor], request_)
    for batch_size in (1, 5, 23):
        got = collect_statistics(FakeEngine(x, batch_size), model, [request_], 23, progress=False)[request_]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tensor, axis", [("conv1_out", 1), ("x", 1), ("relu4_out", -1), ("mm1_out", 1)])
def test_per_channel_means(tensor: str, axis: int) -> None:
    model = conv_net() if tensor in ("conv1_out", "x") else mlp()
    shape = (10, 3, 8, 8) if tensor in ("conv1_out", "x") else (10, 16)
    x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    request = StatisticRequest(tensor, "mean", "mean", axis=axis)
    values = all_outputs(model, x, [tensor])[tensor]
    got = collect_statistics(FakeEngine(x, 3), model, [request], 10, progress=False)[request]
    expected = values.mean(axis=tuple(i for i in range(values.ndim) if i != axis % values.ndim))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_only_the_first_num_samples_are_used() -> None:
    model = mlp()
    x = np.random.default_rng(2).normal(0, 1, (40, 16)).astype(np.float32)
    request = StatisticRequest("mm1_out", "max", "max")
    got = collect_statistics(FakeEngine(x, 7), model, [request], 12, progress=False)[request]
    assert got == pytest.approx(all_outputs(model, x[:12], ["mm1_out"])["mm1_out"].max())


def test_one_inference_pass_with_each_tensor_requested_once() -> None:
    model = conv_net()
    x = np.random.default_rng(3).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    engine = FakeEngine(x, 4)
    requests = [StatisticRequest("relu3_out", "min", "min"), StatisticRequest("relu3_out", "abs_max", "mean"),
                StatisticRequest("relu3_out", "mean", "mean", axis=1), StatisticRequest("x", "max", "max"),
                StatisticRequest("x", "max", "max")]
    result = collect_statistics(engine, model, requests, 8, progress=False)
    assert len(engine.calls) == 1
    assert sorted(engine.calls[0]) == ["relu3_out", "x"]
    assert set(result) == set(requests)


def test_a_tensor_the_model_lacks_is_named_with_the_nearest_ones() -> None:
    """The engine's check (``Engine.run``) is the one check, before any inference."""
    engine = Engine(ArrayDataset({"x": np.zeros((2, 16), np.float32)}), [], progress=False)
    with pytest.raises(ModelError, match=r"'mm1_ou'.*nearest: 'mm1_out'"):
        collect_statistics(engine, mlp(), [StatisticRequest("mm1_ou", "max", "max")], 2, progress=False)
    assert engine.session_runs == 0


def test_a_merged_batch_axis_is_reduced_per_sample() -> None:
    """[N*T, C] (a transformer's reshape) gives the same per-sample values as [N, T, C]."""
    values = np.random.default_rng(4).normal(0, 1, (3, 5, 4)).astype(np.float32)
    merged = reduce_batch(values.reshape(15, 4), 3, "max")
    np.testing.assert_allclose(merged, values.reshape(3, -1).max(axis=1))
    per_channel = reduce_batch(values.reshape(15, 4), 3, "mean", axis=-1)
    np.testing.assert_allclose(per_channel, values.mean(axis=1, dtype=np.float64), rtol=1e-9)


def test_median_is_exact_up_to_the_base_and_close_beyond() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(0, 1, (300, 3))
    exact = MedianAggregator()
    for chunk in np.array_split(values, 7):
        exact.update(chunk)
    np.testing.assert_allclose(exact.result(), np.median(values, axis=0))

    small = MedianAggregator(base=9)
    many = rng.normal(0, 1, (5000, 2))
    small.update(many)
    assert np.abs(small.result() - np.median(many, axis=0)).max() < 0.15
    held = sum(len(level) for level in small._levels)
    assert held <= 9 * 4  # base rows per level, ceil(log9(5000)) = 4 levels: bounded, not 5000


@pytest.mark.parametrize("name", ["min", "max", "mean"])
def test_online_aggregators_keep_one_row(name: str) -> None:
    aggregator = make_aggregator(name)
    values = np.random.default_rng(6).normal(0, 1, (50, 4))
    for chunk in np.array_split(values, 5):
        aggregator.update(chunk)
    np.testing.assert_allclose(aggregator.result(), getattr(np, name)(values, axis=0))
    state = [v for v in vars(aggregator).values() if isinstance(v, np.ndarray)]
    assert all(v.shape == (4,) for v in state)


def test_the_real_engine_gives_the_same_statistics_as_the_reference() -> None:
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.engine import Engine

    model = conv_net()
    x = np.random.default_rng(7).normal(0, 1, (20, 3, 8, 8)).astype(np.float32)
    engine = Engine(ArrayDataset({"x": x}), [], batch_size=6, progress=True)
    requests = [StatisticRequest("x", "abs_max", "max"), StatisticRequest("relu3_out", "quantile", "median", 0.9),
                StatisticRequest("conv2_out", "mean", "mean", axis=1)]
    got = collect_statistics(engine, model, requests, 15, progress=False)
    expected = collect_statistics(FakeEngine(x[:15], 15), model, requests, 15, progress=False)
    for request in requests:
        np.testing.assert_allclose(got[request], expected[request], rtol=1e-6)
    assert engine.progress is True  # silenced for the pass only


def test_histogram_statistic_is_independent_of_the_batch_size_and_equals_numpy() -> None:
    model = conv_net()
    x = np.random.default_rng(4).normal(0, 1, (23, 3, 8, 8)).astype(np.float32)
    values = all_outputs(model, x, ["conv1_out"])["conv1_out"]
    bounds = (0.0, float(np.abs(values).max()))
    signed = (float(values.min()), float(values.max()))
    requests = [StatisticRequest("conv1_out", "abs_histogram", "sum", bins=300, bounds=bounds),
                StatisticRequest("conv1_out", "histogram", "sum", bins=64, bounds=signed)]
    results = [collect_statistics(FakeEngine(x, b), model, requests, 23, progress=False) for b in (1, 5, 23)]
    for request in requests:
        assert results[0][request].dtype == np.int64
        for other in results[1:]:
            np.testing.assert_array_equal(results[0][request], other[request])
    np.testing.assert_array_equal(results[0][requests[0]], np.histogram(np.abs(values), 300, bounds)[0])
    np.testing.assert_array_equal(results[0][requests[1]], np.histogram(values, 64, signed)[0])


def test_histogram_memory_does_not_grow_with_the_samples(monkeypatch) -> None:
    """10 or 1000 samples: each histogram request is one aggregator holding one row of bins."""
    made = []
    original = collector.make_aggregator

    def recording(name: str):
        made.append(original(name))
        return made[-1]

    monkeypatch.setattr(collector, "make_aggregator", recording)
    model = conv_net()
    x = np.random.default_rng(5).normal(0, 1, (1000, 3, 8, 8)).astype(np.float32)
    request = StatisticRequest("x", "abs_histogram", "sum", bins=2048, bounds=(0.0, float(np.abs(x).max())))
    held = []
    for n in (10, 1000):
        made.clear()
        result = collect_statistics(FakeEngine(x, 50), model, [request], n, progress=False)[request]
        assert result.sum() == n * 3 * 8 * 8
        assert len(made) == 1 and made[0].count == n
        held.append(made[0].nbytes)
    assert held == [2048 * 8, 2048 * 8]


@pytest.mark.parametrize("request_, message", [
    (StatisticRequest("x", "histogram", "sum"), "bins >= 1"),
    (StatisticRequest("x", "abs_histogram", "sum", bins=8, bounds=(1.0, 1.0)), "low < high"),
    (StatisticRequest("x", "histogram", "max", bins=8, bounds=(0.0, 1.0)), "sum aggregator"),
    (StatisticRequest("x", "max", "sum"), "sum aggregator"),
])
def test_a_malformed_histogram_request_is_refused_before_inference(request_, message) -> None:
    engine = FakeEngine(np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=message):
        collect_statistics(engine, conv_net(), [request_], 4, progress=False)
    assert engine.calls == []
