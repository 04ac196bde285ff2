"""Tuning strategies: small ask/tell objects that propose the next config from the monitor's history.

``propose(monitor) -> TrialConfig | None`` (None: nothing left to try) and
``tell(trial)`` (the result of the config just proposed). Each strategy draws from
its own ``numpy.random.Generator`` seeded by ``random_seed``. The algorithm owns
the loop, the exit policy and the evaluation (``aaq.algorithms.tuning``); what a
strategy needs of the model it gets from its ``StrategyContext``: the space, the
ops it may fall back (``units``: groups of layers reverted together) and a
``rank`` that orders them.

Built-ins (INC's names): ``basic`` (model-wise configs; then, if none meets the
criterion, the whole-model alternatives AccuracyAwareQuantization's
``tune_hyperparams`` tries, stage by stage on the best config so far; then the
fallback units ranked once on the best of them on the ranking subset, and fallen
back one more at a time in that order), ``mse`` (the same with
units ranked by the MSE between each layer's float and quantized outputs on
calibration data), ``exhaustive`` (every quantized config in order) and ``random``
(the same configs in a seeded random order, each at most once); ``bayesian`` and
``tpe`` are in ``model_based``, the ``sigopt`` plugin point in ``sigopt``. A custom strategy
subclasses ``Strategy`` and registers with ``@register_strategy("name")`` or the
entry-point group ``aaq.strategies``.
"""
from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generator, Optional

import numpy as np

from aaq.registry import Registry, subclass_check
from aaq.tuning.monitor import Monitor, Trial
from aaq.tuning.space import TrialConfig, TuningSpace

Unit = tuple[str, ...]
"""Layers that fall back together (one group of the plan)."""


@dataclass
class StrategyContext:
    """What a strategy may use: the space, the seed, the fallback units of a config and their ranking.

    ``units(config)``: the units that config may still fall back (allowed by the
    op-wise rules, not in float already). ``rank(config, method)``: those units,
    the one whose fallback helps most first; ``method`` is ``"metric"`` (scores on
    the ranking subset, as AccuracyAwareQuantization ranks) or ``"mse"``.
    """

    space: TuningSpace
    seed: int
    units: Callable[[TrialConfig], list[Unit]]
    rank: Callable[[TrialConfig, str], list[Unit]]
    alternatives: Optional[Callable[[TrialConfig, int], Optional[list[TrialConfig]]]] = None
    """``alternatives(config, k)``: stage ``k`` of the whole-model alternatives laid over ``config``
    (``accuracy.alternatives.tuning_stages``, their statistics collected in one pass), None past the last
    stage; None: the strategy tries none."""


class Strategy(abc.ABC):
    """Base of every strategy; ``options`` names the keys of the spec's ``strategy`` object it accepts."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    quantize_only: ClassVar[bool] = False
    """Walks only the quantized model-wise configs: the run's length is the space's size."""
    needs_exit_bound: ClassVar[bool] = False
    """May never meet the criterion on its own: ``timeout`` 0 with ``max_trials`` 0 is refused."""
    secret_options: ClassVar[tuple[str, ...]] = ()
    """Options never written to report.json or the log (credentials)."""

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[tuple[str, str]]:
        """Faults of the spec's ``strategy`` options (paths from the Tuning params), before any inference."""
        return []

    def __init__(self, context: StrategyContext, **options: Any) -> None:
        self.context = context
        self.rng = np.random.default_rng(context.seed)
        self.options = options

    @abc.abstractmethod
    def propose(self, monitor: Monitor) -> Optional[TrialConfig]:
        """The next config to try, or None when the strategy has nothing left."""

    def tell(self, trial: Trial) -> None:
        """The result of the last config proposed."""

    @property
    def phase(self) -> str:
        """What the strategy is doing now, for the history."""
        return self.name

    @property
    def batch(self) -> int:
        """Configs proposed and evaluated together (option ``batch`` of a strategy that takes it; else 1)."""
        return int(self.options.get("batch") or 1)

    def propose_batch(self, monitor: Monitor, size: int) -> list[TrialConfig]:
        """The next ``size`` configs at most, proposed before any of them is evaluated ([]: nothing left).

        A strategy that takes ``batch`` overrides it; the others propose one at a time.
        """
        config = self.propose(monitor)
        return [] if config is None else [config]


def positive_int(options: dict[str, Any], key: str) -> list[tuple[str, str]]:
    """The fault of option ``key`` when it is set to anything but an integer >= 1."""
    value = options.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return []
    return [(f"strategy.{key}", f"must be an integer >= 1, got {value!r}")]


strategies: Registry[type[Strategy]] = Registry("strategy", "aaq.strategies", builtins="aaq.tuning.catalog",
                                                check=subclass_check(Strategy, "a strategy"))


def register_strategy(name: str):
    """Class decorator: make the strategy usable from a spec as ``{"strategy": {"name": name}}``."""
    return strategies.decorator(name)


