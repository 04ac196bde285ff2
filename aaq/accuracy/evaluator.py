"""``PlanEvaluator``: the search protocol on the engine, for the candidates of one plan at a time.

It measures a candidate (a set of groups left in float) on the full set, in a fixed
seeded sample order so that an early stop sees a fair mix of samples, and ranks
groups through a ``GroupRanker``. Models come from the ``Candidates`` it is given
(``build(reverted)``); switching to another plan (an alternative kept before any
revert) is ``use(candidates, neighbours)``: cached models and ranking subsets of the
old plan are dropped, counters are kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import onnx

from aaq.accuracy.drops import StopRule, Targets
from aaq.accuracy.ranking import GroupRanker
from aaq.accuracy.search import Measurement
from aaq.engine.evaluation import Evaluation
from aaq.engine.protocol import EngineLike

logger = logging.getLogger(__name__)


class Candidates(Protocol):
    """The models of one plan: ``build(reverted)`` leaves ``reverted`` groups in float."""

    def build(self, reverted: frozenset) -> onnx.ModelProto:
        """The QDQ model."""


@dataclass
class FullCounts:
    """What evaluations on the full set cost: how many, how many stopped early, samples, seconds."""

    evaluations: int = 0
    stopped_early: int = 0
    samples: int = 0
    seconds: float = 0.0

    def add(self, ev: Evaluation) -> None:
        self.evaluations += 1
        self.stopped_early += int(not ev.complete)
        self.samples += int(ev.samples_inferred)
        self.seconds += ev.seconds


class PlanEvaluator:
    """A ``SearchEvaluator`` on the engine; ``candidates`` gives the models, ``ranker`` scores groups."""

    def __init__(self, engine: EngineLike, targets: Targets, candidates: Candidates, ranker: GroupRanker,
                 seed: int) -> None:
        self.engine, self.targets, self.candidates, self.ranker = engine, targets, candidates, ranker
        self.order = np.random.default_rng(seed).permutation(engine.num_samples)
        self.full = FullCounts()

    def build(self, reverted: frozenset) -> onnx.ModelProto:
        return self.candidates.build(reverted)

    def use(self, candidates: Candidates, neighbours: Mapping[Any, Sequence]) -> None:
        """Evaluate the candidates of another plan from now on."""
        self.candidates = candidates
        self.ranker.reset(candidates.build, neighbours)

    def measure(self, reverted: frozenset, rule: StopRule | None) -> Measurement:
        ev = self.engine.evaluate(self.build(reverted), self.order, stop=rule, progress_desc="full set")
        self.full.add(ev)
        if ev.complete:
            values = {name: (ev.values[name], ev.values[name]) for name in self.targets.names}
        else:
            values = self.targets.intervals(ev.per_sample, ev.requested)
        return Measurement(reverted, values, ev.complete)

    def complete(self, m: Measurement) -> Measurement:
        """``m`` evaluated to the end (only the samples not seen yet are inferred)."""
        return m if m.complete else self.measure(m.reverted, None)

    def rank(self, reverted: frozenset, candidates: Sequence, metric: str) -> list[tuple[Any, float]]:
        return self.ranker.rank(reverted, candidates, metric)

    def passed(self, m: Measurement) -> bool:
        """Met for sure: a partial measurement is only returned once its question is decided."""
        return self.targets.objective_interval(m.values)[1] <= 0
