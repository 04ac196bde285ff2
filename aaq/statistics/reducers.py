"""Per-sample reducers: one batch of a tensor in, one value (or one value per channel) per sample out.

Reducing per sample, not per batch, makes every statistic independent of the batch
size the engine happens to use; the aggregators then fold the per-sample values.
A histogram reducer gives one row of bin counts per sample (``sum`` adds them up):
the sum is the histogram of every value of every sample, whatever the batching.
"""
from __future__ import annotations

import logging

import numpy as np

from aaq.statistics.gram import gram_batch

logger = logging.getLogger(__name__)

REDUCERS = ("min", "max", "abs_max", "quantile", "abs_quantile", "mean", "histogram", "abs_histogram", "gram")
"""The reducer names a ``StatisticRequest`` may use."""

HISTOGRAM_REDUCERS = ("histogram", "abs_histogram")
SUMMED_REDUCERS = HISTOGRAM_REDUCERS + ("gram",)
"""Reducers whose values are added up over samples (the ``sum`` aggregator), and only they."""


def check_histogram(bins: int | None, bounds: tuple[float, float] | None, axis: int | None) -> None:
    """A histogram needs ``bins >= 1`` and a finite ``bounds = (low, high)`` with ``low < high``, per tensor."""
    if bins is None or int(bins) != bins or bins < 1:
        raise ValueError(f"a histogram needs bins >= 1, got {bins!r}")
    if bounds is None or len(bounds) != 2 or not np.all(np.isfinite(bounds)) or not bounds[0] < bounds[1]:
        raise ValueError(f"a histogram needs finite bounds (low, high) with low < high, got {bounds!r}")
    if axis is not None:
        raise ValueError("histograms are per tensor: axis must be None")


def reduce_batch(batch: np.ndarray, num_samples: int, reducer: str, *, q: float | None = None,
                 axis: int | None = None, bins: int | None = None,
                 bounds: tuple[float, float] | None = None, patch: tuple[int, ...] | None = None) -> np.ndarray:
    """The reducer applied to each sample of ``batch``: ``(samples,)``, ``(samples, channels)`` or ``(samples, bins)``.

    ``batch`` holds ``num_samples`` samples along axis 0. ``axis`` (an axis of
    ``batch``, negative allowed) keeps one value per channel; ``None`` reduces the
    whole sample. ``q`` is the quantile of ``quantile`` / ``abs_quantile``; ``bins`` and
    ``bounds`` the fixed bins of ``histogram`` / ``abs_histogram``.
    """
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; known: {', '.join(REDUCERS)}")
    if reducer in ("quantile", "abs_quantile") and (q is None or not 0.0 <= q <= 1.0):
        raise ValueError(f"reducer {reducer!r} needs a quantile q in [0, 1], got {q!r}")
    if reducer in HISTOGRAM_REDUCERS:
        check_histogram(bins, bounds, axis)
    if reducer == "gram":  # the batch's sum, one row (``statistics.gram``)
        return gram_batch(np.asarray(batch), num_samples, patch)
    view, channel_axis = per_sample_view(np.asarray(batch), num_samples, axis)
    if view.size == 0:
        raise ValueError("cannot reduce an empty tensor")
    if channel_axis is None:
        flat = view.reshape(view.shape[0], -1)
    else:
        flat = np.moveaxis(view, channel_axis, 1)
        flat = flat.reshape(flat.shape[0], flat.shape[1], -1)
    if reducer in ("abs_max", "abs_quantile", "abs_histogram"):
        flat = np.abs(flat)
    if reducer in HISTOGRAM_REDUCERS:
        return np.stack([_histogram(row, int(bins), bounds) for row in flat])
    if reducer == "min":
        return flat.min(axis=-1).astype(np.float64)
    if reducer in ("max", "abs_max"):
        return flat.max(axis=-1).astype(np.float64)
    if reducer == "mean":
        return flat.mean(axis=-1, dtype=np.float64)
    return np.quantile(flat, q, axis=-1).astype(np.float64)


def _histogram(values: np.ndarray, bins: int, bounds: tuple[float, float]) -> np.ndarray:
    """Counts of ``values`` in ``bins`` equal bins over ``bounds`` (int64); NaNs are not counted.

    A value outside ``bounds`` counts in the nearest edge bin; ``high`` itself is in the
    last bin, as in ``np.histogram``.
    """
    low, high = float(bounds[0]), float(bounds[1])
    values = values[~np.isnan(values)]
    position = (values.astype(np.float64) - low) * (bins / (high - low))
    index = np.clip(position, 0, bins - 1).astype(np.intp)
    return np.bincount(index, minlength=bins).astype(np.int64)


def per_sample_view(batch: np.ndarray, num_samples: int, axis: int | None) -> tuple[np.ndarray, int | None]:
    """``batch`` reshaped to have exactly one leading entry per sample, and where ``axis`` went.

    Inside a model the batch is sometimes merged with another dimension (a
    ``[N, T, C] -> [N*T, C]`` reshape in a transformer); when the leading size is a
    multiple of the sample count the batch is taken as the outer factor. When the
    tensor has no batch dimension at all the whole batch counts as one sample, so
    such a statistic depends on the batch size (logged at debug level).
    """
    channel = None if axis is None else (axis if axis >= 0 else batch.ndim + axis)
    if channel is not None and not 0 <= channel < batch.ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {batch.ndim}")
    if batch.ndim >= 1 and batch.shape[0] == num_samples:
        return batch, channel
    if batch.ndim >= 1 and num_samples > 0 and batch.shape[0] % num_samples == 0 and channel != 0:
        view = batch.reshape(num_samples, batch.shape[0] // num_samples, *batch.shape[1:])
        return view, None if channel is None else channel + 1
    logger.debug("tensor of shape %s has no batch axis of %d samples; reducing the batch as one sample",
                 batch.shape, num_samples)
    return batch[None], None if channel is None else channel + 1
