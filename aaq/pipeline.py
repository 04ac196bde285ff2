"""``Pipeline(spec).run(model, engine)``: spec → algorithm instances → run in order → ``Result``."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import onnx

from aaq.algorithms.base import algorithms, run_algorithm
from aaq.engine.engine import Engine
from aaq.engine.executor_choice import as_executor
from aaq.engine.executors import ExecutorStats, executor_of
from aaq.engine.protocol import EngineLike
from aaq.errors import Interrupted, ModelError, SpecError
from aaq.report import MetricOutcome, Result
from aaq.spec.validate import Spec, load_spec
from aaq.state import PipelineState, model_digest

logger = logging.getLogger(__name__)


class Pipeline:
    """Runs the algorithms a spec lists, in order, over one shared state.

    The spec is validated here by the same checks as ``aaq validate``, before any
    model is loaded; every algorithm is built from its validated params before the
    first one runs, so a bad spec costs no inference.
    """

    def __init__(self, spec: dict[str, Any] | str | Path, *, progress: bool = True,
                 evaluate: bool | None = None) -> None:
        self.spec: Spec = spec if isinstance(spec, Spec) else load_spec(spec)
        self.progress = progress
        self.evaluate = self.spec.resolved.get("evaluate", True) if evaluate is None else evaluate
        """Measure the float and the final model on the whole dataset after the algorithms (the spec's
        ``evaluate``, unless given here); False: a quantize-only run, its metrics not measured."""
        self.algorithms = [
            algorithms.get(entry["name"], f"compression.algorithms[{i}].name").from_spec(entry["params"])
            for i, entry in enumerate(self.spec.resolved["compression"]["algorithms"])
        ]

    def run(self, model: str | Path | onnx.ModelProto | None = None, engine: EngineLike | None = None, *,
            output_dir: str | Path | None = None, resume_from: str | Path | None = None,
            executor: Any = None) -> Result:
        """Quantize ``model`` (default: the spec's) measured by ``engine`` (default: built from the spec).

        ``output_dir``: where algorithms may write files as they go (``state.output_dir``);
        ``Result.save`` still writes the model and report.json. ``resume_from``: an earlier run's folder whose
        tuning history a Tuning step replays (``aaq run --resume``). ``executor``: where
        candidate evaluations run for this run (an ``engine.executors.Executor``, an
        ``executor`` spec entry, a ``distributed.Client``, which stays open), in place of
        the engine's (``engine.executor``, from the spec's ``engine.executor``).

        Ctrl-C, SIGTERM or SIGHUP (``KeyboardInterrupt``) end the run with ``aaq.errors.Interrupted``, whose
        ``result`` is the best model so far (None when no algorithm had one): nothing more is measured.
        """
        started = time.perf_counter()
        float_model = load_model(model if model is not None else self.spec.resolved["model"]["path"])
        if engine is None:
            engine = Engine.from_spec(self.spec.resolved["engine"], self.spec.base_dir, progress=self.progress)
        else:
            _check_engine_metrics(engine, self.spec)
        problems = [problem for i, algorithm in enumerate(self.algorithms)
                    for problem in algorithm.check_engine(engine, f"compression.algorithms[{i}].params")]
        if problems:
            raise SpecError(problems, self.spec.source)
        if executor is not None:
            engine.executor = as_executor(executor)  # type: ignore[attr-defined]
        engine.set_float_model(float_model)
        current = onnx.ModelProto()
        current.CopyFrom(float_model)
        state = PipelineState(float_model=float_model, model=current,
                              output_dir=None if output_dir is None else Path(output_dir),
                              resume_from=None if resume_from is None else Path(resume_from),
                              evaluate=self.evaluate)
        executor = executor_of(engine)
        executor.stats = ExecutorStats()
        try:  # the executor's workers (processes, a LocalCluster) end with the run, interrupted or not
            executor.open()  # an unreachable cluster stops the run here, before any inference
            for algorithm in self.algorithms:
                state = run_algorithm(algorithm, state, engine, progress=self.progress)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the best so far, measured no further
            executor.close(abandon=True)
            best = getattr(exc, "state", None)
            result = None if best is None else self._result(best, engine, {}, float_model, started,
                                                            interrupted=Interrupted.of(exc).signal_name)
            raise Interrupted.of(exc, result=result) from None
        finally:
            executor.close()
        state.executors.append(executor.describe())
        if self.evaluate:
            try:
                outcomes = _metric_outcomes(engine, state)
            except KeyboardInterrupt as exc:  # the algorithms are done: their model is the one to publish
                result = self._result(state, engine, {}, float_model, started,
                                      interrupted=Interrupted.of(exc).signal_name)
                raise Interrupted.of(exc, result=result) from None
            for name, outcome in outcomes.items():
                logger.info("%s", outcome.describe(name))
        else:
            outcomes = {}
            logger.info("metrics not measured: a quantize-only run (evaluate: false)")
        if not state.targets_met:
            missed = ", ".join(name for name, met in state.targets.items() if not met)
            logger.warning("accuracy target NOT met (%s); the best model found is returned", missed)
            for name, note in state.notes.items():
                logger.warning("%s: %s", name, note)
        return self._result(state, engine, outcomes, float_model, started)

    def _result(self, state: PipelineState, engine: EngineLike, outcomes: dict[str, MetricOutcome],
                float_model: onnx.ModelProto, started: float, *, interrupted: str | None = None) -> Result:
        return Result(
            model=state.model,
            model_name=self.spec.model_name,
            target_met=state.targets_met,
            targets=dict(state.targets),
            notes=dict(state.notes),
            metrics=outcomes,
            evaluated=self.evaluate and interrupted is None,
            metric_names=[m.name for m in engine.metrics],
            algorithms=state.records,
            evaluations=list(getattr(engine, "history", [])),
            float_samples_inferred=int(getattr(engine, "inferred_by_model", {}).get(model_digest(float_model), 0)),
            seconds=time.perf_counter() - started,
            spec=self.spec.resolved,
            interrupted=interrupted,
            executors=list(state.executors),
        )


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A private copy of the user's model, checked; the original object or file is never modified."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        where = "the given model"
    else:
        where = str(model)
        try:
            copy = onnx.load(str(model))
        except FileNotFoundError:
            raise ModelError(f"model file not found: {where}") from None
        except Exception as exc:
            raise ModelError(f"cannot load {where} as an ONNX model: {exc}") from None
    try:
        onnx.checker.check_model(copy)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(f"{where} is not a valid ONNX model: {first}") from None
    return copy


def _metric_outcomes(engine: EngineLike, state: PipelineState) -> dict[str, MetricOutcome]:
    """Each metric of the final model on the search samples (the whole dataset without a holdout), and its drop
    against the reference the targets used, with the intervals an algorithm computed for that model.

    The float model is measured (served from the engine's cache when an algorithm
    measured it already) unless the references are the user's ``baseline_value``s:
    then it is not inferred beyond what the algorithms needed, and metrics that no
    target watched get no float value.
    """
    searched = engine.search_indices
    final = engine.evaluate(state.model, searched)
    kinds = {ref["kind"] for ref in state.references.values()}
    measured = None if kinds == {"baseline_value"} else engine.evaluate(state.float_model, searched)
    outcomes = {}
    for m in engine.metrics:
        ref = state.references.get(m.name)
        value = None if measured is None else float(measured.values[m.name])
        if ref is not None and ref["kind"] == "baseline_value":
            reference, kind = float(ref["value"]), "baseline_value"
        else:
            reference, kind = value, "measured" if value is not None else "not measured"
        intervals = state.intervals.get(m.name) or {}
        mine = intervals.get("model") == final.model_digest
        outcomes[m.name] = MetricOutcome(value, float(final.values[m.name]), m.higher_is_better, reference, kind,
                                         intervals.get("search") if mine else None,
                                         intervals.get("held_out") if mine else None)
    return outcomes


def _check_engine_metrics(engine: EngineLike, spec: Spec) -> None:
    """An engine passed to ``run`` must have the metrics the spec's algorithms name (it replaces the spec's)."""
    given = [m.name for m in engine.metrics]
    named = [m["name"] for m in spec.resolved["engine"]["metrics"]]
    if set(given) != set(named):
        raise SpecError([("engine.metrics", f"the engine given to run() has metrics {given}, the spec names "
                                            f"{named}: the algorithms' metric names must exist in the engine")],
                        spec.source)
