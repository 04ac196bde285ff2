"""Tuning: Intel Neural Compressor's tuning loop over a model-wise / op-wise space, with aaq's evaluation.

Place in the pipeline. After DefaultQuantization, the params that step ran with
are the base every config is laid over (its statistics are reused when a config
matches it); alone, DefaultQuantization's defaults and ``base_params`` are.

Order of work: the float model on the full set (the criterion's reference) ->
the statistics of every model-wise config, one pass per sampling size -> the loop:
the strategy proposes a config, it is evaluated (early stop at "is the criterion
met?" and "is it closer than the best failing trial?", and at the deadline), its
objectives are measured when it passes, the monitor records it, the strategy is
told, a line is appended to ``tuning_history.jsonl`` -> the exit case -> the best
trial's model (objectives among the passing trials; else the failing trial closest
to the criterion).

Interrupted (SIGINT, SIGTERM, SIGHUP): the running trial is abandoned and the best
trial meeting the criterion, if one finished, leaves with ``aaq.errors.Interrupted``.
Resumed (``state.resume_from``): everything before the loop is recomputed, and each
proposed config whose trial finished in the earlier run is answered from its history
(``aaq.tuning.history``), as are the strategies' rankings.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import onnx
from tqdm import tqdm

from aaq.accuracy.alternatives import merge_params, tuning_stages
from aaq.accuracy.drops import MetricTarget, Targets, allowed_drop, score_bounds
from aaq.accuracy.weighted import WeightedTargets
from aaq.algorithms.base import Algorithm, algorithms, register_algorithm
from aaq.algorithms.tuning_batch import TrialBatches, batch_loop
from aaq.algorithms.tuning_trials import TrialRunner
from aaq.engine.protocol import EngineLike
from aaq.errors import Interrupted, SpecError
from aaq.schemas import load_schema
from aaq.schemas.tools import fill_defaults, schema_errors
from aaq.state import PipelineState
from aaq.tuning.history import HISTORY_FILE, History  # noqa: F401  (HISTORY_FILE: its name, kept here)
from aaq.tuning.loader import expand_config_set
from aaq.tuning.monitor import SPACE_DONE, TIMEOUT, ExitPolicy, Monitor, Trial
from aaq.tuning.objectives import ObjectiveSet, objective_problems
from aaq.tuning.space import TrialConfig, TuningSpace, dq_overrides, space_problems
from aaq.tuning import sigopt
from aaq.tuning.strategies import StrategyContext, strategies

logger = logging.getLogger(__name__)

NAME = "Tuning"
APPROACH = "post_training_static_quant"
UNBOUNDED_LIMIT = 256
"""With timeout 0 and max_trials 0, exhaustive / random refuse a space of more configs than this."""
SPACE_KEYS = ("preset", "stat_subset_size")
"""DefaultQuantization params every config sets: refused in ``base_params`` (they would be overridden)."""


@dataclass(frozen=True)
class TuningParams:
    """Mirrors ``Tuning.schema.json`` (names and defaults; checked at registration)."""

    strategy: dict = field(default_factory=lambda: {"name": "basic"})
    accuracy_criterion: dict = field(default_factory=lambda: {"relative": 0.01})
    objective: Any = "performance"
    multi_objectives: dict | None = None
    exit_policy: dict = field(default_factory=lambda: {"timeout": 0, "max_trials": 100})
    random_seed: int = 9527
    approach: str = APPROACH
    recipes: dict = field(default_factory=lambda: {"scale_propagation_max_pooling": True,
                                                   "scale_propagation_concat": True,
                                                   "first_conv_or_matmul_quantization": True,
                                                   "cross_layer_equalization": False, "smooth_quant": False,
                                                   "smooth_quant_args": {"alpha": 0.5},
                                                   "weight_range_search": False})
    calibration: dict = field(default_factory=lambda: {"sampling_size": [100]})
    tuning_space: dict = field(default_factory=lambda: load_schema(NAME)["properties"]["tuning_space"]["default"])
    metric_weight: list | None = None
    metric_criterion: list | None = None
    base_params: dict = field(default_factory=dict)
    ranking_subset_size: int = 300
    config_set: list | None = None


def param_problems(params: dict[str, Any], node_names: list[str] | None, metrics: list[str]) -> list[tuple[str, str]]:
    """Every fault the schema cannot see, paths inside params (the model is read, never run)."""
    problems = []
    strategy = params.get("strategy") or {"name": "basic"}
    name = strategy.get("name", "basic")
    cls = strategies.get(name) if name in strategies else None
    options = {k: v for k, v in strategy.items() if k != "name"}
    if cls is None:
        problems += (sigopt.missing_plugin_problems(options) if name == sigopt.NAME
                     else [("strategy.name", strategies.unknown_message(name))])
    else:
        extra = sorted(set(options) - set(cls.options))
        if extra:
            problems.append(("strategy", f"strategy {name!r} takes no option {', '.join(map(repr, extra))}"
                                         f" (options: {', '.join(cls.options) or 'none'})"))
        problems += cls.option_problems(options)
        if name == sigopt.NAME and not issubclass(cls, sigopt.SigOptStrategy):
            problems += sigopt.option_problems(options)
    problems += objective_problems(params.get("objective", "performance"), params.get("multi_objectives"))
    if params.get("approach", APPROACH) != APPROACH:
        problems.append(("approach", f"only {APPROACH!r} is available (static post-training quantization to QDQ); "
                                     f"got {params['approach']!r}"))
    if (params.get("recipes") or {}).get("scale_propagation_max_pooling") is False:
        problems.append(("recipes.scale_propagation_max_pooling", "false is not available: aaq's layout always "
                                                                   "moves quantizers through MaxPool (no own scale)"))
    space = params.get("tuning_space") or {}
    problems += [(f"tuning_space.{p}", m) for p, m in space_problems(space, node_names)]
    for key in ("metric_weight", "metric_criterion"):
        given = params.get(key)
        if given is not None and len(given) != len(metrics):
            problems.append((key, f"{len(given)} values for {len(metrics)} metrics ({', '.join(metrics)}): "
                                  f"one per engine metric"))
    problems += _base_problems(params.get("base_params") or {})
    if params.get("config_set") is not None:
        problems += _config_set_problems(params, space)
    exit_policy = params.get("exit_policy") or {}
    if cls is not None and cls.needs_exit_bound and not exit_policy.get("timeout") and \
            exit_policy.get("max_trials", 100) == 0:
        problems.append(("exit_policy.max_trials", f"strategy {name!r} needs a bound: with timeout 0 and "
                                                   f"max_trials 0 it may never meet the criterion and never "
                                                   f"end (set max_trials or timeout)"))
    unbounded = not exit_policy.get("timeout") and exit_policy.get("max_trials", 100) == 0
    if cls is not None and cls.quantize_only and not cls.needs_exit_bound and unbounded:
        sizes = (params.get("calibration") or {}).get("sampling_size") or [100]
        count = len(params.get("config_set") and expand_config_set(params["config_set"])[1]
                    or TuningSpace.from_params(space, sizes, params.get("recipes")).quantize_configs())
        if count > UNBOUNDED_LIMIT:
            problems.append(("exit_policy", f"strategy {name!r} would walk {count} configs with no timeout and no "
                                            f"max_trials: the run would not end in practice (set max_trials or "
                                            f"timeout, or narrow the space to {UNBOUNDED_LIMIT} configs)"))
    return problems


def _config_set_problems(params: dict[str, Any], space: dict[str, Any]) -> list[tuple[str, str]]:
    problems = [(f"config_set{p}", m) for p, m in expand_config_set(params["config_set"])[2]]
    default_space = load_schema(NAME)["properties"]["tuning_space"]["default"]["model_wise"]
    if (space.get("model_wise") or default_space) != default_space:
        problems.append(("config_set", "replaces tuning_space.model_wise: set one of them"))
    if params.get("base_params"):
        problems.append(("base_params", "config_set holds the DefaultQuantization params: set them there"))
    if not params["config_set"]:
        problems.append(("config_set", "must hold at least one config"))
    return problems


def _base_problems(base: dict[str, Any]) -> list[tuple[str, str]]:
    problems = schema_errors(base, algorithms.get("DefaultQuantization").schema, ("base_params",))
    for key in SPACE_KEYS:
        if key in base:
            problems.append((f"base_params.{key}", "is set by every tuning config (tuning_space, calibration): "
                                                   "set it there"))
    for key in ("granularity", "range_estimator"):
        if key in (base.get("weights") or {}):
            problems.append((f"base_params.weights.{key}", "is set by tuning_space.model_wise.weight"))
    if "preset" in ((base.get("activations") or {}).get("range_estimator") or {}):
        problems.append(("base_params.activations.range_estimator.preset",
                         "is set by tuning_space.model_wise.activation.algorithm"))
    return problems


@register_algorithm(NAME)
class Tuning(Algorithm):
    """INC's tuning: a strategy proposes configs of the space until the exit policy ends the run."""

    Params = TuningParams
    schema = load_schema(NAME)
    makes_plan = True

    @classmethod
    def check_spec(cls, params: dict[str, Any], spec: Any) -> list[tuple[str, str]]:
        try:
            names: list[str] | None = [n.name for n in onnx.load(spec.resolved["model"]["path"]).graph.node]
        except Exception:  # an unreadable model is reported by the model checks
            names = None
        metrics = [m.get("name") for m in spec.resolved["engine"].get("metrics", [])]
        return param_problems(params, names, metrics)

    def run(self, state: PipelineState, engine: EngineLike) -> PipelineState:
        p = self.params
        started = time.perf_counter()
        targets, float_values = self._targets(state, engine)
        objective_set = ObjectiveSet.from_params(p.objective, p.multi_objectives)
        runner = TrialRunner(state, engine, self._base_params(state), targets, objective_set, seed=p.random_seed,
                             ranking_subset_size=p.ranking_subset_size, recipes=dict(p.recipes))
        space = TuningSpace.from_params(p.tuning_space, p.calibration["sampling_size"], p.recipes)
        if p.config_set:
            space = dataclasses.replace(space, configs=tuple(expand_config_set(p.config_set)[1]))
        configs = space.quantize_configs()
        runner.prepare(configs)
        space = dataclasses.replace(space, forced=runner.resolve(space, configs[0]))
        strategy_cls = strategies.get(p.strategy["name"], "strategy.name")
        options = {k: v for k, v in p.strategy.items() if k != "name"}
        history = History(state.output_dir, state.resume_from)
        strategy = strategy_cls(StrategyContext(space, p.random_seed, runner.units, _ranker(runner, history),
                                                _alternatives(runner)), **options)
        policy = ExitPolicy(float(p.exit_policy.get("timeout", 0)), int(p.exit_policy.get("max_trials", 100)))
        monitor = Monitor(policy, objective_set)
        try:
            exit_case = self._loop(strategy, monitor, runner, history, engine)
        except KeyboardInterrupt as exc:  # the running trial is abandoned; the finished ones stand
            raise self._interrupted(Interrupted.of(exc), state, monitor, runner, targets, float_values,
                                    strategy_cls.name, history, started) from None
        monitor.finish(exit_case)
        best = monitor.best
        if best is None:  # the only trial was stopped by the timeout: measure it to say what it is
            best = runner.complete(monitor.trials[0])
        elif not best.complete:
            best = runner.complete(best)
        state = _final_state(state, runner, best, targets, float_values)
        self.summary = self._summary(monitor, runner, best, targets, float_values, strategy_cls.name, history,
                                     time.perf_counter() - started)
        return state

    def _interrupted(self, exc: Interrupted, state: PipelineState, monitor: Monitor, runner: TrialRunner,
                     targets: Targets, float_values: dict[str, float], strategy: str, history: History,
                     started: float) -> Interrupted:
        """What a signal leaves: the best trial meeting the criterion, with its summary; else nothing to write."""
        monitor.finish(f"interrupted by {exc.signal_name}")
        best = monitor.best if monitor.passing else None
        if best is None or not best.complete:
            logger.warning("interrupted by %s after %d finished trials: none met the criterion, no model to write",
                           exc.signal_name, len(monitor.trials))
            return exc
        state = _final_state(state, runner, best, targets, float_values)
        self.summary = self._summary(monitor, runner, best, targets, float_values, strategy, history,
                                     time.perf_counter() - started)
        self.summary.update(interrupted=True, signal=exc.signal_name,
                            headline=f"interrupted by {exc.signal_name}: best so far trial {best.number} of "
                                     f"{len(monitor.trials)} finished ({len(best.config.fallback)} layers in float)")
        return Interrupted(exc.signum, state=state)

    def _loop(self, strategy, monitor: Monitor, runner: TrialRunner, history: History, engine: EngineLike) -> str:
        total = monitor.policy.max_trials or None
        with tqdm(total=total, desc="tuning", unit="trial", leave=False, dynamic_ncols=True,
                  disable=not engine.progress) as bar:
            if strategy.batch > 1:
                batches = TrialBatches(runner)
                try:
                    return batch_loop(strategy, monitor, batches, history, bar)
                finally:
                    batches.close()
            while True:
                reason = monitor.should_stop()
                if reason:
                    return reason
                config = strategy.propose(monitor)
                if config is None:
                    return SPACE_DONE
                number = monitor.next_number()
                trial = history.cached(number, config)
                monitor.start(number, config, replayed=trial is not None)
                if trial is None:
                    failing, best = monitor.best_failing, monitor.best if monitor.passing else None
                    trial = runner.run(number, config, monitor.deadline,
                                       None if failing is None else failing.score[0], strategy.phase,
                                       None if best is None else best.objectives)
                    history.append(trial)
                monitor.record(trial)
                strategy.tell(trial)
                bar.update(1)
                if trial.stopped == "timeout":
                    return TIMEOUT

    def _base_params(self, state: PipelineState) -> dict[str, Any]:
        """DefaultQuantization's params of an earlier step in this pipeline, else its defaults and ``base_params``."""
        dq = algorithms.get("DefaultQuantization")
        if self.params.config_set:
            return expand_config_set(self.params.config_set)[0]
        for record in reversed(state.records):
            if record.name == "DefaultQuantization":
                return dict(record.params)
        return fill_defaults(merge_params({}, dict(self.params.base_params)), dq.schema)

    def _targets(self, state: PipelineState, engine: EngineLike) -> tuple[Targets, dict[str, float]]:
        p = self.params
        drop_type, maximal = next(iter(p.accuracy_criterion.items()))
        if p.metric_criterion is not None:
            wrong = [m.name for m, hib in zip(engine.metrics, p.metric_criterion) if m.higher_is_better != hib]
            if wrong:
                raise SpecError([("metric_criterion", f"disagrees with the direction of metric(s) {wrong} "
                                                      f"(each metric says whether higher is better)")])
        evaluation = engine.evaluate(state.float_model, progress_desc="float model")
        values = {m.name: float(evaluation.values[m.name]) for m in engine.metrics}
        metric_targets = [MetricTarget(m.name, m.higher_is_better, values[m.name],
                                       allowed_drop(values[m.name], maximal, drop_type), score_bounds(m))
                          for m in engine.metrics]
        if p.metric_weight is not None:
            if len({m.higher_is_better for m in engine.metrics}) > 1:
                raise SpecError([("metric_weight", "weights can only combine metrics of one direction")])
            targets: Targets = WeightedTargets(metric_targets, p.metric_weight, maximal, drop_type)
        else:
            targets = Targets(metric_targets)
        for t in metric_targets:
            logger.info("%s: float %.4f, allowed drop %.4f (%s %g)", t.name, t.reference, t.allowed, drop_type, maximal)
        return targets, values

    def _summary(self, monitor: Monitor, runner: TrialRunner, best: Trial, targets: Targets,
                 float_values: dict[str, float], strategy: str, history: History, seconds: float) -> dict[str, Any]:
        final = {k: lo for k, (lo, _) in best.values.items()}
        met = targets.met(final)
        passing = monitor.passing
        outcome = "criterion met" if met else "criterion NOT met"
        headline = (f"{outcome}{'' if monitor.exit == outcome else f' ({monitor.exit})'}; best trial {best.number} "
                    f"of {len(monitor.trials)}: {len(best.config.fallback)} layers in float; "
                    f"{runner.full.evaluations} full evaluations ({runner.full.stopped_early} stopped early)")
        return {
            "headline": headline,
            "target_met": met,
            "exit": monitor.exit,
            "strategy": strategy,
            "objectives": {"names": list(monitor.objective_set.names), "weights": list(monitor.objective_set.weights),
                           "higher_is_better": list(monitor.objective_set.higher_is_better)},
            "best": {"trial": best.number, "config": best.config.as_dict(), "why": monitor.why_best(),
                     "objectives": dict(best.objectives), "accuracy": best.accuracy, "metrics": final},
            "float": float_values,
            "passing_trials": [t.number for t in passing],
            "trials": [t.as_dict() for t in monitor.trials],
            "rankings": runner.rankings,
            "recipes": {"first_conv_or_matmul_in_float": runner.first_in_float,
                        "concat_scales_shared": runner.concat_shared},
            "evaluations": {"trials": len(monitor.trials), "full": runner.full.evaluations,
                            "full_stopped_early": runner.full.stopped_early, "full_samples_inferred": runner.full.samples,
                            "ranking": dict(runner.ranking_counts)},
            "history_file": None if history.path is None else str(history.path),
            "replayed_trials": history.replayed,
            "seconds": seconds,
        }


