"""Objectives: what picks the result among the configs that meet the accuracy criterion, measured, never estimated.

Built-ins (INC's names):

* ``accuracy``: the weighted accuracy the criterion checks (higher is better unless
  the metrics are lower-is-better);
* ``performance``: the median latency per batch (ms) of the trial's model on the
  engine's session, timed in interleaved rounds with the float model (``engine.latency``);
* ``footprint``: the peak memory (bytes) building a session of the model and running
  one batch adds to a fresh Python process (``footprint.measure_footprint``);
* ``modelsize``: the serialized model's bytes.

A custom objective is a class with ``name``, ``higher_is_better`` and
``measure(model, context) -> float``, registered with ``@register_objective("name")``
or through the entry-point group ``aaq.objectives``.

Several objectives (``multi_objectives``, or a list) are normalised as INC's
``MultiObjective`` does: each objective's values over the passing trials are scaled
to [0, 1] (1 = best; an objective on which all trials tie adds nothing), weighted,
and summed; the highest score wins, the earliest trial on a tie.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import onnx

from aaq.engine.latency import latency_on_engine
from aaq.registry import Registry, subclass_check
from aaq.tuning.footprint import measure_footprint

LATENCY_BUDGET_SECONDS = 1.0  # timed rounds after the first few, per trial


@dataclass
class MeasureContext:
    """What an objective may read: the engine, the float model and the trial's accuracy."""

    engine: Any
    float_model: onnx.ModelProto
    accuracy: float
    details: dict = field(default_factory=dict)
    """What an objective wants recorded beside its value (the history's ``measurements``)."""


class Objective(abc.ABC):
    """One objective; ``measure`` runs on a trial's model once the trial has met the criterion."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False
    unit: ClassVar[str] = ""
    structural: ClassVar[bool] = False
    """The value depends only on the graph's structure (nodes, tensor shapes and types), not on the
    weights' or the scales' values: two trials whose models have one ``structure_key`` share one
    measurement (configs that differ only in ranges or calibration size run the same kernels)."""

    @abc.abstractmethod
    def measure(self, model: onnx.ModelProto, context: MeasureContext) -> float:
        """The objective's value for ``model``."""


objectives: Registry[type[Objective]] = Registry("objective", "aaq.objectives", builtins="aaq.tuning.objectives",
                                                 check=subclass_check(Objective, "an objective"))


def register_objective(name: str):
    """Class decorator: make the objective usable from a spec as ``name``."""
    return objectives.decorator(name)


@register_objective("accuracy")
class Accuracy(Objective):
    higher_is_better = True

    def measure(self, model: onnx.ModelProto, context: MeasureContext) -> float:
        return float(context.accuracy)


@register_objective("performance")
class Performance(Objective):
    unit = "ms per batch"
    structural = True

    def measure(self, model: onnx.ModelProto, context: MeasureContext) -> float:
        comparison = latency_on_engine(context.engine, context.float_model, model, LATENCY_BUDGET_SECONDS)
        context.details["performance"] = {"float_ms": comparison.reference_ms, "ratio_to_float": comparison.ratio,
                                          "ratio_quartiles": list(comparison.spread), "runs": comparison.runs,
                                          "batch_size": comparison.batch_size}
        return float(comparison.candidate_ms)


@register_objective("footprint")
class Footprint(Objective):
    unit = "bytes"
    structural = True

    def measure(self, model: onnx.ModelProto, context: MeasureContext) -> float:
        return float(measure_footprint(model, context.engine))


@register_objective("modelsize")
class ModelSize(Objective):
    unit = "bytes"

    def measure(self, model: onnx.ModelProto, context: MeasureContext) -> float:
        return float(len(model.SerializeToString()))


def structure_key(model: onnx.ModelProto) -> str:
    """A digest of ``model`` without its tensors' values: nodes, attributes, and every tensor's name,
    type and shape (what decides which kernels ONNX Runtime runs, and how long they take)."""
    import hashlib

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    for tensor in bare.graph.initializer:
        tensor.ClearField("raw_data")
        for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(name)
    for node in bare.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                attribute.t.ClearField("raw_data")
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class ObjectiveSet:
    """The objectives a run measures, their weights and directions (INC's ``MultiObjective``)."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    higher_is_better: tuple[bool, ...]

    @classmethod
    def from_params(cls, objective: str | Sequence[str], multi: Mapping[str, Any] | None) -> "ObjectiveSet":
        """``multi_objectives`` when given, else ``objective`` (a list: equal weights)."""
        if multi:
            names = list(multi["objective"])
            weights = multi.get("weight") or [1.0 / len(names)] * len(names)
            directions = multi.get("higher_is_better")
        else:
            names = [objective] if isinstance(objective, str) else list(objective)
            weights, directions = [1.0 / len(names)] * len(names), None
        if directions is None:
            directions = [objectives.get(n).higher_is_better for n in names]
        return cls(tuple(names), tuple(float(w) for w in weights), tuple(bool(d) for d in directions))

    def instances(self) -> dict[str, Objective]:
        return {name: objectives.get(name)() for name in self.names}

    def scores(self, values: Sequence[Mapping[str, float]]) -> list[float]:
        """One score per trial (higher is better): normalised, weighted objectives."""
        if not values:
            return []
        table = np.array([[float(v[n]) for n in self.names] for v in values], dtype=np.float64)
        goodness = np.where(np.array(self.higher_is_better), table, -table)
        low, high = goodness.min(axis=0), goodness.max(axis=0)
        spread = high - low
        normalised = np.where(spread > 0, (goodness - low) / np.where(spread > 0, spread, 1.0), 0.0)
        return [float(s) for s in normalised @ np.array(self.weights)]

    def best(self, values: Sequence[Mapping[str, float]]) -> int:
        """Index of the best trial among ``values`` (the earliest on a tie)."""
        scores = self.scores(values)
        return int(np.argmax(scores)) if scores else -1


def objective_problems(objective: Any, multi: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Unknown names (with "did you mean"), weights or directions that do not match the objectives."""
    problems = []
    if multi:
        names = list(multi.get("objective") or [])
        for i, name in enumerate(names):
            if name not in objectives:
                problems.append((f"multi_objectives.objective[{i}]", objectives.unknown_message(name)))
        for key in ("weight", "higher_is_better"):
            given = multi.get(key)
            if given is not None and len(given) != len(names):
                problems.append((f"multi_objectives.{key}", f"{len(given)} values for {len(names)} objectives "
                                                             f"({', '.join(names)}): one per objective"))
        return problems
    names = [objective] if isinstance(objective, str) else list(objective)
    for i, name in enumerate(names):
        if name not in objectives:
            path = "objective" if isinstance(objective, str) else f"objective[{i}]"
            problems.append((path, objectives.unknown_message(name)))
    return problems
