"""Drops, the objective over several metrics, and the exact early-stop bound."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from aaq.accuracy.drops import MetricTarget, StopRule, Targets, allowed_drop, decided, score_bounds
from aaq.engine.metrics import Accuracy, Agreement, MeanSquaredError


def test_allowed_drop_absolute_and_relative() -> None:
    assert allowed_drop(0.8, 0.01, "absolute") == 0.01
    assert allowed_drop(0.8, 0.01, "relative") == pytest.approx(0.008)
    assert allowed_drop(-2.0, 0.1, "relative") == pytest.approx(0.2)
    with pytest.raises(ValueError):
        allowed_drop(0.8, 0.01, "percent")


def test_drop_follows_the_metric_direction() -> None:
    acc = MetricTarget("top1", True, 0.9, 0.01)
    mse = MetricTarget("mse", False, 0.5, 0.05)
    assert acc.drop(0.85) == pytest.approx(0.05) and not acc.met(0.85) and acc.met(0.895)
    assert mse.drop(0.52) == pytest.approx(0.02) and mse.met(0.52) and not mse.met(0.6)
    assert mse.excess_interval((0.5, 0.6)) == pytest.approx(((0.0 - 0.05) / 0.5, (0.1 - 0.05) / 0.5))


def test_objective_is_the_metric_furthest_over_its_limit() -> None:
    targets = Targets([MetricTarget("a", True, 1.0, 0.01), MetricTarget("b", True, 0.5, 0.01)])
    values = {"a": 0.95, "b": 0.475}  # excess: a 0.04 / 1, b 0.015 / 0.5 = 0.03
    assert targets.driving(values) == "a"
    values["b"] = 0.46
    assert targets.driving(values) == "b"
    assert targets.objective(values) == pytest.approx(0.03 / 0.5)
    assert not targets.met(values) and targets.met({"a": 1.0, "b": 0.495})


def test_value_interval_is_exact_for_bounded_means() -> None:
    t = MetricTarget("top1", True, 1.0, 0.1, bounds=(0.0, 1.0))
    seen = np.array([1.0, 0.0, 1.0, 1.0])
    assert t.value_interval(seen, 10) == (0.3, pytest.approx(0.9))
    assert t.value_interval(np.ones(10), 10) == (1.0, 1.0)
    unbounded = MetricTarget("x", True, 1.0, 0.1)
    assert unbounded.value_interval(seen, 10) == (-math.inf, math.inf)
    assert unbounded.value_interval(None, 10) == (-math.inf, math.inf)


def test_decided_needs_every_threshold_outside_the_interval() -> None:
    assert decided((-0.2, -0.1), (0.0,))
    assert decided((0.1, 0.3), (0.0,))
    assert not decided((-0.1, 0.1), (0.0,))
    assert not decided((0.1, 0.3), (0.0, 0.2))
    assert decided((0.2, 0.2), (0.0, 0.2))


@pytest.mark.parametrize("seed", range(40))
def test_early_decision_equals_the_full_evaluation(seed: int) -> None:
    """Property: whenever the rule stops, the answers equal those of the complete evaluation."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    p = rng.uniform(0.3, 1.0, size=2)
    scores = {"a": (rng.random(n) < p[0]).astype(float), "b": (rng.random(n) < p[1]).astype(float)}
    ref = {"a": float(rng.uniform(0.5, 1.0)), "b": float(rng.uniform(0.5, 1.0))}
    targets = Targets([MetricTarget(m, True, ref[m], float(rng.uniform(0, 0.2)), (0.0, 1.0)) for m in "ab"])
    final = targets.objective({m: float(np.mean(s)) for m, s in scores.items()})
    thresholds = (0.0, float(rng.uniform(-0.2, 0.5)))
    rule = StopRule(targets, thresholds)
    batch = int(rng.integers(1, 20))
    for k in range(batch, n + 1, batch):
        partial = SimpleNamespace(per_sample={m: s[:k] for m, s in scores.items()}, requested=n,
                                  indices=np.arange(k))
        if rule(partial):
            lo, hi = targets.objective_interval(targets.intervals(partial.per_sample, n))
            for t in thresholds:
                assert (hi <= t) == (final <= t)
                assert lo <= final <= hi
            break


def test_score_bounds_of_builtin_metrics() -> None:
    assert score_bounds(Accuracy()) == (0.0, 1.0)
    assert score_bounds(Agreement("cosine")) == (-1.0, 1.0)
    assert score_bounds(Agreement("nmse")) is None
    assert score_bounds(MeanSquaredError()) is None
    declared = MeanSquaredError()
    declared.bounds = (0.0, 4.0)
    assert score_bounds(declared) == (0.0, 4.0)
