"""AccuracyAwareQuantization: revert groups of layers to float until every watched metric is within its drop.

Place in the pipeline. After DefaultQuantization in one spec, it starts from the
plan and statistics that step left (no second calibration). Alone, it first runs
``base_algorithm`` with ``base_params`` (checked against that algorithm's own
schema, so AAQ's schema stays strict and no key is copied silently). Reverting is
always ``plan.with_reverted(groups)`` applied to the float model, never surgery on a
quantized graph.

Order of work: float reference (``baseline_value`` or one full evaluation) ->
the quantized model (stops early when decided) -> optional mixed preset and
hyperparameter tuning (``accuracy.alternatives``; each kept only when it lowers the
drop) -> the search strategy (``accuracy.search``, injected: greedy or bisection)
over a ``PlanEvaluator`` -> latency of the result against float -> the summary
(``accuracy.summary``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any


from aaq.accuracy.alternatives import (Alternative, Stage, merge_params, mixed_preset_stages, try_alternatives,
                                       tuning_stages)
from aaq.accuracy.confidence import Confidence
from aaq.accuracy.drops import MetricTarget, StopRule, Targets, allowed_drop, score_bounds
from aaq.accuracy.evaluator import DropReference, PlanEvaluator
from aaq.accuracy.heldout import held_out_check
from aaq.accuracy.ranking import GroupRanker
from aaq.accuracy.search import SEARCHES, SearchResult
from aaq.accuracy.summary import confidence_summary, drops_text, headline, search_summary
from aaq.algorithms.base import Algorithm, algorithms, register_algorithm, run_algorithm
from aaq.algorithms.slow_fix import faster_mix
from aaq.engine.evaluation import Evaluation
from aaq.engine.executors import ProcessExecutor, executor_of
from aaq.engine.latency import latency_on_engine
from aaq.engine.protocol import EngineLike
from aaq.errors import Interrupted, SpecError
from aaq.quantization.candidates import CandidateModels
from aaq.quantization.graph import FLOAT, group_neighbours
from aaq.quantization.plan import Plan
from aaq.schemas.tools import fill_defaults, schema_errors
from aaq.schemas import load_schema
from aaq.state import PipelineState, model_digest
from aaq.statistics.collector import fill_statistics

logger = logging.getLogger(__name__)

NAME = "AccuracyAwareQuantization"
# The final latency check may take this share of the run so far (at least its first few rounds):
# a 2 s run on a small model gets a few rounds, a long one on a big model gets more.
LATENCY_SHARE = 0.05
SLOW_FIX_SECONDS = 10.0
"""Timing budget of ``faster_than_float``'s candidates (the accuracy checks come on top, with early stop)."""
DEFAULT_CONFIDENCE = {"level": 0.95, "require": "point", "resamples": 2000}


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
    faster_than_float: bool = True
    ranking_method: str = "metric"
    search: str = "greedy"
    early_stop: bool = True
    workers: int = 1
    seed: int = 0
    confidence: dict | None = field(default_factory=lambda: dict(DEFAULT_CONFIDENCE))

    @property
    def all_baselines_given(self) -> bool:
        return bool(self.metrics) and all("baseline_value" in m for m in self.metrics)


def _param_problems(params: dict[str, Any]) -> list[tuple[str, str]]:
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
    base = algorithms.get(name)
    if not base.makes_plan:
        return [("base_algorithm", f"{name} makes no quantization plan to revert layers of "
                                   f"(from {algorithms.source(name)})")]
    problems = schema_errors(params.get("base_params") or {}, base.schema, ("base_params",))
    props = base.schema.get("properties", {})
    if params.get("convert_to_mixed_preset") and "mixed" not in props.get("preset", {}).get("enum", []):
        problems.append(("convert_to_mixed_preset", f"{name} has no preset 'mixed' to convert to"))
    if params.get("tune_hyperparams") and not {"activations", "bias_correction"} <= set(props):
        problems.append(("tune_hyperparams", f"{name} has no 'activations' and 'bias_correction' params to tune"))
    return problems


