"""The interface every algorithm implements, built-in or plugin, and its registry.

Call order, for the pipeline and for an algorithm that runs another one:

1. ``Algorithm(params)`` only stores the typed params (built from the validated spec;
   ``check_spec`` has already refused what the schema cannot see).
2. ``statistics_needs(state)`` declares the statistics ``run`` will read; the one
   collector (``aaq.statistics.collector.fill_statistics``) adds what
   ``state.statistics`` does not hold yet, one pass per model.
3. ``run(state, engine)`` returns the next state; it never touches
   ``state.float_model``.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import time
from typing import Any, ClassVar, Sequence

from aaq.engine.protocol import EngineLike
from aaq.errors import AaqError, Interrupted, PluginError
from aaq.params import build_params, check_params_class
from aaq.registry import Registry
from aaq.state import AlgorithmRecord, PipelineState, model_digest
from aaq.statistics.collector import fill_statistics
from aaq.statistics.requests import StatisticsNeeds

logger = logging.getLogger(__name__)


class Algorithm(abc.ABC):
    """A step of the pipeline, named in a spec by its registered name.

    Subclasses set ``Params`` (a dataclass whose fields and defaults equal the
    properties and defaults of ``schema``) and ``schema`` (a JSON Schema object
    with ``additionalProperties: false``). ``makes_plan`` says that ``run`` leaves a
    quantization plan in the state, which AccuracyAwareQuantization needs of its base.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type]
    schema: ClassVar[dict[str, Any]]
    makes_plan: ClassVar[bool] = False

    def __init__(self, params: Any) -> None:
        self.params = params
        self.summary: dict[str, Any] = {}
        """What ``run`` did, in JSON-able values; it goes into report.json."""

    @classmethod
    def from_spec(cls, values: dict[str, Any]) -> "Algorithm":
        """An instance for validated, default-filled params."""
        return cls(build_params(cls.Params, values))

    @classmethod
    def check_spec(cls, params: dict[str, Any], spec: Any) -> list[tuple[str, str]]:
        """Problems the schema cannot see (names that must exist elsewhere in ``spec``).

        Returns ``(path inside params, message)`` pairs; runs before any model is run,
        for ``aaq validate`` and ``aaq run`` alike.
        """
        return []

    uses_holdout: ClassVar[bool] = False
    """Whether ``run`` reads ``engine.holdout_indices`` (``engine.dataset.holdout`` needs such an algorithm)."""

    def check_engine(self, engine: EngineLike, prefix: str) -> list[tuple[str, str]]:
        """Problems seen only once the data and metrics are loaded, before any inference.

        Returns ``(full JSON path, message)`` pairs; ``prefix`` is the path of these params.
        """
        return []

    def statistics_needs(self, state: PipelineState) -> Sequence[StatisticsNeeds]:
        """The statistics ``run`` reads from ``state.statistics``."""
        return ()

    @abc.abstractmethod
    def run(self, state: PipelineState, engine: EngineLike) -> PipelineState:
        """Do the work and return the next state."""


def check_algorithm_class(name: str, cls: object) -> None:
    """Refuse, at registration, an algorithm that breaks the interface."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise PluginError("an algorithm must be a subclass of aaq.Algorithm", name)
    for attr in ("Params", "schema"):
        if not hasattr(cls, attr):
            raise PluginError(f"an algorithm class must define {attr!r}", name)
    check_params_class(name, cls.Params, cls.schema)
    if not cls.name:
        cls.name = name


algorithms: Registry[type[Algorithm]] = Registry(
    "algorithm", "aaq.algorithms", builtins="aaq.algorithms", check=check_algorithm_class)


def register_algorithm(name: str):
    """Class decorator: make the algorithm usable from a spec as ``name``."""
    return algorithms.decorator(name)


def run_algorithm(algorithm: Algorithm, state: PipelineState, engine: EngineLike, *,
                  progress: bool = True) -> PipelineState:
    """Collect what ``algorithm`` declared it needs, run it and record what it did.

    Used by the pipeline and by algorithms that run another one first (as
    AccuracyAwareQuantization runs its ``base_algorithm``).
    """
    float_digest = model_digest(state.float_model)
    started = time.perf_counter()
    fill_statistics(state.statistics, engine, algorithm.statistics_needs(state), progress=progress,
                    why=algorithm.name)
    logger.info("%s: running", algorithm.name)
    origin = algorithms.source(algorithm.name) if algorithm.name in algorithms else None
    try:
        new_state = algorithm.run(state, engine)
    except Interrupted as exc:  # the best so far, when the algorithm left one, carries its record
        if isinstance(exc.state, PipelineState):
            exc.state.records.append(AlgorithmRecord(algorithm.name, _params_dict(algorithm.params),
                                                     time.perf_counter() - started, dict(algorithm.summary)))
        raise
    except (AaqError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if origin == "aaq":
            raise
        raise PluginError(f"run() raised {type(exc).__name__}: {exc}", algorithm.name, origin) from exc
    if not isinstance(new_state, PipelineState):
        raise PluginError(f"run() returned {type(new_state).__name__}, not the next PipelineState",
                          algorithm.name, origin)
    if model_digest(new_state.float_model) != float_digest:
        raise PluginError("run() modified state.float_model; an algorithm must work on a copy",
                          algorithm.name, origin)
    seconds = time.perf_counter() - started
    new_state.records.append(
        AlgorithmRecord(algorithm.name, _params_dict(algorithm.params), seconds, dict(algorithm.summary)))
    logger.info("%s: done in %.1f s", algorithm.name, seconds)
    return new_state


def _params_dict(params: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(params):
        return dataclasses.asdict(params)
    return dict(params) if isinstance(params, dict) else {"value": repr(params)}
