"""Several metrics weighed into one accuracy that one criterion checks (INC's ``metric_weight``).

``WeightedTargets`` is a ``Targets``: the searches, ``StopRule`` and the evaluator
use it unchanged. The accuracy is ``sum_i w_i * value_i`` over metrics that share one
direction; its float reference is the same sum of the float values, and the allowed
drop is taken on that reference. Partial evaluations bound it exactly: with
non-negative weights, the sum of the per-metric bounds bounds the sum.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from aaq.accuracy.drops import Interval, MetricTarget, Targets, allowed_drop


class WeightedTargets(Targets):
    """``metrics`` (each with its own reference and bounds) combined by ``weights`` into ``combined``."""

    def __init__(self, metrics: Sequence[MetricTarget], weights: Sequence[float], maximal_drop: float,
                 drop_type: str) -> None:
        super().__init__(metrics)
        if len(weights) != len(self.targets) or any(w < 0 for w in weights):
            raise ValueError("one non-negative weight per metric")
        if len({t.higher_is_better for t in self.targets}) > 1:
            raise ValueError("weighted metrics must share one direction")
        self.weights = [float(w) for w in weights]
        reference = self.combine({t.name: t.reference for t in self.targets})
        self.combined = MetricTarget("weighted", self.targets[0].higher_is_better, reference,
                                     allowed_drop(reference, maximal_drop, drop_type))

    def combine(self, values: Mapping[str, float]) -> float:
        return sum(w * float(values[t.name]) for w, t in zip(self.weights, self.targets))

    def objective(self, values: Mapping[str, float]) -> float:
        return self.combined.excess(self.combine(values))

    def objective_interval(self, intervals: Mapping[str, Interval]) -> Interval:
        lo = sum(w * intervals[t.name][0] for w, t in zip(self.weights, self.targets))
        hi = sum(w * intervals[t.name][1] for w, t in zip(self.weights, self.targets))
        return self.combined.excess_interval((lo, hi))

    def met(self, values: Mapping[str, float]) -> bool:
        return self.combined.met(self.combine(values))

    def driving(self, values: Mapping[str, float]) -> str:
        """The metric whose weighted drop is largest: reverting for it wins the most back."""
        return max(zip(self.weights, self.targets), key=lambda wt: wt[0] * wt[1].drop(values[wt[1].name]))[1].name
