"""Other base-algorithm params worth trying before reverting layers: the mixed preset and POT's tuning grid.

Each function returns *stages*: lists of param overrides. A stage's candidates are
compared with each other, and the best is kept only if it lowers the drop; later
stages start from what the earlier ones kept (POT searched coordinate-wise too).
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

Stage = list[dict[str, Any]]


def mixed_preset_stages(base_params: dict[str, Any]) -> list[Stage]:
    """One stage with the mixed preset (asymmetric activations), unless the base already uses it."""
    if base_params.get("preset") == "mixed":
        logger.info("convert_to_mixed_preset: the base algorithm already uses the mixed preset")
        return []
    return [[{"preset": "mixed"}]]


def tuning_stages(base_params: dict[str, Any]) -> list[Stage]:
    """POT's grid, coordinate-wise: activation range estimators, then bias correction.

    With symmetric activations (preset performance) the lower bound only decides
    the sign, so only the upper bound's estimator is searched there.
    """
    mixed = base_params.get("preset") == "mixed"

    def options(kind: str) -> list[dict | None]:
        return [None] + [{"type": kind, "aggregator": "mean", "outlier_prob": q} for q in (1e-3, 1e-4)]

    ranges = [{"activations": {"range_estimator": {k: v for k, v in (("min", low), ("max", high)) if v}}}
              for low in (options("quantile") if mixed else [None])
              for high in options("quantile" if mixed else "abs_quantile") if low or high]
    current = (base_params.get("bias_correction"), base_params.get("use_fast_bias"))
    bias = [{"bias_correction": b, "use_fast_bias": f} for b, f in ((True, True), (True, False), (False, True))
            if (b, f) != current and not (current[0] is False and b is False)]
    return [ranges, bias]


def merge_params(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, nested objects merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge_params(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out
