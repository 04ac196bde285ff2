"""Ranges to quantization parameters: scales, zero points and quantized weights.

Activations are stored as **uint8** in both presets. Measured with ONNX Runtime
1.32 on x86-64 (AVX512-VNNI), optimized graphs and timings of our QDQ models:

* a tensor that is non-negative (a ReLU output) gets zero point 0 in uint8: ORT
  then drops the ReLU before the QuantizeLinear and fuses Conv+ReLU into
  ``QLinearConv``; with int8 and zero point 0 the ReLU stays and the conv runs in
  float (``FusedConv``), and half of the int8 grid is wasted on values that never occur;
* a signed tensor, symmetric, gets zero point 128 in uint8: the same grid as int8
  with zero point 0 (``(q - 128) * s``), the same fused kernels, the same speed on
  VNNI (measured: 4 chained 3x3 convs, 0.69 ms either way), and it is the u8s8 form
  ORT documents as the fast one on x86 without VNNI.

An output quantizer whose readers are all flat outside a range (hard-swish below -3,
HardSigmoid, Clip: ``clamps.consumer_clamp``) is cut to that range and, when the cut
range is not symmetric, gets its own zero point in either preset: uint8 with any
zero point runs the same kernels.

Weights are int8, symmetric, narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]`` (zero point 0,
as ORT's integer kernels require), per output channel by default.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from aaq.quantization.presets import ActivationScheme, WeightScheme

logger = logging.getLogger(__name__)

_MIN_RANGE = 1e-8  # a constant-zero tensor still needs a positive scale
_UINT8_LEVELS = 255


@dataclass(frozen=True)
class ActivationParams:
    """Quantizer parameters of one activation tensor, and the float range they represent."""

    scale: float
    zero_point: int
    low: float
    high: float


def activation_params(lo: float, hi: float, scheme: ActivationScheme) -> ActivationParams:
    """uint8 parameters from the aggregated min-side and max-side statistics of a tensor.

    Symmetric: a tensor whose min-side statistic is >= 0 is unsigned ``[0, M]``
    (zero point 0), otherwise ``[-M, M]`` around zero point 128, with ``M`` the max-side
    statistic (or ``max(hi, -lo)`` when that statistic is not an absolute one).
    Asymmetric: ``[min(lo, 0), max(hi, 0)]`` with the zero point rounded so that 0
    is exactly representable.
    """
    lo, hi = float(lo), float(hi)
    if scheme.symmetric:
        magnitude = hi if scheme.max.is_abs else max(hi, -lo)
        magnitude = max(magnitude, _MIN_RANGE)
        if lo >= 0:
            scale = magnitude / _UINT8_LEVELS
            return ActivationParams(np.float32(scale).item(), 0, 0.0, magnitude)
        scale = magnitude / 127.0
        return ActivationParams(np.float32(scale).item(), 128, -128 * scale, 127 * scale)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < _MIN_RANGE:
        hi = lo + _MIN_RANGE
    scale = np.float32((hi - lo) / _UINT8_LEVELS).item()
    zero_point = int(np.clip(np.round(-lo / scale), 0, _UINT8_LEVELS))
    return ActivationParams(scale, zero_point, (0 - zero_point) * scale, (_UINT8_LEVELS - zero_point) * scale)


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight as int8 values, float32 scales (one per channel along ``axis``, or one) and int8 zero points."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    bits: int = 8

    def dequantize(self) -> np.ndarray:
        shape = [1] * self.values.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        return self.values.astype(np.float32) * self.scale.reshape(shape)


def quantize_weight(weight: np.ndarray, axis: int | None, scheme: WeightScheme) -> QuantizedWeight:
    """Symmetric quantization of ``weight``: one scale per slice along ``axis``, or one when ``None``.

    The scale is ``absmax / scheme.levels`` (``abs_max`` estimator) or the
    ``1 - outlier_prob`` quantile of ``|w|`` over the same levels (``abs_quantile``,
    which clips the largest weights). A channel of zeros gets scale 1 (any scale
    quantizes it exactly).
    """
    weight = np.asarray(weight, dtype=np.float32)
    axis = None if axis is None else axis % weight.ndim
    levels = scheme.levels
    magnitude = np.abs(weight) if axis is None else np.moveaxis(np.abs(weight), axis, 0)
    magnitude = magnitude.reshape(1 if axis is None else magnitude.shape[0], -1)
    if scheme.estimator == "abs_quantile":
        bound = np.quantile(magnitude, 1.0 - scheme.outlier_prob, axis=1)
    elif scheme.estimator == "abs_max":
        bound = magnitude.max(axis=1)
    else:
        raise ValueError(f"unknown weight range estimator {scheme.estimator!r}")
    bound = bound.astype(np.float32)
    scale = np.where(bound > 0, bound / np.float32(levels), np.float32(1.0)).astype(np.float32)
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    else:
        scale = scale.reshape(())
    values = np.clip(np.round(weight / scale.reshape(shape)), -levels, levels).astype(np.int8)
    zero_point = np.zeros_like(scale, dtype=np.int8)
    for array in (values, scale, zero_point):  # plans share these arrays: keep them immutable
        array.setflags(write=False)
    return QuantizedWeight(values, scale, zero_point, axis, scheme.bits if not scheme.reduce_range
                           else min(scheme.bits, 7))
