"""AccuracyAwareQuantization: revert groups of layers to float until every watched metric is within its drop.

Place in the pipeline. After DefaultQuantization in one spec, it starts from the
plan and statistics that step left (no second calibration). Alone, it first runs
``base_algorithm`` with ``base_params`` (checked against that algorithm's own
schema, so AAQ's schema stays strict and no key is copied silently). Reverting is
always ``plan.with_reverted(groups)`` applied to the float model, never surgery on a
quantized graph.

Order of work: float reference (``baseline_value`` or one full evaluation) ->
the quantized model (stops early when decided) -> optional mixed preset and
hyperparameter tuning (each kept only when it lowers the drop) -> greedy or
bisection search (``aaq.accuracy.search``) -> latency of the result against float.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from aaq.accuracy.alternatives import merge_params, mixed_preset_stages, tuning_stages
from aaq.accuracy.drops import MetricTarget, StopRule, Targets, allowed_drop, score_bounds
from aaq.accuracy.ranking import FLOAT, GroupRanker
from aaq.accuracy.search import Measurement, SearchResult, bisection_search, greedy_search
from aaq.algorithms.base import Algorithm, algorithms, register_algorithm, run_algorithm
from aaq.errors import SpecError
from aaq.quantization.graph import group_neighbours
from aaq.quantization.qdq import apply_plan
from aaq.spec.schemas import load_schema
from aaq.state import PipelineState

if TYPE_CHECKING:
    from aaq.engine.engine import Engine

logger = logging.getLogger(__name__)

NAME = "AccuracyAwareQuantization"
# The final latency check may take this share of the run so far (at least its first few rounds):
# a 2 s run on a small model gets a few rounds, a long one on a big model gets more.
LATENCY_SHARE = 0.05


@dataclass(frozen=True)
class AccuracyAwareParams:
    """Mirrors ``AccuracyAwareQuantization.schema.json`` (names and defaults; checked at registration)."""

    maximal_drop: float = 0.01
    drop_type: str = "absolute"
    ranking_subset_size: int = 300
    max_iter_num: int | None = None
    use_prev_if_drop_increase: bool = True
    base_algorithm: str = "DefaultQuantization"
    base_params: dict = field(default_factory=dict)
    convert_to_mixed_preset: bool = False
    metrics: list | None = None
    metric_subset_ratio: float = 0.5
    tune_hyperparams: bool = False
    ranking_method: str = "metric"
    search: str = "greedy"
    early_stop: bool = True
    workers: int = 1
    seed: int = 0


def param_problems(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Params that would be ignored, and a base algorithm / base params that do not fit (paths inside params)."""
    problems = []
    if params.get("search") == "bisection" and params.get("use_prev_if_drop_increase") is False:
        problems.append(("use_prev_if_drop_increase", "applies to search 'greedy' only (bisection never keeps "
                                                      "a model whose drop increased)"))
    watched = params.get("metrics") or []
    if params.get("metric_subset_ratio", 0.5) != 0.5 and not (
            watched and all("baseline_value" in m for m in watched)):
        problems.append(("metric_subset_ratio", "is only used when every watched metric has a baseline_value "
                                                "(otherwise the float model is evaluated on every sample)"))
    return problems + _base_problems(params)


def _base_problems(params: dict[str, Any]) -> list[tuple[str, str]]:
    name = params.get("base_algorithm", "DefaultQuantization")
    if name == NAME:
        return [("base_algorithm", f"{NAME} cannot be its own base algorithm")]
    if name not in algorithms:
        return [("base_algorithm", algorithms.unknown_message(name))]
    import jsonschema

    from aaq.spec.validate import describe_error  # one sentence per fault, as for every other param

    schema = algorithms.get(name).schema
    validator = jsonschema.Draft202012Validator(schema)
    problems = [describe_error(e, ("base_params",)) for e in validator.iter_errors(params.get("base_params") or {})]
    props = schema.get("properties", {})
    if params.get("convert_to_mixed_preset") and "mixed" not in props.get("preset", {}).get("enum", []):
        problems.append(("convert_to_mixed_preset", f"{name} has no preset 'mixed' to convert to"))
    if params.get("tune_hyperparams") and not {"activations", "bias_correction"} <= set(props):
        problems.append(("tune_hyperparams", f"{name} has no 'activations' and 'bias_correction' params to tune"))
    return problems


