"""The one record of a tuning run: every trial, the best so far, the exit policy and the fixed log lines.

Strategies read the history from the ``Monitor`` and never keep their own copy.

Log lines (logger ``aaq.tuning.monitor``, INFO), one fixed format each so that they
can be grepped (INC's ``TuningLogger``)::

    [tuning] trial 3 start: {"sampling_size": 100, "weight": {...}, "activation": {...}, "fallback": []}
    [tuning] trial 3 from the history: {...}      (a resumed run: the earlier run's result, not evaluated)
    [tuning] trial 3 end: pass accuracy 0.9844 (top1 0.9844) objectives performance=0.412 in 0.51 s
    [tuning] end: criterion met; best trial 3 of 3 (best performance among 1 passing); 2.1 s
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from aaq.tuning.space import TrialConfig

logger = logging.getLogger(__name__)

CRITERION_MET = "criterion met"
MAX_TRIALS = "max_trials reached"
TIMEOUT = "timeout reached"
SPACE_DONE = "tuning space exhausted"
EXIT_CASES = (CRITERION_MET, MAX_TRIALS, TIMEOUT, SPACE_DONE)

TRIAL_START = "[tuning] trial {number} start: {config}"
TRIAL_REPLAYED = "[tuning] trial {number} from the history: {config}"
TRIAL_END = "[tuning] trial {number} end: {verdict} accuracy {accuracy} ({metrics}) objectives {objectives} in " \
            "{seconds:.2f} s"
TUNING_END = "[tuning] end: {exit}; best trial {best} of {trials} ({why}); {seconds:.1f} s"


@dataclass
class Trial:
    """One config evaluated: its metric values (intervals when stopped early), verdict, objectives, time.

    ``score`` is the criterion's objective (``Targets``: <= 0 means met; an interval
    when the evaluation stopped early). ``stopped`` says why an evaluation did not
    run to the end: ``"decided"`` (the verdict was certain), ``"timeout"``, or
    ``"dominated"`` (not evaluated at all: with one structural objective, such as
    ``performance``, the model's structure measured no better than the best passing
    trial's, so it could not become the result whatever its accuracy).
    """

    number: int
    config: TrialConfig
    passed: bool
    complete: bool
    values: dict[str, tuple[float, float]]
    score: tuple[float, float]
    accuracy: Optional[float] = None
    objectives: dict[str, Optional[float]] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str = ""
    phase: str = ""
    measurements: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = {k: (lo if lo == hi else [lo, hi]) for k, (lo, hi) in self.values.items()}
        return {"trial": self.number, "config": self.config.as_dict(), "phase": self.phase,
                "objectives": dict(self.objectives), "accuracy": self.accuracy, "metrics": values,
                "passed": self.passed, "complete": self.complete, "stopped": self.stopped,
                "score": [self.score[0], self.score[1]],
                "seconds": round(self.seconds, 4), "measurements": dict(self.measurements)}


@dataclass(frozen=True)
class ExitPolicy:
    """INC's ``exit_policy``: ``timeout`` seconds (0: stop at the first config that meets the
    criterion) and ``max_trials`` (0: no limit)."""

    timeout: float = 0.0
    max_trials: int = 100

    def deadline(self, started: float) -> float:
        return started + self.timeout if self.timeout > 0 else math.inf


class Monitor:
    """History and best trial; the exit policy's bookkeeping."""

    def __init__(self, policy: ExitPolicy, objective_set: Any) -> None:
        self.policy = policy
        self.objective_set = objective_set
        self.trials: list[Trial] = []
        self.started = time.monotonic()
        self.deadline = policy.deadline(self.started)
        self.exit: str = ""

    def seen(self, config: TrialConfig) -> bool:
        return any(t.config == config for t in self.trials)

    @property
    def passing(self) -> list[Trial]:
        return [t for t in self.trials if t.passed]

    @property
    def best_failing(self) -> Trial | None:
        """The failing trial closest to the criterion among those measured to the end."""
        done = [t for t in self.trials if not t.passed and t.complete]
        return min(done, key=lambda t: t.score[0]) if done else None

    @property
    def best(self) -> Trial | None:
        """The best passing trial by the objectives, else the failing trial closest to the criterion."""
        passing = self.passing
        if passing:
            return passing[self.objective_set.best([t.objectives for t in passing])]
        return self.best_failing

    def why_best(self) -> str:
        passing, best = self.passing, self.best
        if best is None:
            return "no trial finished"
        names = "+".join(self.objective_set.names)
        if passing:
            return ("the only config meeting the criterion" if len(passing) == 1
                    else f"best {names} among {len(passing)} configs meeting the criterion")
        return "no config met the criterion: the one closest to it"

    def next_number(self) -> int:
        return len(self.trials) + 1

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def should_stop(self) -> str:
        """The exit case that ends the run before the next trial, or ``""``."""
        if self.policy.timeout == 0 and self.passing:
            return CRITERION_MET
        if self.policy.max_trials and len(self.trials) >= self.policy.max_trials:
            return MAX_TRIALS
        if self.out_of_time():
            return TIMEOUT
        return ""

    def start(self, number: int, config: TrialConfig, *, replayed: bool = False) -> None:
        line = TRIAL_REPLAYED if replayed else TRIAL_START
        logger.info(line.format(number=number, config=json.dumps(config.as_dict(), sort_keys=True)))

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)
        metrics = ", ".join(f"{k} {_fmt(lo, hi)}" for k, (lo, hi) in trial.values.items())
        objectives = " ".join(f"{k}={_fmt(v, v)}" for k, v in trial.objectives.items()) or "-"
        verdict = "pass" if trial.passed else {"timeout": "stopped (timeout)",
                                               "dominated": "skipped (cannot beat the best)"}.get(trial.stopped, "fail")
        logger.info(TRIAL_END.format(number=trial.number, verdict=verdict,
                                     accuracy=_fmt(trial.accuracy, trial.accuracy), metrics=metrics,
                                     objectives=objectives, seconds=trial.seconds))

    def finish(self, exit_case: str) -> None:
        self.exit = exit_case
        best = self.best
        logger.info(TUNING_END.format(exit=exit_case, best=best.number if best else "none", trials=len(self.trials),
                                      why=self.why_best(), seconds=time.monotonic() - self.started))


def _fmt(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "?"
    return f"{lo:.4g}" if lo == hi else f"[{lo:.4g}, {hi:.4g}]"
