"""``Pipeline(spec).run(model, engine)``: spec → algorithm instances → run in order → ``Result``."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import onnx

from aaq.algorithms.base import algorithms, run_algorithm
from aaq.errors import ModelError
from aaq.report import MetricOutcome, Result
from aaq.spec.validate import Spec, load_spec
from aaq.state import PipelineState

logger = logging.getLogger(__name__)


class Pipeline:
    """Runs the algorithms a spec lists, in order, over one shared state.

    The spec is validated here, before any model is loaded; every algorithm is
    built from its validated params before the first one runs, so a bad spec
    costs no inference.
    """

    def __init__(self, spec: dict[str, Any] | str | Path, *, progress: bool = True) -> None:
        self.spec: Spec = spec if isinstance(spec, Spec) else load_spec(spec)
        self.progress = progress
        self.algorithms = [
            algorithms.get(entry["name"], f"compression.algorithms[{i}].name").from_spec(entry["params"])
            for i, entry in enumerate(self.spec.resolved["compression"]["algorithms"])
        ]

    def run(self, model: str | Path | onnx.ModelProto | None = None, engine: Any = None) -> "Result":
        """Quantize ``model`` (default: the spec's) measured by ``engine`` (default: built from the spec)."""
        from aaq.engine.engine import Engine

        started = time.perf_counter()
        float_model = load_model(model if model is not None else self.spec.resolved["model"]["path"])
        if engine is None:
            engine = Engine.from_spec(self.spec.resolved["engine"], self.spec.base_dir, progress=self.progress)
        engine.set_float_model(float_model)
        current = onnx.ModelProto()
        current.CopyFrom(float_model)
        state = PipelineState(float_model=float_model, model=current)
        for algorithm in self.algorithms:
            state = run_algorithm(algorithm, state, engine, progress=self.progress)
        outcomes = _metric_outcomes(engine, float_model, state.model)
        for name, outcome in outcomes.items():
            logger.info("%s: float %.4f, final %.4f, drop %.4f", name, outcome.float, outcome.quantized,
                        outcome.drop)
        if not state.targets_met:
            missed = ", ".join(name for name, met in state.targets.items() if not met)
            logger.warning("accuracy target NOT met (%s); the best model found is returned", missed)
        return Result(
            model=state.model,
            model_name=self.spec.model_name,
            target_met=state.targets_met,
            targets=dict(state.targets),
            metrics=outcomes,
            algorithms=state.records,
            evaluations=list(getattr(engine, "history", [])),
            seconds=time.perf_counter() - started,
            spec=self.spec.resolved,
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


def _metric_outcomes(engine: Any, float_model: onnx.ModelProto,
                     final_model: onnx.ModelProto) -> dict[str, MetricOutcome]:
    """Float and final metric values on the full dataset; the engine's cache makes repeats free."""
    before = engine.evaluate(float_model)
    after = engine.evaluate(final_model)
    return {m.name: MetricOutcome(float(before.values[m.name]), float(after.values[m.name]), m.higher_is_better)
            for m in engine.metrics}