@register_algorithm(NAME)
class AccuracyAwareQuantization(Algorithm):
    """POT's AccuracyAwareQuantization with its defects fixed and fewer evaluations (see the package docs)."""

    Params = AccuracyAwareParams
    schema = load_schema(NAME)

    @classmethod
    def from_spec(cls, values: dict[str, Any]) -> "AccuracyAwareQuantization":
        problems = param_problems(values)
        if problems:
            raise SpecError(problems)
        return super().from_spec(values)

    @classmethod
    def check_spec(cls, params: dict[str, Any], spec: Any) -> list[tuple[str, str]]:
        """Watched metrics must be engine metrics; base params must fit the base algorithm and be used."""
        known = [m.get("name") for m in spec.resolved["engine"].get("metrics", [])]
        problems = [(f"metrics[{i}].name", f"no metric {m['name']!r} in engine.metrics (known: {', '.join(known)})")
                    for i, m in enumerate(params.get("metrics") or []) if m["name"] not in known]
        problems += param_problems(params)
        entries = spec.resolved["compression"]["algorithms"]
        position = next((i for i, e in enumerate(entries) if e.get("params") is params), len(entries))
        base = params.get("base_algorithm", "DefaultQuantization")
        if params.get("base_params") and any(e["name"] == base for e in entries[:position]):
            problems.append(("base_params", f"{base} runs before this step, so base_params would not be used: "
                                            f"set them on that {base} entry"))
        return problems

    def run(self, state: PipelineState, engine: "Engine") -> PipelineState:
        p = self.params
        started = time.perf_counter()
        progress = bool(getattr(engine, "progress", False))
        base_params = self._base_params(state)
        if state.plan is None:
            logger.info("no plan yet: running %s first", p.base_algorithm)
            base = algorithms.get(p.base_algorithm).from_spec(base_params)
            state = run_algorithm(base, state, engine, progress=progress)
        targets, float_values, float_eval = self._targets(state, engine)
        work = _Work(self, state, engine, targets, base_params)
        if float_eval is not None:
            work.count_full(float_eval)
        try:
            result = work.run()
        finally:
            work.ranker.close()
        plan = work.plan.with_reverted(result.reverted)
        final = result.measurement.point()
        state = dataclasses.replace(state, plan=plan, model=work.build(frozenset(result.reverted)))
        for t in targets.targets:
            state.targets[t.name] = t.met(final[t.name])
        state.metrics["float"] = dict(float_values)
        state.metrics[NAME] = dict(final)
        self.summary = work.summary(result, float_values, time.perf_counter() - started)
        self.summary["headline"] = _headline(self.summary)
        if result.met:
            logger.info("target met with %d of %d groups in float", len(result.reverted),
                        len(work.plan.quantized_groups))
        else:
            logger.warning("target NOT met (%s): returning the best model found, %d groups in float, drops %s",
                           result.stop_reason, len(result.reverted),
                           ", ".join(f"{k} {v:+.4f}" for k, v in targets.drops(final).items()))
        return state

    def _base_params(self, state: PipelineState) -> dict[str, Any]:
        """The base algorithm's params: those of its earlier run in this pipeline, else ``base_params``."""
        from aaq.spec.validate import fill_defaults

        for record in reversed(state.records):
            if record.name == self.params.base_algorithm:
                return dict(record.params)
        return fill_defaults(dict(self.params.base_params), algorithms.get(self.params.base_algorithm).schema)

    def _targets(self, state: PipelineState, engine: "Engine") -> tuple[Targets, dict[str, float], Any]:
        """One target per watched metric; the float model is evaluated unless every baseline is given."""
        p = self.params
        watched = p.metrics or [{"name": m.name} for m in engine.metrics]
        by_name = {m.name: m for m in engine.metrics}
        missing = [w["name"] for w in watched if w["name"] not in by_name]
        if missing:
            raise SpecError([("metrics", f"no metric {missing[0]!r} among the engine's metrics "
                                         f"({', '.join(by_name)})")])
        given = {w["name"]: float(w["baseline_value"]) for w in watched if "baseline_value" in w}
        measured: dict[str, float] = {}
        evaluation = None
        if len(given) < len(watched):
            evaluation = engine.evaluate(state.float_model, progress_desc="float model")
            measured = dict(evaluation.values)
        values = {w["name"]: given.get(w["name"], measured.get(w["name"])) for w in watched}
        targets = [MetricTarget(n, by_name[n].higher_is_better, v, allowed_drop(v, p.maximal_drop, p.drop_type),
                                score_bounds(by_name[n]) if p.early_stop else None) for n, v in values.items()]
        for t in targets:
            logger.info("%s: float %.4f (%s), allowed drop %.4f", t.name, t.reference,
                        "baseline_value" if t.name in given else "measured", t.allowed)
        return Targets(targets), values, evaluation


