"""Model-based strategies: ``bayesian`` (a Gaussian process and expected improvement) and ``tpe`` (Optuna's TPE).

Both walk the quantize configs of the space (no fallback dtypes, as INC's do): aaq's
op-wise entries set only an op's dtype, so an op's quantize choices are the model-wise
ones and a config is a point of those dimensions (sampling size, weight granularity,
activation scheme, activation algorithm).

Both are pure functions of the seed and the results they are told: every
``propose`` rebuilds its model from the monitor's history (the strategy keeps no copy
of it), and draws from a generator seeded by ``random_seed`` and the number of
trials. Replaying a history therefore proposes the same configs again.

What they minimise, per trial (``loss``): a config that misses the criterion scores
its normalised excess over the allowed drop (> 0, capped at ``LOSS_CAP``); one that
meets it scores minus its objective score among the passing trials (INC's
``MultiObjective`` normalisation: 0 the worst passing, -1 the best), so every passing
config ranks above every failing one and the objective orders the passing ones.
"""
from __future__ import annotations

import contextlib
import importlib
import math
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from aaq.tuning.gp import GaussianProcess, expected_improvement
from aaq.tuning.monitor import Monitor
from aaq.tuning.space import TrialConfig
from aaq.tuning.strategies import Strategy, StrategyContext, positive_int, register_strategy

LOSS_CAP = 10.0
FIELDS = ("sampling_size", "weight_granularity", "activation_scheme", "activation_algorithm", "weight_algorithm")
EXTRA = "aaq[tuning]"

Problem = tuple[str, str]


def losses(monitor: Monitor) -> list[float]:
    """The value each trial of the history gets, in order (see the module docstring)."""
    passing = [t for t in monitor.trials if t.passed and t.objectives]
    scores = dict(zip((t.number for t in passing),
                      monitor.objective_set.scores([t.objectives for t in passing]))) if passing else {}
    out = []
    for t in monitor.trials:
        if t.passed:
            out.append(-scores.get(t.number, 0.0))
        else:
            out.append(float(min(max(t.score[0], 0.0), LOSS_CAP)))
    return out


class ModelBased(Strategy):
    """Shared by bayesian and tpe: the candidates, their dimensions, and the nearest unseen candidate."""

    quantize_only = True
    needs_exit_bound = True

    def __init__(self, context: StrategyContext, **options: Any) -> None:
        super().__init__(context, **options)
        self.candidates = list(context.space.quantize_configs())
        self.dims = [(f, sorted({getattr(c, f) for c in self.candidates}, key=_order)) for f in FIELDS]
        self.dims = [(f, values) for f, values in self.dims if len(values) > 1]

    def unseen(self, monitor: Monitor) -> list[int]:
        return [i for i, c in enumerate(self.candidates) if not monitor.seen(c)]

    def rng_for(self, monitor: Monitor) -> np.random.Generator:
        return np.random.default_rng([self.context.seed, len(monitor.trials)])

    def nearest_unseen(self, point: dict[str, Any], unseen: Sequence[int]) -> TrialConfig:
        """The unseen candidate differing from ``point`` in the fewest dimensions (the first on a tie)."""
        def distance(i: int) -> int:
            return sum(getattr(self.candidates[i], f) != point.get(f) for f, _ in self.dims)
        return self.candidates[min(unseen, key=distance)]

    def first_or_none(self, monitor: Monitor) -> tuple[Optional[TrialConfig], list[int]]:
        """The space's first config before anything else (INC's default), else None with the unseen ones."""
        unseen = self.unseen(monitor)
        if not unseen:
            return None, unseen
        if not monitor.trials:
            return self.candidates[unseen[0]], unseen
        return None, unseen


def _order(value: Any) -> Any:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


