"""What an algorithm asks the statistics pass for: a tensor, a per-sample reducer, an aggregator.

Requests are hashable so that requests from several algorithms (or the same request
made twice) are collected once and served from the pipeline's cache.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StatisticRequest:
    """One statistic of one tensor of the float model.

    ``reducer`` turns one sample's tensor into a value (``min``, ``max``, ``abs_max``,
    ``quantile``, ``abs_quantile``, ``mean``; per channel along ``axis`` when it is
    set); ``aggregator`` folds the per-sample values of all samples (``min``, ``max``,
    ``mean``, ``median``) in memory that does not grow with the number of samples.
    """

    tensor: str
    reducer: str
    aggregator: str
    q: float | None = None
    axis: int | None = None


@dataclass(frozen=True)
class StatisticsNeeds:
    """All the requests of one algorithm, over the first ``num_samples`` calibration samples."""

    requests: tuple[StatisticRequest, ...]
    num_samples: int