def _final_state(state: PipelineState, runner: TrialRunner, best: Trial, targets: Targets,
                 float_values: dict[str, float]) -> PipelineState:
    """The pipeline state of ``best``'s model (built from its plan, nothing inferred)."""
    plan = runner.entry(best.config).plan.with_reverted(runner.groups(best.config))
    state = dataclasses.replace(state, plan=plan, model=runner.model(best.config))
    final = {k: lo for k, (lo, _) in best.values.items()}
    met = targets.met(final)
    for t in targets.targets:
        state.targets[t.name] = met
        state.references[t.name] = {"value": t.reference, "kind": "measured"}
    state.metrics["float"] = dict(float_values)
    state.metrics[NAME] = final
    return state


def _alternatives(runner: TrialRunner):
    """The strategies' ``alternatives``: AccuracyAwareQuantization's ``tune_hyperparams`` stages (one list, in
    ``accuracy.alternatives``; bias correction left out) laid over a config, each stage's statistics in one pass."""

    def stage(config: TrialConfig, k: int) -> list[TrialConfig] | None:
        stages = tuning_stages(merge_params(runner.base_params, dq_overrides(config)), bias=False)
        if k >= len(stages):
            return None
        configs = [config.with_alternative(overrides) for overrides in stages[k]]
        runner.prepare(configs)
        return configs

    return stage


def _ranker(runner: TrialRunner, history: History):
    """The strategies' ``rank``: the earlier run's ranking of a config when resuming, else the runner's."""

    def rank(config: TrialConfig, method: str) -> list[tuple[str, ...]]:
        def compute():
            before = len(runner.rankings)
            runner.rank(config, method)
            return runner.rankings[-1] if len(runner.rankings) > before else None

        known = len(runner.rankings)
        record = history.ranking(config, method, compute)
        if record is None:
            return []
        if len(runner.rankings) == known:  # from the earlier run: the report shows it all the same
            runner.rankings.append(record)
        return [tuple(entry["layers"]) for entry in record["order"]]

    return rank
