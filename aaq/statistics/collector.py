"""Collect activation statistics in one streaming pass over the calibration samples.

``fill_statistics`` is the one way statistics enter a run: algorithms declare
``StatisticsNeeds`` and it collects, into the run's ``StatisticsCache``, only what the
cache does not hold, one pass per model and sample count.

Every tensor the requests name is read out of one inference per batch
(``engine.run(..., outputs=[...])``); each distinct reduction is computed once per
batch and fed to the aggregators of every request that uses it. Nothing per
sample is kept, so memory does not grow with ``num_samples`` (see
``aggregators`` for the median's bound).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import onnx

from aaq.errors import DataError
from aaq.statistics.aggregators import AGGREGATORS, make_aggregator
from aaq.statistics.reducers import HISTOGRAM_REDUCERS, REDUCERS, SUMMED_REDUCERS, check_histogram, reduce_batch
from aaq.statistics.requests import StatisticRequest, StatisticsCache, StatisticsNeeds



class CalibrationRunner(Protocol):
    """What the statistics pass needs of an engine (``aaq.engine.Engine`` is one)."""

    progress: bool

    def calibration_indices(self, num_samples: int) -> np.ndarray:
        """The calibration samples a pass over ``num_samples`` reads."""

    def run(self, model: onnx.ModelProto, indices: Sequence[int] | np.ndarray, *, outputs: Sequence[str],
            calibration: bool, progress_desc: str | None = None) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """Batches of ``(indices, {tensor: array})`` over the calibration dataset."""

logger = logging.getLogger(__name__)


def collect_statistics(engine: CalibrationRunner, model: onnx.ModelProto, requests: Iterable[StatisticRequest],
                       num_samples: int, progress: bool = True) -> dict[StatisticRequest, np.ndarray]:
    """The value of every request over the first ``num_samples`` calibration samples.

    Values are float64 arrays: a scalar for a per-tensor statistic, one value per
    channel when the request has an ``axis``. A tensor the model does not have is
    ``engine.run``'s ``ModelError``, naming it and the nearest tensor names, raised
    before any inference. ``progress=False`` turns the engine's progress bar off for
    this pass.
    """
    requests = list(dict.fromkeys(requests))
    if not requests:
        return {}
    _check_requests(requests)
    tensors = sorted({r.tensor for r in requests})
    by_reduction: dict[tuple, list[StatisticRequest]] = defaultdict(list)
    for request in requests:
        by_reduction[request.reduction].append(request)
    aggregators = {request: make_aggregator(request.aggregator) for request in requests}

    indices = engine.calibration_indices(num_samples)
    seen = 0
    shown = getattr(engine, "progress", None)
    if not progress and shown:  # the engine draws the bar; silence it for this pass only
        engine.progress = False
    try:
        for batch_indices, outputs in engine.run(model, indices, outputs=tensors, calibration=True,
                                                 progress_desc="statistics"):
            count = len(batch_indices)
            seen += count
            for users in by_reduction.values():
                values = _reduce(outputs, users[0], count, batch_indices)
                for request in users:
                    aggregators[request].update(values)
            outputs = values = None  # the exported tensors are large: free them before the next batch
    finally:
        if shown is not None:
            engine.progress = shown
    if seen == 0:
        raise DataError("no calibration samples to collect statistics on")
    logger.debug("collected %d statistics of %d tensors on %d samples", len(requests), len(tensors), seen)
    return {request: aggregators[request].result() for request in requests}


def fill_statistics(cache: StatisticsCache, engine: CalibrationRunner, needs: Iterable[StatisticsNeeds], *,
                    progress: bool = True, why: str = "") -> None:
    """Collect what ``cache`` lacks of ``needs``: one pass per (model, sample count), all requests at once."""
    passes: dict[tuple[str, int], tuple[StatisticsNeeds, dict[StatisticRequest, None]]] = {}
    for need in needs:
        missing = cache.missing(need)
        if missing:
            _, wanted = passes.setdefault((need.model_digest, need.num_samples), (need, {}))
            wanted.update(dict.fromkeys(missing))
    for need, wanted in passes.values():
        used = len(engine.calibration_indices(need.num_samples))
        logger.info("collecting %d statistics on %d calibration samples%s", len(wanted), used,
                    f" ({why})" if why else "")
        collected = collect_statistics(engine, need.model, list(wanted), need.num_samples, progress=progress)
        cache.put(need, collected)


def _reduce(outputs: dict[str, Any], request: StatisticRequest, count: int, batch_indices: Any) -> np.ndarray:
    try:
        return reduce_batch(np.asarray(outputs[request.tensor]), count, request.reducer, q=request.q,
                            axis=request.axis, bins=request.bins, bounds=request.bounds, patch=request.patch)
    except ValueError as exc:
        first = int(np.asarray(batch_indices).ravel()[0]) if count else None
        raise DataError(f"tensor {request.tensor!r}: cannot compute {request.reducer}: {exc}", first) from None


def _check_requests(requests: list[StatisticRequest]) -> None:
    """A request with an unknown reducer or aggregator is a programming error: fail before inference."""
    for request in requests:
        if request.reducer not in REDUCERS:
            raise ValueError(f"{request}: unknown reducer; known: {', '.join(REDUCERS)}")
        if request.aggregator not in AGGREGATORS:
            raise ValueError(f"{request}: unknown aggregator; known: {', '.join(AGGREGATORS)}")
        if request.reducer in ("quantile", "abs_quantile") and (request.q is None or not 0 <= request.q <= 1):
            raise ValueError(f"{request}: a quantile reducer needs q in [0, 1]")
        if (request.reducer in SUMMED_REDUCERS) != (request.aggregator == "sum"):
            raise ValueError(f"{request}: histograms and grams, and only they, are folded with the sum aggregator")
        if request.reducer in HISTOGRAM_REDUCERS:
            try:
                check_histogram(request.bins, request.bounds, request.axis)
            except ValueError as exc:
                raise ValueError(f"{request}: {exc}") from None