@register_strategy("bayesian")
class Bayesian(ModelBased):
    """INC's bayesian: a Gaussian process over the quantize configs; expected improvement picks the next one.

    ``n_initial`` configs (default 3: the space's first, then seeded random ones)
    before the model leads. Configs are one-hot encoded per dimension, the sampling
    size on a log scale; the GP is refitted on the whole history at every step.
    """

    options = ("n_initial",)
    N_INITIAL = 3

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[Problem]:
        return positive_int(options, "n_initial")

    def groups(self) -> np.ndarray:
        """The dimension each encoded column belongs to."""
        out = [i for i, (f, values) in enumerate(self.dims) for _ in (values[:1] if f == "sampling_size" else values)]
        return np.array(out or [0])

    def encode(self, config: TrialConfig) -> np.ndarray:
        out: list[float] = []
        for f, values in self.dims:
            value = getattr(config, f)
            if f == "sampling_size":
                lo, hi = math.log(values[0]), math.log(values[-1])
                out.append((math.log(value) - lo) / (hi - lo))
            else:
                out += [1.0 if value == v else 0.0 for v in values]
        return np.array(out or [0.0])

    def propose(self, monitor: Monitor) -> Optional[TrialConfig]:
        first, unseen = self.first_or_none(monitor)
        if first is not None or not unseen:
            return first
        rng = self.rng_for(monitor)
        if len(monitor.trials) < int(self.options.get("n_initial") or self.N_INITIAL):
            return self.candidates[unseen[int(rng.integers(len(unseen)))]]
        x = np.stack([self.encode(t.config) for t in monitor.trials])
        y = np.array(losses(monitor))
        gp = GaussianProcess().fit(x, y, self.groups())
        mean, std = gp.predict(np.stack([self.encode(self.candidates[i]) for i in unseen]))
        ei = expected_improvement(mean, std, float(y.min()))
        return self.candidates[unseen[int(np.argmax(ei))]]


def import_optuna():
    """Optuna, or a clear ImportError naming the extra."""
    try:
        return importlib.import_module("optuna")
    except ImportError as exc:
        raise ImportError(f"the 'tpe' strategy uses Optuna's TPESampler: pip install '{EXTRA}' ({exc})") from None


def optuna_problems() -> list[Problem]:
    try:
        import_optuna()
    except ImportError:
        return [("strategy.name", f"strategy 'tpe' needs Optuna, which is not installed: pip install '{EXTRA}' "
                                  f"(or pip install optuna)")]
    return []


@contextlib.contextmanager
def _quiet(optuna):
    """Optuna logs every trial at INFO through its own handler: silence it for our short-lived studies."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


@register_strategy("tpe")
class TPE(ModelBased):
    """Tree-structured Parzen estimators: Optuna's ``TPESampler`` through ask/tell (the ``tuning`` extra).

    Each ``propose`` makes an in-memory study of the history (every trial told with
    its ``loss``), asks one point with a sampler seeded by ``random_seed`` and the
    trial count, and takes that config, or the nearest one not tried yet when TPE
    points at a config already evaluated. ``n_startup_trials`` (default 5) random
    points come first, after the space's first config.
    """

    options = ("n_startup_trials",)
    N_STARTUP = 5

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[Problem]:
        return optuna_problems() + positive_int(options, "n_startup_trials")

    def __init__(self, context: StrategyContext, **options: Any) -> None:
        super().__init__(context, **options)
        self.optuna = import_optuna()

    def propose(self, monitor: Monitor) -> Optional[TrialConfig]:
        first, unseen = self.first_or_none(monitor)
        if first is not None or not unseen:
            return first
        if not self.dims:
            return self.candidates[unseen[0]]
        optuna = self.optuna
        dists = {f: optuna.distributions.CategoricalDistribution(values) for f, values in self.dims}
        seed = int(self.rng_for(monitor).integers(2 ** 31))
        with _quiet(optuna):
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(
                self.options.get("n_startup_trials") or self.N_STARTUP))
            study = optuna.create_study(direction="minimize", sampler=sampler)
            study.add_trials([optuna.trial.create_trial(params={f: getattr(t.config, f) for f, _ in self.dims},
                                                        distributions=dists, value=value)
                              for t, value in zip(monitor.trials, losses(monitor))])
            asked = study.ask(dists)
        return self.nearest_unseen(asked.params, unseen)
