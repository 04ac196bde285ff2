"""The ``gram`` reducer: the second moment ``sum x x^T`` of the vectors a layer multiplies its weights by.

A layer's output error from a weight error ``e`` (one output channel) is ``e . x``
for each input vector ``x`` (a row of a MatMul input, a patch of a Conv input), so
its mean square over the data is ``e^T G e / n`` with ``G = sum x x^T``: the weight-range
search (``quantization.weight_search``) scores every candidate range of every
channel from ``G`` alone, without running the layer again.

``patch`` describes a Conv's patches: ``(kh, kw, stride_h, stride_w, pad_top,
pad_left, pad_bottom, pad_right, dilation_h, dilation_w, group)``; ``None`` means
the vectors are the rows along the last axis (MatMul / Gemm). The result is one row
per batch (the batch's sum, which the ``sum`` aggregator adds up: the same as
per-sample rows), of shape ``(groups, d, d)``. At most ``MAX_VECTORS`` vectors per
sample are used, evenly spaced, so the cost does not grow with the image size.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

MAX_VECTORS = 512


def gram_batch(batch: np.ndarray, num_samples: int, patch: tuple[int, ...] | None) -> np.ndarray:
    """``(1, groups, d, d)``: the sum over the batch of ``x x^T`` (per conv group)."""
    batch = np.asarray(batch, dtype=np.float32)
    if patch is None:
        rows = batch.reshape(max(num_samples, 1), -1, batch.shape[-1])
        vectors = _spread(rows)[:, :, None, :]  # (samples, vectors, groups=1, d)
    else:
        vectors = _patches(batch, patch)
    groups = vectors.shape[2]
    flat = vectors.reshape(-1, groups, vectors.shape[3]).astype(np.float64)
    return np.einsum("ngd,nge->gde", flat, flat)[None]


def _spread(vectors: np.ndarray) -> np.ndarray:
    """At most ``MAX_VECTORS`` of each sample's vectors (axis 1), evenly spaced."""
    count = vectors.shape[1]
    if count <= MAX_VECTORS:
        return vectors
    return vectors[:, np.linspace(0, count - 1, MAX_VECTORS).astype(np.intp)]


def _patches(batch: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """``(samples, positions, groups, c/group * kh * kw)``: the patches of an NCHW input a Conv reads."""
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, group = (int(v) for v in patch)
    if batch.ndim != 4:
        raise ValueError(f"a conv patch statistic needs an NCHW tensor, got rank {batch.ndim}")
    n, c, _, _ = batch.shape
    padded = np.pad(batch, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (n, c, oh, ow, kh, kw)
    oh, ow = windows.shape[2], windows.shape[3]
    positions = np.moveaxis(windows, 1, 3).reshape(n, oh * ow, c, kh * kw)
    positions = _spread(positions)
    return positions.reshape(n, positions.shape[1], group, (c // group) * kh * kw)