@register_strategy("exhaustive")
class Exhaustive(Strategy):
    """Every quantized config of the space, in order (fallback dtypes excluded, as INC does).

    ``batch`` (default 1): configs proposed together, evaluated side by side on the engine's
    executor, every one with the early-stop bound known when the batch starts; the local
    executor runs the same batches one trial after the other, so the trials do not depend on
    the executor.
    """

    quantize_only = True
    options = ("batch",)

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[tuple[str, str]]:
        return positive_int(options, "batch")

    def __init__(self, context: StrategyContext, **options: Any) -> None:
        super().__init__(context, **options)
        self.queue = self.order(context.space.quantize_configs())

    def order(self, configs: list[TrialConfig]) -> list[TrialConfig]:
        return configs

    def propose(self, monitor: Monitor) -> Optional[TrialConfig]:
        while self.queue:
            config = self.queue.pop(0)
            if not monitor.seen(config):
                return config
        return None

    def propose_batch(self, monitor: Monitor, size: int) -> list[TrialConfig]:
        out: list[TrialConfig] = []
        while len(out) < size and (config := self.propose(monitor)) is not None:
            out.append(config)
        return out


@register_strategy("random")
class Random(Exhaustive):
    """The quantized configs drawn at random (seeded), each at most once: the run ends when all are drawn."""

    def order(self, configs: list[TrialConfig]) -> list[TrialConfig]:
        return [configs[i] for i in self.rng.permutation(len(configs))]


@register_strategy("basic")
class Basic(Strategy):
    """INC's basic: model-wise configs, whole-model alternatives, then ranked per-op fallback on the best config.

    The alternatives phase (when no model-wise config meets the criterion) tries the
    stages AccuracyAwareQuantization's ``tune_hyperparams`` tries (other range
    estimators, CLE / SmoothQuant toggled, the weight-range search, bias
    correction), each stage laid over the best config so far: what a stage's best
    trial improved is kept by the next stage, as in AAQ. Those trials stop early
    when they cannot beat the best failing trial, and they leave every op quantized.
    Ranking costs subset evaluations, not trials: one ranking of every unit on the
    ranking subset replaces INC's one full evaluation per op. Each fallback trial
    only asks "is the criterion met?", so the failing ones stop after a few batches.
    The later phases run only while no config meets the criterion (falling more ops
    back only makes a passing model slower and larger).
    """

    ranking = "metric"
    options = ("alternatives",)
    ADOPT_SHARE = 0.25
    """An alternative becomes the base of the later stages and of the fallback only when it removes this share
    of the base's distance to the criterion: on the tests' sensitive MLP a quantile estimator one sample better
    than min/max (0.543 vs 0.539 accuracy) made the one-layer fallback that meets the criterion miss it."""
    _base: Optional[Trial] = None

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[tuple[str, str]]:
        if "alternatives" in options and not isinstance(options["alternatives"], bool):
            return [("strategy.alternatives", f"must be true or false, got {options['alternatives']!r}")]
        return []

    def __init__(self, context: StrategyContext, **options: Any) -> None:
        super().__init__(context, **options)
        self.model_wise = list(context.space.quantize_configs())
        self.try_alternatives = bool(options.get("alternatives", True)) and context.alternatives is not None
        self._fallback: Generator[TrialConfig, bool, None] | None = None
        self._alternatives: Generator[TrialConfig, None, None] | None = None
        self._phase = "model_wise"
        self.ranked: list[Unit] = []

    @property
    def phase(self) -> str:
        return self._phase

    def propose(self, monitor: Monitor) -> Optional[TrialConfig]:
        while self.model_wise:
            config = self.model_wise.pop(0)
            if not monitor.seen(config):
                return config
        if monitor.passing:
            return None
        if self.try_alternatives and self._phase != "fallback":
            if self._alternatives is None:
                self._phase = "alternatives"
                self._alternatives = self._alternative_configs(monitor)
            config = next(self._alternatives, None)
            if config is not None:
                return config
        if self._fallback is None:
            base = self._base if self._phase == "alternatives" and self._base is not None else monitor.best_failing
            if base is None:
                return None
            self._phase = "fallback"
            self.ranked = self.context.rank(base.config, self.ranking)
            self._fallback = self._incremental(base.config)
            return next(self._fallback, None)
        return self._pending

    def tell(self, trial: Trial) -> None:
        if self._fallback is None:
            return
        try:
            self._pending = self._fallback.send(trial.passed)
        except StopIteration:
            self._pending = None

    def _alternative_configs(self, monitor: Monitor) -> Generator[TrialConfig, None, None]:
        """Each stage's configs laid over the base so far: the best failing config, replaced by a stage's best
        trial only when that removes at least ``ADOPT_SHARE`` of the base's distance to the criterion."""
        assert self.context.alternatives is not None
        self._base = monitor.best_failing
        for k in itertools.count():
            if self._base is None:
                return
            stage = self.context.alternatives(self._base.config, k)
            if stage is None:
                return
            for config in stage:
                if not monitor.seen(config):
                    yield config
            done = [t for t in monitor.trials if t.config in stage and t.complete and not t.passed]
            best = min(done, key=lambda t: t.score[0], default=None)
            if best is not None and best.score[0] <= self._base.score[0] * (1.0 - self.ADOPT_SHARE):
                self._base = best

    def _incremental(self, base: TrialConfig) -> Generator[TrialConfig, bool, None]:
        chosen: list[str] = []
        for unit in self.ranked:
            chosen.extend(unit)
            passed = yield base.with_fallback(chosen)
            if passed:
                return

    _pending: Optional[TrialConfig] = None


@register_strategy("mse")
class MSE(Basic):
    """As basic, with units ranked by the MSE between each layer's float and quantized outputs."""

    ranking = "mse"
