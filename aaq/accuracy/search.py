"""Which groups to leave in float: search strategies, POT's greedy revert loop (its defects fixed) and a bisection.

A strategy is an object with ``run(evaluator, targets, start, candidates)``, chosen
by name (``SEARCHES``) and injected into AccuracyAwareQuantization, the way the tuning
strategies are. Both are written against ``SearchEvaluator``, a two-method protocol, so
that they can be tested exactly with a fake whose metric is a known function of the
reverted groups, and run for real on the engine (``aaq.accuracy.evaluator``).

Models are compared by the objective of ``aaq.accuracy.drops.Targets`` (largest
normalised excess over the watched metrics; <= 0 means every target is met).
Evaluations on the full set are asked only the questions the search needs (is the
target met? is it worse than the current model?), so they may stop early; a model
that becomes the current one is always evaluated to the end, which keeps every
later comparison exact.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from aaq.accuracy.drops import Interval, StopRule, Targets, decided

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """Metric values of one model on the full set: exact when ``complete``, else bounds.

    ``values`` are what decisions read; under ``require: "upper"`` they are the
    pessimistic values (``Targets.decision``) and ``measured`` holds the metric values
    as measured (None: the same as ``values``). ``intervals``: each metric's drop
    interval (``DropInterval``) of a complete measurement.
    """

    reverted: frozenset
    values: dict[str, Interval]
    complete: bool
    measured: dict[str, Interval] | None = None
    intervals: dict[str, Any] = field(default_factory=dict)

    def point(self) -> dict[str, float]:
        """The decision values of a complete measurement."""
        if not self.complete:
            raise ValueError("an incomplete measurement has no point values")
        return {name: lo for name, (lo, _) in self.values.items()}

    def shown(self) -> dict[str, Interval]:
        """The metric values as measured (bounds when incomplete): what the report and the log show."""
        return self.values if self.measured is None else self.measured

    def reported(self) -> dict[str, float]:
        """The measured values of a complete measurement."""
        if not self.complete:
            raise ValueError("an incomplete measurement has no point values")
        return {name: lo for name, (lo, _) in self.shown().items()}


class SearchEvaluator(Protocol):
    """What a search needs from the outside world."""

    def measure(self, reverted: frozenset, rule: StopRule | None) -> Measurement:
        """Evaluate the model with ``reverted`` groups in float on the full set.

        Stops early once ``rule`` says the question is decided (None: to the end).
        Re-measuring the same model must only cost the samples not seen yet.
        """

    def rank(self, reverted: frozenset, candidates: Sequence[str], metric: str) -> list[tuple[str, float]]:
        """``candidates`` ordered by how much reverting each helps ``metric`` (best first), with scores."""


@dataclass
class Step:
    """One revert tried by a search, as it goes into the report."""

    group: str
    score: float | None
    kept: bool
    reverted: list[str]
    """The groups in float in the model this step measured."""
    values: dict[str, Interval]
    complete: bool
    note: str = ""
    intervals: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """The chosen set of float groups (in the order they were reverted) and how it was found."""

    reverted: list[str]
    measurement: Measurement
    met: bool
    steps: list[Step] = field(default_factory=list)
    rankings: int = 0
    stop_reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)


class _Search:
    """Shared bookkeeping of both searches."""

    def __init__(self, evaluator: SearchEvaluator, targets: Targets, early_stop: bool) -> None:
        self.evaluator = evaluator
        self.targets = targets
        self.early_stop = early_stop
        self.steps: list[Step] = []
        self.rankings = 0
        self.scores: dict[str, float] = {}

    def measure(self, reverted: frozenset, thresholds: tuple[float, ...]) -> Measurement:
        rule = StopRule(self.targets, thresholds) if self.early_stop else None
        return self.evaluator.measure(reverted, rule)

    def complete(self, m: Measurement) -> Measurement:
        return m if m.complete else self.evaluator.measure(m.reverted, None)

    def objective(self, m: Measurement) -> Interval:
        return self.targets.objective_interval(m.values)

    def passes(self, m: Measurement) -> bool:
        """Decided by the measurement's interval (a stopped evaluation has decided it)."""
        lo, hi = self.objective(m)
        return hi <= 0 if (m.complete or decided((lo, hi), (0.0,))) else False

    def rank(self, reverted: frozenset, candidates: Sequence[str], metric: str) -> list[tuple[str, float]]:
        self.rankings += 1
        ranking = self.evaluator.rank(reverted, list(candidates), metric)
        self.scores.update({g: s for g, s in ranking})
        logger.info("ranked %d groups for %s (ranking %d): top %s", len(ranking), metric, self.rankings,
                    ", ".join(f"{g} ({s:.4g})" for g, s in ranking[:3]))
        return ranking

    def record(self, group: str, kept: bool, m: Measurement, note: str) -> None:
        self.steps.append(Step(group, self.scores.get(group), kept, sorted(m.reverted, key=str), dict(m.shown()),
                               m.complete, note, dict(m.intervals)))
        drops = {n: self.targets.by_name[n].drop(v[0]) if m.complete else None for n, v in m.shown().items()}
        logger.info("revert %s: %s%s", group, note, "" if not m.complete else f" (drops {_fmt(drops)})")

    def result(self, order: list[str], m: Measurement, reason: str) -> SearchResult:
        m = self.complete(m)
        met = self.targets.met(m.point())
        return SearchResult(list(order), m, met, self.steps, self.rankings, reason, dict(self.scores))


