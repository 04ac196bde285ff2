"""The tuning package without a model: space and configs, DQ params, objectives' weighting, monitor, strategies."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from aaq.accuracy.drops import MetricTarget
from aaq.accuracy.weighted import WeightedTargets
from aaq.tuning.monitor import CRITERION_MET, MAX_TRIALS, TRIAL_END, ExitPolicy, Monitor, Trial
from aaq.tuning.objectives import ObjectiveSet, objective_problems
from aaq.tuning.space import TrialConfig, TuningSpace, dq_overrides, space_problems
from aaq.tuning.strategies import StrategyContext, strategies


def space(model_wise=None, op_wise=None, sizes=(100,)) -> TuningSpace:
    return TuningSpace.from_params({"model_wise": model_wise or {}, "op_wise": op_wise or {}}, sizes)


def test_quantize_configs_follow_the_lists_and_exclude_fp32() -> None:
    configs = space(sizes=(100, 300)).quantize_configs()
    assert [(c.sampling_size, c.weight_granularity, c.activation_scheme) for c in configs] == [
        (100, "per_channel", "sym"), (100, "per_channel", "asym"), (100, "per_tensor", "sym"),
        (100, "per_tensor", "asym"), (300, "per_channel", "sym"), (300, "per_channel", "asym"),
        (300, "per_tensor", "sym"), (300, "per_tensor", "asym")]
    assert all(c.as_dict()["activation"]["dtype"] == "uint8" and c.fallback == () for c in configs)


def test_a_config_maps_to_default_quantization_params() -> None:
    config = TrialConfig(300, "per_tensor", "asym", "quantile")
    assert dq_overrides(config) == {
        "preset": "mixed", "stat_subset_size": 300,
        "weights": {"granularity": "pertensor", "range_estimator": {"max": {"type": "abs_max"}}},
        "activations": {"range_estimator": {"preset": "quantile"}}}
    assert dq_overrides(TrialConfig(100))["preset"] == "performance"
    for algorithm in ("kl", "percentile"):
        preset = dq_overrides(TrialConfig(100, activation_algorithm=algorithm))["activations"]["range_estimator"]
        assert preset == {"preset": algorithm}


def test_op_wise_rules_force_forbid_or_allow_fallback() -> None:
    s = space(op_wise={"conv1": {"activation": {"dtype": ["fp32"]}},
                       "conv.*2": {"activation": {"dtype": ["uint8"]}, "weight": {"dtype": ["int8"]}}})
    rules = s.rules(["conv1", "conv2", "fc"])
    assert rules["conv1"].forced_float and not rules["conv2"].may_fall_back
    assert "fc" not in rules and s.default_may_fall_back


@pytest.mark.parametrize("tuning_space, path, phrase", [
    ({"model_wise": {"activation": {"algorithm": ["minmax", "entropy"]}}}, "model_wise.activation.algorithm",
     "'entropy' is not a range algorithm for activations; available: minmax, quantile, kl, percentile"),
    ({"model_wise": {"weight": {"algorithm": ["kl"]}}}, "model_wise.weight.algorithm",
     "'kl' is not a range algorithm for weights"),
    ({"model_wise": {"weight": {"scheme": ["sym", "asym"]}}}, "model_wise.weight.scheme", "zero-point-0"),
    ({"model_wise": {"activation": {"granularity": ["per_channel"]}}}, "model_wise.activation.granularity",
     "one input scale"),
    ({"model_wise": {"activation": {"dtype": ["fp32"]}}}, "model_wise.activation.dtype", "no quantized choice"),
    ({"op_wise": {"conv9": {"activation": {"dtype": ["fp32"]}}}}, "op_wise.conv9", "no node named 'conv9'"),
    ({"op_wise": {"conv1": {"activation": {"scheme": ["asym"]}}}}, "op_wise.conv1.activation",
     "only dtype can be set per op"),
], ids=["unknown activation algorithm", "kl for weights", "asym weights", "per-channel activations", "no quantized choice", "unknown op",
        "per-op scheme"])
def test_space_problems(tuning_space, path, phrase) -> None:
    problems = space_problems(tuning_space, ["conv1", "conv2", "fc"])
    assert any(p == path and phrase in m for p, m in problems), problems


def test_unknown_objective_and_weight_mismatch() -> None:
    (problem,) = objective_problems("performace", None)
    assert problem[0] == "objective" and "did you mean 'performance'" in problem[1]
    problems = objective_problems("performance", {"objective": ["accuracy", "modelsize"], "weight": [1.0]})
    assert problems == [("multi_objectives.weight", "1 values for 2 objectives (accuracy, modelsize): one per "
                                                    "objective")]


def test_multi_objective_scores_are_normalised_and_weighted() -> None:
    objectives = ObjectiveSet.from_params("performance", {"objective": ["accuracy", "modelsize", "performance"],
                                                          "weight": [0.7, 0.2, 0.1]})
    assert objectives.higher_is_better == (True, False, False)
    values = [{"accuracy": 0.90, "modelsize": 100, "performance": 2.0},
              {"accuracy": 0.95, "modelsize": 300, "performance": 1.0},
              {"accuracy": 0.92, "modelsize": 200, "performance": 1.0}]
    # accuracy -> 0, 1, 0.4; modelsize -> 1, 0, 0.5; performance -> 0, 1, 1
    assert objectives.scores(values) == pytest.approx([0.2, 0.8, 0.28 + 0.1 + 0.1])
    assert objectives.best(values) == 1
    equal = ObjectiveSet.from_params(["performance", "accuracy"], None)
    assert equal.weights == (0.5, 0.5)


def test_weighted_targets_check_the_weighted_accuracy() -> None:
    metrics = [MetricTarget("a", True, 0.8, 0.0, (0.0, 1.0)), MetricTarget("b", True, 0.6, 0.0, (0.0, 1.0))]
    targets = WeightedTargets(metrics, [0.5, 0.5], 0.01, "relative")
    assert targets.combined.reference == pytest.approx(0.7)
    assert targets.met({"a": 0.79, "b": 0.605})          # 0.6975 >= 0.693
    assert not targets.met({"a": 0.70, "b": 0.68})       # 0.69 < 0.693
    lo, hi = targets.objective_interval({"a": (0.7, 0.8), "b": (0.6, 0.6)})
    assert lo < 0 < hi


def _trial(n: int, config: TrialConfig, passed: bool, score: float, objectives=None) -> Trial:
    return Trial(n, config, passed, True, {"top1": (0.9, 0.9)}, (score, score), 0.9, objectives or {})


def test_monitor_best_and_exit_cases(caplog) -> None:
    objectives = ObjectiveSet.from_params("modelsize", None)
    monitor = Monitor(ExitPolicy(timeout=0, max_trials=3), objectives)
    configs = space().quantize_configs()
    with caplog.at_level(logging.INFO, logger="aaq.tuning.monitor"):
        monitor.record(_trial(1, configs[0], False, 0.2))
        monitor.record(_trial(2, configs[1], False, 0.1))
    assert monitor.best.number == 2 and monitor.should_stop() == ""
    assert caplog.records[0].getMessage().startswith("[tuning] trial 1 end: fail accuracy 0.9 (top1 0.9)")
    monitor.record(_trial(3, configs[2], True, -0.1, {"modelsize": 10.0}))
    assert monitor.should_stop() == CRITERION_MET and monitor.best.number == 3
    later = Monitor(ExitPolicy(timeout=60, max_trials=2), objectives)
    later.record(_trial(1, configs[0], True, -0.1, {"modelsize": 20.0}))
    later.record(_trial(2, configs[1], True, -0.1, {"modelsize": 10.0}))
    assert later.should_stop() == MAX_TRIALS and later.best.number == 2
    assert "{verdict}" in TRIAL_END


def _context(s: TuningSpace, seed: int = 9527) -> StrategyContext:
    units = [("conv1",), ("conv2",), ("fc",)]
    return StrategyContext(s, seed, units=lambda c: [u for u in units if u[0] not in c.fallback],
                           rank=lambda c, method: [("fc",), ("conv2",), ("conv1",)])


def _drive(strategy, passes) -> list[TrialConfig]:
    """Run ``strategy`` against a verdict function, as the algorithm's loop does (no exit policy)."""
    monitor = Monitor(ExitPolicy(timeout=60, max_trials=0), ObjectiveSet.from_params("modelsize", None))
    proposed = []
    while (config := strategy.propose(monitor)) is not None and len(proposed) < 50:
        ok = passes(config)
        trial = _trial(len(proposed) + 1, config, ok, -1.0 if ok else 1.0 / (1 + len(proposed)), {"modelsize": 1.0})
        monitor.record(trial)
        strategy.tell(trial)
        proposed.append(config)
        if ok:
            break
    return proposed


