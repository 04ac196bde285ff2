"""Per-sample reducers: one batch of a tensor in, one value (or one value per channel) per sample out.

Reducing per sample, not per batch, makes every statistic independent of the batch
size the engine happens to use; the aggregators then fold the per-sample values.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

REDUCERS = ("min", "max", "abs_max", "quantile", "abs_quantile", "mean")
"""The reducer names a ``StatisticRequest`` may use."""


def reduce_batch(batch: np.ndarray, num_samples: int, reducer: str, *, q: float | None = None,
                 axis: int | None = None) -> np.ndarray:
    """The reducer applied to each sample of ``batch``: shape ``(samples,)`` or ``(samples, channels)``.

    ``batch`` holds ``num_samples`` samples along axis 0. ``axis`` (an axis of
    ``batch``, negative allowed) keeps one value per channel; ``None`` reduces the
    whole sample. ``q`` is the quantile of ``quantile`` / ``abs_quantile``.
    """
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; known: {', '.join(REDUCERS)}")
    if reducer in ("quantile", "abs_quantile") and (q is None or not 0.0 <= q <= 1.0):
        raise ValueError(f"reducer {reducer!r} needs a quantile q in [0, 1], got {q!r}")
    view, channel_axis = per_sample_view(np.asarray(batch), num_samples, axis)
    if view.size == 0:
        raise ValueError("cannot reduce an empty tensor")
    if channel_axis is None:
        flat = view.reshape(view.shape[0], -1)
    else:
        flat = np.moveaxis(view, channel_axis, 1)
        flat = flat.reshape(flat.shape[0], flat.shape[1], -1)
    if reducer in ("abs_max", "abs_quantile"):
        flat = np.abs(flat)
    if reducer == "min":
        return flat.min(axis=-1).astype(np.float64)
    if reducer in ("max", "abs_max"):
        return flat.max(axis=-1).astype(np.float64)
    if reducer == "mean":
        return flat.mean(axis=-1, dtype=np.float64)
    return np.quantile(flat, q, axis=-1).astype(np.float64)


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
