"""Aggregators: fold per-sample values across samples in memory that does not grow with them.

``min``, ``max``, ``mean`` and ``sum`` are exact online folds (``sum`` adds per-sample
histograms into one). ``median`` is a remedian
(Rousseeuw & Bassett, 1990): values fill a buffer of ``base`` rows; a full buffer
is replaced by its median, which moves one level up, where it counts ``base``
times. The result is the weighted median of what the levels hold. It is exact for
up to ``base`` samples (511 by default, more than the default ``stat_subset_size``
of 300) and a consistent approximation beyond, in at most
``base * ceil(log_base(samples))`` rows.
"""
from __future__ import annotations

import abc

import numpy as np

AGGREGATORS = ("min", "max", "mean", "median", "sum")
"""The aggregator names a ``StatisticRequest`` may use."""


class Aggregator(abc.ABC):
    """Call ``update`` with each batch of per-sample values (samples on axis 0), then ``result``."""

    count: int = 0

    @abc.abstractmethod
    def update(self, values: np.ndarray) -> None:
        """Fold ``values`` of shape ``(samples, ...)`` into the running state."""

    @abc.abstractmethod
    def result(self) -> np.ndarray:
        """The aggregate over every sample seen so far."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes of array state held: what must not grow with the number of samples."""


class _Fold(Aggregator):
    """An associative fold (min or max) kept as one row."""

    _op = staticmethod(np.minimum)

    def __init__(self) -> None:
        self._value: np.ndarray | None = None
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        folded = self._op.reduce(np.asarray(values, dtype=np.float64), axis=0)
        self._value = folded if self._value is None else self._op(self._value, folded)
        self.count += len(values)

    def result(self) -> np.ndarray:
        if self._value is None:
            raise ValueError("no samples were aggregated")
        return self._value

    @property
    def nbytes(self) -> int:
        return 0 if self._value is None else int(self._value.nbytes)


class MinAggregator(_Fold):
    _op = staticmethod(np.minimum)


class MaxAggregator(_Fold):
    _op = staticmethod(np.maximum)


class SumAggregator(Aggregator):
    """A running sum over samples (float64; int64 for integer values such as histogram counts, exact)."""

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        dtype = np.int64 if np.issubdtype(values.dtype, np.integer) else np.float64
        total = values.sum(axis=0, dtype=dtype)
        self._sum = total if self._sum is None else self._sum + total
        self.count += len(values)

    def result(self) -> np.ndarray:
        if self._sum is None:
            raise ValueError("no samples were aggregated")
        return self._sum

    @property
    def nbytes(self) -> int:
        return 0 if self._sum is None else int(self._sum.nbytes)


class MeanAggregator(SumAggregator):
    """A running sum and count in float64."""

    def update(self, values: np.ndarray) -> None:
        super().update(np.asarray(values, dtype=np.float64))

    def result(self) -> np.ndarray:
        return super().result() / self.count


class MedianAggregator(Aggregator):
    """A remedian with ``base`` rows per level (see the module docstring for the approximation)."""

    def __init__(self, base: int = 511) -> None:
        if base < 2:
            raise ValueError(f"the remedian base must be >= 2, got {base}")
        self.base = base
        self._levels: list[list[np.ndarray]] = []
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        for row in np.asarray(values, dtype=np.float64):
            self._push(row, 0)
            self.count += 1

    def _push(self, row: np.ndarray, level: int) -> None:
        while True:
            if len(self._levels) == level:
                self._levels.append([])
            buffer = self._levels[level]
            buffer.append(row)
            if len(buffer) < self.base:
                return
            row = np.median(np.stack(buffer), axis=0)
            buffer.clear()
            level += 1

    @property
    def nbytes(self) -> int:
        return sum(int(row.nbytes) for rows in self._levels for row in rows)

    def result(self) -> np.ndarray:
        held = [(row, self.base ** level) for level, rows in enumerate(self._levels) for row in rows]
        if not held:
            raise ValueError("no samples were aggregated")
        rows = np.stack([row for row, _ in held])
        weights = np.array([w for _, w in held], dtype=np.float64)
        if np.all(weights == weights[0]):
            return np.median(rows, axis=0)
        return _weighted_median(rows, weights)


def _weighted_median(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per element, the smallest value whose cumulative weight reaches half the total."""
    order = np.argsort(rows, axis=0)
    sorted_rows = np.take_along_axis(rows, order, axis=0)
    cumulative = np.cumsum(weights[order], axis=0)
    first = np.argmax(cumulative >= cumulative[-1:] / 2.0, axis=0)
    return np.take_along_axis(sorted_rows, first[None], axis=0)[0]


def make_aggregator(name: str) -> Aggregator:
    """A fresh aggregator for ``name`` (one of ``AGGREGATORS``)."""
    kinds = {"min": MinAggregator, "max": MaxAggregator, "mean": MeanAggregator, "median": MedianAggregator,
             "sum": SumAggregator}
    try:
        return kinds[name]()
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(AGGREGATORS)}") from None
