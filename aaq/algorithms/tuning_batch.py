"""A batch of Tuning trials, evaluated side by side on the engine's executor, with the result of a local run.

A strategy with ``batch`` > 1 proposes that many configs at once. Every trial of the
batch is bounded by what was known when the batch started (the best failing trial's
score, the best passing trial's objectives), never by another trial of the same batch,
so the order in which they finish changes nothing. The driver builds each trial's model
and checks whether it is dominated; a worker gets the plans once, then per trial the
plan's position, the groups in float, the bound, the seconds left and the driver's
cached entries of that model on the full set (usually none), runs ``evaluate_trial``
on its own engine (the dataset by reference when the spec built it) and returns the
per-sample entries of each evaluation; the driver takes them in (``Engine.absorb``) and
makes the trial (``TrialRunner.finish``: objectives are measured here). Two trials of a
batch with the same model bytes: the second is evaluated here after the first, as a
local run would serve it from the cache. On the ``local`` executor the same batches run
one trial after the other; a batch of 1 is the loop of before, exactly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from aaq.accuracy.workers import recipe, subset_context, worker_candidates, worker_engine
from aaq.algorithms.tuning_trials import TrialRunner, evaluate_trial
from aaq.engine.executors import Executor, Shared, executor_of
from aaq.engine.session import model_bytes
from aaq.tuning.history import History
from aaq.tuning.monitor import SPACE_DONE, TIMEOUT, Monitor, Trial
from aaq.tuning.space import TrialConfig
from aaq.tuning.strategies import Strategy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialTask:
    """One trial for a worker: plan ``plan``'s model with ``reverted`` in float, bounded as the batch is."""

    plan: int
    reverted: frozenset
    best_failing: float | None
    seconds_left: float
    cached: tuple[np.ndarray, dict[str, np.ndarray]]
    """The driver's cached entries of this model on the full set: the worker starts from the same cache."""


@dataclass(frozen=True)
class TrialEvaluated:
    """What a worker sends back: the model's digest, each evaluation's samples with their entries and the
    samples it was asked for and seconds, and whether the deadline ended it."""

    digest: str
    evaluations: list[tuple[np.ndarray, dict[str, np.ndarray], int, float]]
    timed_out: bool


def trial_task(recipe_ctx: Shared, data_ctx: Shared, plans_ctx: Shared, trial_ctx: Shared,
               task: TrialTask) -> TrialEvaluated:
    """In a worker: the trial's evaluations on its own engine, as ``TrialRunner.run`` makes them."""
    engine, _ = worker_engine(recipe_ctx, data_ctx)
    order, targets = trial_ctx.value
    data, digest = model_bytes(worker_candidates(plans_ctx)[task.plan].build(task.reverted))
    if len(task.cached[0]):
        engine.absorb(digest, task.cached[0], task.cached[1], 0.0)
    deadline = time.monotonic() + task.seconds_left
    evaluations, timed_out = evaluate_trial(engine.evaluate, data, order, targets, task.best_failing, deadline, None)
    return TrialEvaluated(digest, [(ev.indices, engine.entries(digest, ev.indices), ev.requested, ev.seconds)
                                   for ev in evaluations], timed_out)


