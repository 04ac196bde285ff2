"""The Python API of INC 3.x's ``base_tuning``: ``TuningConfig``, ``Evaluator`` and ``autotune``.

``autotune(model, tuning_config, eval_fns, calibration_dataset)`` runs the same
``Tuning`` algorithm as a spec, with the same checks before anything runs, and
returns the same ``Result``::

    from aaq.autotune import TuningConfig, autotune

    config = TuningConfig(config_set=[{"preset": "performance"}, {"preset": "mixed"}], max_trials=3,
                          tolerable_loss=0.01)
    result = autotune("model.onnx", config, eval_acc, {"x": calibration_array})
    result.model   # onnx.ModelProto, QDQ

``config_set`` is a list of DefaultQuantization params (or one whose fields hold
lists of choices), tried in order by default (``sampler=None``: the ``exhaustive``
strategy, INC's sequential sampler), or a tuning space ``{"model_wise": ...,
"op_wise": ...}`` (default strategy ``basic``); ``sampler`` names any registered
strategy. Eval functions take the quantized ``onnx.ModelProto`` and return a float.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from aaq.algorithms.base import algorithms
from aaq.algorithms.tuning import param_problems
from aaq.engine.datasets import ArrayDataset, Dataset
from aaq.engine.functions import FunctionEngine
from aaq.errors import SpecError
from aaq.pipeline import Pipeline, load_model
from aaq.report import Result
from aaq.schemas.tools import fill_defaults, schema_errors
from aaq.spec.validate import Spec

SOURCE = "autotune"


@dataclass
class TuningConfig:
    """INC's ``TuningConfig(config_set=None, timeout=0, max_trials=100, sampler=None, tolerable_loss=0.01)``."""

    config_set: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None
    timeout: float = 0
    max_trials: int = 100
    sampler: str | None = None
    tolerable_loss: float = 0.01
    objective: str | Sequence[str] = "performance"

    def params(self) -> dict[str, Any]:
        """The Tuning params this config stands for."""
        params: dict[str, Any] = {"exit_policy": {"timeout": self.timeout, "max_trials": self.max_trials},
                                  "accuracy_criterion": {"relative": self.tolerable_loss},
                                  "objective": self.objective if isinstance(self.objective, str)
                                  else list(self.objective)}
        strategy = self.sampler
        if isinstance(self.config_set, Mapping) and set(self.config_set) <= {"model_wise", "op_wise"}:
            params["tuning_space"] = dict(self.config_set)
        elif self.config_set is not None:
            entries = [self.config_set] if isinstance(self.config_set, Mapping) else list(self.config_set)
            params["config_set"] = [dict(e) for e in entries]
            strategy = strategy or "exhaustive"
        params["strategy"] = {"name": strategy or "basic"}
        return params


class Evaluator:
    """Several eval functions with weights and names: ``f``, ``{"eval_fn": f, "weight": 0.5, "name": "acc"}``
    or a list of those. With more than one, their weighted sum is the accuracy the criterion checks."""

    def __init__(self, eval_fns: Callable | Mapping[str, Any] | Sequence[Callable | Mapping[str, Any]]) -> None:
        entries = list(eval_fns) if isinstance(eval_fns, (list, tuple)) else [eval_fns]
        if not entries:
            raise SpecError([("eval_fns", "at least one eval function is needed")], SOURCE)
        self.entries: list[dict[str, Any]] = []
        for i, entry in enumerate(entries):
            entry = {"eval_fn": entry} if callable(entry) else dict(entry)
            if not callable(entry.get("eval_fn")):
                raise SpecError([(f"eval_fns[{i}].eval_fn", "must be a callable: model -> float")], SOURCE)
            name = entry.get("name") or getattr(entry["eval_fn"], "__name__", f"eval_fn_{i}")
            self.entries.append({"name": name, "eval_fn": entry["eval_fn"],
                                 "weight": float(entry.get("weight", 1.0 / len(entries))),
                                 "higher_is_better": bool(entry.get("higher_is_better", True))})
        names = [e["name"] for e in self.entries]
        if len(set(names)) != len(names):
            raise SpecError([("eval_fns", f"eval function names must be unique, got {names}")], SOURCE)

    @property
    def weights(self) -> list[float]:
        return [e["weight"] for e in self.entries]


def autotune(model: str | Path | onnx.ModelProto, tuning_config: TuningConfig,
             eval_fns: Evaluator | Callable | Mapping[str, Any] | Sequence[Any],
             calibration_dataset: Dataset | Mapping[str, np.ndarray], *, batch_size: int = 1,
             output_dir: str | Path | None = None, progress: bool = False) -> Result:
    """Tune ``model`` with ``eval_fns`` on ``calibration_dataset`` (a Dataset, or ``{input name: array}``)."""
    evaluator = eval_fns if isinstance(eval_fns, Evaluator) else Evaluator(eval_fns)
    params = tuning_config.params()
    if len(evaluator.entries) > 1:
        params["metric_weight"] = evaluator.weights
    schema = algorithms.get("Tuning").schema
    problems = schema_errors(params, schema)
    if problems:
        raise SpecError(problems, SOURCE)
    params = fill_defaults(params, schema)
    float_model = load_model(model)
    names = [e["name"] for e in evaluator.entries]
    problems = param_problems(params, [n.name for n in float_model.graph.node], names)
    if problems:
        raise SpecError(problems, SOURCE)
    dataset = ArrayDataset(dict(calibration_dataset), source="calibration_dataset") \
        if isinstance(calibration_dataset, Mapping) else calibration_dataset
    engine = FunctionEngine([(e["name"], e["eval_fn"], e["higher_is_better"]) for e in evaluator.entries], dataset,
                            batch_size=batch_size, progress=progress)
    model_name = Path(model).stem if isinstance(model, (str, Path)) else (float_model.graph.name or "model")
    spec = Spec({"model": {"name": model_name, "path": str(model) if isinstance(model, (str, Path)) else "<memory>"},
                 "engine": {"metrics": [{"name": n, "type": "function"} for n in names]},
                 "compression": {"algorithms": [{"name": "Tuning", "params": params}]}}, Path.cwd(), SOURCE)
    return Pipeline(spec, progress=progress).run(float_model, engine, output_dir=output_dir)
