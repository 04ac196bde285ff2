"""Activation ranges from a histogram of every calibration value: KL-divergence (entropy) and percentile.

Both read one fixed-bin histogram per tensor, summed over all calibration samples
(``statistics`` reducer ``histogram`` / ``abs_histogram``, aggregator ``sum``), over the
observed range of the tensor (of ``|x|``: ``[0, max |x|]``; of ``x``: ``[min, max]``).

* ``kl_threshold``: TensorRT's entropy calibration (Migacz, "8-bit inference with
  TensorRT", GTC 2017), as ONNX Runtime's ``CalibrationMethod.Entropy`` and Intel
  Neural Compressor's ``kl`` do. For each candidate threshold (the upper edge of bin
  ``i``, ``i`` from ``levels`` to ``bins``) the reference distribution ``P`` is the
  histogram cut at the threshold with everything beyond it added to its last bin;
  the candidate ``Q`` is the cut histogram *without* those outliers merged into
  ``levels`` equal chunks (the quantization grid), each chunk's count spread evenly
  over the bins where ``P`` is non-zero. The threshold minimising ``KL(P || Q)`` wins:
  clipping puts the outliers' mass where ``Q`` has little, a wide range blurs the
  bulk into few chunks, and the minimum balances the two.
* ``percentile_bounds``: the ``p``-th percentile, read off the cumulative histogram
  with linear interpolation inside the bin (exact to one bin width).

For a two-sided (asymmetric) range the KL search is coordinate-wise: the best upper
edge with nothing cut below, then the best lower edge with that upper edge, each
over one-dimensional candidates (``O(bins^2)`` work, not ``O(bins^3)``).
"""
from __future__ import annotations

import numpy as np

from aaq.quantization.presets import ActivationScheme
from aaq.statistics.requests import StatisticRequest

_SIGNED_LEVELS = 128  # each half of a signed symmetric grid (TensorRT's 128 quantized bins)
_UNSIGNED_LEVELS = 256  # a uint8 grid over the whole range
_EPS = 1e-4  # mass put on empty bins of Q before the divergence (as TensorRT and MXNet smooth)


def bin_edges(bins: int, bounds: tuple[float, float]) -> np.ndarray:
    """The ``bins + 1`` edges of a histogram over ``bounds``."""
    return np.linspace(float(bounds[0]), float(bounds[1]), int(bins) + 1)


def kl_threshold(hist: np.ndarray, bounds: tuple[float, float], levels: int) -> float:
    """The upper bound of the one-sided range ``[bounds[0], t]`` whose ``levels``-level grid loses least (KL).

    ``hist`` is a histogram over ``bounds``; with fewer bins than ``levels`` nothing is
    clipped (``bounds[1]``).
    """
    hist = np.asarray(hist, dtype=np.float64)
    if len(hist) <= levels or hist.sum() <= 0:
        return float(bounds[1])
    end = _best_end(hist, 0, levels)
    return float(bin_edges(len(hist), bounds)[end])


def kl_bounds(hist: np.ndarray, bounds: tuple[float, float], levels: int) -> tuple[float, float]:
    """The two-sided range ``[lo, hi]`` within ``bounds`` minimising the KL divergence (coordinate-wise)."""
    hist = np.asarray(hist, dtype=np.float64)
    if len(hist) <= levels or hist.sum() <= 0:
        return float(bounds[0]), float(bounds[1])
    end = _best_end(hist, 0, levels)
    # the lower edge: the same search on the mirrored histogram, its upper edge fixed
    start = len(hist) - _best_end(hist[::-1], len(hist) - end, levels)
    edges = bin_edges(len(hist), bounds)
    return float(edges[start]), float(edges[end])


def _best_end(hist: np.ndarray, start: int, levels: int) -> int:
    """The window end ``e`` (``hist[start:e]`` kept) of least divergence, ``e`` from ``start + levels`` to the end."""
    ends = np.arange(start + levels, len(hist) + 1)
    return int(ends[int(np.argmin(_divergences(hist, start, ends, levels)))])


