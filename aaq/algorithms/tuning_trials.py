"""The trials of a Tuning run on the engine: plans per model-wise config, evaluation, objectives, ranking.

Plans come from DefaultQuantization with the config's params laid over the base
params; the statistics of every model-wise config are collected up front by the
one collector (``prepare``): one pass per prepared model and sampling size, never
per trial; a histogram estimator's second pass is made when the first config that needs
it is built, for every config on the same pass at once. A trial's model is the plan with
the groups of its fallback layers reverted (``CandidateModels``), evaluated on the full
set in a seeded order with an exact early stop (``StopRule``) that also ends the
evaluation at the deadline.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from aaq.accuracy.alternatives import merge_params
from aaq.accuracy.drops import StopRule, Targets
from aaq.accuracy.evaluator import FullCounts
from aaq.accuracy.ranking import GroupRanker
from aaq.accuracy.weighted import WeightedTargets
from aaq.algorithms.base import algorithms
from aaq.engine.protocol import EngineLike
from aaq.quantization.candidates import CandidateModels
from aaq.quantization.graph import FLOAT, group_neighbours
from aaq.quantization.plan import Plan
from aaq.quantization.recipes import first_conv_or_matmul, share_concat_scales
from aaq.state import PipelineState
from aaq.statistics.collector import fill_statistics
from aaq.tuning.monitor import Trial
from aaq.tuning.objectives import MeasureContext, ObjectiveSet, structure_key
from aaq.tuning.space import OpRule, TrialConfig, TuningSpace, dq_overrides

logger = logging.getLogger(__name__)

MSE_SAMPLES = 64  # calibration samples the mse strategy compares layer outputs on


@dataclass
class PlanEntry:
    plan: Plan
    candidates: CandidateModels
    params: dict[str, Any]


class TrialRunner:
    """Runs one config at a time; keeps the plans, the evaluation counters and the ranking counters."""

    def __init__(self, state: PipelineState, engine: EngineLike, base_params: dict[str, Any], targets: Targets,
                 objective_set: ObjectiveSet, *, seed: int, ranking_subset_size: int,
                 recipes: dict[str, bool]) -> None:
        self.state, self.engine, self.base_params, self.targets = state, engine, base_params, targets
        self.objective_set, self.objectives = objective_set, objective_set.instances()
        self.seed, self.ranking_subset_size, self.recipes = seed, ranking_subset_size, recipes
        self.order = np.random.default_rng(seed).permutation(engine.num_samples)
        self.full = FullCounts()
        self.rankings: list[dict[str, Any]] = []
        self.ranking_counts = {"evaluations": 0, "samples": 0, "seconds": 0.0}
        self.rules: dict[str, OpRule] = {}
        self.may_fall_back = True
        self.concat_shared: list[str] = []
        self.first_in_float: str | None = None
        self._algos: dict[tuple, Any] = {}
        self._structural: dict[tuple[str, str], tuple[float, Any, int]] = {}
        self._number = 0
        self._plans: dict[tuple, PlanEntry] = {}

    def prepare(self, configs: Sequence[TrialConfig]) -> None:
        """Statistics of every model-wise config, collected in one pass per prepared model and sampling size."""
        scratch = self._scratch()
        needs = []
        for config in configs:
            if config.plan_key not in self._algos:
                params = merge_params(self.base_params, dq_overrides(config))
                self._algos[config.plan_key] = (algorithms.get("DefaultQuantization").from_spec(params), params)
                needs += self._algos[config.plan_key][0].statistics_needs(scratch)
        fill_statistics(self.state.statistics, self.engine, needs, progress=self.engine.progress,
                        why=f"{len(self._algos)} model-wise configs")

    def resolve(self, space: TuningSpace, config: TrialConfig) -> tuple[str, ...]:
        """Fix the op-wise rules on the plan's layers; the layers every config leaves in float."""
        plan = self.entry(config).plan
        names = [layer.name for layer in plan.layers]
        self.rules = space.rules(names + sorted(plan.skipped))
        self.may_fall_back = space.default_may_fall_back
        forced = {n for n, rule in self.rules.items() if rule.forced_float and n in names}
        if not self.recipes.get("first_conv_or_matmul_quantization", True):
            first = first_conv_or_matmul(plan)
            if first is not None:
                forced.add(first)
                self.first_in_float = first
        return tuple(sorted(forced))

    def entry(self, config: TrialConfig) -> PlanEntry:
        key = config.plan_key
        if key not in self._plans:
            if key not in self._algos:
                self.prepare([config])
            algo, params = self._algos[key]
            for done in self._plans:  # latency_aware "measure" times the model once for all configs
                algo.adopt_latency_decisions(self._algos[done][0])
            self._shared_histograms(algo)
            plan = algo.run(self._scratch(), self.engine).plan  # statistics are in: no pass here
            if self.recipes.get("scale_propagation_concat", True):
                plan, edited = share_concat_scales(plan)
                self.concat_shared = sorted(set(self.concat_shared) | set(edited))
            self._plans[key] = PlanEntry(plan, CandidateModels(plan), params)
        return self._plans[key]

    def _shared_histograms(self, algo: Any) -> None:
        """``algo``'s histogram pass, with the histograms of every other config on the same pass (the same
        prepared model and calibration samples): their plans then need no pass of their own."""
        scratch = self._scratch()
        mine = algo.histogram_needs(scratch, self.engine)
        passes = {(need.model_digest, need.num_samples) for need in mine}
        if not passes:
            return
        needs = list(mine)
        for other, _ in self._algos.values():
            if other is not algo:
                needs += [n for n in other.histogram_needs(scratch, self.engine)
                          if (n.model_digest, n.num_samples) in passes]
        fill_statistics(self.state.statistics, self.engine, needs, progress=self.engine.progress,
                        why=f"histograms of {len(needs)} model-wise configs")

    def groups(self, config: TrialConfig) -> frozenset:
        plan = self.entry(config).plan
        known = {layer.name for layer in plan.layers}
        return frozenset(plan.group_of(name).id for name in config.fallback if name in known)

    def model(self, config: TrialConfig):
        return self.entry(config).candidates.build(self.groups(config))

    def units(self, config: TrialConfig) -> list[tuple[str, ...]]:
        """The groups ``config`` may still fall back: every layer allowed to, not in float already."""
        plan, reverted = self.entry(config).plan, self.groups(config)
        out = []
        for group in plan.groups:
            allowed = all(self.rules.get(n, OpRule(may_fall_back=self.may_fall_back)).may_fall_back
                          for n in group.layers)
            if group.id not in reverted and allowed:
                out.append(tuple(group.layers))
        return out

    def measure(self, name: str, model, accuracy: float, details: dict[str, Any]) -> float:
        """One objective of ``model``; a structural one measured once per model structure."""
        objective = self.objectives[name]
        key = structure_key(model) if objective.structural else None
        if key is not None and (name, key) in self._structural:
            value, recorded, number = self._structural[(name, key)]
            details.update({name: {**recorded, "shared": f"same model structure as trial {number}"}}
                           if recorded else {})
            return value
        context = MeasureContext(self.engine, self.state.float_model, accuracy)
        value = objective.measure(model, context)
        details.update(context.details)
        if key is not None:
            self._structural[(name, key)] = (value, context.details.get(name), self._number)
        return value

    def dominated(self, model, best: dict[str, float] | None) -> dict[str, float] | None:
        """With one structural objective: the trial's value when it cannot beat ``best`` (the best passing
        trial's objectives), so that its evaluation is skipped; else None."""
        names = self.objective_set.names
        if best is None or len(names) != 1 or not self.objectives[names[0]].structural:
            return None
        name, higher = names[0], self.objective_set.higher_is_better[0]
        value = self.measure(name, model, float("nan"), {})
        better = value > best[name] if higher else value < best[name]
        return None if better else {name: value}

    def run(self, number: int, config: TrialConfig, deadline: float, best_failing: float | None,
            phase: str, best: dict[str, float] | None = None) -> Trial:
        started = time.perf_counter()
        model, skipped = self.begin(number, config, best, phase)
        if skipped is not None:
            return skipped
        evaluations, timed_out = evaluate_trial(self.engine.evaluate, model, self.order, self.targets, best_failing,
                                                deadline, f"trial {number}")
        return self.finish(number, config, model, evaluations, timed_out, phase, started)

    def begin(self, number: int, config: TrialConfig, best: dict[str, float] | None, phase: str
              ) -> tuple[Any, Trial | None]:
        """The trial's model, and the trial itself when it is skipped: the best passing trial is at least as
        good on the objective (``dominated``), so it is not evaluated."""
        started = time.perf_counter()
        self._number = number
        model = self.model(config)
        skip = self.dominated(model, best)
        if skip is None:
            return model, None
        trial = Trial(number, config, False, False, {}, (0.0, 0.0), objectives=skip, phase=phase, stopped="dominated")
        trial.seconds = time.perf_counter() - started
        return model, trial

    def finish(self, number: int, config: TrialConfig, model: Any, evaluations: Sequence[Any], timed_out: bool,
               phase: str, started: float) -> Trial:
        """The trial its evaluations make (``evaluate_trial``'s, here or a worker's); its objectives measured
        here when it passed."""
        self._number = number
        for ev in evaluations:
            self.full.add(ev)
        ev = evaluations[-1]
        values = self._values(ev)
        score = self.targets.objective_interval(values)
        passed = score[1] <= 0
        trial = Trial(number, config, passed, ev.complete, values, score, phase=phase,
                      stopped="" if ev.complete else ("timeout" if timed_out else "decided"))
        if ev.complete:
            trial.accuracy = self.accuracy({k: lo for k, (lo, _) in values.items()})
        if passed and ev.complete:
            details: dict[str, Any] = {}
            trial.objectives = {n: self.measure(n, model, trial.accuracy, details) for n in self.objectives}
            trial.measurements = details
        trial.seconds = time.perf_counter() - started
        return trial

    def complete(self, trial: Trial) -> Trial:
        """``trial`` measured to the end (the best so far after a timeout; no objective measured)."""
        ev = self.engine.evaluate(self.model(trial.config), self.order, progress_desc="best trial")
        self.full.add(ev)
        values = self._values(ev)
        score = self.targets.objective_interval(values)
        return Trial(trial.number, trial.config, score[1] <= 0, True, values, score,
                     self.accuracy({k: v for k, (v, _) in values.items()}), dict(trial.objectives),
                     trial.seconds, trial.stopped, trial.phase)

    def accuracy(self, values: dict[str, float]) -> float:
        """The accuracy the criterion checks: the weighted metrics, or the mean of the metrics."""
        if isinstance(self.targets, WeightedTargets):
            return float(self.targets.combine(values))
        return float(np.mean([values[t.name] for t in self.targets.targets]))

    def _values(self, ev) -> dict[str, tuple[float, float]]:
        return trial_values(self.targets, ev)

    # ------------------------------------------------------------------ ranking

    def rank(self, config: TrialConfig, method: str) -> list[tuple[str, ...]]:
        """The units ``config`` may fall back, the one that helps most first."""
        units = self.units(config)
        if not units:
            return []
        started = time.perf_counter()
        entry, reverted = self.entry(config), self.groups(config)
        by_group = {entry.plan.group_of(u[0]).id: u for u in units}
        if method == "mse":
            scores = self._mse_scores(entry, reverted, list(by_group))
            samples = 0
        else:
            values = {n: lo for n, (lo, _) in self._values(self.engine.evaluate(self.model(config), self.order)).items()}
            ranker = GroupRanker(self.engine, entry.candidates.build, self.state.float_model, method="metric",
                                 subset_size=self.ranking_subset_size, comparison=np.arange(self.engine.num_samples),
                                 seed=self.seed, neighbours=_neighbours(entry.plan))
            scores = dict(ranker.rank(reverted, list(by_group), self.targets.driving(values)))
            ranker.close()  # what it shipped to the engine's executor is not asked for again
            self.ranking_counts["evaluations"] += ranker.counts.evaluations
            samples = ranker.counts.samples
        ordered = sorted(by_group, key=lambda g: -scores[g])
        self.ranking_counts["samples"] += samples
        self.ranking_counts["seconds"] += time.perf_counter() - started
        self.rankings.append({"method": method, "config": config.as_dict(),
                              "order": [{"layers": list(by_group[g]), "score": float(scores[g])} for g in ordered]})
        logger.info("fallback ranking (%s) of %d groups: %s", method, len(ordered),
                    ", ".join("+".join(by_group[g]) for g in ordered[:8]))
        return [by_group[g] for g in ordered]

    def _mse_scores(self, entry: PlanEntry, reverted: frozenset, groups: list[int]) -> dict[int, float]:
        """Per group, the largest normalised MSE between a layer's float and quantized outputs (calibration data)."""
        plan = entry.plan
        layers = {name: plan.layer(name).layer.output for g in plan.groups if g.id in groups for name in g.layers}
        tensors = sorted(set(layers.values()))
        indices = self.engine.calibration_indices(MSE_SAMPLES)
        quantized = entry.candidates.build(reverted)
        error = dict.fromkeys(tensors, 0.0)
        energy = dict.fromkeys(tensors, 0.0)
        pairs = zip(self.engine.run(plan.model, indices, outputs=tensors, calibration=True, progress_desc="mse"),
                    self.engine.run(quantized, indices, outputs=tensors, calibration=True, progress_desc="mse"))
        for (_, ref), (_, out) in pairs:
            for t in tensors:
                r, o = np.asarray(ref[t], np.float64), np.asarray(out[t], np.float64)
                error[t] += float(np.sum((o - r) ** 2))
                energy[t] += float(np.sum(r ** 2))
        self.ranking_counts["evaluations"] += 2
        nmse = {t: error[t] / max(energy[t], np.finfo(np.float64).tiny) for t in tensors}
        return {g.id: max(nmse[layers[n]] for n in g.layers) for g in plan.groups if g.id in groups}

    def _scratch(self) -> PipelineState:
        return PipelineState(self.state.float_model, self.state.float_model, statistics=self.state.statistics)


