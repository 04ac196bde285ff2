"""The fake evaluator the revert-search tests share: a metric that is a known function of the float groups.

Sample ``i`` of metric ``m`` scores 1 unless a group that is still quantized
damages it (``damage[m][g]``), or a group that was reverted harms it (``harm[g]``:
a revert that makes things worse, as real reverts sometimes do). ``bias`` skews the
ranking scores, to model a ranking that mispredicts.
"""
from __future__ import annotations

import numpy as np

from aaq.accuracy.drops import StopRule
from aaq.accuracy.search import BisectionSearch, GreedySearch, Measurement


def greedy_search(evaluator, targets, start, candidates, *, use_prev_if_drop_increase=True, **kwargs):
    return GreedySearch(use_prev_if_drop_increase).run(evaluator, targets, start, candidates, **kwargs)


def bisection_search(evaluator, targets, start, candidates, **kwargs):
    return BisectionSearch().run(evaluator, targets, start, candidates, **kwargs)


class FakeEvaluator:
    def __init__(self, n: int, damage: dict[str, dict[str, set[int]]], harm: dict[str, set[int]] | None = None,
                 bias: dict[str, float] | None = None, batch: int = 10, seed: int = 0,
                 permanent: set[int] = frozenset(), harm_while: dict[str, set[str]] | None = None) -> None:
        self.n, self.damage, self.harm, self.bias, self.batch = n, damage, harm or {}, bias or {}, batch
        self.harm_while = harm_while or {}  # harm[g] only while one of these groups is still quantized
        self.permanent = permanent
        self.order = np.random.default_rng(seed).permutation(n)
        self.done: dict[frozenset, int] = {}
        self.inferred = 0
        self.full = 0
        self.rank_calls: list[tuple[frozenset, tuple[str, ...], str]] = []

    @property
    def groups(self) -> list[str]:
        return sorted({g for per in self.damage.values() for g in per} | set(self.harm))

    def scores(self, reverted: frozenset, metric: str) -> np.ndarray:
        s = np.ones(self.n)
        s[list(self.permanent)] = 0.0
        for g, samples in self.damage[metric].items():
            if g not in reverted:
                s[list(samples)] = 0.0
        for g, samples in self.harm.items():
            if g in reverted and (g not in self.harm_while or self.harm_while[g] - reverted):
                s[list(samples)] = 0.0
        return s

    def values(self, reverted: frozenset) -> dict[str, float]:
        return {m: float(np.mean(self.scores(reverted, m))) for m in self.damage}

    def measure(self, reverted: frozenset, rule: StopRule | None) -> Measurement:
        self.full += 1
        per = {m: self.scores(reverted, m)[self.order] for m in self.damage}
        k = self.done.get(reverted, 0)

        def stop_at(k: int) -> bool:
            if rule is None or k >= self.n:
                return False
            partial = type("P", (), {"per_sample": {m: s[:k] for m, s in per.items()}, "requested": self.n,
                                     "indices": self.order[:k]})()
            return rule(partial)

        stopped = k > 0 and stop_at(k)
        while not stopped and k < self.n:
            new = min(k + self.batch, self.n)
            self.inferred += new - max(k, self.done.get(reverted, 0))
            k = new
            self.done[reverted] = max(self.done.get(reverted, 0), k)
            stopped = stop_at(k)
        if k >= self.n:
            return Measurement(reverted, {m: (v, v) for m, v in self.values(reverted).items()}, True)
        return Measurement(reverted, rule.targets.intervals({m: s[:k] for m, s in per.items()}, self.n), False)

    def rank(self, reverted: frozenset, candidates, metric: str) -> list[tuple[str, float]]:
        self.rank_calls.append((reverted, tuple(candidates), metric))
        scored = [(g, float(np.mean(self.scores(reverted | {g}, metric))) + self.bias.get(g, 0.0))
                  for g in candidates]
        return sorted(scored, key=lambda gs: -gs[1])
