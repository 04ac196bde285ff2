"""What an AccuracyAwareQuantization run did, as the JSON-able dict that goes into report.json.

Pure: it reads the search result and the counters, and measures nothing (the
latency check is done by the algorithm and handed in). Every drop says what it was
measured against: the float model's measured value or the user's ``baseline_value``.
With a confidence rule every complete drop has its interval beside it
(``DropInterval.as_dict``: point, low, high, level, samples, resamples, seed, set).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from aaq.accuracy.drops import Interval, Targets
from aaq.accuracy.evaluator import FullCounts
from aaq.accuracy.ranking import RankingCounts
from aaq.accuracy.search import Measurement, SearchResult


def search_summary(result: SearchResult, targets: Targets, *, references: Mapping[str, str],
                   float_values: Mapping[str, float | None], groups: Mapping[Any, Sequence[str]],
                   quantized_groups: int, search: str, drop_type: str, rankings: list[dict[str, Any]],
                   alternatives: dict[str, Any], base_params: dict[str, Any], plan: dict[str, Any],
                   full: FullCounts, ranking: RankingCounts, latency: dict[str, Any] | None,
                   seconds: float) -> dict[str, Any]:
    """The summary; ``references[name]`` is ``"measured"`` or ``"baseline_value"``, ``groups`` id -> layers."""
    final, decision = result.measurement.reported(), result.measurement.point()
    intervals = result.measurement.intervals
    steps = {frozenset(s.reverted): s for s in result.steps}
    reverted = []
    for k, gid in enumerate(result.reverted):
        step = steps.get(frozenset(result.reverted[:k + 1]))
        reverted.append({"group": gid, "layers": list(groups[gid]), "score": result.scores.get(gid),
                         "drops_after": None if step is None else drop_intervals(targets, step.values),
                         "intervals_after": None if step is None else _as_dicts(step.intervals)})
    return {
        "target_met": result.met,
        "stop_reason": result.stop_reason,
        "drop_type": drop_type,
        "metrics": {t.name: {"reference": t.reference, "reference_kind": references[t.name],
                             "float": float_values.get(t.name), "final": final[t.name],
                             "drop": t.drop(final[t.name]), "allowed_drop": t.allowed,
                             "interval": intervals[t.name].as_dict() if t.name in intervals else None,
                             "met": t.met(decision[t.name])} for t in targets.targets},
        "groups_quantized": quantized_groups - len(result.reverted),
        "groups_reverted": len(result.reverted),
        "reverted": reverted,
        "search": search,
        "steps": [{"group": s.group, "score": s.score, "kept": s.kept, "note": s.note, "complete": s.complete,
                   "reverted": list(s.reverted), "drops": drop_intervals(targets, s.values),
                   "intervals": _as_dicts(s.intervals)} for s in result.steps],
        "rankings": rankings,
        "alternatives": alternatives,
        "base_params": base_params,
        "plan": plan,
        "evaluations": {
            "full": full.evaluations, "full_stopped_early": full.stopped_early,
            "full_samples_inferred": full.samples, "subset": ranking.evaluations,
            "subset_samples_inferred": ranking.samples,
            "samples_inferred": full.samples + ranking.samples,
            "seconds": full.seconds + ranking.seconds},
        "latency": latency,
        "seconds": seconds,
    }


def headline(summary: Mapping[str, Any]) -> str:
    """The console's line: the outcome and what went back to float (the speed, measured, is
    ``latency_clause``'s: report.json keeps the headline apart from what the clock decided)."""
    total = summary["groups_quantized"] + summary["groups_reverted"]
    layers = [", ".join(r["layers"]) for r in summary["reverted"]]
    shown = "; ".join(layers[:6]) + (f"; ... ({len(layers) - 6} more)" if len(layers) > 6 else "")
    outcome = "target met" if summary["target_met"] else f"target NOT met ({summary['stop_reason']})"
    confidence = summary.get("confidence") or {}
    if confidence.get("require") == "upper":
        outcome += f" (at the {confidence['level']:.0%} upper bound)"
    return f"{outcome}; {summary['groups_reverted']} of {total} groups reverted to float" + \
        (f": {shown}" if shown else "")


def latency_clause(latency: Mapping[str, Any]) -> str:
    """``latency x0.74 of float``, and whether that is slower, from a summary's measured ``latency``."""
    slower = " (SLOWER than float)" if latency.get("slower_than_float") else ""
    return f"latency x{latency['ratio']:.2f} of float{slower}"


def drop_intervals(targets: Targets, values: Mapping[str, Interval]) -> dict[str, Any]:
    """Per metric, the drop (a number) or the interval it is known to lie in (a partial evaluation)."""
    out = {}
    for t in targets.targets:
        lo, hi = values[t.name]
        a, b = sorted((t.drop(lo), t.drop(hi)))
        out[t.name] = a if a == b else [a, b]
    return out


def drops_text(targets: Targets, values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:+.4f}" for k, v in targets.drops(values).items())


def confidence_summary(targets: Targets, final: Measurement, limit: float, seconds: float,
                       held_out: dict[str, Any] | None) -> dict[str, Any]:
    """The confidence rule, what the intervals cost, the "too few samples" sentences and the held-out check.

    ``limit`` is ``maximal_drop``, in the intervals' units (metric units, or a fraction for relative drops).
    """
    rule = targets.confidence
    statements = [line for t in targets.targets if t.name in final.intervals
                  for line in [final.intervals[t.name].statement(limit, t.name)] if line]
    return {"level": None if rule is None else rule.level, "require": None if rule is None else rule.require,
            "resamples": None if rule is None else rule.resamples, "seed": None if rule is None else rule.seed,
            "seconds": seconds, "statements": statements, "held_out": held_out}


def _as_dicts(intervals: Mapping[str, Any]) -> dict[str, Any]:
    return {name: iv.as_dict() for name, iv in intervals.items()}
