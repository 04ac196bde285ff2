"""``PlanEvaluator``: the search protocol on the engine, for the candidates of one plan at a time.

It measures a candidate (a set of groups left in float) on the full set, in a fixed
seeded sample order so that an early stop sees a fair mix of samples, and ranks
groups through a ``GroupRanker``. Models come from the ``Candidates`` it is given
(``build(reverted)``); switching to another plan (an alternative kept before any
revert) is ``use(candidates, neighbours)``: cached models and ranking subsets of the
old plan are dropped, counters are kept.

Only the engine's search samples are measured (never the held-out ones). With a
confidence rule, every complete measurement carries each metric's drop interval
(``bootstrap_drops``: from the engine's cached per-sample entries, no inference)
and its decision values are ``Targets.decision``'s.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import onnx

from aaq.accuracy.confidence import DropInterval, drop_interval
from aaq.accuracy.drops import StopRule, Targets
from aaq.accuracy.ranking import GroupRanker
from aaq.accuracy.search import Measurement
from aaq.engine.evaluation import Evaluation
from aaq.engine.metrics import Metric
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


@dataclass(frozen=True)
class DropReference:
    """What drops are bootstrapped against: the float model's cached entries (by digest), except for the
    metrics in ``given`` (a ``baseline_value``: a constant); ``relative`` for ``drop_type: relative``."""

    float_digest: str | None = None
    given: frozenset = field(default_factory=frozenset)
    relative: bool = False


def resample_aggregate(metric: Metric) -> Any:
    """What a bootstrap folds a metric's resampled entries with: None for a plain mean (vectorised)."""
    return None if metric.per_sample and type(metric).aggregate is Metric.aggregate else metric.aggregate


def bootstrap_drops(engine: EngineLike, targets: Targets, digest: str, reference: DropReference,
                    indices: np.ndarray, which: str = "search") -> dict[str, DropInterval]:
    """Each watched metric's drop interval for the model ``digest`` on ``indices`` (cached entries only)."""
    confidence = targets.confidence
    if confidence is None:
        return {}
    metrics = {m.name: m for m in engine.metrics}
    candidate = engine.entries(digest, indices)
    floats = engine.entries(reference.float_digest, indices) if reference.float_digest else {}
    out = {}
    for t in targets.targets:
        ref = t.reference if t.name in reference.given or t.name not in floats else floats[t.name]
        out[t.name] = drop_interval(candidate[t.name], ref, higher_is_better=t.higher_is_better,
                                    level=confidence.level, resamples=confidence.resamples, seed=confidence.seed,
                                    relative=reference.relative, aggregate=resample_aggregate(metrics[t.name]),
                                    which=which, bounds=metrics[t.name].bounds)
    return out


class PlanEvaluator:
    """A ``SearchEvaluator`` on the engine; ``candidates`` gives the models, ``ranker`` scores groups.

    ``reference`` says what drop intervals are computed against (with a confidence rule).
    """

    def __init__(self, engine: EngineLike, targets: Targets, candidates: Candidates, ranker: GroupRanker,
                 seed: int, reference: DropReference | None = None) -> None:
        self.engine, self.targets, self.candidates, self.ranker = engine, targets, candidates, ranker
        self.order = np.random.default_rng(seed).permutation(engine.search_indices)
        self.reference = reference or DropReference()
        self.full = FullCounts()
        self.interval_seconds = 0.0
        """Time spent on bootstrap intervals."""
        self._intervals: dict[str, dict[str, DropInterval]] = {}
        self.best: tuple[Measurement, Candidates] | None = None
        """The best complete measurement so far (``better``) and the candidates of the plan it measured: what
        an interrupted search publishes."""

    def build(self, reverted: frozenset) -> onnx.ModelProto:
        return self.candidates.build(reverted)

    def use(self, candidates: Candidates, neighbours: Mapping[Any, Sequence]) -> None:
        """Evaluate the candidates of another plan from now on."""
        self.candidates = candidates
        self.ranker.reset(candidates.build, neighbours)

    def measure(self, reverted: frozenset, rule: StopRule | None) -> Measurement:
        ev = self.engine.evaluate(self.build(reverted), self.order, stop=rule, progress_desc="full set")
        self.full.add(ev)
        if not ev.complete:
            return Measurement(reverted, self.targets.intervals(ev.per_sample, ev.requested), False)
        point = {name: ev.values[name] for name in self.targets.names}
        intervals = self.intervals(ev.model_digest)
        decision = self.targets.decision(point, intervals)
        m = Measurement(reverted, {n: (v, v) for n, v in decision.items()}, True,
                        {n: (v, v) for n, v in point.items()}, intervals)
        if self.best is None or better(self.targets, m, self.best[0]):
            self.best = (m, self.candidates)
        return m

    def intervals(self, digest: str) -> dict[str, DropInterval]:
        """The drop intervals of an evaluated model on the search samples (computed once per model)."""
        if digest not in self._intervals:
            started = time.perf_counter()
            self._intervals[digest] = bootstrap_drops(self.engine, self.targets, digest, self.reference,
                                                      np.sort(self.order))
            self.interval_seconds += time.perf_counter() - started
        return self._intervals[digest]

    def complete(self, m: Measurement) -> Measurement:
        """``m`` evaluated to the end (only the samples not seen yet are inferred)."""
        return m if m.complete else self.measure(m.reverted, None)

    def rank(self, reverted: frozenset, candidates: Sequence, metric: str) -> list[tuple[Any, float]]:
        return self.ranker.rank(reverted, candidates, metric)

    def passed(self, m: Measurement) -> bool:
        """Met for sure: a partial measurement is only returned once its question is decided."""
        return self.targets.objective_interval(m.values)[1] <= 0


def better(targets: Targets, a: Measurement, b: Measurement) -> bool:
    """Whether complete measurement ``a`` beats ``b``: meeting every target beats not; among those that meet
    them, fewer groups in float (then the lower objective); among those that do not, the lower objective."""
    met_a, met_b = targets.met(a.point()), targets.met(b.point())
    if met_a != met_b:
        return met_a
    key_a, key_b = targets.objective(a.point()), targets.objective(b.point())
    if met_a:
        return (len(a.reverted), key_a) < (len(b.reverted), key_b)
    return key_a < key_b