def _divergences(hist: np.ndarray, start: int, ends: np.ndarray, levels: int) -> np.ndarray:
    """``KL(P || Q)`` of the windows ``hist[start:e]``, one per ``e`` in ``ends``, from prefix sums.

    ``P``: the window with the counts below ``start`` and from ``e`` on folded into its
    first and last bins (so ``P`` holds every count); ``Q``: the window without them,
    merged into ``levels`` chunks (chunk ``k`` holds bins ``[k L // levels, (k+1) L // levels)``
    of a window of ``L`` bins), each chunk's count spread evenly over the bins where
    ``P`` is non-zero. Inside a chunk ``Q`` is constant, so ``sum P log Q`` needs only each
    chunk's share of ``P``: ``O(levels)`` work per window instead of ``O(bins)``.
    """
    total = hist.sum()
    counts = np.concatenate([[0.0], np.cumsum(hist)])
    occupied = np.concatenate([[0], np.cumsum(hist > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy_terms = np.concatenate([[0.0], np.cumsum(np.where(hist > 0, hist * np.log(hist), 0.0))])
    lengths = ends - start
    cuts = start + np.arange(levels + 1)[None, :] * lengths[:, None] // levels  # (windows, levels + 1)
    chunk = counts[cuts[:, 1:]] - counts[cuts[:, :-1]]
    nonzero = (occupied[cuts[:, 1:]] - occupied[cuts[:, :-1]]).astype(np.float64)
    below = counts[start]
    above = total - counts[ends]
    first, last = hist[start], hist[ends - 1]
    # P's edge bins carry the outliers: they may become non-zero, and their p log p changes
    nonzero[:, 0] += (first == 0) & (below > 0)
    nonzero[:, -1] += (last == 0) & (above > 0)
    p_chunk = chunk.copy()
    p_chunk[:, 0] += below
    p_chunk[:, -1] += above

    def plogp(v: np.ndarray) -> np.ndarray:
        return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)

    p_log_p = (entropy_terms[ends] - entropy_terms[start] - plogp(first) - plogp(last)
               + plogp(first + below) + plogp(last + above))
    kept = chunk.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.where(chunk > 0, np.log(chunk / (nonzero * kept[:, None])), np.log(_EPS))
    p_log_q = np.where(p_chunk > 0, p_chunk * log_q, 0.0).sum(axis=1)
    divergence = (p_log_p - p_log_q) / total - np.log(total)
    divergence[kept <= 0] = np.inf
    return divergence


def percentile_bounds(hist: np.ndarray, bounds: tuple[float, float], lower: float | None,
                      upper: float) -> tuple[float | None, float]:
    """The ``lower`` and ``upper`` percentiles (in ``[0, 100]``) of the values ``hist`` counts over ``bounds``.

    ``lower=None`` skips the lower one (a histogram of ``|x|`` has one tail).
    """
    hist = np.asarray(hist, dtype=np.float64)
    edges = bin_edges(len(hist), bounds)
    total = hist.sum()
    if total <= 0:
        return (None if lower is None else float(bounds[0])), float(bounds[1])
    cumulative = np.cumsum(hist) / total

    def at(percent: float) -> float:
        # the first bin where the cumulative share reaches percent / 100, linear inside it
        share = min(max(percent / 100.0, 0.0), 1.0)
        index = min(int(np.searchsorted(cumulative, share, side="left")), len(hist) - 1)
        before = cumulative[index - 1] if index > 0 else 0.0
        inside = (share - before) / (cumulative[index] - before) if cumulative[index] > before else 0.0
        return float(edges[index] + min(max(inside, 0.0), 1.0) * (edges[index + 1] - edges[index]))

    return (None if lower is None else at(lower)), at(upper)


def histogram_range(scheme: ActivationScheme, lo: float, hi: float, request: StatisticRequest,
                    hist: np.ndarray) -> tuple[float, float]:
    """The min-side and max-side values ``activation_params`` reads, from the histogram of ``request``.

    ``lo`` / ``hi`` are the first-pass statistics. Symmetric: ``lo`` is kept (it says
    whether the tensor is unsigned) and the magnitude comes from the ``|x|`` histogram,
    on 256 levels for an unsigned tensor (uint8 ``[0, M]``) and 128 for a signed one
    (each half of ``[-M, M]``). Asymmetric: both ends from the ``x`` histogram, 256 levels.
    """
    estimator = scheme.histogram
    if estimator is None or request.bounds is None:
        raise ValueError("histogram_range needs a scheme with a histogram estimator and a histogram request")
    bounds = request.bounds
    if scheme.symmetric:
        if estimator.method == "kl":
            magnitude = kl_threshold(hist, bounds, _UNSIGNED_LEVELS if lo >= 0 else _SIGNED_LEVELS)
        else:
            magnitude = percentile_bounds(hist, bounds, None, estimator.percentile)[1]
        return lo, magnitude  # the max-side statistic of a histogram estimator is abs_max
    if estimator.method == "kl":
        return kl_bounds(hist, bounds, _UNSIGNED_LEVELS)
    tail = (100.0 - estimator.percentile) / 2.0
    low, high = percentile_bounds(hist, bounds, tail, 100.0 - tail)
    return float(low), high
