"""Ranking: which group's revert wins most of the quantization loss back, scored on the hardest samples.

The ranking subset (``subsets.hardest``) is at most ``ranking_subset_size`` samples of
the comparison set on which the current model differs from the float model, by the
per-sample metric difference, or by the output distance when the metric gives no
per-sample values (or ``ranking_method`` is ``output_distance``). Each candidate group
is then scored on that subset with the group reverted, higher = reverting it helps
more: the metric itself (its sign flipped when lower is better), or minus the
normalised MSE between its outputs and the float model's; in this process, or on
the engine's executor (``engine.executors``: worker processes, a Dask cluster), which
is sent the plan and the subset once and then only the groups of each candidate.

Candidates whose scores differ by less than the noise (one sample's worth of a
bounded metric, 1% of the best output distance) are ordered by how their revert changes
the number of INT8/float boundaries: a group next to layers already in float keeps
the INT8 regions whole, which ONNX Runtime runs faster. Which groups border which
(``quantization.graph.group_neighbours``) is given to the ranker: this module never
reads the structure of a graph.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from aaq.accuracy.drops import score_bounds
from aaq.accuracy.subsets import hardest, output_distance
from aaq.accuracy.workers import recipe, score_task, subset_context, tasks_for
from aaq.engine.executors import Executor, executor_of
from aaq.engine.protocol import EngineLike
from aaq.quantization.graph import FLOAT

logger = logging.getLogger(__name__)

_DISTANCE_TIE = 0.01


def boundary_change(group: str, reverted: frozenset, neighbours: Mapping[str, Sequence[str]]) -> int:
    """How many INT8/float boundaries reverting ``group`` adds (negative: removes)."""
    return sum(-1 if (n == FLOAT or n in reverted) else 1 for n in neighbours.get(group, ()))


def order_scores(scores: Mapping[str, float], tie: float, reverted: frozenset,
                 neighbours: Mapping[str, Sequence[str]]) -> list[tuple[str, float]]:
    """Best score first; among scores within ``tie`` of the best left, fewer new boundaries first.

    The list is consumed in order, so each pick counts as float when the next is chosen.
    """
    left = dict(scores)
    position = {g: i for i, g in enumerate(scores)}
    ordered: list[tuple[str, float]] = []
    assumed = set(reverted)
    while left:
        top = max(left.values())
        close = [g for g, s in left.items() if s >= top - tie]
        pick = min(close, key=lambda g: (boundary_change(g, frozenset(assumed), neighbours), -left[g], position[g]))
        ordered.append((pick, left.pop(pick)))
        assumed.add(pick)
    return ordered


@dataclass
class RankingCounts:
    """What ranking cost: subset evaluations, samples inferred, seconds."""

    evaluations: int = 0
    samples: int = 0
    seconds: float = 0.0


class GroupRanker:
    """Scores candidate groups on the hardest samples of the current model, on the engine.

    ``build(reverted)`` returns the model with those groups in float;
    ``comparison`` are the indices whose per-sample losses choose the subset (all
    samples, or ``metric_subset_ratio`` of them when every baseline is given).
    """

    def __init__(self, engine: EngineLike, build: Callable[[frozenset], onnx.ModelProto], float_model: onnx.ModelProto,
                 *, method: str, subset_size: int, comparison: np.ndarray, seed: int,
                 neighbours: Mapping[str, Sequence[str]], executor: Executor | None = None,
                 owns_executor: bool = False) -> None:
        self.engine, self.build, self.float_model = engine, build, float_model
        self.method, self.subset_size, self.comparison = method, subset_size, np.asarray(comparison, np.int64)
        self.seed, self.neighbours = seed, neighbours
        self.executor = executor if executor is not None else executor_of(engine)
        self.owns_executor = owns_executor
        """Whether ``close`` ends the executor (one made for this ranker); the engine's is the run's to end."""
        self.metrics = {m.name: m for m in engine.metrics}
        self.counts = RankingCounts()
        self.history: list[dict[str, Any]] = []
        """Every ranking made, in order: the metric, the groups already in float, the subset size, the scores."""
        self._subsets: dict[tuple, np.ndarray] = {}
        self._shared: dict[Any, Any] = {}
        """What was shipped to the executor, by what it is: the recipe, subsets, plans (kept so their ids stay)."""

    def reset(self, build: Callable[[frozenset], onnx.ModelProto], neighbours: Mapping[str, Sequence[str]]) -> None:
        """Rank the models of another plan: its ``build``, its group neighbours; the old subsets are forgotten."""
        self.build, self.neighbours = build, neighbours
        self._subsets.clear()

    def close(self, abandon: bool = False) -> None:
        """Drop the shared contexts; end the executor if this ranker started it (``abandon``: a signal came,
        its workers are stopped now, not after their running task)."""
        self._shared.clear()
        if self.owns_executor:
            self.executor.close(abandon=abandon)

    @property
    def by_distance(self) -> bool:
        """Whether groups are scored by output distance (else by the metric on the subset)."""
        return self.method == "output_distance"

    def picks_by_distance(self, metric: str) -> bool:
        """Whether the subset is picked by output distance: asked for, or the metric has no per-sample values."""
        return self.by_distance or not self.metrics[metric].per_sample

    def subset(self, reverted: frozenset, metric: str) -> np.ndarray:
        """The ranking subset for the model with ``reverted`` groups in float (cached)."""
        key = (reverted, metric)
        if key not in self._subsets:
            model = self.build(reverted)
            idx = self.comparison
            if self.picks_by_distance(metric):
                loss = self._distances(model, idx)
            else:
                ref = self._evaluate(self.float_model, idx).per_sample[metric]
                cur = self._evaluate(model, idx).per_sample[metric]
                loss = ref - cur if self.metrics[metric].higher_is_better else cur - ref
            self._subsets[key] = hardest(idx, loss, self.subset_size, self.seed)
            logger.debug("ranking subset for %s: %d samples", metric, len(self._subsets[key]))
        return self._subsets[key]

    def rank(self, reverted: frozenset, candidates: Sequence[str], metric: str) -> list[tuple[str, float]]:
        """Candidates, best first: reverting the first helps ``metric`` most on the ranking subset."""
        if not candidates:
            return []
        subset = self.subset(reverted, metric)
        distance = self.by_distance
        values = self.scores([(self.build, reverted | {g}) for g in candidates], metric, subset, distance,
                             [f"group {g}" for g in candidates])
        scores = dict(zip(candidates, values))
        if distance:
            tie = _DISTANCE_TIE * abs(max(scores.values()))  # 1% of the best (smallest) distance
        else:
            bounds = score_bounds(self.metrics[metric])
            tie = (bounds[1] - bounds[0]) / len(subset) if bounds is not None else 0.0
            # One sample's worth of score can exceed the whole spread of scores (wide per-sample
            # bounds): then the boundary tie-break would decide the order, not the scores.
            spread = max(scores.values()) - min(scores.values()) if scores else 0.0
            tie = min(tie, 0.1 * spread)
        ordered = order_scores(scores, tie, reverted, self.neighbours)
        self.history.append({"metric": metric, "reverted": sorted(reverted, key=str), "subset_size": int(len(subset)),
                             "by": "output_distance" if distance else "metric",
                             "scores": [{"group": g, "score": float(v)} for g, v in ordered]})
        return ordered

    def score(self, model: onnx.ModelProto, metric: str, subset: np.ndarray, distance: bool) -> float:
        """Higher is better: the metric on ``subset`` (sign-flipped when lower is better), or -distance."""
        if distance:
            reference = self.engine.outputs(self.float_model, subset)
            return -float(np.mean(output_distance(reference, self._outputs(model, subset))))
        value = self._evaluate(model, subset).values[metric]
        return value if self.metrics[metric].higher_is_better else -value

    def _evaluate(self, model: onnx.ModelProto, indices: np.ndarray) -> Any:
        ev = self.engine.evaluate(model, indices, progress_desc="ranking")
        self._count(ev.samples_inferred, ev.seconds)
        return ev

    def _distances(self, model: onnx.ModelProto, indices: np.ndarray) -> np.ndarray:
        """Per-sample output distance of ``model`` to the float model, computed a batch at a time.

        Neither model's outputs over the whole comparison set are held: on a model with
        large outputs (a CTC recogniser: 1 MB per sample) they would be the biggest
        thing in memory. The float model is run again for it, and counted.
        """
        started = time.perf_counter()
        pairs = zip(self.engine.run(self.float_model, indices, progress_desc="float outputs"),
                    self.engine.run(model, indices, progress_desc="outputs"))
        parts = [output_distance(reference, outputs, len(bidx)) for (bidx, reference), (_, outputs) in pairs]
        self._count(2 * len(indices), time.perf_counter() - started)
        return np.concatenate(parts) if parts else np.zeros(0)

    def _outputs(self, model: onnx.ModelProto, indices: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        out = self.engine.outputs(model, indices)
        self._count(len(indices), time.perf_counter() - started)
        return out

    def _count(self, samples: int, seconds: float) -> None:
        self.counts.evaluations += 1
        self.counts.samples += int(samples)
        self.counts.seconds += seconds

    def scores(self, models: Sequence[tuple[Callable[[frozenset], onnx.ModelProto], frozenset]], metric: str,
               subset: np.ndarray, distance: bool, labels: Sequence[str]) -> list[float]:
        """``score`` of each ``(build, reverted)`` model, in order: on the executor when it is parallel, there
        are several and the engine can take in its workers' results (``absorb``), else here; an executor
        that fails is reported and this process takes over."""
        if self.executor.parallel and len(models) > 1 and hasattr(self.engine, "absorb"):
            try:
                return self._parallel_scores(models, metric, subset, distance, labels)
            except Exception as exc:  # a lost cluster, or a plugin that fails in a worker: this process decides
                logger.warning("parallel ranking failed (%s: %s); ranking in this process from now on",
                               type(exc).__name__, exc)
                self.close()
                self.executor, self.owns_executor = Executor(), False
        started = time.perf_counter()
        out = [self.score(build(reverted), metric, subset, distance) for build, reverted in models]
        self.executor.count(len(models), time.perf_counter() - started)
        return out

    def _parallel_scores(self, models: Sequence[tuple[Callable[[frozenset], onnx.ModelProto], frozenset]],
                         metric: str, subset: np.ndarray, distance: bool, labels: Sequence[str]) -> list[float]:
        """The workers return per-sample entries (or distances); they are merged into this engine's caches
        (``Engine.absorb``) and scored here, so that every count is the one of a local run."""
        started = time.perf_counter()
        plans, tasks = tasks_for(models, metric, distance)
        if "recipe" not in self._shared:
            made = recipe(self.engine, self.float_model, self.executor.threads_per_task)
            self._shared["by_reference"] = made.dataset is not None
            self.executor.stats.dataset = "by_reference" if made.dataset is not None else "shipped"
            self._shared["recipe"] = self.executor.share(made)
        subset_key = ("subset", np.asarray(subset, np.int64).tobytes())
        if subset_key not in self._shared:
            self._forget("subset")  # the workers drop what no task will name again
            before = self.executor.stats.context_bytes
            self._shared[subset_key] = self.executor.share(subset_context(self.engine, subset,
                                                                          self._shared["by_reference"]))
            self.executor.stats.dataset_bytes += self.executor.stats.context_bytes - before
            self.executor.stats.dataset_contexts += 1
        plans_key = ("plans",) + tuple(id(p) for p in plans)
        if plans_key not in self._shared:
            self._forget("plans")
            self._shared[plans_key] = (plans, self.executor.share(tuple(plans)))
        contexts = (self._shared["recipe"], self._shared[subset_key], self._shared[plans_key][1])
        results = self.executor.map(score_task, contexts, tasks, labels)
        seconds = (time.perf_counter() - started) / max(1, len(results))
        if distance:  # as ``score`` does here: the float model's outputs on the subset, from its cache
            self.engine.outputs(self.float_model, subset)
        values = []
        for scored in results:
            if distance:
                runs = getattr(self.engine, "inferred_by_model", None)
                if runs is not None:  # as ``Engine.run`` counts the candidate's outputs here
                    runs[scored.digest] += len(subset)
                self._count(len(subset), seconds)
                values.append(-float(np.mean(scored.distances)))
                continue
            ev = self.engine.absorb(scored.digest, subset, scored.entries, seconds)
            self._count(ev.samples_inferred, seconds)
            value = ev.values[metric]
            values.append(value if self.metrics[metric].higher_is_better else -value)
        return values

    def _forget(self, kind: str) -> None:
        for key in [k for k in self._shared if isinstance(k, tuple) and k[0] == kind]:
            del self._shared[key]