def trial_values(targets: Targets, ev: Any) -> dict[str, tuple[float, float]]:
    """Each watched metric's value (complete) or the interval its partial evaluation leaves."""
    if ev.complete:
        return {n: (float(ev.values[n]), float(ev.values[n])) for n in targets.names}
    return targets.intervals(ev.per_sample, ev.requested)


def evaluate_trial(evaluate: Callable[..., Any], model: Any, order: np.ndarray, targets: Targets,
                   best_failing: float | None, deadline: float, desc: str | None) -> tuple[list[Any], bool]:
    """A trial's evaluations on the full set in ``order``, and whether the deadline ended them.

    The first stops once "met?" and "better than the best failing trial?" are decided (or at the
    deadline); a promising one (it may pass, or beat ``best_failing``) is then measured to the end.
    ``evaluate`` is an engine's: the driver's, or a worker's (``tuning_batch``), with the same answer.
    """
    rule, timed_out = StopRule(targets, (0.0,) if best_failing is None else (0.0, best_failing)), []

    def stop(partial) -> bool:
        if rule(partial):
            return True
        if time.monotonic() > deadline:
            timed_out.append(True)
            return True
        return False

    ev = evaluate(model, order, stop=stop, progress_desc=desc)
    score = targets.objective_interval(trial_values(targets, ev))
    promising = score[1] <= 0 or best_failing is None or score[0] < best_failing
    if not ev.complete and not timed_out and promising:  # a candidate result: measured to the end
        return [ev, evaluate(model, order, progress_desc=desc)], False
    return [ev], bool(timed_out)


def _neighbours(plan: Plan) -> dict[Any, list]:
    neighbours = group_neighbours(plan.model, {g.id: g.layers for g in plan.groups})
    return {g: [FLOAT if n in plan.reverted else n for n in ns] for g, ns in neighbours.items()}
