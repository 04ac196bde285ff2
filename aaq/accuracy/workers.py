"""What a worker runs to score candidate models on a ranking subset, and what it is sent to do it.

A worker is sent, once each: the ``Recipe`` of its engine (metrics, the float model,
batch size, threads), the samples of a ranking subset (``subset_samples``), and the
plans whose candidates it scores. A ``ScoreTask`` then names only a plan by position
and the groups reverted, so a task is a few hundred bytes whatever the model; a worker
builds the candidate itself (``CandidateModels``, the same bytes the driver would
build) and keeps its engine and models while the run sends tasks of the same context.
A candidate that comes from no plan (a custom ``build``) travels as model bytes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx

from aaq.accuracy.subsets import output_distance
from aaq.engine.datasets import ArrayDataset, SampleList, is_batched
from aaq.engine.engine import Engine
from aaq.engine.executors import Shared
from aaq.engine.feeds import fetch
from aaq.engine.metrics import Metric
from aaq.engine.protocol import EngineLike
from aaq.quantization.candidates import CandidateModels
from aaq.quantization.plan import Plan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How a worker builds its engine: the same metrics and float model as the run's, its own threads."""

    metrics: list[Metric]
    float_bytes: bytes
    batch_size: int
    threads: int
    spinning: bool


@dataclass(frozen=True)
class ScoreTask:
    """One candidate: plan ``plan``'s model with ``reverted`` in float (or ``model``'s bytes), scored for ``metric``."""

    plan: int
    reverted: frozenset
    metric: str
    distance: bool
    model: bytes | None = None


def recipe(engine: EngineLike, float_model: onnx.ModelProto, threads: int) -> Recipe:
    return Recipe(list(engine.metrics), float_model.SerializeToString(), engine.batch_size, threads,
                  _spinning(engine))


def subset_samples(engine: EngineLike, subset: np.ndarray) -> Any:
    """The samples of ``subset`` as a worker needs them: stacked inputs and labels, or whole feeds."""
    if is_batched(engine.dataset):
        return [engine.dataset[int(i)] for i in subset]
    inputs, labels = fetch(engine.dataset, subset)
    return dict(inputs), labels


def _spinning(engine: Any) -> bool:
    """Whether the engine's sessions let ONNX Runtime's threads spin (its workers do as it does)."""
    options = getattr(engine, "session_options", None)
    return options is not None and options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


_ENGINE: dict[str, Any] = {"key": None, "engine": None}
_PLANS: dict[str, list[CandidateModels]] = {}


def worker_engine(recipe_ctx: Shared, data_ctx: Shared) -> Engine:
    """The worker's engine for this recipe and subset: built the first time, kept while tasks name them."""
    key = f"{recipe_ctx.key}/{data_ctx.key}"
    if _ENGINE["key"] != key:
        r: Recipe = recipe_ctx.value
        data = data_ctx.value
        dataset = SampleList(data, batched=True) if isinstance(data, list) else ArrayDataset(*data)
        engine = Engine(dataset, r.metrics, batch_size=r.batch_size, intra_op_threads=r.threads,
                        allow_spinning=r.spinning, progress=False)
        engine.set_float_model(r.float_bytes)
        _ENGINE.update(key=key, engine=engine)
    return _ENGINE["engine"]


def score_task(recipe_ctx: Shared, data_ctx: Shared, plans_ctx: Shared, task: ScoreTask) -> tuple[float, int]:
    """In a worker: the candidate's metric on the subset (or minus its output distance), and samples inferred."""
    engine = worker_engine(recipe_ctx, data_ctx)
    if task.model is not None:
        model: onnx.ModelProto | bytes = task.model
    else:
        if plans_ctx.key not in _PLANS:
            if len(_PLANS) >= 4:
                _PLANS.pop(next(iter(_PLANS)))
            _PLANS[plans_ctx.key] = [CandidateModels(p) for p in plans_ctx.value]
        model = _PLANS[plans_ctx.key][task.plan].build(task.reverted)
    every = np.arange(engine.num_samples)
    if task.distance:
        ref = engine.outputs(recipe_ctx.value.float_bytes, every)
        return -float(np.mean(output_distance(ref, engine.outputs(model, every)))), len(every)
    ev = engine.evaluate(model, every)
    return float(ev.values[task.metric]), int(ev.samples_inferred)


def plan_of(build: Any) -> Plan | None:
    """The plan behind a ``CandidateModels.build``, which a worker can rebuild from; None for another callable."""
    owner = getattr(build, "__self__", None)
    return owner.plan if isinstance(owner, CandidateModels) else None


def tasks_for(models: Sequence[tuple[Any, frozenset]], metric: str, distance: bool
              ) -> tuple[list[Plan], list[ScoreTask]]:
    """The distinct plans of ``(build, reverted)`` pairs and one task per pair."""
    plans: list[Plan] = []
    tasks = []
    for build, reverted in models:
        plan = plan_of(build)
        if plan is None:
            tasks.append(ScoreTask(-1, frozenset(reverted), metric, distance,
                                   build(reverted).SerializeToString()))
            continue
        position = next((i for i, p in enumerate(plans) if p is plan), None)
        if position is None:
            plans.append(plan)
            position = len(plans) - 1
        tasks.append(ScoreTask(position, frozenset(reverted), metric, distance))
    return plans, tasks