class TrialBatches:
    """Runs a Tuning run's batches of trials: on the engine's executor when it is parallel, else in order."""

    def __init__(self, runner: TrialRunner) -> None:
        self.runner = runner
        self.executor: Executor = executor_of(runner.engine)
        self._shared: dict[str, Any] = {}

    def close(self) -> None:
        """Drop what was shipped (the workers free it with the handles)."""
        self._shared.clear()

    def run(self, items: Sequence[tuple[int, TrialConfig]], deadline: float, best_failing: float | None,
            best: dict[str, float] | None, phase: str) -> list[Trial]:
        """The trials of ``items`` (number, config), in order, each bounded by ``best_failing`` and ``best``."""
        runner = self.runner
        starts = [time.perf_counter() for _ in items]
        begun = [runner.begin(number, config, best, phase) for number, config in items]
        digests = [model_bytes(model)[1] for model, _ in begun]
        remote = [i for i, (_, skipped) in enumerate(begun)
                  if skipped is None and digests[i] not in digests[:i]]  # a twin waits for its first
        results: dict[int, TrialEvaluated] = {}
        if self.executor.parallel and len(remote) > 1 and hasattr(runner.engine, "absorb"):
            try:
                results = dict(zip(remote, self._parallel([items[i] for i in remote], [digests[i] for i in remote],
                                                          deadline, best_failing)))
            except Exception as exc:  # a lost cluster, a plugin failing on the workers: this process decides
                logger.warning("parallel trials failed (%s: %s); trials run in this process from now on",
                               type(exc).__name__, exc)
                self.close()
                self.executor = Executor()
        trials = []
        for i, ((number, config), (model, skipped)) in enumerate(zip(items, begun)):
            if skipped is not None:
                trials.append(skipped)
                continue
            if i in results:
                done = results[i]
                evaluations = [runner.engine.absorb(done.digest, indices, entries, seconds, requested=requested)
                               for indices, entries, requested, seconds in done.evaluations]
                timed_out = done.timed_out
            else:
                evaluations, timed_out = evaluate_trial(runner.engine.evaluate, model, runner.order, runner.targets,
                                                        best_failing, deadline, f"trial {number}")
            trials.append(runner.finish(number, config, model, evaluations, timed_out, phase, starts[i]))
        return trials

    def _parallel(self, items: Sequence[tuple[int, TrialConfig]], digests: Sequence[str], deadline: float,
                  best_failing: float | None) -> list[TrialEvaluated]:
        runner, executor = self.runner, self.executor
        if "recipe" not in self._shared:
            made = recipe(runner.engine, runner.state.float_model, executor.threads_per_task)
            executor.stats.dataset = "by_reference" if made.dataset is not None else "shipped"
            before = executor.stats.context_bytes
            every = np.arange(runner.engine.num_samples)
            self._shared["data"] = executor.share(subset_context(runner.engine, every, made.dataset is not None))
            executor.stats.dataset_bytes += executor.stats.context_bytes - before
            executor.stats.dataset_contexts += 1
            self._shared["recipe"] = executor.share(made)
            self._shared["trial"] = executor.share((runner.order, runner.targets))
        entries = [runner.entry(config) for _, config in items]
        plans = []
        for entry in entries:
            if not any(p is entry.plan for p in plans):
                plans.append(entry.plan)
        key = "plans:" + ",".join(str(id(p)) for p in plans)
        if key not in self._shared:
            for old in [k for k in self._shared if k.startswith("plans:")]:
                del self._shared[old]
            self._shared[key] = executor.share(tuple(plans))
        left = max(0.0, deadline - time.monotonic()) if np.isfinite(deadline) else float("inf")
        tasks = [TrialTask(next(j for j, p in enumerate(plans) if p is entry.plan), runner.groups(config),
                           best_failing, left, runner.engine.cached(digest, runner.order))
                 for (_, config), entry, digest in zip(items, entries, digests)]
        contexts = (self._shared["recipe"], self._shared["data"], self._shared[key], self._shared["trial"])
        return executor.map(trial_task, contexts, tasks, [f"trial {number}" for number, _ in items])


def batch_loop(strategy: Strategy, monitor: Monitor, batches: TrialBatches, history: History, bar: Any) -> str:
    """The loop with ``batch`` > 1: configs proposed together, each bounded by what was known when the
    batch started; finished trials of an earlier run are replayed one by one, the others run together."""
    while True:
        reason = monitor.should_stop()
        if reason:
            return reason
        size = strategy.batch
        if monitor.policy.max_trials:
            size = min(size, monitor.policy.max_trials - len(monitor.trials))
        configs = strategy.propose_batch(monitor, size)
        if not configs:
            return SPACE_DONE
        numbers = [monitor.next_number() + k for k in range(len(configs))]
        known = [history.cached(number, config) for number, config in zip(numbers, configs)]
        for number, config, trial in zip(numbers, configs, known):
            monitor.start(number, config, replayed=trial is not None)
        failing, best = monitor.best_failing, monitor.best if monitor.passing else None
        ran = iter(batches.run([(n, c) for n, c, t in zip(numbers, configs, known) if t is None],
                               monitor.deadline, None if failing is None else failing.score[0],
                               None if best is None else best.objectives, strategy.phase))
        timed_out = False
        for trial in known:
            if trial is None:
                trial = next(ran)
                history.append(trial)
            monitor.record(trial)
            strategy.tell(trial)
            bar.update(1)
            timed_out = timed_out or trial.stopped == "timeout"
        if timed_out:
            return TIMEOUT
