"""Other base-algorithm params worth trying before reverting layers: the mixed preset and POT's tuning grid.

``mixed_preset_stages`` and ``tuning_stages`` return *stages*: lists of param
overrides. ``try_alternatives`` runs them: a stage's candidates are scored on the
hardest samples of the current model, the best one must beat the current plan
there (the stage's candidates and the current plan scored in one batch, on the
engine's executor when it is parallel), and is then kept only if it lowers the drop
on the full set (measured with early stop); later stages start from what the earlier ones kept (POT searched
coordinate-wise too). Making a candidate's plan is the caller's ``propose(stage,
kept)``: it runs the base algorithm with the overrides kept so far and the stage's,
every statistic the stage needs collected in one pass.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from aaq.accuracy.drops import StopRule
from aaq.accuracy.search import Measurement
from aaq.params import merge_params
from aaq.quantization.presets import AUTO_ESTIMATOR, DEFAULT_ESTIMATOR, OWN_STATISTICS

if TYPE_CHECKING:
    from aaq.accuracy.evaluator import Candidates, PlanEvaluator

logger = logging.getLogger(__name__)

Stage = list[dict[str, Any]]


def mixed_preset_stages(base_params: dict[str, Any]) -> list[Stage]:
    """One stage with the mixed preset (asymmetric activations), unless the base already uses it."""
    if base_params.get("preset") == "mixed":
        logger.info("convert_to_mixed_preset: the base algorithm already uses the mixed preset")
        return []
    return [[{"preset": "mixed"}]]


def tuning_stages(base_params: dict[str, Any], bias: bool = True) -> list[Stage]:
    """POT's grid, coordinate-wise, cheapest first: activation range estimators (and the percentile of a
    histogram), then the float-graph algorithms toggled (``algorithm_stage``), then bias correction
    (unless ``bias`` is false: Tuning's ``basic`` leaves it out, because biases corrected for the all-int8
    model are wrong once ops fall back: on the tests' sensitive MLP the one layer whose fallback meets the
    criterion was no longer enough after measured bias correction, three were).

    With symmetric activations (preset performance) the lower bound only decides
    the sign, so only the upper bound's estimator is searched there. From a ``kl``,
    ``percentile`` or ``auto`` base the candidates go back to the ``minmax`` estimator the
    grid's entries modify (those estimators take no min / max statistics); from ``auto``,
    which chose on at most ``auto_eval_samples`` samples (or by output error), both of its candidates are
    tried here too.
    """
    mixed = base_params.get("preset") == "mixed"
    estimator = ((base_params.get("activations") or {}).get("range_estimator") or {}).get("preset")
    estimator = estimator or DEFAULT_ESTIMATOR
    reset = {"preset": "minmax"} if estimator in OWN_STATISTICS else {}

    def options(kind: str) -> list[dict | None]:
        return [None] + [{"type": kind, "aggregator": "mean", "outlier_prob": q} for q in (1e-3, 1e-4)]

    ranges = [{"activations": {"range_estimator": {**reset, **{k: v for k, v in (("min", low), ("max", high)) if v}}}}
              for low in (options("quantile") if mixed else [None])
              for high in options("quantile" if mixed else "abs_quantile") if low or high]
    if estimator == AUTO_ESTIMATOR:  # auto chose one of these two on its own samples, or by output error
        ranges.append({"activations": {"range_estimator": {"preset": "minmax"}}})
    if estimator != "percentile":
        ranges.append({"activations": {"range_estimator": {"preset": "percentile", "min": {"type": None, "aggregator": None},
                                                           "max": {"type": None, "aggregator": None}}}})
    current = (base_params.get("bias_correction"), base_params.get("use_fast_bias"))
    corrections = [{"bias_correction": b, "use_fast_bias": f} for b, f in ((True, True), (True, False), (False, True))
            if (b, f) != current and not (current[0] is False and b is False)]
    return [ranges, algorithm_stage(base_params)] + ([corrections] if bias else [])


def algorithm_stage(base_params: dict[str, Any]) -> Stage:
    """Cross-layer equalization and SmoothQuant each toggled, then the weight-range search switched on.

    Each is one candidate on its own (coordinate-wise, as the rest of the grid): CLE
    and SmoothQuant rewrite the float graph, the weight search costs one more
    statistics pass. The caller drops the candidates a base algorithm has no param for.
    """
    cle = bool(base_params.get("cross_layer_equalization", False))
    smooth = dict(base_params.get("smooth_quant") or {})
    search = dict(base_params.get("weight_range_search") or {})
    stage: Stage = [{"cross_layer_equalization": not cle},
                    {"smooth_quant": {"enabled": not smooth.get("enabled", False)}}]
    if not search.get("enabled", False):
        stage.append({"weight_range_search": {"enabled": True}})
    return stage


@dataclass
class Alternative:
    """One candidate plan of a stage: the overrides it was made with, its models and group neighbours."""

    overrides: dict[str, Any]
    candidates: "Candidates"
    neighbours: Mapping[Any, Sequence]


def try_alternatives(what: str, evaluator: "PlanEvaluator", current: Measurement, stages: list[Stage],
                     propose: Callable[[Stage, dict[str, Any]], list[Alternative]]) -> tuple[Measurement, dict[str, Any]]:
    """Run ``stages``; return the measurement of the plan kept (``evaluator`` now evaluates it) and a record.

    The record lists every candidate with its subset score, the score each stage's
    best had to beat (the current plan's), and the overrides kept.
    """
    targets, ranker = evaluator.targets, evaluator.ranker
    record: dict[str, Any] = {"tried": [], "kept": None}
    for stage in stages:
        metric = targets.driving(current.point())
        subset = ranker.subset(frozenset(), metric)
        distance = ranker.by_distance
        proposed = propose(stage, record["kept"] or {})
        # The current plan and every candidate of the stage in one batch: on a parallel executor they
        # are scored side by side, each plan shipped once.
        values = ranker.scores([(evaluator.candidates.build, frozenset())]
                               + [(a.candidates.build, frozenset()) for a in proposed], metric, subset, distance,
                               [f"{what}: current plan"] + [f"{what}: {a.overrides}" for a in proposed])
        now = values[0]
        scored = []
        for score, alternative in zip(values[1:], proposed):
            record["tried"].append({"params": alternative.overrides, "subset_score": score, "to_beat": now,
                                    "subset_size": int(len(subset))})
            scored.append((score, alternative))
        if not scored:
            continue
        score, best = max(scored, key=lambda s: s[0])
        if score <= now:
            continue
        before = targets.objective(current.point())
        old = evaluator.candidates, ranker.neighbours
        evaluator.use(best.candidates, best.neighbours)
        trial = evaluator.measure(frozenset(), StopRule(targets, (0.0, before)))
        lo, _ = targets.objective_interval(trial.values)
        if lo >= before and not evaluator.passed(trial):
            evaluator.use(*old)
            logger.info("%s: %s helps on the hardest samples but not on the full set: not kept", what,
                        best.overrides)
            continue
        current = evaluator.complete(trial)
        record.setdefault("objective_before", before)
        record["objective_after"] = targets.objective(current.point())
        record["kept"] = merge_params(record["kept"] or {}, best.overrides)
        logger.info("%s: kept %s, drops now %s", what, best.overrides,
                    ", ".join(f"{k} {v:+.4f}" for k, v in targets.drops(current.point()).items()))
    return current, record