class _Work:
    """One run's engine-side state: the plan, the models built from it, the counters; a SearchEvaluator."""

    def __init__(self, algo: AccuracyAwareQuantization, state: PipelineState, engine: "Engine", targets: Targets,
                 base_params: dict[str, Any]) -> None:
        p = algo.params
        self.p, self.state, self.engine, self.targets, self.base_params = p, state, engine, targets, base_params
        self.plan = state.plan
        self.models: OrderedDict[frozenset, onnx.ModelProto] = OrderedDict()
        self.order = np.random.default_rng(p.seed).permutation(engine.num_samples)
        self.full = {"evaluations": 0, "stopped_early": 0, "samples": 0, "seconds": 0.0}
        all_given = bool(p.metrics) and all("baseline_value" in m for m in p.metrics)
        n = engine.num_samples
        self.comparison = engine.subset(max(1, int(n * p.metric_subset_ratio)), p.seed) if all_given \
            else np.arange(n)
        self.ranker = GroupRanker(engine, self.build, state.float_model, method=p.ranking_method,
                                  subset_size=p.ranking_subset_size, comparison=self.comparison, seed=p.seed,
                                  workers=p.workers, neighbours=self._neighbours())
        self.alternatives: dict[str, Any] = {}

    def _neighbours(self) -> dict[Any, list]:
        """The groups each group borders; groups the plan already leaves in float count as float."""
        neighbours = group_neighbours(self.plan.model, {g.id: g.layers for g in self.plan.groups})
        return {g: [FLOAT if n in self.plan.reverted else n for n in ns] for g, ns in neighbours.items()}

    # ---------------------------------------------------------------- SearchEvaluator

    def build(self, reverted: frozenset) -> onnx.ModelProto:
        """The QDQ model with ``reverted`` groups (and those the plan already reverts) in float; LRU-cached."""
        if reverted in self.models:
            self.models.move_to_end(reverted)
            return self.models[reverted]
        model = apply_plan(self.plan.model, self.plan.with_reverted(reverted))
        self.models[reverted] = model
        if len(self.models) > 16:
            self.models.popitem(last=False)
        return model

    def measure(self, reverted: frozenset, rule: StopRule | None) -> Measurement:
        ev = self.engine.evaluate(self.build(reverted), self.order, stop=rule, progress_desc="full set")
        self.count_full(ev)
        if ev.complete:
            values = {name: (ev.values[name], ev.values[name]) for name in self.targets.names}
        else:
            values = self.targets.intervals(ev.per_sample, ev.requested)
        return Measurement(reverted, values, ev.complete)

    def count_full(self, ev: Any) -> None:
        self.full["evaluations"] += 1
        self.full["stopped_early"] += int(not ev.complete)
        self.full["samples"] += int(ev.samples_inferred)
        self.full["seconds"] += ev.seconds

    def rank(self, reverted: frozenset, candidates: list, metric: str) -> list[tuple[Any, float]]:
        return self.ranker.rank(reverted, candidates, metric)

    # ---------------------------------------------------------------- the run

    def run(self) -> SearchResult:
        start = self.measure(frozenset(), StopRule(self.targets, (0.0,)))
        if _passed(self.targets, start):
            logger.info("the quantized model already meets the target: nothing to revert")
            return SearchResult([], self._complete(start), True, stop_reason="target met")
        start = self._complete(start)
        logger.info("quantized model: drops %s", _drops(self.targets, start))
        if self.p.convert_to_mixed_preset:
            start = self._try_alternative("mixed_preset", start, mixed_preset_stages(self.base_params))
        if self.p.tune_hyperparams and not self.targets.met(start.point()):
            start = self._try_alternative("tune_hyperparams", start, tuning_stages(self.base_params))
        if self.targets.met(start.point()):
            return SearchResult([], start, True, stop_reason="target met")
        candidates = [g.id for g in self.plan.quantized_groups]
        search = greedy_search if self.p.search == "greedy" else bisection_search
        kwargs = {"use_prev_if_drop_increase": self.p.use_prev_if_drop_increase} if search is greedy_search else {}
        return search(self, self.targets, start, candidates, max_reverted=self.p.max_iter_num,
                      early_stop=self.p.early_stop, **kwargs)

    def _complete(self, m: Measurement) -> Measurement:
        return m if m.complete else self.measure(m.reverted, None)

    def _try_alternative(self, what: str, current: Measurement, stages: list[list[dict]]) -> Measurement:
        """Re-run the base algorithm with other params, stage by stage; keep a plan only if it lowers the drop.

        Each stage's candidates are scored on the hardest samples (the ranking subset
        of the current model); the best one, if it beats the current plan there, is
        evaluated on the full set and kept only when its objective is lower.
        """
        record: dict[str, Any] = {"tried": [], "kept": None}
        for stage in stages:
            metric = self.targets.driving(current.point())
            subset = self.ranker.subset(frozenset(), metric)
            distance = self.ranker.by_distance
            now = self.ranker.score(self.build(frozenset()), metric, subset, distance)
            algos = [(o, algorithms.get(self.p.base_algorithm).from_spec(merge_params(self.base_params, o)))
                     for o in stage]
            self._collect_once([a for _, a in algos])
            scored = []
            for overrides, algo in algos:
                scratch = PipelineState(self.state.float_model, self.state.float_model,
                                        statistics=self.state.statistics)
                plan = algo.run(scratch, self.engine).plan  # statistics are in: no second pass, no record
                score = self.ranker.score(apply_plan(plan.model, plan), metric, subset, distance)
                record["tried"].append({"params": overrides, "subset_score": score})
                scored.append((score, overrides, plan))
            if not scored:
                continue
            score, overrides, plan = max(scored, key=lambda s: s[0])
            if score <= now:
                continue
            old_plan, old_models = self.plan, self.models
            self.plan, self.models = plan, OrderedDict()
            trial = self.measure(frozenset(), StopRule(self.targets, (0.0, self.targets.objective(current.point()))))
            lo, _ = self.targets.objective_interval(trial.values)
            if lo >= self.targets.objective(current.point()) and not _passed(self.targets, trial):
                self.plan, self.models = old_plan, old_models
                logger.info("%s: %s helps on the hardest samples but not on the full set: not kept", what, overrides)
                continue
            before = self.targets.objective(current.point())
            current = self._complete(trial)
            record.setdefault("objective_before", before)
            record["objective_after"] = self.targets.objective(current.point())
            self.base_params = merge_params(self.base_params, overrides)
            self.ranker.reset(self._neighbours())
            record["kept"] = merge_params(record["kept"] or {}, overrides)
            logger.info("%s: kept %s, drops now %s", what, overrides, _drops(self.targets, current))
        self.alternatives[what] = record
        return current

    def _collect_once(self, algos: list[Algorithm]) -> None:
        """Every statistic the candidates need, in one pass per sample count (POT registered them up front)."""
        from aaq.statistics.collector import collect_statistics

        stats = self.state.statistics
        scratch = PipelineState(self.state.float_model, self.state.float_model, statistics=stats)
        wanted: dict[int, dict] = {}
        for algo in algos:
            needs = algo.statistics_needs(scratch)
            if needs is not None:
                wanted.setdefault(needs.num_samples, {}).update(
                    {r: None for r in needs.requests if (r, needs.num_samples) not in stats})
        for n, requests in wanted.items():
            if requests:
                logger.info("collecting %d more statistics for %d candidates", len(requests), len(algos))
                collected = collect_statistics(self.engine, self.state.float_model, list(requests), n,
                                               progress=bool(getattr(self.engine, "progress", False)))
                stats.update({(r, n): v for r, v in collected.items()})

    # ---------------------------------------------------------------- report

    def summary(self, result: SearchResult, float_values: dict[str, float], seconds: float) -> dict[str, Any]:
        final = result.measurement.point()
        groups = {g.id: g for g in self.plan.groups}
        steps = {frozenset(s.reverted): s for s in result.steps}
        reverted = []
        for k, gid in enumerate(result.reverted):
            step = steps.get(frozenset(result.reverted[:k + 1]))
            reverted.append({"group": gid, "layers": list(groups[gid].layers), "score": result.scores.get(gid),
                             "drops_after": None if step is None else _drop_intervals(self.targets, step.values)})
        return {
            "target_met": result.met,
            "stop_reason": result.stop_reason,
            "drop_type": self.p.drop_type,
            "metrics": {t.name: {"float": float_values[t.name], "final": final[t.name], "drop": t.drop(final[t.name]),
                                 "allowed_drop": t.allowed, "met": t.met(final[t.name])} for t in self.targets.targets},
            "groups_quantized": len(self.plan.quantized_groups) - len(result.reverted),
            "groups_reverted": len(result.reverted),
            "reverted": reverted,
            "search": self.p.search,
            "steps": [{"group": s.group, "score": s.score, "kept": s.kept, "note": s.note, "complete": s.complete,
                       "drops": _drop_intervals(self.targets, s.values)} for s in result.steps],
            "rankings": result.rankings,
            "alternatives": self.alternatives,
            "base_params": self.base_params,
            "evaluations": {
                "full": self.full["evaluations"], "full_stopped_early": self.full["stopped_early"],
                "full_samples_inferred": self.full["samples"], "subset": self.ranker.counts.evaluations,
                "subset_samples_inferred": self.ranker.counts.samples,
                "samples_inferred": self.full["samples"] + self.ranker.counts.samples,
                "seconds": self.full["seconds"] + self.ranker.counts.seconds},
            "latency": self._latency(frozenset(result.reverted), LATENCY_SHARE * seconds),
            "seconds": seconds,
        }

    def _latency(self, reverted: frozenset, budget_seconds: float) -> dict[str, Any] | None:
        from aaq.engine.datasets import fetch
        from aaq.engine.latency import compare_latency

        try:
            dims = self.state.float_model.graph.input[0].type.tensor_type.shape.dim
            fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 0
            size = min(fixed or self.engine.batch_size, self.engine.num_samples)
            inputs, _ = fetch(self.engine.dataset, np.arange(size))
            # The engine's sessions ran both models already: warm, and no second build.
            latency = compare_latency(self.engine.session(self.state.float_model),
                                      self.engine.session(self.build(reverted)), inputs, warmup=1,
                                      budget_seconds=budget_seconds)
        except Exception as exc:  # latency is information, never a reason to fail the run
            logger.warning("latency not measured: %s", exc)
            return None
        (logger.warning if latency.slower else logger.info)("%s", latency.statement())
        return latency.as_dict()


