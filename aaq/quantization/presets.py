"""Presets and range estimators: the params of DefaultQuantization turned into quantization schemes.

Activation range defaults (``type / aggregator``; quantiles at ``outlier_prob`` and
``1 - outlier_prob``), per-tensor:

============  ===========  ===================================  ====================================
preset        activations  range_estimator ``minmax``           range_estimator ``quantile`` (POT's)
============  ===========  ===================================  ====================================
performance   symmetric    min: min / min, max: abs_max / max   min: quantile / min,
                                                                max: abs_quantile / mean
mixed         asymmetric   min: min / min, max: max / max       min: quantile / mean,
                                                                max: quantile / mean
============  ===========  ===================================  ====================================

``default`` is the old name of ``minmax`` (the observed range), kept for the specs
that use it; the tables of POT_REFERENCE.md call the same slot ``default`` with a
mean aggregator, which aaq writes ``"max": {"aggregator": "mean"}``.

``kl`` and ``percentile`` (the names Intel Neural Compressor and ONNX Runtime give
them) start from the ``minmax`` statistics (the observed range, usually cached
already) and then read a histogram of every calibration value over that range,
``histogram_bins`` fixed bins summed over samples (a second pass): ``kl`` keeps the
threshold of least KL divergence (TensorRT's entropy calibration), ``percentile`` the
``percentile``-th percentile of ``|x|`` (symmetric) or both tails of ``x`` at
``(100 - percentile) / 2`` percent each (asymmetric); see ``thresholds``. Their
``min`` / ``max`` entries must stay ``null``: the statistics are theirs.

Output quantizers (there only so that ONNX Runtime fuses the layer) keep the full
observed range with every estimator: nothing after them absorbs a clipped value.

DefaultQuantization's default estimator is ``auto``: ``minmax`` or ``percentile``,
whichever full-INT8 model scores better on the engine's metrics over ``auto_eval_samples``
evaluation samples, else (no metric, a quantize-only run, a tie) whose outputs are closer
to the float model's on the first ``auto_samples`` calibration samples
(``algorithms.auto_ranges``). Which fixed estimator is at least as good as
``nncf.quantize``'s start moves with the model, its calibration set and aaq's own rewrites
(``benchmarks/bench_default_start.py``; the tables are in the README's "Benchmarks"):
``minmax`` loses on a CNN with one outlier activation channel and, in the last run, on
PP-OCR cls; ``percentile`` lost on PP-OCR rec calibrated on 100 samples and, before int8
hard-swish's output grid, on cls and the text_recognition sample. ``auto`` was at least as
good as NNCF's start on all seven cases in each of the last two runs.
Weights are symmetric in
both presets. A user's ``min`` / ``max`` entries override the preset's field by
field; ``null`` keeps the preset's value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from aaq.statistics.requests import StatisticRequest

PRESETS = ("performance", "mixed")
DEFAULT_OUTLIER_PROB = 1e-4
HISTOGRAM_ESTIMATORS = ("kl", "percentile")
AUTO_ESTIMATOR = "auto"
OWN_STATISTICS = HISTOGRAM_ESTIMATORS + (AUTO_ESTIMATOR,)
"""Estimators that take no ``min`` / ``max`` statistics: theirs are fixed."""
ESTIMATORS = ("minmax", "default", "quantile") + OWN_STATISTICS
DEFAULT_ESTIMATOR = AUTO_ESTIMATOR
DEFAULT_PERCENTILE = 99.999
DEFAULT_HISTOGRAM_BINS = 2048
DEFAULT_AUTO_SAMPLES = 64
DEFAULT_AUTO_EVAL_SAMPLES = 1000

_ACTIVATION_DEFAULTS = {
    (True, "minmax"): ({"type": "min", "aggregator": "min"}, {"type": "abs_max", "aggregator": "max"}),
    (True, "quantile"): ({"type": "quantile", "aggregator": "min"},
                         {"type": "abs_quantile", "aggregator": "mean"}),
    (False, "minmax"): ({"type": "min", "aggregator": "min"}, {"type": "max", "aggregator": "max"}),
    (False, "quantile"): ({"type": "quantile", "aggregator": "mean"}, {"type": "quantile", "aggregator": "mean"}),
}


@dataclass(frozen=True)
class RangeStatistic:
    """One side of a range: a per-sample statistic, folded over samples by ``aggregator``."""

    type: str
    aggregator: str
    outlier_prob: float = DEFAULT_OUTLIER_PROB

    @property
    def is_abs(self) -> bool:
        return self.type.startswith("abs_")

    def request(self, tensor: str, side: str) -> StatisticRequest:
        """The statistic request for this side (``"min"`` or ``"max"``) of ``tensor``'s range."""
        q = None
        if self.type.endswith("quantile"):
            q = self.outlier_prob if side == "min" else 1.0 - self.outlier_prob
        return StatisticRequest(tensor, self.type, self.aggregator, q)


