"""A result slower than float is not a result: cheap fixes for a mix of float and int8 groups that loses on speed.

Float islands cost time: every boundary between a float group and an int8 one is a
DequantizeLinear / QuantizeLinear pair and a layout change, and a model with three
islands can run slower than the float model it replaces. When the search's mix is
measured slower than float, ``faster_mix`` tries, cheapest first:

1. *widen*: a reverted group with its int8 neighbours reverted too (one island
   instead of several boundaries), each reverted group in turn, then all at once;
2. *swap*: one reverted group exchanged for an int8 group whose ranking score is
   closest to its own (a group of similar gain, elsewhere in the graph).

Each candidate is timed first (against float, the same way as the final model) and
only one measured faster than the current mix beyond the timing noise (its slow
rounds beat the current mix's fast ones) is evaluated, with early stop, for the
target; the fix only starts when the mix is slower than float in three rounds of four. The fastest that meets the target is kept. The record says what was tried,
both speeds, and plainly when no tried mix that meets the target is faster than float.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import onnx

from aaq.accuracy.drops import StopRule, Targets
from aaq.accuracy.evaluator import PlanEvaluator
from aaq.accuracy.search import Measurement
from aaq.engine.latency import LatencyComparison, latency_on_engine
from aaq.engine.protocol import EngineLike
from aaq.quantization.graph import FLOAT

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 6


def candidate_mixes(reverted: Sequence, neighbours: Mapping[Any, Sequence], scores: Mapping[Any, float],
                    quantized: Sequence) -> list[tuple[str, frozenset]]:
    """The widened and swapped mixes to try, cheapest (fewest changes) first, without repeats."""
    base = frozenset(reverted)
    out: list[tuple[str, frozenset]] = []
    grown = set(base)
    for group in reverted:
        extra = {n for n in neighbours.get(group, ()) if n != FLOAT and n not in base}
        if extra:
            out.append((f"widen group {group} to its neighbours {sorted(extra)}", base | extra))
            grown |= extra
    if len(out) > 1:
        out.append(("widen every reverted group to its neighbours", frozenset(grown)))
    others = [g for g in quantized if g not in base]
    for group in reverted:
        if group not in scores:
            continue
        similar = sorted((g for g in others if g in scores), key=lambda g: abs(scores[g] - scores[group]))
        for other in similar[:1]:
            out.append((f"swap group {group} for group {other} (similar ranking score)", (base - {group}) | {other}))
    seen, unique = set(), []
    everything = frozenset(quantized) | base
    for name, mix in out:
        if mix not in seen and mix != base and mix != everything:  # all float is the float model, not a mix
            seen.add(mix)
            unique.append((name, mix))
    return unique[:MAX_CANDIDATES]


def faster_mix(evaluator: PlanEvaluator, targets: Targets, engine: EngineLike, float_model: onnx.ModelProto,
               reverted: Sequence, neighbours: Mapping[Any, Sequence], scores: Mapping[Any, float],
               budget_seconds: float) -> tuple[tuple[frozenset, Measurement] | None, dict[str, Any]]:
    """The fastest tried mix that meets the target and beats the current one on speed (or ``None``), and a record."""
    base = frozenset(reverted)
    each = max(budget_seconds / (MAX_CANDIDATES + 1), 0.5)
    current = latency_on_engine(engine, float_model, evaluator.build(base), each)
    record: dict[str, Any] = {"before": {"ratio": current.ratio, "statement": current.statement()}, "tried": []}
    if not _surely_slower(current) or not base:
        record["needed"] = False
        return None, record
    record["needed"] = True
    quantized = [g.id for g in evaluator.candidates.plan.groups if g.id not in evaluator.candidates.plan.reverted]
    best: tuple[frozenset, Measurement] | None = None
    best_ratio = current.ratio
    for name, mix in candidate_mixes(list(reverted), neighbours, scores, quantized):
        latency = latency_on_engine(engine, float_model, evaluator.build(mix), each)
        entry: dict[str, Any] = {"change": name, "reverted": sorted(mix), "ratio": latency.ratio}
        if latency.ratio < best_ratio and _surely_faster(latency, current):
            measurement = evaluator.measure(mix, StopRule(targets, (0.0,)))
            entry["meets_target"] = evaluator.passed(measurement)
            if entry["meets_target"]:
                best, best_ratio = (mix, evaluator.complete(measurement)), latency.ratio
        record["tried"].append(entry)
    record["after"] = {"ratio": best_ratio}
    if best is not None:
        record["kept"] = sorted(best[0])
    if best is None:
        record["statement"] = (f"no tried mix that meets the target is faster: the result stays at x{current.ratio:.2f} "
                               f"of float's latency")
    elif best_ratio >= 1:
        record["statement"] = (f"kept a faster mix (x{current.ratio:.2f} -> x{best_ratio:.2f} of float), but no mix "
                               f"tried that meets the target is faster than float")
    else:
        record["statement"] = f"kept a mix faster than float: x{current.ratio:.2f} -> x{best_ratio:.2f} of float"
    (logger.info if best is not None and best_ratio < 1 else logger.warning)("%s", record["statement"])
    return best, record


def _surely_slower(latency: LatencyComparison) -> bool:
    """Slower than float in at least three rounds out of four (the lower quartile of per-round ratios above 1)."""
    low = latency.spread[0]
    return latency.slower and (math.isnan(low) or low > 1.0)


def _surely_faster(candidate: LatencyComparison, current: LatencyComparison) -> bool:
    """The candidate's slow rounds beat the current mix's fast ones: a gain beyond this machine's noise."""
    high, low = candidate.spread[1], current.spread[0]
    if math.isnan(high) or math.isnan(low):
        return candidate.ratio < 0.9 * current.ratio
    return high < low