def _headline(summary: dict[str, Any]) -> str:
    """One line for the console: the outcome, what went back to float, and the speed against float."""
    total = summary["groups_quantized"] + summary["groups_reverted"]
    layers = [", ".join(r["layers"]) for r in summary["reverted"]]
    shown = "; ".join(layers[:6]) + (f"; ... ({len(layers) - 6} more)" if len(layers) > 6 else "")
    outcome = "target met" if summary["target_met"] else f"target NOT met ({summary['stop_reason']})"
    line = f"{outcome}; {summary['groups_reverted']} of {total} groups reverted to float" + \
        (f": {shown}" if shown else "")
    latency = summary.get("latency")
    if latency:
        slower = " (SLOWER than float)" if latency["slower_than_float"] else ""
        line += f"; latency x{latency['ratio']:.2f} of float{slower}"
    return line


def _passed(targets: Targets, m: Measurement) -> bool:
    """Met for sure: a partial measurement is only returned once its question is decided."""
    return targets.objective_interval(m.values)[1] <= 0


def _drop_intervals(targets: Targets, values: dict[str, tuple[float, float]]) -> dict[str, Any]:
    out = {}
    for t in targets.targets:
        lo, hi = values[t.name]
        a, b = sorted((t.drop(lo), t.drop(hi)))
        out[t.name] = a if a == b else [a, b]
    return out


def _drops(targets: Targets, m: Measurement) -> str:
    return ", ".join(f"{k} {v:+.4f}" for k, v in targets.drops(m.point()).items())
