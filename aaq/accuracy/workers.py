"""What a worker runs to score candidate models on a ranking subset, and what it is sent to do it.

A worker is sent, once each: the ``Recipe`` of its engine (metrics, the float model,
batch size, threads, and the dataset's ``DatasetRecipe`` when the dataset was built
from a spec), the ranking subset (``subset_context``: its indices when the worker can
load the dataset itself, *by reference*; else its samples, *shipped*), and the plans
whose candidates it scores. A ``ScoreTask`` then names only a plan by position and
the groups reverted, so a task is a few hundred bytes whatever the model; a worker
builds the candidate itself (``CandidateModels``, the same bytes the driver would
build) and keeps its dataset, engine and models while the run sends tasks of the same
context. A candidate that comes from no plan (a custom ``build``) travels as model bytes.

A task returns a ``Scored``: the candidate's digest and its per-sample metric entries
(what ``metric.score`` returned, as the driver's engine caches them) or per-sample
output distances; the driver merges them into its own caches (``Engine.absorb``) and
computes the scores itself, so its caches and counts are those of a local run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx

from aaq.accuracy.subsets import output_distance
from aaq.engine.datasets import ArrayDataset, DatasetRecipe, SampleList, is_batched, recipe_of
from aaq.engine.engine import Engine
from aaq.engine.executors import Shared
from aaq.engine.feeds import fetch
from aaq.engine.metrics import Metric
from aaq.engine.protocol import EngineLike
from aaq.engine.session import model_bytes
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
    dataset: DatasetRecipe | None = None
    """The dataset's recipe when its samples travel by reference (else the subsets ship their samples)."""


@dataclass(frozen=True)
class SubsetRef:
    """A ranking subset by reference: the worker reads these samples of the dataset it loaded itself."""

    indices: np.ndarray


@dataclass(frozen=True)
class Scored:
    """What a task returns: the candidate's digest, and per metric its entries on the subset (in subset
    order, as ``metric.score`` returned them), or (``distances``) its per-sample output distances."""

    digest: str
    entries: dict[str, np.ndarray] | None
    distances: np.ndarray | None


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
                  _spinning(engine), recipe_of(engine.dataset))


def subset_context(engine: EngineLike, subset: np.ndarray, by_reference: bool) -> Any:
    """What a worker is sent of a ranking subset: its indices (``by_reference``), else its samples,
    as stacked inputs and labels or whole feeds."""
    if by_reference:
        return SubsetRef(np.asarray(subset, np.int64))
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
_DATASETS: dict[str, Any] = {}
"""In a worker: the datasets loaded from recipes, by token (one per run's engine; the last two kept)."""


def worker_dataset(r: DatasetRecipe) -> Any:
    """The dataset of a recipe, loaded once per run on this worker."""
    if r.token not in _DATASETS:
        while len(_DATASETS) >= 2:
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[r.token] = r.load()
        logger.debug("worker loaded dataset %s (%d samples)", r.cls.__name__, len(_DATASETS[r.token]))
    return _DATASETS[r.token]


def worker_engine(recipe_ctx: Shared, data_ctx: Shared) -> tuple[Engine, np.ndarray]:
    """The worker's engine for this recipe and subset, and the subset's indices in its dataset: built the
    first time, kept while tasks name them (one engine per recipe when the subsets come by reference)."""
    r: Recipe = recipe_ctx.value
    data = data_ctx.value
    by_reference = isinstance(data, SubsetRef)
    key = recipe_ctx.key if by_reference else f"{recipe_ctx.key}/{data_ctx.key}"
    if _ENGINE["key"] != key:
        if by_reference:
            if r.dataset is None:
                raise ValueError("a subset sent by reference needs the dataset's recipe")
            dataset = worker_dataset(r.dataset)
        else:
            dataset = SampleList(data, batched=True) if isinstance(data, list) else ArrayDataset(*data)
        engine = Engine(dataset, r.metrics, batch_size=r.batch_size, intra_op_threads=r.threads,
                        allow_spinning=r.spinning, progress=False)
        engine.set_float_model(r.float_bytes)
        _ENGINE.update(key=key, engine=engine)
    engine = _ENGINE["engine"]
    return engine, (data.indices if by_reference else np.arange(engine.num_samples))


def worker_candidates(plans_ctx: Shared) -> list[CandidateModels]:
    """The candidates of the plans sent, built once per plans context on this worker (the last four kept)."""
    if plans_ctx.key not in _PLANS:
        if len(_PLANS) >= 4:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[plans_ctx.key] = [CandidateModels(p) for p in plans_ctx.value]
    return _PLANS[plans_ctx.key]


def score_task(recipe_ctx: Shared, data_ctx: Shared, plans_ctx: Shared, task: ScoreTask) -> Scored:
    """In a worker: the candidate's per-sample metric entries on the subset (or its output distances)."""
    engine, indices = worker_engine(recipe_ctx, data_ctx)
    model = task.model if task.model is not None else worker_candidates(plans_ctx)[task.plan].build(task.reverted)
    data, digest = model_bytes(model)
    if task.distance:
        ref = engine.outputs(recipe_ctx.value.float_bytes, indices)
        return Scored(digest, None, output_distance(ref, engine.outputs(data, indices)))
    engine.evaluate(data, indices)
    return Scored(digest, engine.entries(digest, indices), None)


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
