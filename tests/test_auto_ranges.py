"""``auto`` activation ranges decided by the engine's metrics (``algorithms.auto_ranges``), else by output error."""
from __future__ import annotations

import numpy as np
import onnx

from aaq.algorithms.base import run_algorithm
from aaq.algorithms.default import DefaultQuantization
from aaq.engine import Accuracy, ArrayDataset, Engine
from aaq.state import PipelineState
from helpers import run
from models import ModelBuilder


def _gemm_with_an_outlier() -> tuple[onnx.ModelProto, np.ndarray]:
    """One rare outlier input: ``percentile`` is closer to float by output error, ``minmax`` keeps the outlier."""
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 1024])
    mb.add_output(mb.add_gemm(x, 1024, 8, name="fc"), ["N", 8])
    data = np.random.default_rng(3).normal(0, 1, (200, 1024)).astype(np.float32)
    data[17, 5] = 50.0
    return mb.build(), data


def _alone(model: onnx.ModelProto, data: np.ndarray, preset: str) -> onnx.ModelProto:
    engine = Engine(ArrayDataset({"x": data}), [], batch_size=16, progress=False)
    return _quantize(model, engine, {"preset": preset})[0].model


def _quantize(model: onnx.ModelProto, engine: Engine, estimator: dict | None = None, *, evaluate: bool = True):
    algorithm = DefaultQuantization(DefaultQuantization.Params(
        stat_subset_size=200, latency_aware="off", activations={"range_estimator": estimator or {}}))
    engine.set_float_model(model)
    state = PipelineState(float_model=model, model=model, evaluate=evaluate)
    return run_algorithm(algorithm, state, engine, progress=False), algorithm


def _engine(data: np.ndarray, labels: np.ndarray) -> Engine:
    return Engine(ArrayDataset({"x": data}, labels), [Accuracy()], batch_size=8, progress=False)


def test_the_metric_decides_over_the_output_error_and_the_kept_model_is_the_candidate_itself() -> None:
    """Labels the minmax model gets all right: by output error percentile wins, by the metric minmax does."""
    model, data = _gemm_with_an_outlier()
    minmax, percentile = _alone(model, data, "minmax"), _alone(model, data, "percentile")
    labels = run(minmax, data).argmax(axis=1)
    assert (run(percentile, data).argmax(axis=1) != labels).any()
    engine = _engine(data, labels)
    state, algorithm = _quantize(model, engine)
    choice = algorithm.summary["range_choice"]
    assert choice["output_error"]["percentile"] < choice["output_error"]["minmax"]
    assert choice["chosen"] == "minmax" and choice["by"] == "metric"
    assert choice["metric"]["values"]["minmax"]["top1"] == 1.0 > choice["metric"]["values"]["percentile"]["top1"]
    assert state.model.SerializeToString() == minmax.SerializeToString()
    inferred = sum(r.inferred for r in engine.history)
    again = engine.evaluate(state.model)  # the pipeline's final evaluation: served from the cache
    assert again.samples_inferred == 0 and sum(r.inferred for r in engine.history) == inferred


def test_a_candidate_that_cannot_reach_the_best_stops_early() -> None:
    """Labels the percentile model gets all right: it is evaluated first (closer by output error), and minmax
    stops as soon as a miss means it cannot reach 1.0."""
    model, data = _gemm_with_an_outlier()
    minmax, percentile = _alone(model, data, "minmax"), _alone(model, data, "percentile")
    labels = run(percentile, data).argmax(axis=1)
    engine = _engine(data, labels)
    _, algorithm = _quantize(model, engine)
    choice = algorithm.summary["range_choice"]
    assert choice["chosen"] == "percentile" and choice["by"] == "metric"
    assert choice["metric"]["stopped_early"] == ["minmax"]
    first_miss = int(np.argmax(run(minmax, data).argmax(axis=1) != labels))
    evaluated = {r.model_digest: r for r in engine.history}
    stopped = [r for r in evaluated.values() if not r.complete]
    assert len(stopped) == 1 and stopped[0].samples <= first_miss + 8 < len(data)


def test_without_a_metric_a_tie_or_an_evaluation_the_output_error_decides() -> None:
    model, data = _gemm_with_an_outlier()
    minmax, percentile = (run(_alone(model, data, p), data).argmax(axis=1) for p in ("minmax", "percentile"))
    labels = minmax
    for estimator, evaluate in (({"auto_eval_samples": 0}, True), ({}, False)):
        engine = _engine(data, labels)
        _, algorithm = _quantize(model, engine, estimator, evaluate=evaluate)
        choice = algorithm.summary["range_choice"]
        assert choice["chosen"] == "percentile" and choice["by"] == "output error" and "metric" not in choice
        assert engine.history == []  # a quantize-only run infers nothing beyond calibration
    neither = np.select([(minmax != c) & (percentile != c) for c in (0, 1)], [0, 1], 2)
    tied = np.where(minmax == percentile, minmax, neither)
    engine = _engine(data, tied)  # where the two disagree, neither label is right: the metrics tie
    _, algorithm = _quantize(model, engine, {"auto_eval_samples": 40})
    choice = algorithm.summary["range_choice"]
    assert choice["chosen"] == "percentile" and choice["by"] == "output error (metrics tied)"
    assert choice["metric"]["samples"] == 40
