"""What an algorithm asks the statistics pass for: a tensor of a model, a per-sample reducer, an aggregator.

Requests are hashable so that requests from several algorithms (or the same request
made twice) are collected once and served from the pipeline's cache. A histogram
request carries its fixed bins and range (``bins``, ``bounds``), usually taken from a
min/max statistic collected in an earlier pass: the range is part of what is asked.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class StatisticRequest:
    """One statistic of one tensor.

    ``reducer`` turns one sample's tensor into a value (``min``, ``max``, ``abs_max``,
    ``quantile``, ``abs_quantile``, ``mean``; per channel along ``axis`` when it is
    set) or into a histogram of ``bins`` equal bins over ``bounds`` (``histogram`` of
    the values, ``abs_histogram`` of their magnitudes; values outside ``bounds`` count
    in the edge bins); ``aggregator`` folds the per-sample values of all samples
    (``min``, ``max``, ``mean``, ``median``; ``sum`` adds histograms) in memory that
    does not grow with the number of samples.
    """

    tensor: str
    reducer: str
    aggregator: str
    q: float | None = None
    axis: int | None = None
    bins: int | None = None
    bounds: tuple[float, float] | None = None
    patch: tuple[int, ...] | None = None
    """A Conv's patch geometry for the ``gram`` reducer (``statistics.gram``)."""

    @property
    def reduction(self) -> tuple:
        """What the per-sample reducer computes: requests equal in it share one reduction per batch."""
        return (self.tensor, self.reducer, self.q, self.axis, self.bins, self.bounds, self.patch)


@dataclass(frozen=True, eq=False)
class StatisticsNeeds:
    """Requests on the tensors of ``model``, over its first ``num_samples`` calibration samples.

    ``model_digest`` names the model in the cache: the same tensor name means the
    same values only within one model (a prepared model, a bias-correction twin).
    """

    model: onnx.ModelProto
    model_digest: str
    requests: tuple[StatisticRequest, ...]
    num_samples: int


class StatisticsCache:
    """Every statistic collected in a run, by (model digest, request, sample count): none is collected twice."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, StatisticRequest, int], object] = {}

    def __len__(self) -> int:
        return len(self._values)

    def missing(self, needs: StatisticsNeeds) -> list[StatisticRequest]:
        return [r for r in needs.requests if (needs.model_digest, r, needs.num_samples) not in self._values]

    def put(self, needs: StatisticsNeeds, values: dict[StatisticRequest, object]) -> None:
        self._values.update({(needs.model_digest, r, needs.num_samples): v for r, v in values.items()})

    def values(self, needs: StatisticsNeeds) -> dict[StatisticRequest, object]:
        """The value of every request of ``needs``; all must have been collected."""
        return {r: self._values[(needs.model_digest, r, needs.num_samples)] for r in needs.requests}
