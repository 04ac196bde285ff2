"""Accuracy drops: per metric, absolute or relative, and the bound that decides an evaluation early.

Every metric watched by AccuracyAwareQuantization becomes a ``MetricTarget``: the
float model's value (measured, or the user's ``baseline_value``), the direction, and
the drop allowed. The search compares models by one number, the *objective*: the
largest normalised excess over all watched metrics, ``max_m (drop_m - allowed_m) /
scale_m``. The target is met exactly when the objective is <= 0, and the metric that
attains the max is the one furthest over its limit, the one that drives the ranking.

Early stopping: for a metric whose value is the mean of per-sample scores bounded
in ``[a, b]`` (accuracy: ``[0, 1]``), after ``k`` of ``n`` samples with score sum
``s`` the final value is known to lie in ``[(s + (n-k)a) / n, (s + (n-k)b) / n]``.
That interval is exact, not a guess, so a question such as "is the objective <= t?"
can be answered as soon as no threshold lies inside the objective's interval.

Confidence (``aaq.accuracy.confidence``): with ``require: "upper"`` the value a
decision reads is pessimistic, the float value minus the upper end of the drop's
bootstrap interval (plus, when lower is better), never better than the point value.
A partial evaluation bounds the point value only, so the decision value's interval
is open on the bad side: an evaluation can stop early when it is sure to fail,
never when it only looks like passing. The searches need no change for it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from aaq.accuracy.confidence import Confidence, DropInterval

logger = logging.getLogger(__name__)

Interval = tuple[float, float]

# Decisions taken on a partial evaluation keep this much margin (relative) from a
# threshold, so that float rounding between the running sum and the engine's final
# mean can never flip a decision; at completion the exact value decides.
_MARGIN = 1e-9


@dataclass(frozen=True)
class MetricTarget:
    """One watched metric: its float value, its direction and the drop it may lose.

    ``bounds`` is set when the metric's value is the mean of per-sample scores that
    lie in ``bounds``; only then can a partial evaluation bound the final value.
    """

    name: str
    higher_is_better: bool
    reference: float
    allowed: float
    bounds: Interval | None = None

    @property
    def scale(self) -> float:
        """What excesses are divided by, so metrics of different ranges compare (POT's rule)."""
        return abs(self.reference) if self.reference else 1.0

    def drop(self, value: float) -> float:
        """Positive when ``value`` is worse than the float model's, whatever the direction."""
        return self.reference - value if self.higher_is_better else value - self.reference

    def met(self, value: float) -> bool:
        return self.drop(value) <= self.allowed

    def excess(self, value: float) -> float:
        """How far over its allowed drop ``value`` is, normalised; <= 0 means within the target."""
        return (self.drop(value) - self.allowed) / self.scale

    def excess_interval(self, values: Interval) -> Interval:
        lo, hi = values
        a, b = (self.excess(hi), self.excess(lo)) if self.higher_is_better else (self.excess(lo), self.excess(hi))
        return a, b

    def pessimistic(self, value: float, interval: DropInterval) -> float:
        """The value whose drop is the interval's upper end (in metric units), never better than ``value``."""
        upper = interval.high * (self.scale if interval.drop_type == "relative" else 1.0)
        drop = max(self.drop(value), upper)
        return self.reference - drop if self.higher_is_better else self.reference + drop

    def open_on_bad_side(self, values: Interval) -> Interval:
        """Where a pessimistic value can be when the point value lies in ``values``."""
        return (-math.inf, values[1]) if self.higher_is_better else (values[0], math.inf)

    def value_interval(self, scores: np.ndarray | None, total: int) -> Interval:
        """Where the mean over ``total`` samples can still end, given the scores of those seen."""
        seen = 0 if scores is None else len(scores)
        if seen >= total and scores is not None and seen:
            v = float(np.mean(scores))
            return v, v
        if self.bounds is None or scores is None:
            return -math.inf, math.inf
        s = float(np.sum(scores, dtype=np.float64))
        rest = total - seen
        return (s + rest * self.bounds[0]) / total, (s + rest * self.bounds[1]) / total


def allowed_drop(reference: float, maximal_drop: float, drop_type: str) -> float:
    """``maximal_drop`` in metric units: as is (absolute) or a fraction of the float value (relative)."""
    if drop_type == "absolute":
        return float(maximal_drop)
    if drop_type == "relative":
        return float(maximal_drop) * abs(float(reference))
    raise ValueError(f"drop_type must be 'absolute' or 'relative', got {drop_type!r}")


class Targets:
    """All watched metrics; turns metric values (or intervals) into the objective.

    ``confidence`` is the rule the target is met by (None: point drops, no intervals).
    """

    def __init__(self, targets: Sequence[MetricTarget], confidence: Confidence | None = None) -> None:
        if not targets:
            raise ValueError("at least one metric must be watched")
        self.targets = list(targets)
        self.by_name = {t.name: t for t in self.targets}
        self.confidence = confidence

    @property
    def pessimistic(self) -> bool:
        """Whether decisions read the pessimistic values (``require: "upper"``)."""
        return self.confidence is not None and self.confidence.upper

    def decision(self, values: Mapping[str, float], intervals: Mapping[str, DropInterval]) -> dict[str, float]:
        """The values decisions read for a complete measurement: the point values, or the pessimistic ones."""
        if not self.pessimistic:
            return dict(values)
        return {n: self.by_name[n].pessimistic(v, intervals[n]) if n in intervals else v for n, v in values.items()}

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    def objective(self, values: Mapping[str, float]) -> float:
        return max(t.excess(values[t.name]) for t in self.targets)

    def objective_interval(self, intervals: Mapping[str, Interval]) -> Interval:
        parts = [t.excess_interval(intervals[t.name]) for t in self.targets]
        return max(p[0] for p in parts), max(p[1] for p in parts)

    def met(self, values: Mapping[str, float]) -> bool:
        return all(t.met(values[t.name]) for t in self.targets)

    def driving(self, values: Mapping[str, float]) -> str:
        """The metric furthest over its limit (first in order on ties): it drives the ranking."""
        return max(self.targets, key=lambda t: t.excess(values[t.name])).name

    def drops(self, values: Mapping[str, float]) -> dict[str, float]:
        return {t.name: t.drop(values[t.name]) for t in self.targets}

    def intervals(self, per_sample: Mapping[str, np.ndarray | None], total: int) -> dict[str, Interval]:
        """Where a partial evaluation's decision values can still end (open on the bad side when pessimistic)."""
        out = {t.name: t.value_interval(per_sample.get(t.name), total) for t in self.targets}
        if self.pessimistic:
            out = {n: self.by_name[n].open_on_bad_side(v) for n, v in out.items()}
        return out


def decided(objective: Interval, thresholds: Sequence[float]) -> bool:
    """True when every question "objective <= t" has the same answer anywhere in the interval."""
    lo, hi = objective
    for t in thresholds:
        margin = _MARGIN * max(1.0, abs(t))
        if not (hi <= t - margin or lo > t + margin or lo == hi):
            return False
    return True


@dataclass(frozen=True)
class StopRule:
    """Stop a full evaluation once each "objective <= t" question is decided.

    Called by the engine after each batch with the partial evaluation; the
    thresholds are 0 (is the target met?) and, in the greedy search, the current
    model's objective (did this revert make things worse?).
    """

    targets: Targets
    thresholds: tuple[float, ...]

    def __call__(self, partial: Any) -> bool:
        total = int(getattr(partial, "requested", 0) or len(partial.indices))
        return decided(self.targets.objective_interval(self.targets.intervals(partial.per_sample, total)),
                       self.thresholds)


def score_bounds(metric: Any) -> Interval | None:
    """The per-sample score range of ``metric`` when its value is their plain mean, else None.

    Metrics declare it (``Metric.bounds``); a metric that gives no per-sample values
    bounds nothing.
    """
    if not getattr(metric, "per_sample", False) or getattr(metric, "bounds", None) is None:
        return None
    low, high = metric.bounds
    return float(low), float(high)