@dataclass(frozen=True)
class HistogramEstimator:
    """A range read off a histogram of every calibration value: ``kl`` or ``percentile``."""

    method: str
    bins: int = DEFAULT_HISTOGRAM_BINS
    percentile: float = DEFAULT_PERCENTILE


@dataclass(frozen=True)
class AutoChoice:
    """``auto``: the observed range or ``percentile``, whichever full-INT8 model scores better on the
    engine's metrics over ``eval_samples`` evaluation samples, or (no metric, a quantize-only run, a tie,
    ``eval_samples`` 0) has outputs closer to the float model's on the first ``samples`` calibration
    samples (``DefaultQuantization`` measures it, ``algorithms.auto_ranges``)."""

    candidates: tuple[str, ...] = ("minmax", "percentile")
    samples: int = DEFAULT_AUTO_SAMPLES
    eval_samples: int = DEFAULT_AUTO_EVAL_SAMPLES


@dataclass(frozen=True)
class ActivationScheme:
    """Per-tensor activations: symmetric (performance) or asymmetric (mixed), and how ranges are estimated.

    With a ``histogram`` estimator, ``min`` / ``max`` are the first-pass statistics (the
    observed range) the histogram is laid over. With ``auto``, the scheme holds the
    ``percentile`` candidate; ``candidate`` gives each one.
    """

    symmetric: bool
    min: RangeStatistic
    max: RangeStatistic
    histogram: HistogramEstimator | None = None
    auto: AutoChoice | None = None

    def candidate(self, name: str) -> "ActivationScheme":
        """The ``auto`` candidate ``name``: ``minmax`` (the first-pass range as is) or ``percentile``."""
        if name == "minmax":
            return replace(self, histogram=None, auto=None)
        if name == "percentile" and self.histogram is not None:
            return replace(self, auto=None)
        raise ValueError(f"no auto candidate {name!r}")

    def requests(self, tensor: str, full_range: bool = False) -> tuple[StatisticRequest, StatisticRequest]:
        """The min-side and max-side requests; ``full_range`` folds them with min / max over samples.

        Output quantizers (there only so ONNX Runtime fuses the layer) always use the
        full range: nothing after them absorbs a clipped value, and clipped logits
        tie and change the argmax.
        """
        lo, hi = self.min, self.max
        if full_range:
            lo, hi = replace(lo, aggregator="min"), replace(hi, aggregator="max")
        return lo.request(tensor, "min"), hi.request(tensor, "max")

    def histogram_request(self, tensor: str, lo: float, hi: float) -> StatisticRequest | None:
        """The second-pass histogram of ``tensor`` over its first-pass range ``[lo, hi]``.

        Symmetric: ``|x|`` over ``[0, max |x|]``; asymmetric: ``x`` over ``[lo, hi]``.
        ``None`` without a histogram estimator, or when the range is empty or not finite
        (nothing to clip: the first-pass range is used as is).
        """
        if self.histogram is None:
            return None
        if self.symmetric:
            magnitude = hi if self.max.is_abs else max(hi, -lo)
            reducer, bounds = "abs_histogram", (0.0, float(magnitude))
        else:
            reducer, bounds = "histogram", (float(lo), float(hi))
        if not (math.isfinite(bounds[0]) and math.isfinite(bounds[1]) and bounds[0] < bounds[1]):
            return None
        return StatisticRequest(tensor, reducer, "sum", bins=self.histogram.bins, bounds=bounds)


