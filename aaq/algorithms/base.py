"""The interface every algorithm implements, built-in or plugin, and its registry.

Call order, for the pipeline and for an algorithm that runs another one:

1. ``Algorithm(params)`` only stores the typed params (built from the validated spec).
2. ``statistics_needs(state)`` declares the statistics ``run`` will read; the
   pipeline collects what ``state.statistics`` does not hold yet, in one pass.
3. ``run(state, engine)`` returns the next state; it never touches
   ``state.float_model``.
"""
from __future__ import annotations

import abc
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from aaq.errors import PluginError
from aaq.params import build_params, check_params_class
from aaq.registry import Registry
from aaq.state import AlgorithmRecord, PipelineState, model_digest

if TYPE_CHECKING:
    from aaq.engine.engine import Engine
    from aaq.statistics.requests import StatisticsNeeds

logger = logging.getLogger(__name__)


class Algorithm(abc.ABC):
    """A step of the pipeline, named in a spec by its registered name.

    Subclasses set ``Params`` (a dataclass whose fields and defaults equal the
    properties and defaults of ``schema``) and ``schema`` (a JSON Schema object
    with ``additionalProperties: false``).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type]
    schema: ClassVar[dict[str, Any]]

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

        Returns ``(path inside params, message)`` pairs; runs before any model is loaded.
        """
        return []

    def statistics_needs(self, state: PipelineState) -> "StatisticsNeeds | None":
        """The statistics ``run`` reads from ``state.statistics``; ``None`` when it needs none."""
        return None

    @abc.abstractmethod
    def run(self, state: PipelineState, engine: "Engine") -> PipelineState:
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


def run_algorithm(algorithm: Algorithm, state: PipelineState, engine: "Engine", *,
                  progress: bool = True) -> PipelineState:
    """Collect what ``algorithm`` declared it needs, run it and record what it did.

    Used by the pipeline and by algorithms that run another one first (as
    AccuracyAwareQuantization runs its ``base_algorithm``).
    """
    from aaq.statistics.collector import collect_statistics

    float_digest = model_digest(state.float_model)
    started = time.perf_counter()
    needs = algorithm.statistics_needs(state)
    if needs is not None:
        missing = tuple(r for r in needs.requests if (r, needs.num_samples) not in state.statistics)
        if missing:
            logger.info("%s: collecting %d statistics on %d calibration samples",
                        algorithm.name, len(missing), needs.num_samples)
            collected = collect_statistics(engine, state.float_model, missing, needs.num_samples,
                                           progress=progress)
            state.statistics.update({(r, needs.num_samples): v for r, v in collected.items()})
    logger.info("%s: running", algorithm.name)
    new_state = algorithm.run(state, engine)
    if model_digest(new_state.float_model) != float_digest:
        raise PluginError("run() modified state.float_model; an algorithm must work on a copy",
                          algorithm.name)
    seconds = time.perf_counter() - started
    new_state.records.append(
        AlgorithmRecord(algorithm.name, _params_dict(algorithm.params), seconds, dict(algorithm.summary)))
    logger.info("%s: done in %.1f s", algorithm.name, seconds)
    return new_state


def _params_dict(params: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(params):
        return dataclasses.asdict(params)
    return dict(params) if isinstance(params, dict) else {"value": repr(params)}
