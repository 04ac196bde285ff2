"""The ``auto`` activation range estimator's measurement: which candidate's full-INT8 model to keep.

Which range wins depends on the model (``percentile`` clips rare spikes that cost
resolution everywhere else; some models need their peaks), so DefaultQuantization
builds the full-INT8 model under each candidate and this module measures them.

* By the engine's metrics, when it has some and the run evaluates: each candidate is
  evaluated on a seeded subset of the search samples (``auto_eval_samples``), the one
  closest to float by output error first; a later one stops as soon as its first
  metric cannot reach the best so far (per-sample scores with declared bounds). The
  metrics decide in the order the spec lists them. The output error alone is a poor
  guide to the metric: on PP-OCR cls it was a tenth for ``percentile`` while ``minmax``
  scored four images of 1000 more; on the text_recognition sample, before int8
  hard-swish's output grid, the output error kept the model that read fewer characters
  right.
* By the normalised output error ``output_distance`` (the one ranking uses) on the
  first calibration samples otherwise, and on ties: no labels needed. Ties keep the
  first candidate, the observed range.

The chosen model is the one DefaultQuantization returns, byte for byte, so its
evaluation is served from the engine's cache afterwards (the pipeline's final
evaluation, AccuracyAwareQuantization's start).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from aaq.accuracy.drops import score_bounds
from aaq.accuracy.subsets import output_distance
from aaq.engine.evaluation import Evaluation
from aaq.engine.protocol import EngineLike

logger = logging.getLogger(__name__)

EVALUATION_SEED = 0
"""The seed of the evaluation subset: the same samples for every candidate and every run."""


def output_errors(engine: EngineLike, float_model: onnx.ModelProto, candidates: Mapping[str, onnx.ModelProto],
                  indices: Sequence[int]) -> dict[str, float]:
    """Each candidate model's mean normalised output error against ``float_model`` on the calibration ``indices``.

    The models run side by side, batch by batch (``engine.run(..., calibration=True)``,
    the method the statistics pass uses): one batch of outputs each in memory.
    """
    names = [output.name for output in float_model.graph.output]
    models = [float_model, *candidates.values()]
    runs = [engine.run(m, indices, outputs=names, calibration=True, progress_desc="auto ranges") for m in models]
    distances: list[list[np.ndarray]] = [[] for _ in candidates]
    for (batch, reference), *outputs in zip(*runs):
        for kept, (_, candidate) in zip(distances, outputs):
            kept.append(output_distance(reference, candidate, samples=len(batch)))
    return {name: float(np.mean(np.concatenate(kept))) for name, kept in zip(candidates, distances)}


def evaluation_indices(engine: EngineLike, samples: int, evaluate: bool) -> np.ndarray:
    """The search samples the candidates' metrics are compared on: none without a metric, in a quantize-only
    run, or with ``auto_eval_samples`` 0."""
    if not evaluate or samples <= 0 or not engine.metrics:
        return np.empty(0, np.int64)
    return engine.subset(samples, EVALUATION_SEED, among=engine.search_indices)


def choose(engine: EngineLike, float_model: onnx.ModelProto, candidates: Mapping[str, onnx.ModelProto],
           calibration: Sequence[int], evaluation: np.ndarray) -> tuple[str, dict[str, Any]]:
    """The candidate to keep and what decided it (report.json's ``range_choice``)."""
    errors = output_errors(engine, float_model, candidates, calibration)
    order = sorted(candidates, key=errors.__getitem__)  # stable: ties keep the first candidate
    record: dict[str, Any] = {"output_error": errors, "samples": int(len(calibration))}
    if not len(evaluation):
        chosen = order[0]
        record.update(chosen=chosen, by="output error")
    else:
        evaluations = _evaluate(engine, {name: candidates[name] for name in order}, evaluation)
        complete = [name for name in order if evaluations[name].complete]
        chosen = max(complete, key=lambda name: _rank(engine, evaluations[name]))  # max keeps the first on ties
        decided = any(_rank(engine, evaluations[name]) != _rank(engine, evaluations[chosen])
                      for name in order if name != chosen)
        record.update(chosen=chosen, by="metric" if decided else "output error (metrics tied)", metric={
            "samples": int(len(evaluation)),
            "values": {name: evaluations[name].values for name in order},
            "stopped_early": [name for name in order if not evaluations[name].complete]})
    logger.info("activation ranges: %s (auto, by %s); output error %s (compared on %d samples)%s", chosen,
                record["by"], ", ".join(f"{n} {e:.3g}" for n, e in errors.items()), len(calibration),
                f"; metrics {record['metric']['values']} (on {len(evaluation)} samples)" if "metric" in record else "")
    return chosen, record


def _rank(engine: EngineLike, evaluation: Evaluation) -> tuple[float, ...]:
    """Larger is better: the metrics in the spec's order, each signed by its direction."""
    return tuple(evaluation.values[m.name] * (1 if m.higher_is_better else -1) for m in engine.metrics)


def _evaluate(engine: EngineLike, candidates: Mapping[str, onnx.ModelProto],
              indices: np.ndarray) -> dict[str, Evaluation]:
    """Each candidate's evaluation on ``indices``, in order; one whose first metric can no longer reach the best
    complete one's stops early (when that metric's per-sample scores have bounds)."""
    first = engine.metrics[0]
    bounds, sign = score_bounds(first), 1 if first.higher_is_better else -1
    best: list[float] = []

    def hopeless(partial: Evaluation) -> bool:
        if bounds is None or not best or not len(partial.indices):
            return False
        done, total = len(partial.indices), int(partial.requested or len(indices))
        reachable = max(bounds) if sign > 0 else min(bounds)
        bound = (partial.values[first.name] * done + reachable * (total - done)) / total
        return sign * bound < best[0] - 1e-12

    out = {}
    for name, model in candidates.items():
        out[name] = evaluation = engine.evaluate(model, indices, stop=hopeless,
                                                 progress_desc=f"auto ranges: {name}")
        if evaluation.complete:
            value = sign * evaluation.values[first.name]
            best[:] = [max(best[0], value)] if best else [value]
    return out
