"""latency_aware: "measure": which kinds of layers stay float is timed on this machine, decided the same in a tie."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from aaq.engine import layer_timing
from aaq.quantization.latency_kinds import (DEPTHWISE_LARGE, DEPTHWISE_SMALL, HARD_SWISH, ONE_BY_ONE, RULES_FLOAT,
                                           latency_kinds)
from aaq.quantization.prepare import prepare_model
from helpers import FakeEngine, quantize
from models import dw_hardswish_block, feature_maps


class Timed:
    """A stand-in for ``time_interleaved``: fixed per-round seconds per layout name (missing: all-int8's)."""

    def __init__(self, ms: dict[str, list[float]]) -> None:
        self.ms = ms
        self.calls: list[dict] = []

    def __call__(self, sessions, inputs, **kwargs) -> dict[str, list[float]]:
        self.calls.append(kwargs)
        return {name: [t / 1e3 for t in self.ms.get(name, self.ms["off"])] for name in sessions}


KINDS = {DEPTHWISE_SMALL: ["dw"], ONE_BY_ONE: ["se"], DEPTHWISE_LARGE: ["dw2"]}
SMALL_ONLY, EVERY = f"float: {DEPTHWISE_SMALL}", f"float: {DEPTHWISE_SMALL} + {ONE_BY_ONE} + {DEPTHWISE_LARGE}"


def decide(monkeypatch, ms, budget: float = 5.0):
    timed = Timed(ms)
    monkeypatch.setattr(layer_timing, "time_interleaved", timed)
    model = dw_hardswish_block(24)
    built = []
    decisions, info = layer_timing.measure_float_kinds(
        FakeEngine(feature_maps(8)), lambda chosen: built.append(chosen) or model, KINDS, budget, RULES_FLOAT)
    return decisions, info, built, timed


def test_the_layouts_are_all_int8_then_one_more_kind_in_float_the_rules_among_them() -> None:
    assert layer_timing.layouts(list(KINDS), RULES_FLOAT) == {
        "off": frozenset(), SMALL_ONLY: {DEPTHWISE_SMALL}, "rules": {DEPTHWISE_SMALL, ONE_BY_ONE},
        EVERY: set(KINDS)}
    assert layer_timing.layouts([ONE_BY_ONE, DEPTHWISE_LARGE], RULES_FLOAT) == {
        "off": frozenset(), "rules": {ONE_BY_ONE}, f"float: {ONE_BY_ONE} + {DEPTHWISE_LARGE}": set(KINDS) - {
            DEPTHWISE_SMALL}}


def test_the_fastest_layout_that_beats_all_int8_beyond_the_noise_is_kept(monkeypatch) -> None:
    decisions, info, built, _ = decide(monkeypatch, {"off": [10, 10, 11, 10], SMALL_ONLY: [8, 8, 9, 8],
                                                     "rules": [7, 7, 7.5, 7], EVERY: [9, 9, 9, 9]})
    assert info["kept"] == "rules" and info["rounds"] == 4
    assert [d.kept_float for d in decisions] == [True, True, False]
    assert info["layouts"]["rules"]["over_off"] == pytest.approx(0.7)
    # each kind's step: the layout before it, then with it (small dw: 10 -> 8; 1x1: 8 -> 7; large dw: 7 -> 9)
    assert [d.int8_ms for d in decisions] == pytest.approx([10.0, 8.0, 7.0])
    assert [d.float_ms for d in decisions] == pytest.approx([8.0, 7.0, 9.0])
    assert decisions[2].ratio > 1.0 and "int8 (kept layout: rules)" in decisions[2].why
    assert len(built) == 4  # every layout built once, timed together


def test_a_layout_within_the_noise_of_all_int8_leaves_every_layer_int8(monkeypatch) -> None:
    decisions, info, _, _ = decide(monkeypatch, {"off": [10, 10, 10, 10], SMALL_ONLY: [9.8, 9.9, 9.8, 9.9],
                                                 "rules": [10.1, 10, 10, 10], EVERY: [10.5, 10, 10, 11]})
    assert info["kept"] == "off" and not any(d.kept_float for d in decisions)
    assert "every layer int8" in info["why"]


def test_a_median_gain_with_rounds_that_disagree_is_a_tie(monkeypatch) -> None:
    _, info, _, _ = decide(monkeypatch, {"off": [10, 10, 10, 10], SMALL_ONLY: [8, 8, 10.5, 10.6]})
    assert info["layouts"][SMALL_ONLY]["over_off"] < 0.97 and info["kept"] == "off"


def test_a_spent_budget_still_times_the_minimum_rounds(monkeypatch) -> None:
    _, _, _, timed = decide(monkeypatch, {"off": [10, 10, 10]}, budget=1e-9)
    (call,) = timed.calls
    assert call["budget_seconds"] == 0.0 and call["min_rounds"] == layer_timing.MIN_ROUNDS


def test_kinds_group_the_candidate_layers() -> None:
    prepared = prepare_model(dw_hardswish_block(24), 13)
    assert latency_kinds(prepared.model, ["expand", "dw", "project"], prepared.shapes) == {DEPTHWISE_SMALL: ["dw"]}
    prepared = prepare_model(dw_hardswish_block(64), 13)
    assert latency_kinds(prepared.model, ["expand", "dw", "project"], prepared.shapes) == {DEPTHWISE_LARGE: ["dw"]}


@pytest.mark.parametrize("channels", [24, 64])
def test_measure_times_the_model_here_and_reports_each_decision(channels: int) -> None:
    model, x = dw_hardswish_block(channels), feature_maps()
    state, algorithm = quantize(model, x, latency_aware="measure", latency_budget=2.0)
    record = algorithm.summary["latency_aware"]
    decision, hardswish = record["decisions"]
    assert decision["layers"] == ["dw"] and decision["runs"] >= layer_timing.MIN_ROUNDS
    assert decision["int8_ms"] > 0 and decision["float_ms"] > 0 and record["seconds"] < 10
    prepared = prepare_model(model, 13).model  # the kept plan has no hard-swish unit when it was kept float
    assert hardswish["kind"] == HARD_SWISH
    assert hardswish["layers"] == [n.name for n in prepared.graph.node if n.op_type == "HardSwish"] != []
    dw_kind = DEPTHWISE_SMALL if channels == 24 else DEPTHWISE_LARGE
    assert set(record["layouts"]) == {"off", "rules" if channels == 24 else f"float: {dw_kind}",
                                      f"float: {dw_kind} + {HARD_SWISH}"}
    kept = {d["kind"] for d in record["decisions"] if d["kept_float"]}
    assert set(record["layouts"][record["kept"]]["kinds"]) == kept
    hardswish_int8 = HARD_SWISH not in kept and not decision["kept_float"]  # a float dw leaves it no quantizer
    assert algorithm.summary["int8_hardswish"] == (hardswish["layers"] if hardswish_int8 else [])
    assert ("HardSwish" in {n.op_type for n in state.model.graph.node}) == (not hardswish_int8)
    assert not set(hardswish["layers"]) & set(record["float_layers"])  # float_layers lists layers only
    quantized = [layer.name for layer in state.plan.layers]
    assert ("dw" in quantized) == (not decision["kept_float"])
    assert ("dw" in record["float_layers"]) == decision["kept_float"]
    if decision["kept_float"]:
        assert "measured here" in algorithm.summary["not_quantized"]["dw"]
    session = ort.InferenceSession(state.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x[:4]})[0].shape == (4, 16, 8, 8)


def test_off_quantizes_every_layer_and_rules_follow_the_fixed_rules() -> None:
    model, x = dw_hardswish_block(24), feature_maps()
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
    model, x = dw_hardswish_block(24), feature_maps()
    state, algorithm = quantize(model, x, latency_aware="measure", latency_budget=0.5)
    again = algorithm.run(state, FakeEngine(x))
    assert len(calls) == 1 and isinstance(again.model, onnx.ModelProto)
    assert np.isfinite(algorithm.summary["latency_aware"]["seconds"])