class GreedySearch:
    """POT's loop: revert the top-ranked group, evaluate on the full set, keep it or roll it back.

    Fixed against POT (POT_REFERENCE.md §2.4): the best model seen is returned, not
    the last one; after a metric switch the comparison starts from the current drop.
    The ranking is redone when it no longer predicts: a kept revert that did not
    lower the objective, or a change of the metric furthest over its limit. A group
    whose revert raised the objective is rolled back (``use_prev_if_drop_increase``)
    and left out until the model changes: once a later revert is kept, the rolled-back
    groups are ranked again with the rest (POT did the same after a step back), so
    the search never ends with "no group left" while a group it never retried remains.
    Once the target is met, the groups a later revert made unnecessary go back to INT8
    (``_give_back``, as in the bisection): POT kept them.
    """

    name = "greedy"

    def __init__(self, use_prev_if_drop_increase: bool = True) -> None:
        self.use_prev_if_drop_increase = use_prev_if_drop_increase

    @classmethod
    def from_params(cls, params: Any) -> "GreedySearch":
        """The strategy an AccuracyAwareQuantization params object asks for."""
        return cls(use_prev_if_drop_increase=params.use_prev_if_drop_increase)

    def run(self, evaluator: SearchEvaluator, targets: Targets, start: Measurement, candidates: Sequence[str], *,
            max_reverted: int | None = None, early_stop: bool = True) -> SearchResult:
        """``max_reverted`` bounds how many groups end up reverted (POT's ``max_iter_num``)."""
        rollback = self.use_prev_if_drop_increase
        s = _Search(evaluator, targets, early_stop)
        current = s.complete(start)
        best = current
        order: list[str] = []
        banned: dict[str, int] = {}  # group -> how many reverts were kept when it was rolled back
        ranking: list[tuple[str, float]] | None = None
        ranked_for = ""
        reason = "target met" if targets.met(current.point()) else ""
        while not reason:
            if max_reverted is not None and len(order) >= max_reverted:
                reason = f"max_iter_num ({max_reverted}) groups reverted"
                break
            values = current.point()
            driving = targets.driving(values)
            if ranking is None or driving != ranked_for:
                left = [g for g in candidates if g not in order and banned.get(g) != len(order)]
                ranking, ranked_for = s.rank(frozenset(order), left, driving), driving
            if not ranking:
                retry = [g for g, at in banned.items() if at != len(order)]
                if retry:  # the model changed since they were rolled back: rank them again
                    ranking = None
                    continue
                reason = ("every group left raised the drop when reverted" if banned
                          else "no group left to revert")
                break
            group, _ = ranking.pop(0)
            if banned.get(group) == len(order):
                continue
            now = targets.objective(values)
            thresholds = (0.0, now) if rollback else (0.0,)
            trial = s.measure(frozenset(order) | {group}, thresholds)
            lo, hi = s.objective(trial)
            if rollback and lo > now and not s.passes(trial):
                banned[group] = len(order)
                s.record(group, False, trial, "drop increased: rolled back until the model changes")
                continue
            trial = s.complete(trial)
            order.append(group)
            banned.pop(group, None)
            new = targets.objective(trial.point())
            s.record(group, True, trial, "kept" + ("" if new < now else " (no improvement: re-rank)"))
            current = trial
            if new < targets.objective(best.point()):
                best = current
            if targets.met(trial.point()):
                reason = "target met"
            elif new >= now:
                ranking = None
        if best is not current:
            logger.info("returning the best model seen (%d groups reverted), not the last one", len(best.reverted))
            order = [g for g in order if g in best.reverted]
        elif reason == "target met":
            order, best = _give_back(s, order, current)
        return s.result(order, best, reason)


