"""latency_aware: "measure": which kinds of layers stay float is timed on this machine, decided the same in a tie."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from aaq.engine import layer_timing
from aaq.engine.latency import LatencyComparison
from aaq.quantization.latency_kinds import DEPTHWISE_LARGE, DEPTHWISE_SMALL, ONE_BY_ONE, latency_kinds
from aaq.quantization.prepare import prepare_model
from helpers import FakeEngine, quantize
from test_quantization_latency import block, inputs


class Timed:
    """A stand-in for ``compare_latency`` that answers a fixed ratio (and its quartiles) per kind in turn."""

    def __init__(self, answers: list[tuple[float, float, float]]) -> None:
        self.answers = list(answers)

    def __call__(self, reference, candidate, inputs, **kwargs) -> LatencyComparison:
        ratio, low, high = self.answers.pop(0)
        return LatencyComparison(10.0, 10.0 * ratio, 7, kwargs.get("samples") or 4, (low, high))


def decide(monkeypatch, answers, budget: float = 5.0):
    monkeypatch.setattr(layer_timing, "compare_latency", Timed(answers))
    model = block(24)
    kinds = {DEPTHWISE_SMALL: ["dw"], ONE_BY_ONE: ["se"], DEPTHWISE_LARGE: ["dw2"]}
    return layer_timing.measure_float_kinds(FakeEngine(inputs(8)), lambda chosen: model, kinds, budget)


def test_only_a_kind_measured_faster_beyond_the_noise_stays_float(monkeypatch) -> None:
    decisions, info = decide(monkeypatch, [(0.70, 0.65, 0.80),    # faster in float: kept float
                                           (0.99, 0.93, 1.05),    # a tie: int8
                                           (1.30, 1.20, 1.40)])   # faster in int8
    assert [d.kept_float for d in decisions] == [True, False, False]
    assert "faster in float: x0.70" in decisions[0].why
    assert "within the noise" in decisions[1].why and "faster in int8" in decisions[2].why
    assert decisions[0].int8_ms == 10.0 and decisions[0].float_ms == pytest.approx(7.0)
    assert info["batch_samples"] == 4 and info["budget_seconds"] == 5.0


def test_a_median_gain_with_rounds_that_disagree_is_a_tie(monkeypatch) -> None:
    decisions, _ = decide(monkeypatch, [(0.90, 0.80, 1.02), (0.98, 0.90, 0.99), (1.0, 1.0, 1.0)])
    assert [d.kept_float for d in decisions] == [False, False, False]


def test_kinds_the_budget_leaves_unmeasured_stay_int8(monkeypatch) -> None:
    decisions, _ = decide(monkeypatch, [], budget=1e-9)
    assert [d.kept_float for d in decisions] == [False, False, False]
    assert all("not measured" in d.why for d in decisions)


def test_kinds_group_the_candidate_layers() -> None:
    prepared = prepare_model(block(24), 13)
    assert latency_kinds(prepared.model, ["expand", "dw", "project"], prepared.shapes) == {DEPTHWISE_SMALL: ["dw"]}
    prepared = prepare_model(block(64), 13)
    assert latency_kinds(prepared.model, ["expand", "dw", "project"], prepared.shapes) == {DEPTHWISE_LARGE: ["dw"]}


@pytest.mark.parametrize("channels", [24, 64])
def test_measure_times_the_model_here_and_reports_each_decision(channels: int) -> None:
    model, x = block(channels), inputs()
    state, algorithm = quantize(model, x, latency_aware="measure", latency_budget=2.0)
    record = algorithm.summary["latency_aware"]
    (decision,) = record["decisions"]
    assert decision["layers"] == ["dw"] and decision["runs"] >= 5
    assert decision["int8_ms"] > 0 and decision["float_ms"] > 0 and record["seconds"] < 10
    quantized = [layer.name for layer in state.plan.layers]
    assert ("dw" in quantized) == (not decision["kept_float"])
    assert ("dw" in record["float_layers"]) == decision["kept_float"]
    if decision["kept_float"]:
        assert "measured here" in algorithm.summary["not_quantized"]["dw"]
    session = ort.InferenceSession(state.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x[:4]})[0].shape == (4, 16, 8, 8)


def test_off_quantizes_every_layer_and_rules_follow_the_fixed_rules() -> None:
    model, x = block(24), inputs()
    state, algorithm = quantize(model, x, latency_aware="off")
    assert [layer.name for layer in state.plan.layers] == ["expand", "dw", "project"]
    assert algorithm.summary["latency_aware"] == {"mode": "off", "float_layers": {}}
    state, algorithm = quantize(model, x, latency_aware="rules")
    assert list(algorithm.summary["latency_aware"]["float_layers"]) == ["dw"]


def test_the_measurement_is_made_once_per_model(monkeypatch) -> None:
    calls = []
    real = layer_timing.measure_float_kinds
    monkeypatch.setattr("aaq.algorithms.default.measure_float_kinds",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model, x = block(24), inputs()
    state, algorithm = quantize(model, x, latency_aware="measure", latency_budget=0.5)
    again = algorithm.run(state, FakeEngine(x))
    assert len(calls) == 1 and isinstance(again.model, onnx.ModelProto)
    assert np.isfinite(algorithm.summary["latency_aware"]["seconds"])
