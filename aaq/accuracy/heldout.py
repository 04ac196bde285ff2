"""The held-out check: the float and the final model on the samples the search never saw, once, at the end.

A search that picks what to revert by measuring on the same samples it reports on
can fit their noise. The held-out drop, with its own interval, says whether the
target holds on new samples: when its interval lies wholly above the allowed drop,
more than sampling noise explains the gap, and the run says the search overfitted.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from aaq.accuracy.evaluator import DropReference, bootstrap_drops
from aaq.accuracy.drops import Targets
from aaq.engine.protocol import EngineLike

logger = logging.getLogger(__name__)


def held_out_check(engine: EngineLike, targets: Targets, float_model: onnx.ModelProto, final: onnx.ModelProto,
                   limit: float, relative: bool) -> dict[str, Any]:
    """Evaluate both models on ``engine.holdout_indices``; per metric the drop, its interval and a verdict.

    ``limit`` is ``maximal_drop`` (the interval's units: metric units, or a fraction
    with ``relative``). The drop is against the float model measured on the same
    held-out samples (paired), whatever the search's reference was.
    """
    indices = np.asarray(engine.holdout_indices)
    ref = engine.evaluate(float_model, indices, progress_desc="float model, held out")
    new = engine.evaluate(final, indices, progress_desc="final model, held out")
    intervals = bootstrap_drops(engine, targets, new.model_digest, DropReference(ref.model_digest, relative=relative),
                                indices, which="held-out")
    metrics: dict[str, Any] = {}
    overfitted = []
    for t in targets.targets:
        iv = intervals[t.name]
        over = iv.low > limit
        if over:
            overfitted.append(t.name)
        metrics[t.name] = {"float": ref.values[t.name], "final": new.values[t.name], "interval": iv.as_dict(),
                           "overfitted": over, "statement": iv.statement(limit, t.name)}
    sentences = [f"{n}: held-out drop {intervals[n].point:.4f}, {intervals[n].level:.0%} interval "
                 f"[{intervals[n].low:.4f}, {intervals[n].high:.4f}] on {len(indices)} held-out samples, "
                 f"above {limit:g} by more than its interval explains: the search overfitted the samples it "
                 f"searched on" for n in overfitted]
    for line in sentences:
        logger.warning("%s", line)
    for m in metrics.values():
        if m["statement"] and not m["overfitted"]:
            logger.warning("%s", m["statement"])
    return {"samples": int(len(indices)), "metrics": metrics, "overfitted": overfitted, "reason": "; ".join(sentences)}
