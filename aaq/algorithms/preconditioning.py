"""DefaultQuantization's float-graph rewrites and weight-range search, kept out of its main flow.

Cross-layer equalization and SmoothQuant rewrite the *prepared* float model before
the ranges are read (``quantization.equalize``, ``quantization.smooth``); the plan is
then built on the rewritten model, so reverting a layer restores its (rescaled,
equivalent) float weights. SmoothQuant's per-channel maxima are requested in the
first statistics pass; the smoothed model's own ranges take one more pass through
the same collector (the smoothed tensors have new values). The weight-range search
(``quantization.weight_search``) reads its input second moments on the plan's QDQ
model with the ranges searched so far, one pass over ``num_samples`` calibration
samples per wave of independent layers.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import onnx

from aaq.engine.protocol import EngineLike
from aaq.quantization.equalize import equalize
from aaq.quantization.graph import prefix_model
from aaq.quantization.plan import Plan
from aaq.quantization.prepare import PreparedModel
from aaq.quantization.qdq import apply_plan
from aaq.quantization.smooth import SmoothTarget, smooth
from aaq.quantization.weight_search import DEFAULT_MARGIN, DEFAULT_RATIOS, gram_requests, search_weights, waves
from aaq.state import PipelineState, model_digest
from aaq.statistics.collector import fill_statistics
from aaq.statistics.requests import StatisticsNeeds

logger = logging.getLogger(__name__)


def equalized(prepared: PreparedModel, absorb_high_bias: bool = True) -> tuple[PreparedModel, dict[str, Any]]:
    """The prepared model with cross-layer equalization applied, and the record (a note when nothing changed).

    High-bias absorption reads the moments of the BatchNormalizations preparation folded.
    """
    result = equalize(prepared.model, prepared.bn_moments, absorb_high_bias)
    record = result.summary()
    if record["note"]:
        logger.info("cross_layer_equalization: %s", record["note"])
    return dataclasses.replace(prepared, model=result.model), record


def smoothed(prepared: PreparedModel, targets: list[SmoothTarget], statistics: dict,
             alpha: float) -> tuple[PreparedModel | None, dict[str, Any]]:
    """The prepared model with SmoothQuant applied (``None`` when nothing was smoothed), and the record."""
    result = smooth(prepared.model, targets, statistics, alpha)
    record = {"alpha": alpha, **result.summary()}
    if not result.smoothed:
        record["note"] = "no MatMul/Gemm input was smoothed"
        return None, record
    types, shapes = dict(prepared.elem_types), dict(prepared.shapes)
    sources = {n.output[0]: n.input[0] for n in result.model.graph.node if n.output[0] not in types}
    for new, source in sources.items():  # the inserted Muls: same type and shape as what they scale
        if source in types:
            types[new] = types[source]
        if source in shapes:
            shapes[new] = shapes[source]
    return dataclasses.replace(prepared, model=result.model, elem_types=types, shapes=shapes), record


def searched_weights(plan: Plan, state: PipelineState, engine: EngineLike,
                     options: dict[str, Any]) -> tuple[Plan, dict[str, Any]]:
    """The plan with weight ranges chosen by output error, wave by wave (``weight_search.waves``): each wave's
    inputs read in one statistics pass on the QDQ model of the plan searched so far."""
    started = time.perf_counter()
    budget, samples = float(options.get("time_budget", 60.0)), int(options.get("num_samples", 32))
    margin = float(options.get("margin", DEFAULT_MARGIN))
    names = list(gram_requests(plan, apply_plan(plan.model, plan)))
    record: dict[str, Any] = {"layers": {}, "not_searched": [], "ratios": list(DEFAULT_RATIOS), "margin": margin,
                              "passes": 0}
    if not names:
        return plan, {**record, "note": "no Conv/Gemm/MatMul with per-channel weights to search"}
    for wave in waves(plan, names):
        if time.perf_counter() - started > budget:
            record["not_searched"] += wave
            continue
        quantized: onnx.ModelProto = apply_plan(plan.model, plan)
        requests = {n: r for n, r in gram_requests(plan, quantized).items() if n in wave}
        prefix = prefix_model(quantized, [r.tensor for r in requests.values()])  # the rest need not run
        needs = StatisticsNeeds(prefix, model_digest(prefix), tuple(dict.fromkeys(requests.values())), samples)
        fill_statistics(state.statistics, engine, [needs], progress=False, why="weight-range search")
        plan, layers = search_weights(plan, state.statistics.values(needs), requests, margin=margin)
        record["layers"].update(layers)
        record["passes"] += 1
    record["seconds"] = round(time.perf_counter() - started, 3)
    searched = sum(not r["kept_min_max"] for r in record["layers"].values())
    logger.info("weight-range search: %d of %d layer(s) given searched ranges in %d passes, %.2f s%s", searched,
                len(names), record["passes"], record["seconds"],
                f", {len(record['not_searched'])} left at min/max (time budget)" if record["not_searched"] else "")
    return plan, record