def test_exhaustive_walks_the_space_in_order_and_random_is_seeded() -> None:
    s = space(sizes=(100, 300))
    walked = _drive(strategies.get("exhaustive")(_context(s)), lambda c: False)
    assert walked == s.quantize_configs()
    first = _drive(strategies.get("random")(_context(s, seed=1)), lambda c: False)
    again = _drive(strategies.get("random")(_context(s, seed=1)), lambda c: False)
    other = _drive(strategies.get("random")(_context(s, seed=2)), lambda c: False)
    assert first == again and sorted(map(repr, first)) == sorted(map(repr, walked)) and first != other


def test_basic_falls_back_in_ranked_order_until_the_criterion_is_met() -> None:
    s = space()
    walked = _drive(strategies.get("basic")(_context(s)), lambda c: set(c.fallback) >= {"fc", "conv2"})
    assert [c.fallback for c in walked[4:]] == [("fc",), ("conv2", "fc")]
    assert all(c.fallback == () for c in walked[:4])
    # the fallback phase starts from the best model-wise config: the last one here (lowest score)
    assert all(c.plan_key == walked[3].plan_key for c in walked[4:])
    assert len(np.unique([repr(c) for c in walked])) == len(walked)


def test_the_loader_expands_a_config_set_in_order() -> None:
    from aaq.tuning.loader import expand_config_set

    base, configs, problems = expand_config_set([
        {"preset": ["performance", "mixed"], "stat_subset_size": [64, 32], "bias_correction": False},
        {"weights": {"granularity": "pertensor"}, "activations": {"range_estimator": {"preset": "quantile"}},
         "bias_correction": False}])
    assert problems == [] and base["bias_correction"] is False
    assert [(c.sampling_size, c.activation_scheme, c.weight_granularity, c.activation_algorithm) for c in configs] == [
        (64, "sym", "per_channel", "auto"), (64, "asym", "per_channel", "auto"),  # DQ's default
        (32, "sym", "per_channel", "auto"), (32, "asym", "per_channel", "auto"),
        (300, "sym", "per_tensor", "quantile")]
    _, _, problems = expand_config_set([{"preset": "fast"}])
    assert problems and problems[0][0] == "[0].preset"