class BisectionSearch:
    """How many of the top-ranked groups must be reverted, found by galloping then bisection.

    Probes revert the top 1, 2, 4, ... groups until one meets the target, then
    bisect between the last failing and the first passing count; each probe only
    asks "is the target met?", so failing probes stop after a few batches. Then
    every chosen group but the last is tried out again, least important first, and
    dropped when the target still holds without it. One ranking, on the start model.
    """

    name = "bisection"

    @classmethod
    def from_params(cls, params: Any) -> "BisectionSearch":
        return cls()

    def run(self, evaluator: SearchEvaluator, targets: Targets, start: Measurement, candidates: Sequence[str], *,
            max_reverted: int | None = None, early_stop: bool = True) -> SearchResult:
        return _bisection(evaluator, targets, start, candidates, max_reverted, early_stop)


SEARCHES = {"greedy": GreedySearch, "bisection": BisectionSearch}
"""Search strategies by the name a spec gives (``search``)."""


def _bisection(evaluator: SearchEvaluator, targets: Targets, start: Measurement, candidates: Sequence[str],
               max_reverted: int | None, early_stop: bool) -> SearchResult:
    s = _Search(evaluator, targets, early_stop)
    current = s.complete(start)
    if targets.met(current.point()):
        return s.result([], current, "target met")
    ranking = s.rank(frozenset(), list(candidates), targets.driving(current.point()))
    ranked = [g for g, _ in ranking]
    kmax = len(ranked) if max_reverted is None else min(len(ranked), max_reverted)
    probes: dict[int, Measurement] = {}

    def probe(k: int) -> bool:
        probes[k] = s.measure(frozenset(ranked[:k]), (0.0,))
        ok = s.passes(probes[k])
        s.record(ranked[k - 1], ok, probes[k], f"top {k}: {'meets' if ok else 'misses'} the target")
        return ok

    low, high, k = 0, None, 1
    while k <= kmax and high is None:
        if probe(k):
            high = k
        else:
            low = k
            k = kmax if k < kmax and 2 * k > kmax else 2 * k
    if high is None:
        tried = [s.complete(m) for m in probes.values()] + [current]
        best = min(tried, key=lambda m: targets.objective(m.point()))
        reason = "no group left to revert" if kmax == len(ranked) else f"max_iter_num ({max_reverted}) reached"
        return s.result([g for g in ranked if g in best.reverted], best, reason)
    while high - low > 1:
        mid = (low + high) // 2
        if probe(mid):
            high = mid
        else:
            low = mid
    chosen, final = _give_back(s, ranked[:high], probes[high])
    return s.result(chosen, final, "target met")


def _give_back(s: _Search, chosen: list[str], final: Measurement) -> tuple[list[str], Measurement]:
    """Every chosen group but the last, least important first, back to INT8 if the target holds without it.

    A search that adds groups one by one can need a group only until a later one is
    reverted (the later one's layers covered what it fixed); this gives it back. The
    last group is kept: without it the search had not met the target. Each try only
    asks "is the target met?", so a needed group costs a few batches.
    """
    for group in list(reversed(chosen[:-1])):
        trial = s.measure(frozenset(chosen) - {group}, (0.0,))
        ok = s.passes(trial)
        s.record(group, not ok, trial, "not needed: back to INT8" if ok else "needed")
        if ok:
            chosen = [g for g in chosen if g != group]
            final = trial
    return chosen, final


def _fmt(drops: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:+.4f}" if v is not None else f"{k} ?" for k, v in drops.items())
