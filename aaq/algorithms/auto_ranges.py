"""The ``auto`` activation range estimator's measurement: which candidate's model is closest to float.

Which range wins depends on the model (``percentile`` clips rare spikes that cost
resolution everywhere else; some models need their peaks), so DefaultQuantization
builds the full-INT8 model under each candidate and this module measures them: on the
first calibration samples, by the normalised output error ``output_distance`` (the
one ``output_distance`` ranking uses); no labels needed. Ties keep the first
candidate, the observed range.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import onnx

from aaq.accuracy.subsets import output_distance
from aaq.engine.protocol import EngineLike

logger = logging.getLogger(__name__)


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
    errors = {name: float(np.mean(np.concatenate(kept))) for name, kept in zip(candidates, distances)}
    logger.info("activation ranges: %s (auto; output error %s, compared on %d samples)",
                min(errors, key=errors.__getitem__), ", ".join(f"{n} {e:.3g}" for n, e in errors.items()),
                len(indices))
    return errors