@register_algorithm(NAME)
class AccuracyAwareQuantization(Algorithm):
    """POT's AccuracyAwareQuantization with its defects fixed and fewer evaluations (see the package docs).

    ``search`` is the strategy object that picks the groups to revert; by default the
    one the params name (``SEARCHES``). A tuning strategy is the same kind of object.
    """

    Params = AccuracyAwareParams
    schema = load_schema(NAME)
    makes_plan = True
    uses_holdout = True

    def __init__(self, params: AccuracyAwareParams, search: Any = None) -> None:
        super().__init__(params)
        self.search = search if search is not None else SEARCHES[params.search].from_params(params)

    @classmethod
    def check_spec(cls, params: dict[str, Any], spec: Any) -> list[tuple[str, str]]:
        """Watched metrics must be engine metrics; base params must fit the base algorithm and be used."""
        known = [m.get("name") for m in spec.resolved["engine"].get("metrics", [])]
        problems = [(f"metrics[{i}].name", f"no metric {m['name']!r} in engine.metrics (known: {', '.join(known)})")
                    for i, m in enumerate(params.get("metrics") or []) if m["name"] not in known]
        problems += _param_problems(params)
        executor = spec.resolved["engine"].get("executor") or {}
        if params.get("workers", 1) > 1 and executor.get("type", "local") != "local":
            problems.append(("workers", "is the deprecated synonym of engine.executor, which is set: "
                                        "drop 'workers'"))
        if params.get("confidence", DEFAULT_CONFIDENCE) is None and "holdout" in spec.resolved["engine"]["dataset"]:
            problems.append(("confidence", "is null, but engine.dataset.holdout needs intervals to check the "
                                           "held-out drop against"))
        entries = spec.resolved["compression"]["algorithms"]
        position = next((i for i, e in enumerate(entries) if e.get("params") is params), len(entries))
        base = params.get("base_algorithm", "DefaultQuantization")
        if params.get("base_params") and any(e["name"] == base for e in entries[:position]):
            problems.append(("base_params", f"{base} runs before this step, so base_params would not be used: "
                                            f"set them on that {base} entry"))
        return problems

    def check_engine(self, engine: EngineLike, prefix: str) -> list[tuple[str, str]]:
        """The holdout leaves enough samples to rank on; every watched metric can be resampled for an interval."""
        p = self.params
        problems = []
        searched, held = len(engine.search_indices), len(engine.holdout_indices)
        if held and searched < p.ranking_subset_size:
            problems.append(("engine.dataset.holdout", f"leaves {searched} samples to search on, fewer than "
                                                       f"{prefix}.ranking_subset_size ({p.ranking_subset_size})"))
        if p.confidence is not None:
            watched = {m["name"] for m in p.metrics or []}
            problems += [(f"engine.metrics[{i}]", f"metric {m.name!r} ({type(m).__name__}) cannot be resampled "
                                                  f"(resamplable = False) for the interval {prefix}.confidence asks; "
                                                  f"set confidence to null")
                         for i, m in enumerate(engine.metrics)
                         if (not watched or m.name in watched) and not getattr(m, "resamplable", True)]
        return problems

    def run(self, state: PipelineState, engine: EngineLike) -> PipelineState:
        p = self.params
        started = time.perf_counter()
        base_params = self._base_params(state)
        if state.plan is None:
            logger.info("no plan yet: running %s first", p.base_algorithm)
            base = algorithms.get(p.base_algorithm).from_spec(base_params)
            state = run_algorithm(base, state, engine, progress=engine.progress)
            if state.plan is None:
                raise SpecError([("base_algorithm", f"{p.base_algorithm} left no quantization plan")])
        targets, references, float_values, float_eval = self._targets(state, engine)
        reference = DropReference(None if float_eval is None else float_eval.model_digest,
                                  frozenset(n for n, k in references.items() if k == "baseline_value"),
                                  p.drop_type == "relative")
        evaluator = self._evaluator(state, engine, targets, reference)
        if float_eval is not None:
            evaluator.full.add(float_eval)
        try:
            result, alternatives, base_params = self._search(evaluator, state, engine, base_params)
        except KeyboardInterrupt as exc:  # the running evaluation is abandoned; the best plan measured stands
            evaluator.ranker.close(abandon=True)
            raise self._interrupted(Interrupted.of(exc), evaluator, state, targets, references,
                                    float_values) from None
        finally:
            evaluator.ranker.close()
        if evaluator.ranker.owns_executor:
            state.executors.append(evaluator.ranker.executor.describe())
        slow_fix = None
        if p.faster_than_float and result.met and result.reverted:
            fix, slow_fix = faster_mix(evaluator, targets, engine, state.float_model, result.reverted,
                                       evaluator.ranker.neighbours, result.scores, SLOW_FIX_SECONDS)
            if fix is not None:
                result = dataclasses.replace(result, reverted=sorted(fix[0]), measurement=fix[1])
        plan = evaluator.candidates.plan.with_reverted(result.reverted)
        final, shown = result.measurement.point(), result.measurement.reported()
        state = dataclasses.replace(state, plan=plan, model=evaluator.build(frozenset(result.reverted)))
        for t in targets.targets:
            state.targets[t.name] = t.met(final[t.name])
            state.references[t.name] = {"value": t.reference, "kind": references[t.name]}
        state.metrics["float"] = {k: v for k, v in float_values.items() if v is not None}
        state.metrics[NAME] = dict(shown)
        digest = model_digest(state.model)
        state.intervals.update({n: {"model": digest, "search": iv.as_dict(), "held_out": None}
                                for n, iv in result.measurement.intervals.items()})
        held = None
        if len(engine.holdout_indices):
            held = held_out_check(engine, targets, state.float_model, state.model, p.maximal_drop,
                                  p.drop_type == "relative")
            for name, record in held["metrics"].items():
                state.intervals.setdefault(name, {"model": digest, "search": None})["held_out"] = record["interval"]
            for name in held["overfitted"]:
                state.targets[name] = False
                state.notes[name] = held["reason"]
        seconds = time.perf_counter() - started
        latency = self._latency(engine, state, LATENCY_SHARE * seconds)
        steps = {g: k + 1 for k, g in enumerate(result.reverted)}
        self.summary = search_summary(
            result, targets, references=references, float_values=float_values,
            groups={g.id: g.layers for g in plan.groups}, quantized_groups=len(evaluator.candidates.plan.quantized_groups),
            search=self.search.name, drop_type=p.drop_type, rankings=evaluator.ranker.history,
            alternatives=alternatives, base_params=base_params,
            plan=plan.describe({g: f"reverted by {NAME} (revert {k} of {len(steps)})" for g, k in steps.items()}),
            full=evaluator.full, ranking=evaluator.ranker.counts, latency=latency, seconds=seconds)
        self.summary["slow_fix"] = slow_fix
        self.summary["confidence"] = confidence_summary(targets, result.measurement, p.maximal_drop,
                                                        evaluator.interval_seconds, held)
        if held is not None and held["overfitted"]:
            self.summary.update(target_met=False, stop_reason="the search overfitted: the held-out drop is above "
                                                              "maximal_drop by more than its interval explains")
        self.summary["headline"] = headline(self.summary)
        for line in self.summary["confidence"]["statements"]:
            logger.warning("%s", line)
        if result.met:
            logger.info("target met with %d of %d groups in float", len(result.reverted), len(plan.groups))
        else:
            logger.warning("target NOT met (%s): returning the best model found, %d groups in float, drops %s",
                           result.stop_reason, len(result.reverted), drops_text(targets, shown))
        return state

    def _interrupted(self, exc: Interrupted, evaluator: PlanEvaluator, state: PipelineState, targets: Targets,
                     references: dict[str, str], float_values: dict[str, float | None]) -> Interrupted:
        """What a signal leaves: the best plan measured to the end so far (``evaluator.better``), else nothing."""
        if evaluator.best is None:
            logger.warning("interrupted by %s before any model was measured to the end: no model to write",
                           exc.signal_name)
            return exc
        best, candidates = evaluator.best
        plan = candidates.plan.with_reverted(best.reverted)
        state = dataclasses.replace(state, plan=plan, model=candidates.build(frozenset(best.reverted)))
        final, shown = best.point(), best.reported()
        for t in targets.targets:
            state.targets[t.name] = t.met(final[t.name])
            state.references[t.name] = {"value": t.reference, "kind": references[t.name]}
        state.metrics["float"] = {k: v for k, v in float_values.items() if v is not None}
        state.metrics[NAME] = dict(shown)
        groups = {g.id: g.layers for g in plan.groups}
        self.summary = {
            "headline": f"interrupted by {exc.signal_name}: the best plan so far, {len(best.reverted)} of "
                        f"{len(groups)} groups in float, drops {drops_text(targets, shown)}",
            "interrupted": True, "signal": exc.signal_name, "target_met": targets.met(final),
            "reverted": [{"group": str(g), "layers": list(groups.get(g, ()))} for g in sorted(best.reverted, key=str)],
            "metrics": {t.name: {"reference": t.reference, "reference_kind": references[t.name],
                                 "float": float_values.get(t.name), "final": shown[t.name],
                                 "drop": t.drop(shown[t.name]), "allowed_drop": t.allowed,
                                 "met": t.met(final[t.name])} for t in targets.targets},
            "rankings": evaluator.ranker.history,
            "evaluations": {"full": evaluator.full.evaluations, "full_stopped_early": evaluator.full.stopped_early,
                            "ranking": evaluator.ranker.counts.evaluations},
        }
        logger.warning("%s", self.summary["headline"])
        return Interrupted(exc.signum, state=state)

    def _base_params(self, state: PipelineState) -> dict[str, Any]:
        """The base algorithm's params: those of its earlier run in this pipeline, else ``base_params``."""
        for record in reversed(state.records):
            if record.name == self.params.base_algorithm:
                return dict(record.params)
        return fill_defaults(dict(self.params.base_params), algorithms.get(self.params.base_algorithm).schema)

    def _targets(self, state: PipelineState, engine: EngineLike
                 ) -> tuple[Targets, dict[str, str], dict[str, float | None], Evaluation | None]:
        """One target per watched metric; the float model is evaluated unless every baseline is given."""
        p = self.params
        watched = p.metrics or [{"name": m.name} for m in engine.metrics]
        by_name = {m.name: m for m in engine.metrics}
        given = {w["name"]: float(w["baseline_value"]) for w in watched if "baseline_value" in w}
        measured: dict[str, float] = {}
        evaluation = None
        if len(given) < len(watched):
            evaluation = engine.evaluate(state.float_model, engine.search_indices, progress_desc="float model")
            measured = {k: float(v) for k, v in evaluation.values.items()}
        references = {w["name"]: "baseline_value" if w["name"] in given else "measured" for w in watched}
        values = {w["name"]: given.get(w["name"], measured.get(w["name"])) for w in watched}
        targets = [MetricTarget(n, by_name[n].higher_is_better, v, allowed_drop(v, p.maximal_drop, p.drop_type),
                                score_bounds(by_name[n]) if p.early_stop else None) for n, v in values.items()]
        for t in targets:
            logger.info("%s: float %.4f (%s), allowed drop %.4f", t.name, t.reference,
                        references[t.name], t.allowed)
        float_values = {w["name"]: measured.get(w["name"]) for w in watched}
        return Targets(targets, Confidence.from_params(p.confidence, p.seed)), references, float_values, evaluation

    def _evaluator(self, state: PipelineState, engine: EngineLike, targets: Targets,
                   reference: DropReference) -> PlanEvaluator:
        p = self.params
        searched = engine.search_indices
        comparison = engine.subset(max(1, int(len(searched) * p.metric_subset_ratio)), p.seed, among=searched) \
            if p.all_baselines_given else searched
        candidates = CandidateModels(state.plan)
        executor, owned = executor_of(engine), False
        if p.workers > 1 and not executor.parallel:
            logger.warning("%s: 'workers' is deprecated; set engine.executor to {\"type\": \"processes\", "
                           "\"workers\": %d} (it then serves every algorithm of the run)", NAME, p.workers)
            executor, owned = ProcessExecutor(p.workers), True
        ranker = GroupRanker(engine, candidates.build, state.float_model, method=p.ranking_method,
                             subset_size=p.ranking_subset_size, comparison=comparison, seed=p.seed,
                             neighbours=_neighbours(state.plan), executor=executor, owns_executor=owned)
        return PlanEvaluator(engine, targets, candidates, ranker, p.seed, reference)

    def _search(self, evaluator: PlanEvaluator, state: PipelineState, engine: EngineLike,
                base_params: dict[str, Any]) -> tuple[SearchResult, dict[str, Any], dict[str, Any]]:
        """The search result, the alternatives tried and the base params of the plan searched."""
        p, targets = self.params, evaluator.targets
        start = evaluator.measure(frozenset(), StopRule(targets, (0.0,)))
        if evaluator.passed(start):
            logger.info("the quantized model already meets the target: nothing to revert")
            return SearchResult([], evaluator.complete(start), True, stop_reason="target met"), {}, base_params
        start = evaluator.complete(start)
        logger.info("quantized model: drops %s", drops_text(targets, start.point()))
        alternatives: dict[str, Any] = {}
        wanted = [("mixed_preset", p.convert_to_mixed_preset, mixed_preset_stages),
                  ("tune_hyperparams", p.tune_hyperparams, tuning_stages)]
        for what, enabled, stages in wanted:
            if not enabled or targets.met(start.point()):
                continue
            start, record = try_alternatives(what, evaluator, start, stages(base_params),
                                             self._proposer(state, engine, base_params))
            alternatives[what] = record
            base_params = merge_params(base_params, record["kept"] or {})
        if targets.met(start.point()):
            return SearchResult([], start, True, stop_reason="target met"), alternatives, base_params
        candidates = [g.id for g in evaluator.candidates.plan.quantized_groups]
        result = self.search.run(evaluator, targets, start, candidates, max_reverted=p.max_iter_num,
                                 early_stop=p.early_stop)
        return result, alternatives, base_params

    def _proposer(self, state: PipelineState, engine: EngineLike, base_params: dict[str, Any]):
        """``propose(stage, kept)``: the plans of the base algorithm for a stage's overrides, statistics in one pass."""
        base_cls = algorithms.get(self.params.base_algorithm)

        def propose(stage: Stage, kept: dict[str, Any]) -> list[Alternative]:
            current = merge_params(base_params, kept)
            known = set(base_cls.schema.get("properties", {}))
            algos = [(o, base_cls.from_spec(merge_params(current, o))) for o in stage if set(o) <= known]
            scratch = PipelineState(state.float_model, state.float_model, statistics=state.statistics)
            fill_statistics(state.statistics, engine, [n for _, a in algos for n in a.statistics_needs(scratch)],
                            progress=engine.progress, why=f"{len(algos)} candidates")
            out = []
            for overrides, algo in algos:
                plan = algo.run(scratch, engine).plan  # declared statistics are in (kl / percentile add histograms)
                out.append(Alternative(overrides, CandidateModels(plan), _neighbours(plan)))
            return out

        return propose

    @staticmethod
    def _latency(engine: EngineLike, state: PipelineState, budget_seconds: float) -> dict[str, Any] | None:
        try:
            latency = latency_on_engine(engine, state.float_model, state.model, budget_seconds)
        except Exception as exc:  # latency is information, never a reason to fail the run
            logger.warning("latency not measured: %s", exc)
            return None
        (logger.warning if latency.slower else logger.info)("%s", latency.statement())
        return latency.as_dict()


def _neighbours(plan: Plan) -> dict[Any, list]:
    """The groups each group borders; groups the plan already leaves in float count as float."""
    neighbours = group_neighbours(plan.model, {g.id: g.layers for g in plan.groups})
    return {g: [FLOAT if n in plan.reverted else n for n in ns] for g, ns in neighbours.items()}