@dataclass(frozen=True)
class WeightScheme:
    """Symmetric signed weights of ``bits`` bits, per output channel or per tensor.

    ``reduce_range`` takes one bit off (at most 7): the range that ONNX Runtime's
    u8 x s8 kernels do not saturate on CPUs without VNNI (``engine.kernels``).
    """

    bits: int
    per_channel: bool
    estimator: str  # abs_max or abs_quantile
    outlier_prob: float
    reduce_range: bool = False

    @property
    def levels(self) -> int:
        """The largest quantized magnitude: ``2^(bits-1) - 1``, or ``2^6 - 1`` at most with ``reduce_range``."""
        bits = min(self.bits, 7) if self.reduce_range else self.bits
        return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class QuantConfig:
    weights: WeightScheme
    activations: ActivationScheme


def resolve_config(preset: str, weights: Mapping[str, Any], activations: Mapping[str, Any], *,
                   saturating_kernels: bool = False) -> QuantConfig:
    """The schemes for validated params; missing nested keys take the schema's defaults.

    ``saturating_kernels``: whether the machine's int8 kernels saturate u8 x s8 products,
    which decides ``weights.reduce_range: "auto"``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    symmetric = preset == "performance"
    w_max = dict(weights.get("range_estimator", {}).get("max", {}))
    weight_scheme = WeightScheme(
        bits=int(weights.get("bits", 8)),
        per_channel=weights.get("granularity", "perchannel") == "perchannel",
        estimator=w_max.get("type", "abs_max"),
        outlier_prob=float(w_max.get("outlier_prob", DEFAULT_OUTLIER_PROB)),
        reduce_range=_reduce_range(weights.get("reduce_range", "auto"), saturating_kernels))
    estimator = activations.get("range_estimator", {})
    name = estimator.get("preset", DEFAULT_ESTIMATOR)
    if name not in ESTIMATORS:
        raise ValueError(f"unknown range estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    histogram = auto = None
    if name in OWN_STATISTICS:
        fixed = fixed_statistics(estimator)
        if fixed:
            raise ValueError(f"range estimator {name!r} takes no {', '.join(fixed)}: its statistics are its own")
        if name == AUTO_ESTIMATOR:
            auto = AutoChoice(samples=int(estimator.get("auto_samples", DEFAULT_AUTO_SAMPLES)),
                              eval_samples=int(estimator.get("auto_eval_samples", DEFAULT_AUTO_EVAL_SAMPLES)))
        histogram = HistogramEstimator("percentile" if auto else name,
                                       int(estimator.get("histogram_bins", DEFAULT_HISTOGRAM_BINS)),
                                       float(estimator.get("percentile", DEFAULT_PERCENTILE)))
        name = "minmax"  # the first pass: the observed range the histogram is laid over
    lo_default, hi_default = _ACTIVATION_DEFAULTS[(symmetric, "minmax" if name == "default" else name)]
    lo = _merge(lo_default, estimator.get("min", {}))
    hi = _merge(hi_default, estimator.get("max", {}))
    return QuantConfig(weight_scheme, ActivationScheme(symmetric, lo, hi, histogram, auto))


def fixed_statistics(estimator: Mapping[str, Any]) -> list[str]:
    """The ``min`` / ``max`` ``type`` / ``aggregator`` entries set (not null): a histogram estimator refuses them."""
    return [f"{side}.{key}" for side in ("min", "max") for key in ("type", "aggregator")
            if (estimator.get(side) or {}).get(key) is not None]


def _reduce_range(setting: Any, saturating_kernels: bool) -> bool:
    return saturating_kernels if setting == "auto" else bool(setting)


def _merge(default: Mapping[str, Any], user: Mapping[str, Any]) -> RangeStatistic:
    values = dict(default)
    values.update({k: v for k, v in user.items() if v is not None})
    values.setdefault("outlier_prob", DEFAULT_OUTLIER_PROB)
    return RangeStatistic(values["type"], values["aggregator"], float(values["outlier_prob"]))
